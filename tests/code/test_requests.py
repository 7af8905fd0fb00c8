"""Deletion requests are checked at the boundary, and the ledger processes an id once."""

from datetime import UTC, datetime, timedelta

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
