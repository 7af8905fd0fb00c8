"""The README's cluster commands, run as written against a real Prefect server.

`prefect work-pool create` twice and `prefect deploy --all` (reading the project's
`prefect.yaml`), then the worker line started as written: it must join its pool and run a flow
from a deployment. The worker image keeps the code at `/opt/uib` (`infra/worker.Dockerfile`),
where `prefect.yaml`'s pull step goes; here that path is a link to this checkout, as
`compose_stack.py` maps what an image copies in. No Kubernetes here: the `uib-gpu` pool and its
deployment are created and read back, not run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest
from prefect_server import prefect_server, quiet_prefect_env, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
IMAGE_CODE = Path("/opt/uib")
WORKER_IMAGE = "registry.example.com/uib-worker:1"  # the README's example of a pushed image


def readme_cluster_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("On a cluster, the flows run on work pools", 1)[1]
    return block.split("```bash", 1)[1].split("```", 1)[0].strip().splitlines()


@pytest.fixture(scope="module")
def image_code():
    """`/opt/uib` as the worker image has it: this checkout."""
    if IMAGE_CODE.exists() or IMAGE_CODE.is_symlink():
        if IMAGE_CODE.resolve() != REPO:
            pytest.skip(f"{IMAGE_CODE} exists here and is not this checkout")
        yield
        return
    IMAGE_CODE.parent.mkdir(parents=True, exist_ok=True)
    IMAGE_CODE.symlink_to(REPO)
    try:
        yield
    finally:
        IMAGE_CODE.unlink()


@pytest.fixture(scope="module")
def cluster_env(tmp_path_factory, image_code):
    root = tmp_path_factory.mktemp("cluster")
    with prefect_server(root) as api_url:
        yield {
            **os.environ,
            **quiet_prefect_env(root / "client-home"),
            "PATH": f"{REPO / '.venv' / 'bin'}{os.pathsep}{os.environ['PATH']}",
            "PREFECT_API_URL": api_url,
            "UIB_WORKER_IMAGE": WORKER_IMAGE,
            "UIB_HOME": str(root / "state"),
        }


def shell(line: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", line], cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


@contextmanager
def started(line: str, env: dict[str, str], log: Path):
    """A long-running README line as a process group, stopped on exit."""
    with open(log, "w") as out:
        process = subprocess.Popen(
            ["bash", "-c", line], cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        yield process
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def check_deployed(client) -> dict:
    """The pools and deployments `prefect.yaml` describes, as the server holds them."""
    pools = {p.name: p for p in client.read_work_pools()}
    assert pools["uib-process"].type == "process"
    assert pools["uib-gpu"].type == "kubernetes"
    template = json.loads((REPO / "infra/k8s/gpu-job-template.json").read_text())
    assert pools["uib-gpu"].base_job_template == template
    deployments = {
        f"{client.read_flow(d.flow_id).name}/{d.name}": d for d in client.read_deployments()
    }
    assert {name: d.work_pool_name for name, d in deployments.items()} == {
        "unlearn/unlearn-on-event": "uib-process",
        "unlearn-scheduled/unlearn-scheduled": "uib-process",
        "train/train": "uib-process",
        "unlearn-step/gpu": "uib-gpu",
    }
    assert deployments["unlearn-step/gpu"].job_variables["image"] == WORKER_IMAGE
    [schedule] = deployments["unlearn-scheduled/unlearn-scheduled"].schedules
    assert schedule.schedule.cron == "0 2 * * *"
    [automation] = client.read_automations_by_name("deletion requested")
    assert automation.trigger.expect == {"uib.deletion.requested"}
    return deployments


def test_the_readme_cluster_commands_deploy_and_a_worker_runs_a_flow(cluster_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.settings import PREFECT_API_URL, temporary_settings

    *setup, worker_line = readme_cluster_commands()
    assert [line.split()[:3] for line in setup] == [
        ["prefect", "work-pool", "create"],
        ["prefect", "work-pool", "create"],
        ["prefect", "deploy", "--all"],
    ]
    assert "prefect worker start --pool uib-process" in worker_line
    for line in setup:
        result = shell(line, cluster_env)
        assert result.returncode == 0, f"{line}\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"

    log = Path(cluster_env["UIB_HOME"]).parent / "worker.log"
    api = {PREFECT_API_URL: cluster_env["PREFECT_API_URL"]}
    with temporary_settings(api), get_client(sync_client=True) as client:
        scheduled = check_deployed(client)["unlearn-scheduled/unlearn-scheduled"]
        with started(worker_line, cluster_env, log) as worker:
            run = client.create_flow_run_from_deployment(scheduled.id)

            def finished():
                assert worker.poll() is None, log.read_text()[-3000:]
                state = client.read_flow_run(run.id).state
                return state if state.is_final() else None

            state = wait_until(finished, 240, "the worker to run the flow", log, interval=1)
        assert state.is_completed(), log.read_text()[-3000:]
        assert client.read_flow_run(run.id).work_pool_name == "uib-process"
        [artifact] = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
        )
        assert "- no pending request" in artifact.data  # nothing trained yet: nothing to do
