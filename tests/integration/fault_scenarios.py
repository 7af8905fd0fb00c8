"""SIGKILL at the task boundaries of one request, then the same request again: done once.

The test below is collected in `test_pipeline.py` (imported there), so it runs on that module's
one trained original instead of training its own. It drives the real CLI as a subprocess with
the test hook `UIB_FAULT_AT` (`tasks.faults`), which SIGKILLs the process at a named point, and
chains the kills on one state folder: each run after a kill must first repair what the killed
one left and then go on to the next point. The last run is the scheduled flow's, which must
take the orphaned `running` request over by itself. At the end the request is done exactly once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
from mlflow import MlflowClient

from tasks.data_switch import read_journal
from tasks.data_versioning import DataRepo
from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

REQUEST = ["request", "delete", "--where", "source=faulty", "--request-id", "remove-faulty"]


def uib(settings: Settings, *args: str, fault: str | None, api_url: str | None) -> tuple:
    """Run the CLI; (exit code, stdout, stderr, pids of the children it had while running)."""
    env = {
        **os.environ,
        "UIB_HOME": str(settings.home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PREFECT_API_URL", None)
    env.pop("UIB_FAULT_AT", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    if fault:
        env["UIB_FAULT_AT"] = fault
    command = [str(Path(sys.executable).parent / "uib"), *args]
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    children: set[int] = set()
    parent = psutil.Process(process.pid)
    while process.poll() is None:  # note the temporary Prefect server while it is there
        with contextlib.suppress(psutil.NoSuchProcess):
            children |= {c.pid for c in parent.children(recursive=True)}
        time.sleep(0.2)
    out, err = process.communicate()
    return process.returncode, out, err, children


def running_runs(settings: Settings) -> list[str]:
    client = MlflowClient(settings.tracking_uri)
    experiment = client.get_experiment_by_name(settings.experiment)
    runs = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
    return [r.info.run_id for r in runs]


def versions(settings: Settings) -> list[str]:
    found = MlflowClient(settings.tracking_uri).search_model_versions(
        f"name = '{settings.model_name}'"
    )
    return sorted(str(v.version) for v in found)


def champion_version(settings: Settings) -> str:
    client = MlflowClient(settings.tracking_uri)
    return str(client.get_model_version_by_alias(settings.model_name, "champion").version)


def assert_killed(result: tuple, point: str) -> None:
    code, _, err, _ = result
    assert code == -signal.SIGKILL, f"{point}: exit {code}\n{err[-3000:]}"


def assert_orphaned(settings: Settings) -> None:
    """The killed run left the request `running`, and the ledger knows its owner is gone."""
    ledger = RequestLedger(settings.ledger_path)
    record = ledger.get("remove-faulty")
    assert record.state == RequestState.RUNNING and record.owner is not None
    assert "is gone" in (ledger.owner_gone(record) or "")


def test_a_request_killed_at_every_boundary_finishes_exactly_once(home, prefect_harness):
    from prefect.settings import PREFECT_API_URL
    from test_erasure import files_holding, stored_images
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.scheduled import unlearn_scheduled_flow
    from tasks.registry import PIPELINE_CHAMPION, client_for
    from uib.data import load_dataset
    from uib.scenarios import build_scenario

    api = PREFECT_API_URL.value()
    repo = DataRepo(home.data_repo)
    original = repo.current()

    # 1. after resolve, with the CLI's own temporary Prefect server: the server dies with it
    killed = uib(home, *REQUEST, "--run-here", fault="after-resolve", api_url=None)
    assert_killed(killed, "after-resolve")
    assert killed[3], "the temporary Prefect server was never seen"
    deadline = time.time() + 10
    while time.time() < deadline and any(psutil.pid_exists(p) for p in killed[3]):
        time.sleep(0.2)
    left = [p for p in killed[3] if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not left, f"the killed CLI's children survive it: {left}"
    assert_orphaned(home)
    assert repo.current() == original

    # 2. inside data versioning: the next tree switched in as data/, not committed
    assert_killed(uib(home, *REQUEST, "--run-here", fault="versioning-switched", api_url=api), "v")
    assert repo.rev_parse("HEAD") == original.git_rev and read_journal(repo.root) is not None
    assert (repo.load_manifest()["source"] == "faulty").sum() == 123  # HEAD's, not data/'s
    assert_orphaned(home)

    # 3. after versioning: one data commit, the work tree clean and nothing of the switch left
    assert_killed(uib(home, *REQUEST, "--run-here", fault="after-versioning", api_url=api), "a")
    versioned = repo.current()
    assert repo.history() == [versioned.git_rev, original.git_rev]
    assert versioned.n_train == original.n_train - 123
    assert not [p.name for p in repo.root.iterdir() if p.name.startswith(".data.")]
    status = subprocess.run(
        ["git", "-C", str(repo.root), "status", "--porcelain"], text=True, capture_output=True
    )
    assert status.stdout == ""

    # the CLI sends a request whose run died again (it used to answer "running" for good)
    sent = CliRunner().invoke(app, REQUEST, env={"UIB_HOME": str(home.home)})
    assert sent.exit_code == 0, sent.output
    reply = json.loads(sent.stdout.splitlines()[-1])
    assert reply["state"] == "pending" and reply["event_id"] and not reply["duplicate"]

    # 4. registered, inside its MLflow run, before the alias moves: the run is left RUNNING
    assert_killed(uib(home, *REQUEST, "--run-here", fault="registered", api_url=api), "r")
    assert versions(home) == ["1", "2"] and champion_version(home) == "1"
    [orphan_run] = running_runs(home)
    assert_orphaned(home)

    # 5. inside erasure, after the purge and before the audit record: the rerun closed the
    #    orphaned MLflow run and promoted the registered candidate (no second version)
    assert_killed(uib(home, *REQUEST, "--run-here", fault="erasing", api_url=api), "e")
    client: MlflowClient = client_for(home)
    assert client.get_run(orphan_run).info.status == "KILLED"
    assert champion_version(home) == "2" and versions(home) == ["1", "2"]
    assert not (home.audit_dir / "remove-faulty.json").exists()
    assert_orphaned(home)

    # 6. the scheduled flow takes the orphaned request over and finishes it
    report = unlearn_scheduled_flow(home.overrides())
    assert report["recovered"] == ["remove-faulty"]

    # exactly once: one data commit, one model version, the alias moved once, one audit record
    record = RequestLedger(home.ledger_path).get("remove-faulty")
    assert record.state == RequestState.APPROVED and record.model_version == "2", record.message
    assert repo.history() == [versioned.git_rev, original.git_rev]
    assert repo.find_request("remove-faulty") == versioned.git_rev
    assert versions(home) == ["1", "2"] and champion_version(home) == "2"
    assert client.get_registered_model(home.model_name).tags[PIPELINE_CHAMPION] == "2"
    assert [p.name for p in home.audit_dir.iterdir()] == ["remove-faulty.json"]
    audit = json.loads((home.audit_dir / "remove-faulty.json").read_text())
    assert audit["n_forgotten"] == 123 and audit["model_version_after"] == "2"
    assert audit["model_outcome"] == "approved" and audit["purged_object_count"] > 0
    assert running_runs(home) == []
    scenario = build_scenario(load_dataset("digits"), home.scenario)
    forgotten = stored_images(scenario.dataset.train.select(scenario.forget_ids))
    kept = set(stored_images(scenario.dataset.train.drop(scenario.forget_ids)))
    roots = (repo.root / ".dvc" / "cache", Path(home.remote_url), home.stage_dir("remove-faulty"))
    assert files_holding([i for i in forgotten if i not in kept], *roots) == {}


def test_a_failing_dvc_remote_is_retried_then_fails_leaving_the_version_as_it_was(
    data_repo, patch_bias, tmp_path, prefect_harness
):
    """`version_forget_set` retries a failed push (a `StorageError`) three times and then
    fails with it, the stored version untouched; an unknown id is refused on the first try.
    The backoff (2, 4, 8 s) is set to 0 here; the retries and their condition are the task's."""
    from prefect import get_client

    from tasks.data_versioning import StorageError, version_forget_set

    repo, version = data_repo
    eager = version_forget_set.with_options(retry_delay_seconds=[0, 0, 0])
    local_config = repo.root / ".dvc" / "config.local"
    saved = local_config.read_text()
    local_config.write_text(saved + "['remote \"storage\"']\n    url = /proc/uib-no-such-remote\n")
    try:
        pushed = eager(repo.root, "req-1", patch_bias.forget_ids[:3], tmp_path, return_state=True)
    finally:
        local_config.write_text(saved)
    unknown = eager(repo.root, "req-2", ["digits-train-99999"], tmp_path, return_state=True)
    with get_client(sync_client=True) as client:
        tries = {
            name: client.read_task_run(state.state_details.task_run_id).run_count
            for name, state in (("push", pushed), ("unknown", unknown))
        }
    assert tries == {"push": 4, "unknown": 1}
    assert isinstance(pushed.result(raise_on_failure=False), StorageError)
    assert repo.current() == version and repo.history() == [version.git_rev]
    assert read_journal(repo.root) is None and not (tmp_path / "forget.npz").exists()


def test_a_held_request_killed_inside_its_erasure_is_held_again_not_refused(home, prefect_harness):
    """Every candidate fails a gate (`hold`), and the run is killed inside the erasure, after
    the purge: the rerun cannot resolve the request on the purged version any more. It finishes
    the erasure from the verdict the killed run wrote and holds the request (it used to refuse
    it, with no audit record)."""
    from prefect.settings import PREFECT_API_URL

    held = ["request", "delete", "--ids", "digits-train-00003", "--request-id", "held-kill"]
    impossible = {"UIB_ON_GATE_FAILURE": "hold", "UIB_GATES__MAX_TA_DROP_PP": "-50"}
    api = PREFECT_API_URL.value()
    with_gates = Settings(home=home.home)
    os.environ.update(impossible)
    try:
        killed = uib(with_gates, *held, "--run-here", fault="erasing", api_url=api)
        assert_killed(killed, "erasing")
        assert not (home.audit_dir / "held-kill.json").exists()
        assert (home.stage_dir("held-kill") / "erasing.json").exists()
        code, out, err, _ = uib(with_gates, *held, "--run-here", fault=None, api_url=api)
    finally:
        for key in impossible:
            os.environ.pop(key, None)
    assert code == 1 and "held for review" in err, err[-3000:]
    record = RequestLedger(home.ledger_path).get("held-kill")
    assert record.state == RequestState.HELD and record.model_version == "2", record.message
    assert record.ids_hashed and "digits-train-00003" not in record.request.sample_ids
    assert versions(home) == ["1", "2"] and champion_version(home) == "1"
    audit = json.loads((home.audit_dir / "held-kill.json").read_text())
    assert audit["model_outcome"] == "held" and audit["n_forgotten"] == 1
    assert audit["model_version_after"] == "2"
    assert not home.stage_dir("held-kill").exists() and running_runs(home) == []
