"""Deployments that run themselves: a real Prefect server, `uib serve`, and deletion events.

One module-wide setup: a `prefect server start` process, and `uib serve` serving every
deployment against it from a state folder of its own, with the unlearning step handed to its own
deployment (`UIB_GPU_DEPLOYMENT=unlearn-step/local`) as it would be to a GPU pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest
from mlflow import MlflowClient
from prefect_server import BIN, prefect_server, quiet_prefect_env, running, wait_until

from tasks.events import emit_deletion_request
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REQUEST = DeletionRequest(
    request_id="on-event-faulty",
    where={"source": "faulty"},
    reason="faulty source, reported by the data owner",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """(settings, env): a Prefect server and `uib serve` on one state folder, where the `train`
    deployment has registered the original."""
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    root = tmp_path_factory.mktemp("served")
    settings = Settings(home=root / "uib")
    with prefect_server(root) as api_url, pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        env = {
            **quiet_prefect_env(root / "prefect-home"),
            "PREFECT_API_URL": api_url,
            "UIB_HOME": str(settings.home),
            "UIB_GPU_DEPLOYMENT": "unlearn-step/local",
            "PREFECT_RUNNER_POLL_FREQUENCY": "1",
        }
        log = root / "serve.log"
        with (
            running([str(BIN / "uib"), "serve"], env, log) as serve,
            temporary_settings({PREFECT_API_URL: api_url}),
        ):
            wait_until(lambda: deployment_ids(serve, log), 120, "`uib serve`'s deployments", log)
            trained = run_deployment("train/train", timeout=600)
            assert trained.state.is_completed(), f"{trained.state.message}\n{log.read_text()}"
            yield settings, env


def deployment_ids(serve, log) -> dict[str, str]:
    from prefect.client.orchestration import get_client

    if serve.poll() is not None:
        raise AssertionError(f"uib serve exited:\n{log.read_text()[-3000:]}")
    with get_client(sync_client=True) as client:
        names = {
            f"{flow.name}/{d.name}": str(d.id)
            for d in client.read_deployments()
            for flow in [client.read_flow(d.flow_id)]
        }
    return names if len(names) == 4 else {}


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        flow_name, name = deployment.split("/")
        deployment_id = client.read_deployment_by_name(f"{flow_name}/{name}").id
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


def uib(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "uib"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def ledger_state(settings: Settings, request_id: str) -> RequestState | None:
    try:
        return RequestLedger(settings.ledger_path).get(request_id).state
    except KeyError:
        return None


def test_a_deletion_event_runs_the_request_once(served):
    settings, env = served
    client = MlflowClient(tracking_uri=settings.tracking_uri)
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "1"

    submitted = uib(
        env,
        "request",
        "delete",
        "--where",
        "source=faulty",
        "--request-id",
        REQUEST.request_id,
        "--reason",
        REQUEST.reason,
    )
    assert submitted.returncode == 0, submitted.stderr
    answer = json.loads(submitted.stdout)
    assert answer["request_id"] == REQUEST.request_id and answer["state"] == "pending"
    assert answer["event_id"] and not answer["duplicate"]

    final = wait_until(
        lambda: (
            ledger_state(settings, REQUEST.request_id)
            in (RequestState.APPROVED, RequestState.REJECTED, RequestState.FAILED)
            and RequestLedger(settings.ledger_path).get(REQUEST.request_id)
        ),
        420,
        "the event-triggered run to finish",
        interval=2,
    )
    assert final.state == RequestState.APPROVED, final.message
    assert final.model_version == "2"
    assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == "2"
    listed = json.loads(uib(env, "requests", "--json").stdout)
    assert [(r["request_id"], r["state"], r["model_version"]) for r in listed] == [
        (REQUEST.request_id, "approved", "2")
    ]

    [run] = runs_of("unlearn/unlearn-on-event")
    assert run.state.is_completed() and str(run.id) == final.flow_run_id
    # the CLI recorded the request first: the event and the parameter name it by reference
    assert run.parameters["request"] == {"request_id": REQUEST.request_id, "in_ledger": True}
    [step] = runs_of("unlearn-step/local")
    assert step.state.is_completed() and step.parameters["model_version"] == "1"

    # The same event again (a producer retrying): the server drops it; no second run.
    emit_deletion_request(REQUEST, by_reference=True)
    again = uib(
        env,
        "request",
        "delete",
        "--where",
        "source=faulty",
        "--request-id",
        REQUEST.request_id,
        "--reason",
        REQUEST.reason,
    )
    assert again.returncode == 0, again.stderr
    assert json.loads(again.stdout) == {
        "request_id": REQUEST.request_id,
        "state": "approved",
        "event_id": None,
        "duplicate": True,
    }
    time.sleep(8)
    assert len(runs_of("unlearn/unlearn-on-event")) == 1

    # The same request, whole, under a new event id (a producer that does not write the
    # ledger): a run starts, finds it approved, changes nothing.
    emit_deletion_request(REQUEST, attempt="a second producer")
    second = wait_until(
        lambda: [
            r for r in runs_of("unlearn/unlearn-on-event") if r.id != run.id and r.state.is_final()
        ],
        180,
        "the second event's run",
        interval=2,
    )[0]
    assert second.state.is_completed(), second.state.message
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert RequestLedger(settings.ledger_path).get(REQUEST.request_id).flow_run_id == str(run.id)


def test_bad_requests_are_refused_before_any_event(served):
    settings, env = served
    unknown = uib(
        env, "request", "delete", "--ids", "digits-train-99999", "--request-id", "unknown-ids"
    )
    assert unknown.returncode == 2 and "digits-train-99999" in unknown.stderr
    assert ledger_state(settings, "unknown-ids") is None
    malformed = uib(env, "request", "delete", "--request-id", "no-selection")
    assert malformed.returncode == 2 and "exactly one of sample_ids or where" in malformed.stderr
