"""Deletion requests are checked at the boundary, and the ledger processes an id once."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pydantic
import pytest

from tasks.requests import DeletionRequest, RequestLedger, RequestState


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({}, "exactly one of sample_ids or where"),
        (
            {"sample_ids": ["a"], "where": {"source": "faulty"}},
            "exactly one of sample_ids or where",
        ),
        ({"sample_ids": []}, "sample_ids is empty"),
        ({"sample_ids": ["a", "a"]}, "more than once"),
        ({"sample_ids": ["a", " "]}, "position 1 is blank"),
        ({"where": {}}, "where is empty"),
        ({"sample_ids": ["a"], "request_id": "../etc"}, "request_id must be"),
        ({"sample_ids": ["a"], "colour": "red"}, "colour"),
    ],
)
def test_bad_requests_name_the_field(fields, named):
    with pytest.raises(pydantic.ValidationError, match=named):
        DeletionRequest(**{"request_id": "req-1", **fields})


def test_ledger_records_a_request_once_and_tracks_its_state(tmp_path):
    ledger = RequestLedger(tmp_path / "requests.db")
    request = DeletionRequest(request_id="req-1", sample_ids=["a", "b"], reason="erasure")
    record, created = ledger.submit(request)
    assert created and record.state == RequestState.PENDING
    later = request.model_copy(update={"requested_at": datetime.now(UTC) + timedelta(hours=1)})
    again, created = ledger.submit(later)
    assert not created and again.request_id == "req-1"
    ledger.update("req-1", RequestState.RUNNING, flow_run_id="run-9")
    ledger.update("req-1", RequestState.APPROVED, "done", model_version="2")
    reopened = RequestLedger(tmp_path / "requests.db").get("req-1")
    assert (reopened.state, reopened.flow_run_id, reopened.model_version) == (
        RequestState.APPROVED,
        "run-9",
        "2",
    )
    assert not reopened.is_open
    assert [r.request_id for r in ledger.list(RequestState.APPROVED)] == ["req-1"]


def test_ledger_refuses_the_same_id_with_other_content(tmp_path):
    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(DeletionRequest(request_id="req-1", sample_ids=["a"]))
    with pytest.raises(ValueError, match="req-1.*other content"):
        ledger.submit(DeletionRequest(request_id="req-1", sample_ids=["b"]))
    assert ledger.get("req-1").request.sample_ids == ["a"]


def test_unknown_request_id_is_named(tmp_path):
    with pytest.raises(KeyError, match="nope"):
        RequestLedger(tmp_path / "requests.db").get("nope")


def test_a_request_runs_in_one_place_at_a_time(tmp_path):
    from tasks.requests import RequestBusy

    ledger = RequestLedger(tmp_path / "requests.db")
    with ledger.exclusive("req-1"):
        with pytest.raises(RequestBusy, match="req-1"), ledger.exclusive("req-1"):
            pass
        with ledger.exclusive("req-2"):
            pass
    with ledger.exclusive("req-1"):
        pass


def test_the_ledger_keeps_the_outcome_and_lists_by_state(tmp_path):
    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(DeletionRequest(request_id="req-1", sample_ids=["a"]))
    ledger.submit(DeletionRequest(request_id="req-2", where={"source": "faulty"}))
    ledger.update("req-2", RequestState.REJECTED, "gate failed", model_version="3")
    ledger.update("req-2", RequestState.APPROVED, outcome={"model_version": "4"})
    record = ledger.get("req-2")
    assert (record.message, record.model_version, record.outcome) == (
        "gate failed",
        "3",
        {"model_version": "4"},
    )
    assert [r.request_id for r in ledger.list(RequestState.PENDING)] == ["req-1"]


def test_only_a_request_taking_the_whole_faulty_slice_is_a_patch_bias_request(digits):
    from tasks.intake import Resolved
    from uib.scenarios import ScenarioConfig, build_scenario

    scenario = build_scenario(digits, ScenarioConfig(name="patch-bias", seed=0))
    ids = [str(i) for i in scenario.forget_ids]
    whole = Resolved(scenario.dataset, scenario.config, ids, "rev")
    part = Resolved(scenario.dataset, scenario.config, ids[:10], "rev")
    other = Resolved(scenario.dataset, ScenarioConfig(name="random"), ids, "rev")
    assert whole.removes_bias_slice() and not part.removes_bias_slice()
    assert not other.removes_bias_slice()
    original, retain, forget = whole.manifests()
    assert len(original) == len(retain) + len(forget) and set(forget["sample_id"]) == set(ids)


SALT = "a-secret-salt-of-the-deployment"


def test_an_erased_requests_ids_become_salted_hashes_and_a_resend_still_compares(tmp_path):
    """After the erasure the ledger names the samples by salted hash only, in the file's bytes
    too (`secure_delete`); the same request sent again is still acknowledged, another refused."""
    from tasks.redaction import hash_id

    path = tmp_path / "requests.db"
    ledger = RequestLedger(path, salt=lambda: SALT)
    ids = ["digits-train-00042", "digits-train-00043"]
    request = DeletionRequest(request_id="req-1", sample_ids=ids, reason="erasure")
    ledger.submit(request)
    batch = DeletionRequest(request_id="batch-1", sample_ids=[*ids, "digits-train-00044"])
    ledger.submit(batch)
    ledger.update("req-1", RequestState.RUNNING, batch_id="batch-1")
    assert b"digits-train-00042" in path.read_bytes()  # the search sees a raw id when there

    assert sorted(ledger.redact_ids("batch-1")) == ["batch-1", "req-1"]
    assert ledger.redact_ids("batch-1") == []  # once
    record = ledger.get("req-1")
    assert record.ids_hashed and record.request.sample_ids == [hash_id(i, SALT) for i in ids]
    assert b"digits-train-0004" not in path.read_bytes()
    assert path.stat().st_mode & 0o777 == 0o600

    again, created = ledger.submit(request)  # a re-send: compared by the hashes of its ids
    assert not created and again.request_id == "req-1"
    with pytest.raises(ValueError, match="req-1.*other content"):
        ledger.submit(DeletionRequest(request_id="req-1", sample_ids=ids[:1], reason="erasure"))
    with pytest.raises(RuntimeError, match="open the ledger with the salt"):
        RequestLedger(path).submit(request)
    with pytest.raises(RuntimeError, match="without the salt"):
        RequestLedger(path).redact_ids("req-1")


def test_a_request_passed_by_reference_is_read_strictly():
    from tasks.requests import RequestRef

    reference = RequestRef(request_id="req-1").model_dump(mode="json")
    assert reference == {"request_id": "req-1", "in_ledger": True}
    assert RequestRef.given(reference) and not RequestRef.given({"request_id": "req-1"})
    for bad, named in (
        ({"request_id": "req-1\n", "in_ledger": True}, "request_id"),
        ({"request_id": "req-1", "in_ledger": False}, "in_ledger"),
        ({"request_id": "req-1", "in_ledger": True, "sample_ids": ["a"]}, "sample_ids"),
        ({"in_ledger": True}, "request_id"),
    ):
        with pytest.raises(pydantic.ValidationError, match=named):
            RequestRef.model_validate(bad)


def test_validation_results_name_ids_by_salted_hash_or_count():
    from tasks.redaction import hash_id, redact_ids

    result = {
        "kwargs": {"value_set": ["x-1", "x-2"], "column": "sample_id"},
        "partial_unexpected_index_list": [{"sample_id": "x-1"}, {"sample_id": "kept"}],
        "observed": {"examples": ["x-2", 3]},
    }
    redacted = redact_ids(result, ["x-1", "x-2"], SALT)
    assert redacted["kwargs"]["value_set"]["redacted_sample_ids"] == 2
    assert redacted["kwargs"]["column"] == "sample_id"
    assert redacted["partial_unexpected_index_list"] == [
        {"sample_id": hash_id("x-1", SALT)},
        {"sample_id": "kept"},
    ]
    assert redacted["observed"]["examples"] == [hash_id("x-2", SALT), 3]
    assert "x-1" not in str(redacted) and "x-2" not in str(redacted)


def test_one_request_id_recorded_by_many_senders_at_once_is_recorded_once(tmp_path):
    """The ledger's look-up and insert of a new request id are one transaction.

    Four senders of one id at a barrier, two with one content and two with another: the
    first insert wins; a sender of the same content is acknowledged, one of other content is
    refused by name. SQLite's locks are per connection, so a thread with a connection of its
    own meets them as a process does, without each paying the CLI's imports. Before the fix
    (`RequestLedger.submit` looked the id up outside its write transaction) a quarter to a
    half of the sends failed with `sqlite3.IntegrityError` (UNIQUE constraint), and the CLI
    exited 1 on it instead of answering the duplicate (0) or the reused id (2).
    """
    contents = {"x": ["digits-train-00040"], "y": ["digits-train-00052"]}
    for trial in range(20):
        path = tmp_path / f"ledger-{trial}" / "requests.db"
        RequestLedger(path)
        barrier, answers = threading.Barrier(4), {}

        def send(name: str, content: str, path: Path = path, barrier=barrier, answers=answers):
            ledger = RequestLedger(path)
            request = DeletionRequest(request_id="c", sample_ids=contents[content])
            barrier.wait()
            try:
                answers[name] = "created" if ledger.submit(request)[1] else "acknowledged"
            except ValueError as error:
                answers[name] = "refused" if "with other content" in str(error) else repr(error)
            except Exception as error:
                answers[name] = repr(error)

        senders = {"x1": "x", "x2": "x", "y1": "y", "y2": "y"}
        threads = [threading.Thread(target=send, args=item) for item in senders.items()]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        [stored] = RequestLedger(path).list()
        won = next(k for k, v in contents.items() if v == stored.request.sample_ids)
        expected = {n: "acknowledged" if c == won else "refused" for n, c in senders.items()}
        [creator] = [n for n, a in answers.items() if a == "created"]
        assert answers == {**expected, creator: "created"}, f"trial {trial}: {answers}"
        assert senders[creator] == won
