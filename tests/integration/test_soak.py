"""Soak: 50 deletion requests, valid and invalid mixed, arriving in the S3 inbox in two waves
and drained by the scheduled deployment alone (`UIB_SCHEDULE_CRON` every minute) on the compose
stack (`compose_stack.py`): the worker's `uib serve` against Prefect server, MLflow server,
PostgreSQL and the S3 store.

Not in the default run (it takes several minutes); run it with

    .venv/bin/python -m pytest -m soak tests/integration/test_soak.py -s

It prints a Markdown summary (and writes it to `$UIB_SOAK_REPORT` when set): what became of
every request, the batches, the model versions, and the time per request.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from compose_stack import compose_stack, env_file
from prefect_server import wait_until

from tasks.data_versioning import DataRepo
from tasks.requests import RequestLedger, RequestState
from tasks.settings import Settings

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.soak]

INBOX_BUCKET, INBOX = "deletion-requests", "inbox/"
PERSONS = 30
DRAIN_TIMEOUT_S = 1500


def person(index: int, ids: list[str]) -> tuple[str, bytes]:
    body = {"request_id": f"person-{index:02d}", "sample_ids": ids, "reason": "erasure request"}
    return f"person-{index:02d}.json", json.dumps(body).encode()


def requests_for(train_ids: list[str]) -> tuple[list, list, dict[str, str]]:
    """(wave 1, wave 2, {request id: what must become of it}); each wave a list of (name,
    body). `approved` for the valid ones (a held one passes with its reason), `refused` for
    those the inbox files under `rejected/`, `rejected` for those a run refuses."""
    ids = iter(train_ids)
    persons = [person(i, [next(ids), next(ids)]) for i in range(1, PERSONS + 1)]
    expected = {f"person-{i:02d}": "approved" for i in range(1, PERSONS + 1)}
    first_ids = json.loads(persons[0][1])["sample_ids"]
    faulty = [
        (
            f"faulty-{label}.json",
            json.dumps(
                {
                    "request_id": f"faulty-{label}",
                    "where": {"source": "faulty", "original_label": str(label)},
                    "reason": "the faulty scanner, by digit",
                }
            ).encode(),
        )
        for label in (1, 2, 3, 4)
    ]
    expected |= {f"faulty-{label}": "approved" for label in (1, 2, 3, 4)}
    later = [
        # the same person again through another channel: their ids are erased by then
        ("person-again.json", person(99, first_ids)[1].replace(b"person-99", b"person-again")),
        persons[1],  # a retried object: the same request id and content
        (
            "whole-class.json",
            json.dumps({"request_id": "whole-class", "where": {"original_label": "5"}}).encode(),
        ),
    ]
    expected |= {"person-again": "approved", "whole-class": "rejected"}
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    invalid = {
        "malformed": b'{"request_id": "malformed", "sample_ids": ',
        "not-utf8": b'{"request_id": "not-utf8", "reason": "\xff\xfe"}',
        "duplicate-key": b'{"request_id": "duplicate-key", "where": {"source": "faulty"}, '
        b'"allow_class_removal": false, "allow_class_removal": true}',
        "truthy-string": json.dumps(
            {"request_id": "truthy-string", "sample_ids": [next(ids)], "allow_class_removal": "yes"}
        ).encode(),
        "extra-field": json.dumps(
            {"request_id": "extra-field", "sample_ids": [next(ids)], "priority": "high"}
        ).encode(),
        "no-request-id": json.dumps({"sample_ids": [next(ids)]}).encode(),
        "future": json.dumps(
            {"request_id": "future", "sample_ids": [next(ids)], "requested_at": future}
        ).encode(),
        "unknown-id": json.dumps(
            {"request_id": "unknown-id", "sample_ids": ["digits-train-99999"]}
        ).encode(),
        "unknown-column": json.dumps(
            {"request_id": "unknown-column", "where": {"colour": "red"}}
        ).encode(),
        "matches-nothing": json.dumps(
            {"request_id": "matches-nothing", "where": {"source": "nowhere"}}
        ).encode(),
        "control-reason": json.dumps(
            {"request_id": "control-reason", "sample_ids": [next(ids)], "reason": "\x1b[2J"}
        ).encode(),
        "reused-id": json.dumps(
            {"request_id": "person-03", "sample_ids": [next(ids)], "reason": "other content"}
        ).encode(),
        "empty-ids": json.dumps({"request_id": "empty-ids", "sample_ids": []}).encode(),
    }
    expected |= {f"{name}.json": "refused" for name in invalid}  # by object name: no id read
    objects = [(f"{name}.json", body) for name, body in invalid.items()]
    wave_1 = persons[:15] + faulty[:2] + objects[:7]
    wave_2 = persons[15:] + faulty[2:] + objects[7:] + later
    assert len(wave_1) + len(wave_2) == 50
    return wave_1, wave_2, expected


def rejected_objects(stack) -> set[str]:
    keys = stack.s3.keys(INBOX_BUCKET, INBOX + "rejected/")
    return {k.rsplit("/", 1)[-1] for k in keys if not k.endswith(".reason.json")}


def drained(stack, ledger: RequestLedger, expected: dict[str, str]) -> bool:
    """The inbox filed, nothing pending or running, every request in the ledger or refused."""
    inbox = [k for k in stack.s3.keys(INBOX_BUCKET, INBOX) if k.count("/") == 1]
    records = {r.request_id: r for r in ledger.list()}
    open_states = (RequestState.PENDING, RequestState.RUNNING)
    waiting = [rid for rid, r in records.items() if r.state in open_states]
    refused = rejected_objects(stack)
    settled = all(k in records or f"{k}.json" in refused for k in expected if ".json" not in k)
    return not inbox and not waiting and settled


def test_fifty_requests_drain_through_the_scheduled_deployment(tmp_path):
    variables = env_file(UIB_SCHEDULE_CRON="* * * * *")
    with compose_stack(tmp_path / "stack", variables) as stack:
        trained = stack.uib("train")
        assert trained.returncode == 0, stack.failure("train", trained)
        settings = Settings(home=Path(stack.worker_env["UIB_HOME"]))
        manifest = DataRepo(settings.data_repo).load_manifest()
        train = manifest[(manifest["split"] == "train") & (manifest["source"] != "faulty")]
        wave_1, wave_2, expected = requests_for(sorted(train["sample_id"])[::7])
        s3 = stack.s3.client()
        ledger = RequestLedger(settings.ledger_path)

        started = time.monotonic()
        for name, body in wave_1:
            s3.put_object(Bucket=INBOX_BUCKET, Key=INBOX + name, Body=body)
        wait_until(
            lambda: (
                settings.ledger_path.exists()
                and any(r.state != RequestState.PENDING for r in ledger.list())
            ),
            300,
            "the first scheduled run",
            stack.logs["worker"],
            interval=2,
        )
        for name, body in wave_2:
            s3.put_object(Bucket=INBOX_BUCKET, Key=INBOX + name, Body=body)
        wait_until(
            lambda: drained(stack, ledger, expected),
            DRAIN_TIMEOUT_S,
            "the inbox and the ledger to drain",
            stack.logs["worker"],
            interval=5,
        )
        elapsed = time.monotonic() - started
        report, problems = summarise(stack, ledger, expected, elapsed)
    print(report)
    if path := os.environ.get("UIB_SOAK_REPORT"):
        Path(path).write_text(report)
    assert not problems, "\n".join(problems)


def summarise(stack, ledger, expected, elapsed) -> tuple[str, list[str]]:
    records = {r.request_id: r for r in ledger.list()}
    refused = rejected_objects(stack)
    problems = []
    for key, want in expected.items():
        if want == "refused":
            if key not in refused:
                problems.append(f"{key}: not filed under rejected/")
            continue
        record = records.get(key)
        got = record.state.value if record else ("refused" if f"{key}.json" in refused else "?")
        fine = got == want or (want == "approved" and got == "held" and record.message)
        if not fine:
            problems.append(f"{key}: {got} ({record.message if record else ''}), expected {want}")
    members = [r for r in records.values() if r.request_id in expected]
    batches = sorted({r.batch_id for r in members if r.batch_id})
    counts: dict[str, int] = {}
    for record in members:
        counts[record.state.value] = counts.get(record.state.value, 0) + 1
    lines = [
        "| what | value |",
        "| --- | --- |",
        "| requests sent | 50 (two waves into the S3 inbox) |",
        f"| refused at the inbox (`rejected/`) | {len(refused)} |",
        *(f"| ledger: {state} | {n} |" for state, n in sorted(counts.items())),
        f"| batches run | {len(batches)} |",
        f"| wall time, first object to drained | {elapsed:.0f} s |",
        f"| per request | {elapsed / 50:.1f} s |",
        f"| problems | {len(problems)} |",
    ]
    for batch_id in batches:
        batch = records.get(batch_id)
        if batch:
            span = (batch.updated_at - batch.received_at).total_seconds()
            size = sum(1 for r in members if r.batch_id == batch_id)
            lines.append(
                f"| batch {batch_id} | {size} requests, {batch.state.value}, {span:.0f} s |"
            )
    return "\n".join(lines + [""] + problems), problems
