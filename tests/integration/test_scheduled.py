"""The scheduled deployment's flow: the S3 inbox on a real S3-compatible server, then one batch.

Three request objects arrive (one valid, one malformed, one naming unknown ids) while another
valid request (a part of the same faulty source) already waits in the ledger; one scheduled run
files the objects, refuses what cannot run, and unlearns both valid requests in one batch.
"""

from __future__ import annotations

import json

import pytest
from mlflow import MlflowClient

from tasks.data_versioning import DataRepo
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

BUCKET, PREFIX = "uib-inbox", "deletion-requests/"


def keys(s3, prefix: str) -> list[str]:
    listing = s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_one_scheduled_run_files_the_inbox_and_unlearns_a_batch(tmp_path, s3_server):
    from prefect.client.orchestration import get_client

    from flows.scheduled import unlearn_scheduled_flow
    from flows.train import train_flow

    settings = Settings(
        home=tmp_path / "uib",
        inbox_url=f"s3://{BUCKET}/{PREFIX}",
        s3_endpoint_url=s3_server.endpoint_url,
    )
    assert train_flow(settings.overrides())["model_version"] == "1"
    waiting = DeletionRequest(
        request_id="owner-report",
        where={"source": "faulty", "original_label": "3"},
        reason="the data owner found the faulty scans of threes",
    )
    RequestLedger(settings.ledger_path).submit(waiting)

    s3 = s3_server.client()
    s3.create_bucket(Bucket=BUCKET)
    objects = {
        "valid.json": json.dumps(
            {
                "request_id": "inbox-faulty",
                "where": {"source": "faulty"},
                "reason": "faulty scanner",
            }
        ),
        "malformed.json": '{"request_id": "inbox-bad", "sample_ids": ',
        "unknown.json": json.dumps(
            {"request_id": "inbox-unknown", "sample_ids": ["digits-train-99999"]}
        ),
    }
    for name, body in objects.items():
        s3.put_object(Bucket=BUCKET, Key=PREFIX + name, Body=body.encode())

    result = unlearn_scheduled_flow(settings.overrides())

    assert keys(s3, PREFIX + "processed/") == [PREFIX + "processed/valid.json"]
    rejected = keys(s3, PREFIX + "rejected/")
    assert {PREFIX + f"rejected/{n}" for n in ("malformed.json", "unknown.json")} <= set(rejected)
    reasons = {
        k: json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())["reason"]
        for k in rejected
        if k.endswith(".reason.json")
    }
    assert len(reasons) == 2
    assert "digits-train-99999" in reasons[PREFIX + "rejected/unknown.json.reason.json"]
    assert reasons[PREFIX + "rejected/malformed.json.reason.json"]
    assert [k for k in keys(s3, PREFIX) if k.count("/") == 1] == []

    ledger = RequestLedger(settings.ledger_path)
    states = {r.request_id: r for r in ledger.list()}
    assert "inbox-bad" not in states and "inbox-unknown" not in states  # refused, not recorded
    batch_id = result["batch_id"]
    assert batch_id.startswith("batch-") and result["state"] == "approved"
    assert sorted(result["plan"]["members"]) == ["inbox-faulty", "owner-report"]
    for member in ("inbox-faulty", "owner-report"):
        record = states[member]
        assert (record.state, record.batch_id, record.model_version) == (
            RequestState.APPROVED,
            batch_id,
            "2",
        ), record.message
    assert states[batch_id].state == RequestState.APPROVED
    # the batch's resolved ids: in the ledger as salted hashes, never a Prefect parameter
    batch = states[batch_id]
    assert batch.ids_hashed and len(batch.request.sample_ids) == len(result["plan"]["sample_ids"])
    assert not set(batch.request.sample_ids) & set(result["plan"]["sample_ids"])
    with get_client(sync_client=True) as prefect:
        [subflow] = [r for r in prefect.read_flow_runs() if r.name == f"unlearn-{batch_id}"]
    assert subflow.parameters["request"] == {"request_id": batch_id, "in_ledger": True}

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    champion = client.get_model_version_by_alias(settings.model_name, "champion")
    assert str(champion.version) == "2" and champion.tags["request_id"] == batch_id
    after = DataRepo(settings.data_repo).load_manifest()
    assert not (after[after["split"] == "train"]["source"] == "faulty").any()

    again = unlearn_scheduled_flow(settings.overrides())
    assert again["message"] == "no pending request" and again["batch_id"] is None
    assert len(client.search_model_versions(f"name = '{settings.model_name}'")) == 2
