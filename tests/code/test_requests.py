"""Deletion requests are checked at the boundary, and the ledger processes an id once."""

import pydantic
import pytest

from tasks.requests import DeletionRequest, RequestLedger, RequestState


@pytest.mark.parametrize(("fields", "named"), [
    ({}, "exactly one of sample_ids or where"),
    ({"sample_ids": ["a"], "where": {"source": "faulty"}}, "exactly one of sample_ids or where"),
    ({"sample_ids": []}, "sample_ids is empty"),
    ({"sample_ids": ["a", "a"]}, "more than once"),
    ({"sample_ids": ["a", " "]}, "blank entries at positions \\[1\\]"),
    ({"where": {}}, "where is empty"),
    ({"sample_ids": ["a"], "request_id": "../etc"}, "request_id must be"),
    ({"sample_ids": ["a"], "colour": "red"}, "colour"),
])
def test_bad_requests_name_the_field(fields, named):
    with pytest.raises(pydantic.ValidationError, match=named):
        DeletionRequest(**fields)


def test_ledger_records_a_request_once_and_tracks_its_state(tmp_path):
    ledger = RequestLedger(tmp_path / "requests.db")
    request = DeletionRequest(request_id="req-1", sample_ids=["a", "b"], reason="erasure")
    record, created = ledger.submit(request)
    assert created and record.state == RequestState.PENDING
    again, created = ledger.submit(request.model_copy(update={"requested_at": request.requested_at}))
    assert not created and again.request_id == "req-1"
    ledger.update("req-1", RequestState.RUNNING, flow_run_id="run-9")
    ledger.update("req-1", RequestState.APPROVED, "done", model_version="2")
    reopened = RequestLedger(tmp_path / "requests.db").get("req-1")
    assert (reopened.state, reopened.flow_run_id, reopened.model_version) == (RequestState.APPROVED, "run-9", "2")
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
