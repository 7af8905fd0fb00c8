"""The S3 inbox against a real S3-compatible server: hostile objects are filed under `rejected/`
with a reason naming the field and never reach the ledger; objects in subfolders are read.

No Prefect server and no model: the inbox's collection is a plain function of the settings.
A request naming only ids an approved request erased is approved and filed under `processed/`.
"""

from __future__ import annotations

import json

import pytest
from erasures import record_erased

from tasks.redaction import hash_id
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = pytest.mark.integration

BUCKET, PREFIX = "uib-hostile-inbox", "deletion-requests/"
TAKEN = DeletionRequest(request_id="taken", sample_ids=["digits-train-00003"])

# object name → (body, what the reason must name); None: accepted
OBJECTS = {
    "valid.json": ({"request_id": "in-valid", "sample_ids": ["digits-train-00001"]}, None),
    "team-a/nested.json": ({"request_id": "in-nested", "where": ["source=faulty"]}, None),
    "duplicate-keys.json": (
        '{"request_id": "in-dup", "sample_ids": ["digits-train-00002"], '
        '"allow_class_removal": false, "allow_class_removal": true}',
        "allow_class_removal: the key is given more than once",
    ),
    "truthy.json": (
        {
            "request_id": "in-yes",
            "sample_ids": ["digits-train-00002"],
            "allow_class_removal": "yes",
        },
        "allow_class_removal",
    ),
    "no-id.json": ({"sample_ids": ["digits-train-00002"]}, "request_id: Field required"),
    "unknown-ids.json": (
        {"request_id": "in-unknown", "sample_ids": ["digits-train-99999"]},
        "sample_ids: forget set: 1 ids not in the train split",
    ),
    "repeated-where.json": (
        {"request_id": "in-and", "where": ["source=nowhere", "source=faulty"]},
        "where: forget set is empty",
    ),
    "reused-id.json": (
        {"request_id": "taken", "sample_ids": ["digits-train-00004"]},
        "request_id: 'taken' is already in the ledger with other content",
    ),
    "team-b/malformed.json": ('{"request_id": "in-bad", ', "not JSON"),
}


def test_the_inbox_files_hostile_objects_by_name_and_reads_subfolders(
    tmp_path, s3_server, patch_bias
):
    from tasks.data_versioning import DataRepo
    from tasks.inbox import collect_inbox

    settings = Settings(
        home=tmp_path / "uib",
        inbox_url=f"s3://{BUCKET}/{PREFIX}",
        s3_endpoint_url=s3_server.endpoint_url,
    )
    repo = DataRepo.init(settings.data_repo, settings.remote_url)
    repo.write_dataset(patch_bias.dataset, patch_bias.config, "patch-bias digits")
    head = repo.current()
    ledger = RequestLedger(settings.ledger_path)
    ledger.submit(TAKEN)
    s3 = s3_server.client()
    s3.create_bucket(Bucket=BUCKET)
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "team-a/", Body=b"")  # a console's folder marker
    for name, (body, _) in OBJECTS.items():
        text = body if isinstance(body, str) else json.dumps(body)
        s3.put_object(Bucket=BUCKET, Key=PREFIX + name, Body=text.encode())

    report = collect_inbox(settings)

    assert sorted(report.accepted) == ["in-nested", "in-valid"]
    refused = {name for name, (_, named) in OBJECTS.items() if named}
    assert set(report.rejected) == {PREFIX + name for name in refused}
    for name in refused:
        reason = json.loads(
            s3.get_object(Bucket=BUCKET, Key=f"{PREFIX}rejected/{name}.reason.json")["Body"].read()
        )["reason"]
        assert OBJECTS[name][1] in reason, (name, reason)
    assert s3_server.keys(BUCKET, PREFIX + "processed/") == sorted(
        [PREFIX + "processed/valid.json", PREFIX + "processed/team-a/nested.json"]
    )
    left = [
        k
        for k in s3_server.keys(BUCKET, PREFIX)
        if not k.startswith((PREFIX + "processed/", PREFIX + "rejected/"))
    ]
    assert left == [PREFIX + "team-a/"]  # only the folder marker stays
    # a processed copy names the samples by salted hash: the ids stay in the ledger alone
    filed = s3.get_object(Bucket=BUCKET, Key=PREFIX + "processed/valid.json")["Body"].read()
    assert b"digits-train-00001" not in filed
    assert json.loads(filed)["sample_id_hashes"] == [hash_id("digits-train-00001", settings.salt())]
    assert ledger.get("in-valid").request.sample_ids == ["digits-train-00001"]
    assert sorted(r.request_id for r in ledger.list()) == ["in-nested", "in-valid", "taken"]
    assert ledger.get("taken").request == TAKEN
    assert repo.current() == head
    nothing_new = {"accepted": [], "acknowledged": [], "rejected": {}, "approved": []}
    assert collect_inbox(settings).model_dump() == nothing_new

    # the same sample sent again after an approved request erased it: done, not bad input
    record_erased(settings, "earlier", ["digits-train-99990"], message="approved")
    again = {"request_id": "in-again", "sample_ids": ["digits-train-99990"]}
    s3.put_object(Bucket=BUCKET, Key=PREFIX + "again.json", Body=json.dumps(again).encode())
    assert collect_inbox(settings).model_dump() == {**nothing_new, "approved": ["in-again"]}
    record = ledger.get("in-again")
    assert record.state == RequestState.APPROVED and "erased already, by earlier" in record.message
    assert record.ids_hashed and (settings.audit_dir / "in-again.json").exists()
    filed = s3.get_object(Bucket=BUCKET, Key=PREFIX + "processed/again.json")["Body"].read()
    assert b"digits-train-99990" not in filed
    assert collect_inbox(settings).model_dump() == nothing_new
