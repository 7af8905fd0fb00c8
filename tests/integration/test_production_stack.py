"""The production stack as `infra/compose.yaml` defines it, started here without Docker:
each service's own command, flags and environment as a local process, reached by its service
name (`compose_stack.py`). The README's production commands run through it, as a worker
container runs them; then the stores are read, and the MLflow UI is read in a browser."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from compose_stack import ADDRESSES, compose_stack, env_file, resolving
from mlflow import MlflowClient
from prefect_server import wait_until

from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
RUN_IN_WORKER = ["docker", "compose", "-f", "infra/compose.yaml", "run", "--rm", "worker"]
VARIABLES = env_file(  # what a user puts in infra/.env
    MINIO_ROOT_USER="uib-store",
    MLFLOW_ADMIN_USER="uib-admin",
    UIB_GPU_DEPLOYMENT="unlearn-step/local",  # the step as its own deployment, as on a GPU pool
)
MLFLOW_URI = "http://mlflow:5000"  # the workers' MLFLOW_TRACKING_URI, Host header included
HELD_ID = "servers-held"


@pytest.fixture(scope="module")
def mlflow_uri() -> str:
    return MLFLOW_URI


@pytest.fixture(scope="module")
def mlflow_login() -> tuple[str, str]:
    return VARIABLES["MLFLOW_ADMIN_USER"], VARIABLES["MLFLOW_ADMIN_PASSWORD"]


@pytest.fixture(scope="module")
def held_id() -> str:
    return HELD_ID


def readme_production_commands() -> list[list[str]]:
    text = (REPO / "README.md").read_text()
    block = text.split("## Running in production", 1)[1].split("```bash", 1)[1].split("```")[0]
    return [shlex.split(line, comments=True) for line in block.strip().splitlines()]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with compose_stack(tmp_path_factory.mktemp("compose"), VARIABLES) as running_stack:
        yield running_stack


@pytest.fixture(scope="module")
def mlflow_client(stack):
    """A client of the MLflow service as a worker reaches it: by name, as the admin user."""
    with resolving(stack.hosts), pytest.MonkeyPatch.context() as patch:
        patch.setenv("MLFLOW_TRACKING_USERNAME", VARIABLES["MLFLOW_ADMIN_USER"])
        patch.setenv("MLFLOW_TRACKING_PASSWORD", VARIABLES["MLFLOW_ADMIN_PASSWORD"])
        yield MlflowClient(tracking_uri=MLFLOW_URI)


@pytest.fixture(scope="module")
def prefect_api(stack):
    """This process a client of the Prefect service, as the worker is."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL, temporary_settings

    api = {
        PREFECT_API_URL: stack.worker_env["PREFECT_API_URL"],
        PREFECT_API_AUTH_STRING: stack.worker_env["PREFECT_API_AUTH_STRING"],
    }
    with resolving(stack.hosts), temporary_settings(api):
        yield


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with get_client(sync_client=True) as client:
        deployment_id = client.read_deployment_by_name(deployment).id
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id]))
        )


@pytest.fixture(scope="module")
def approved(stack, mlflow_client, prefect_api):
    """(settings, outcome, pushed): the README's production commands run in order through the
    stack — `train`, then the request sent by event and run by the served worker, then
    `requests` once the ledger says it is done."""
    copy, up, *in_worker = readme_production_commands()
    assert copy == ["cp", "infra/.env.example", "infra/.env"]
    assert up[:6] == ["docker", "compose", "-f", "infra/compose.yaml", "--profile", "cpu"]
    assert all(command[: len(RUN_IN_WORKER)] == RUN_IN_WORKER for command in in_worker)
    (train, delete, listing) = (command[len(RUN_IN_WORKER) :] for command in in_worker)
    settings = Settings(home=Path(stack.worker_env["UIB_HOME"]))

    result = stack.uib(*train)
    assert result.returncode == 0, stack.failure("train", result)
    pushed = stack.s3.keys("dvc", "uib/")
    result = stack.uib(*delete)
    assert result.returncode == 0, stack.failure("request delete", result)
    request_id = json.loads(result.stdout.strip().splitlines()[-1])["request_id"]
    ledger = RequestLedger(settings.ledger_path)
    wait_until(
        lambda: (
            ledger.get(request_id).state
            in {RequestState.APPROVED, RequestState.FAILED, RequestState.REJECTED}
        ),
        600,
        f"request {request_id} to finish in the served worker",
        stack.logs["worker"],
        interval=1,
    )
    record = ledger.get(request_id)
    assert record.state == RequestState.APPROVED, stack.failure("the served run", record)
    result = stack.uib(*listing, "--json")
    assert result.returncode == 0, stack.failure("requests", result)
    [listed] = json.loads(result.stdout)
    assert listed["request_id"] == request_id and listed["state"] == "approved"

    champion = mlflow_client.get_model_version_by_alias(settings.model_name, "champion")
    report = json.loads(
        Path(mlflow_client.download_artifacts(champion.run_id, "gate_report.json")).read_text()
    )
    outcome = {
        "request_id": request_id,
        "model_version": champion.version,
        "gates": report,
        "audit_path": str(settings.home / "audit" / f"{request_id}.json"),
    }
    yield settings, outcome, pushed


@pytest.fixture(scope="module")
def held(stack, approved) -> str:
    """A candidate the gates reject beside the champion (gates no model passes, `hold`), run in
    a worker container with `--run-here`: its version. Made after the test below counts the
    registry's versions."""
    settings, _, _ = approved
    result = stack.uib(
        "request", "delete", "--ids", "digits-train-00003", "--request-id", HELD_ID,
        "--reason", "a person asked", "--run-here",
        env={"UIB_ON_GATE_FAILURE": "hold", "UIB_GATES__MAX_TA_DROP_PP": "-50"},
    )  # fmt: skip
    assert result.returncode == 1, stack.failure("the held request", result)
    return RequestLedger(settings.ledger_path).get(HELD_ID).model_version


def test_the_readme_production_commands_run_on_the_compose_stack(
    approved, stack, mlflow_client, prefect_api
):
    import psycopg2

    settings, outcome, pushed = approved
    request_id = outcome["request_id"]
    assert pushed, "the data version was not pushed to the S3 remote"
    assert outcome["model_version"] == "2"

    # the event started one run, which names the request by reference, and the run handed the
    # unlearning step to its own deployment
    [run] = runs_of("unlearn/unlearn-on-event")
    ledger = RequestLedger(settings.ledger_path)
    assert run.state.is_completed() and str(run.id) == ledger.get(request_id).flow_run_id
    assert run.parameters["request"] == {"request_id": request_id, "in_ledger": True}
    [step] = runs_of("unlearn-step/local")
    assert step.state.is_completed() and step.parameters["model_version"] == "1"

    champion = mlflow_client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == "2" and champion.tags["request_id"] == request_id
    run_keys = stack.s3.keys("mlflow", "artifacts/")
    run_files = [k for k in run_keys if f"/{champion.run_id}/" in k]
    names = {k.rsplit("/", 1)[-1] for k in run_files}
    assert "gate_report.json" in names, run_files
    assert any(k.endswith(".png") for k in run_files)
    assert any("/audit/" in k for k in run_files)
    assert any("MLmodel" in k for k in run_keys)

    audit = json.loads(Path(outcome["audit_path"]).read_text())
    purged = audit["purged_objects"]
    assert purged
    remaining = stack.s3.keys("dvc", "uib/")
    stored = {k.split("/")[-2] + k.split("/")[-1] for k in remaining}
    assert not set(purged) & stored, "erased objects are still on the S3 remote"
    assert len(remaining) >= len(pushed) - len(purged)

    with (
        psycopg2.connect(
            host=ADDRESSES["postgres"],
            port=5432,
            user="uib",
            password=VARIABLES["POSTGRES_PASSWORD"],
            dbname="mlflow",
        ) as connection,
        connection.cursor() as cursor,
    ):
        cursor.execute(
            "SELECT version FROM model_versions WHERE name = %s ORDER BY version",
            (settings.model_name,),
        )
        assert [row[0] for row in cursor.fetchall()] == [1, 2]
        cursor.execute(
            "SELECT value FROM model_version_tags WHERE name = %s AND version = 2 "
            "AND key = 'request_id'",
            (settings.model_name,),
        )
        assert cursor.fetchone() == (request_id,)


def test_a_retried_event_is_dropped_and_a_whole_request_changes_nothing(
    approved, stack, mlflow_client, prefect_api
):
    """A producer retrying the CLI's event: the server drops it. The same request sent whole
    under a new event id (a producer that does not write the ledger): a run starts, finds it
    approved, and changes nothing."""
    from tasks.events import emit_deletion_request

    settings, outcome, _ = approved
    request = RequestLedger(settings.ledger_path).get(outcome["request_id"]).request
    [first] = runs_of("unlearn/unlearn-on-event")
    emit_deletion_request(request, by_reference=True)
    again = stack.uib(*approved_delete_arguments(), "--request-id", request.request_id)
    assert again.returncode == 0, stack.failure("the re-send", again)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == {
        "request_id": request.request_id,
        "state": "approved",
        "event_id": None,
        "duplicate": True,
    }

    emit_deletion_request(request, attempt="a second producer")
    [second] = wait_until(
        lambda: [r for r in runs_of("unlearn/unlearn-on-event") if r.id != first.id
                 and r.state.is_final()],
        180,
        "the second producer's run to finish",
        stack.logs["worker"],
        interval=1,
    )  # fmt: skip
    assert second.state.is_completed(), second.state.message
    assert len(runs_of("unlearn/unlearn-on-event")) == 2  # the retried event started none
    versions = mlflow_client.search_model_versions(f"name = '{settings.model_name}'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    ledger = RequestLedger(settings.ledger_path).get(request.request_id)
    assert ledger.state == RequestState.APPROVED and ledger.flow_run_id == str(first.id)


def approved_delete_arguments() -> list[str]:
    *_, delete, _ = readme_production_commands()
    return delete[len(RUN_IN_WORKER) :]


def test_bad_requests_are_refused_before_any_event(approved, stack):
    settings, _, _ = approved
    ledger = RequestLedger(settings.ledger_path)
    unknown = stack.uib(
        "request", "delete", "--ids", "digits-train-99999", "--request-id", "unknown-ids"
    )
    assert unknown.returncode == 2 and "digits-train-99999" in unknown.stderr
    malformed = stack.uib("request", "delete", "--request-id", "no-selection")
    assert malformed.returncode == 2 and "exactly one of sample_ids or where" in malformed.stderr
    for request_id in ("unknown-ids", "no-selection"):
        with pytest.raises(KeyError):
            ledger.get(request_id)


def test_the_stack_is_not_open(stack):
    """Without credentials Prefect's API and MLflow answer 401; a Host header MLflow does not
    list gets 403; the deployments the worker serves were registered with credentials."""
    import httpx

    deployments = "http://prefect-server:4200/api/deployments/filter"
    experiments = f"{MLFLOW_URI}/api/2.0/mlflow/experiments/search"
    with resolving(stack.hosts):
        assert httpx.post(deployments, timeout=10).status_code == 401
        assert httpx.get(experiments, timeout=10).status_code == 401
        foreign = httpx.get(
            experiments,
            headers={"Host": "attacker.example:5000"},
            auth=(VARIABLES["MLFLOW_ADMIN_USER"], VARIABLES["MLFLOW_ADMIN_PASSWORD"]),
            timeout=10,
        )
        assert foreign.status_code == 403, foreign.text
        user, password = VARIABLES["PREFECT_AUTH_STRING"].split(":", 1)
        served = httpx.post(deployments, auth=(user, password), timeout=10)
        assert served.status_code == 200
        assert {d["name"] for d in served.json()} >= {"unlearn-on-event", "unlearn-scheduled"}


# The MLflow UI, read after the tests above (in this order: `held` adds a version): collected
# here to run on this module's stack.
from mlflow_ui_checks import (  # noqa: E402, F401
    browser,
    champion_page,
    new_page,
    shots,
    test_a_rejected_version_is_marked_as_rejected_and_never_champion,
    test_its_source_run_holds_the_gate_report_and_the_plots,
    test_the_champion_version_page_reads_as_a_decision,
)
