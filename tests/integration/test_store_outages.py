"""MLflow and the S3 DVC remote failing under a real request, sent by the real CLI.

The stores are real processes — an `mlflow server` (SQLite, its artifacts in S3) and moto's S3
server (the DVC remote and MLflow's artifact store) — each reached only through a
`flaky_proxy.FlakyProxy`, which a test switches to refuse connections or to answer 500, from a
given request on. `uib request delete --run-here` runs as a subprocess against them, with the
module's Prefect server, so its retries (`tasks.retrying`) are the product's own; only their
backoff is shortened (`UIB_RETRY_BACKOFF_S=0.5`: 0.5, 1, 2 s) and the clients' own retries cut
to one (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `AWS_MAX_ATTEMPTS`; MLflow's default of 7 would ride
out any outage of a test's length by itself, in about four minutes per call), so what is
tested is what the pipeline does once a client gives up.

The original is trained once for the module by the real `train` flow, through the proxies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

import pytest
from flaky_proxy import Fault, FlakyProxy
from mlflow import MlflowClient
from s3_server import CREDENTIALS, S3Server
from stores import mlflow_server

from tasks.data_switch import read_journal
from tasks.data_versioning import DataRepo
from tasks.mlflow_runs import CLOSED_BY
from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DVC_BUCKET, ARTIFACT_BUCKET = "outages-dvc", "outages-mlflow"
AGAIN = "; send the request again to retry it"


@dataclass
class Stack:
    settings: Settings
    s3: FlakyProxy
    mlflow: FlakyProxy
    s3_server: S3Server
    env: dict[str, str]

    def client(self) -> MlflowClient:
        return MlflowClient(self.mlflow.url)

    def repo(self) -> DataRepo:
        return DataRepo(self.settings.data_repo)

    def versions(self) -> list[str]:
        found = self.client().search_model_versions(f"name = '{self.settings.model_name}'")
        return sorted((str(v.version) for v in found), key=int)

    def champion(self) -> str:
        client = self.client()
        return str(client.get_model_version_by_alias(self.settings.model_name, "champion").version)

    def runs(self, request_id: str) -> list:
        client = self.client()
        experiment = client.get_experiment_by_name(self.settings.experiment)
        return client.search_runs(
            [experiment.experiment_id], f"attributes.run_name = '{request_id}'"
        )

    def running(self) -> list[str]:
        client = self.client()
        experiment = client.get_experiment_by_name(self.settings.experiment)
        found = client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'")
        return [r.info.run_name for r in found]

    def remote_objects(self) -> set[str]:
        """The md5s the DVC remote holds, read from moto itself (not through the proxy)."""
        return {
            k.rsplit("/", 2)[-2] + k.rsplit("/", 1)[-1] for k in self.s3_server.keys(DVC_BUCKET)
        }


@pytest.fixture(scope="module")
def stack(s3_server, request, tmp_path_factory):
    """The stores behind their proxies, and a state folder where `train` registered v1.

    The MLflow server boots while the module's Prefect server does (each takes 10-20 s)."""
    import mlflow
    from prefect.settings import PREFECT_API_URL

    from flows.train import train_flow

    root = tmp_path_factory.mktemp("outages")
    for bucket in (DVC_BUCKET, ARTIFACT_BUCKET):
        s3_server.create_bucket(bucket)
    with FlakyProxy(s3_server.endpoint_url, "s3") as s3, ExitStack() as stores:
        server_env = {**CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3.url, "AWS_MAX_ATTEMPTS": "2"}
        artifacts = f"s3://{ARTIFACT_BUCKET}/artifacts"
        booting = mlflow_server(f"sqlite:///{root}/mlflow.db", root, artifacts, server_env)
        with ThreadPoolExecutor(1) as pool:
            booted = pool.submit(booting.__enter__)
            try:
                request.getfixturevalue("prefect_harness")
            finally:
                uri = booted.result()
                stores.push(booting.__exit__)
        mlflow_proxy = stores.enter_context(FlakyProxy(uri, "mlflow"))
        settings = Settings(
            home=root / "uib", dvc_remote=f"s3://{DVC_BUCKET}/uib", s3_endpoint_url=s3.url
        )
        env = {
            **CREDENTIALS,
            "UIB_HOME": str(settings.home),
            "UIB_DVC_REMOTE": settings.remote_url,
            "UIB_S3_ENDPOINT_URL": s3.url,
            "MLFLOW_TRACKING_URI": mlflow_proxy.url,
            "PREFECT_API_URL": PREFECT_API_URL.value(),
            "UIB_RETRY_BACKOFF_S": "0.5",
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1",
            "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
            "AWS_MAX_ATTEMPTS": "2",
        }
        before = mlflow.get_tracking_uri()
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setenv("MLFLOW_TRACKING_URI", mlflow_proxy.url)
                assert train_flow(settings.overrides()) == {"model_version": "1", "trained": True}
        finally:  # this process's MLflow must not stay pointed at a server that goes away
            mlflow.set_tracking_uri(before)
        yield Stack(settings, s3, mlflow_proxy, s3_server, env)


def uib(stack: Stack, *args: str) -> tuple[int, str, str]:
    """The CLI as a person runs it: (exit code, stdout, stderr)."""
    env = {**os.environ, **stack.env, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    env.pop("UIB_FAULT_AT", None)
    done = subprocess.run(
        [str(Path(sys.executable).parent / "uib"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, done.stdout, done.stderr


def delete(stack: Stack, request_id: str, sample_id: str) -> tuple[int, str, str]:
    return uib(
        stack, "request", "delete", "--ids", sample_id, "--request-id", request_id, "--run-here"
    )


def reason(err: str, request_id: str) -> str:
    """The one line the CLI prints for a request that is not approved."""
    prefix = f"request {request_id} not approved: "
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    return lines[0].removeprefix(prefix)


def tries(flow_run_id: str) -> dict[str, int]:
    """{task name: how many times it ran} in one flow run, from the Prefect API."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[UUID(flow_run_id)]))
        )
    found: dict[str, int] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]
        found[name] = max(found.get(name, 0), run.run_count)
    return found


def test_500s_for_a_while_are_retried_and_the_request_applied_once(stack):
    """Each network step meets a short run of 500s that outlasts the clients' own retries: the
    DVC push (S3), the registration (MLflow itself, then MLflow's artifact store in S3) and
    the erasure of the remote objects (S3, from just after its first delete). Each step is
    tried again and the request is approved once.

    Before the fixes: DVC's `exists` reads any error as "not there", so the erasure skipped the
    forgotten object whose check met a 500 and then failed the request, not retried, with
    `RuntimeError: objects still stored after deletion: […]`, the champion already moved (had
    that last check met a 500 too, the object would have stayed on the remote, recorded as
    purged); and the registration's first try, failed by MLflow while its run was open, left
    that run `RUNNING` for good although the request was approved."""
    request_id = "flaky-stores"
    repo = stack.repo()
    before, versions = repo.current(), stack.versions()
    listing_before = set(repo.dir_listing("HEAD").values())
    assert listing_before <= stack.remote_objects()
    stack.s3.log.clear()
    stack.mlflow.log.clear()
    stack.s3.plan(
        Fault("status", seconds=1.5, at=f"/{DVC_BUCKET}/"),  # the push
        Fault("status", count=4, at=f"PUT /{ARTIFACT_BUCKET}/"),  # MLflow's artifact store
        Fault("status", seconds=1.5, after=f"POST /{DVC_BUCKET}?delete"),  # the erasure
    )
    stack.mlflow.plan(Fault("status", count=4, at="PUT /api/2.0/mlflow-artifacts/artifacts/"))
    try:
        code, out, err = delete(stack, request_id, "digits-train-00003")
    finally:
        stack.s3.pass_through()
        stack.mlflow.pass_through()
    assert code == 0, err[-3000:]
    reply = json.loads(out.splitlines()[-1])
    new = str(int(versions[-1]) + 1)
    assert reply["state"] == "approved" and reply["model_version"] == new

    s3_faults, mlflow_faults = stack.s3.faulted(), stack.mlflow.faulted()
    assert f"/{DVC_BUCKET}/uib/files/" in s3_faults[0], s3_faults
    assert any(f"PUT /{ARTIFACT_BUCKET}/" in line for line in s3_faults), s3_faults
    deletes = [i for i, (line, _) in enumerate(stack.s3.log) if f"/{DVC_BUCKET}?delete" in line]
    assert any(got != "forwarded" for _, got in stack.s3.log[deletes[0] + 1 :]), s3_faults
    assert mlflow_faults and "mlflow-artifacts" in mlflow_faults[0], mlflow_faults
    record = RequestLedger(stack.settings.ledger_path).get(request_id)
    assert record.state == RequestState.APPROVED and record.model_version == new, record.message

    # once: one data commit, one model version, the alias moved to it, one audit record
    after = repo.current()
    assert repo.history()[:2] == [after.git_rev, before.git_rev]
    assert repo.find_request(request_id) == after.git_rev
    assert stack.versions() == [*versions, new] and stack.champion() == new
    audit = json.loads((stack.settings.audit_dir / f"{request_id}.json").read_text())
    assert audit["n_forgotten"] == 1 and audit["model_version_after"] == new
    purged = listing_before - set(repo.dir_listing("HEAD").values())
    assert purged and audit["purged_object_count"] == len(purged)
    assert not purged & stack.remote_objects(), "a forgotten object is still on the remote"

    # the run MLflow failed to end was closed by the next try, not left RUNNING
    runs = {r.info.run_id: r for r in stack.runs(request_id)}
    closed = [r for r in runs.values() if "register-candidate" in r.data.tags.get(CLOSED_BY, "")]
    assert [r.info.status for r in closed] == ["FAILED"], runs
    assert stack.running() == []

    # each step met its fault and was tried again
    ran = tries(record.flow_run_id)
    assert ran["version-forget-set"] > 1 and ran["erase-forgotten"] > 1, ran
    assert ran["register-candidate"] > 2, ran  # MLflow's 500s, then its artifact store's


def test_a_store_away_past_the_retries_fails_the_request_and_a_resend_applies_it_once(stack):
    """The same request meets, run after run: MLflow unreachable from the start, the S3 remote
    unreachable at the push, MLflow unreachable from the first upload of its registration.
    Each run ends `failed`, exit 1, with one line naming the store and saying to send it
    again, and leaves nothing half-applied; sent again with the stores back, it is applied
    once.

    Before the fix, MLflow unreachable before the run's first task left the request `pending`
    with no message (the flow raised before it marked the request running), and every failure
    printed the library's chain of retries (`MlflowException: API request to …/get-by-name
    failed with exception HTTPConnectionPool(…): Max retries exceeded …`) instead of the
    store."""
    request_id = "stores-away"
    sample = "digits-train-00005"
    repo = stack.repo()
    before, versions, champion = repo.current(), stack.versions(), stack.champion()
    ledger = RequestLedger(stack.settings.ledger_path)
    mlflow_away = f"the MLflow server at {stack.mlflow.url}"

    def failed_with(result, store: str) -> str:
        code, _, err = result
        line = reason(err, request_id)
        assert code == 1 and line.startswith(store) and line.endswith(AGAIN), err[-3000:]
        record = ledger.get(request_id)
        assert record.state == RequestState.FAILED and record.message == line
        return line

    # 1. MLflow unreachable before the run's first task
    stack.mlflow.refuse()
    try:
        result = delete(stack, request_id, sample)
    finally:
        stack.mlflow.pass_through()
    assert "(connection refused)" in failed_with(result, mlflow_away)
    assert repo.current() == before and stack.versions() == versions

    # 2. the S3 remote unreachable from the push (the champion was read from MLflow's artifacts
    #    on the same S3 before it: a request checks it first): every try fails, nothing committed
    stack.s3.refuse(at=f"/{DVC_BUCKET}/")
    try:
        result = delete(stack, request_id, sample)
    finally:
        stack.s3.pass_through()
    remote = f"the DVC remote s3://{DVC_BUCKET}/uib at {stack.s3.url} is unreachable"
    failed_with(result, remote)
    assert repo.current() == before and read_journal(repo.root) is None
    assert stack.versions() == versions and stack.running() == []
    assert tries(ledger.get(request_id).flow_run_id)["version-forget-set"] == 4

    # 3. MLflow unreachable from the first upload: the data is versioned, no model registered,
    #    the run open on MLflow cannot be ended while it is away
    stack.mlflow.refuse(at="PUT /api/2.0/mlflow-artifacts/artifacts/")
    try:
        result = delete(stack, request_id, sample)
    finally:
        stack.mlflow.pass_through()
    failed_with(result, mlflow_away)
    versioned = repo.current()
    assert repo.history()[:2] == [versioned.git_rev, before.git_rev]
    assert repo.find_request(request_id) == versioned.git_rev
    assert stack.versions() == versions and stack.champion() == champion
    assert stack.running() == [request_id]
    assert not (stack.settings.audit_dir / f"{request_id}.json").exists()

    # 4. everything back: sent again, it is applied once
    code, out, err = delete(stack, request_id, sample)
    assert code == 0, err[-3000:]
    new = str(int(versions[-1]) + 1)
    assert json.loads(out.splitlines()[-1])["model_version"] == new
    record = ledger.get(request_id)
    assert record.state == RequestState.APPROVED and record.model_version == new, record.message
    assert repo.history()[:2] == [versioned.git_rev, before.git_rev]
    assert stack.versions() == [*versions, new] and stack.champion() == new
    assert stack.running() == []
    statuses = sorted(r.info.status for r in stack.runs(request_id))
    assert statuses == ["FINISHED", "KILLED"], statuses
    audits = [p.name for p in stack.settings.audit_dir.iterdir() if request_id in p.name]
    assert audits == [f"{request_id}.json"]
