"""Ids an approved request erased already: a request naming them again is acknowledged as done,
one naming some of them forgets the rest, and an id that was never there is still refused.

Erasures are recorded here as the pipeline leaves them (an audit record listing the forgotten
ids' salted hashes, the ledger row approved and hashed), without running one; the end-to-end
case is `test_pipeline.py::test_the_same_ids_sent_again_under_a_new_request_id_are_acknowledged`.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
from erasures import record_erased

from tasks.erased_ids import (
    Acknowledgement,
    ErasedIds,
    acknowledge_open,
    select_unerased,
)
from tasks.erasure import audit_path, read_audit
from tasks.intake import Intake, RequestInvalid
from tasks.redaction import hash_ids
from tasks.requests import DeletionRequest, RequestLedger, RequestRecord, RequestState
from tasks.settings import Settings

SALT = "a-secret-salt-of-the-deployment"
MANIFEST = pd.DataFrame(
    {
        "sample_id": [f"s{i:03d}" for i in range(100)] + ["t000"],
        "split": ["train"] * 100 + ["test"],
        "source": ["faulty"] * 5 + ["clean"] * 95 + ["clean"],
    }
)


class Repo:
    """What `Intake` asks of a data repository: one version, no request's commit."""

    root = "data"

    def load_manifest(self, rev=None):
        return MANIFEST

    def find_request(self, request_id):
        return None

    def history(self):
        return []


@pytest.fixture
def state(tmp_path):
    """Approved: `first` (s100, s101) and the batch `batch-1` (s103 asked by `m-a`, s104 by
    `m-b`); held, so not done: `parked` (s102). None of these ids is in MANIFEST any more."""
    settings = Settings(home=tmp_path / "uib", audit_salt=SALT)
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    record_erased(settings, "first", ["s100", "s101"], RequestState.APPROVED)
    record_erased(settings, "parked", ["s102"], RequestState.HELD)
    members = [("m-a", ["s103"]), ("m-b", ["s104"])]
    record_erased(settings, "batch-1", ["s103", "s104"], RequestState.APPROVED, members)
    return settings, ledger


def test_an_id_is_erased_by_the_approved_request_that_asked_for_it(state):
    settings, ledger = state
    index = ErasedIds.of(settings, ledger)
    ids = ["s100", "s101", "s102", "s103", "s104", "s999", "s001"]
    assert index.erased_by(ids) == {
        "s100": ["first"],
        "s101": ["first"],
        "s103": ["m-a"],  # the batch member that named it, not the batch
        "s104": ["m-b"],
    }
    assert index.erased_by(["s100"], exclude="first") == {}  # never by the request asking
    assert (
        ErasedIds.of(Settings(home=settings.home.parent / "none", audit_salt=SALT)).erased_by(
            ["s100"]
        )
        == {}
    )


def test_intake_acknowledges_all_erased_forgets_the_rest_and_still_refuses_unknown_ids(state):
    settings, ledger = state
    intake = Intake(Repo(), ledger, ErasedIds.of(settings, ledger))

    twice = DeletionRequest(request_id="by-mail", sample_ids=["s101", "s100"])
    assert intake.check(twice) is None
    assert intake.already_erased(twice) == {"s101": ["first"], "s100": ["first"]}

    overlap = DeletionRequest(request_id="overlap", sample_ids=["s001", "s100", "s103"])
    assert intake.check(overlap) is None and intake.already_erased(overlap) == {}
    selection = select_unerased(MANIFEST, overlap, intake.erased)
    assert selection.forget_ids == ["s001"] and not selection.all_erased
    assert selection.already_erased == {"s100": ["first"], "s103": ["m-a"]}

    # an id neither in the data nor erased by an approved request: refused, named, as before
    for ids, unknown in ((["s100", "s999"], "s999"), (["s102"], "s102")):
        typo = DeletionRequest(request_id="typo", sample_ids=ids)
        with pytest.raises(RequestInvalid) as refused:
            intake.check(typo)
        assert str(refused.value) == (
            f"sample_ids: forget set: 1 ids not in the train split, e.g. ['{unknown}']"
        )
    nothing = DeletionRequest(request_id="none", where={"source": "nowhere"})
    with pytest.raises(RequestInvalid, match="forget set is empty"):
        intake.check(nothing)


def test_an_acknowledged_request_is_approved_audited_and_hashed_and_erases_nothing(state):
    settings, ledger = state
    request = DeletionRequest(request_id="by-mail", sample_ids=["s100", "s101"], reason="again")
    ledger.submit(request)
    already = ErasedIds.of(settings, ledger).erased_by(request.sample_ids)

    done = acknowledge_open(request, settings, ledger, already)
    assert done is not None and done.already_erased_by == ["first"] and done.n_already_erased == 2
    record = ledger.get("by-mail")
    assert record.state == RequestState.APPROVED and record.model_version is None
    assert "erased already, by first" in record.message
    assert record.ids_hashed and record.request.sample_ids == hash_ids(request.sample_ids, SALT)
    assert Acknowledgement.of(record) == done
    audit = read_audit(settings.audit_dir, "by-mail")
    assert audit.acknowledges and audit.n_forgotten == 0 and audit.forgotten_id_hashes == []
    assert audit.already_erased_by == ["first"] and audit.model_outcome == "approved"
    assert audit.already_erased_id_hashes == sorted(hash_ids(request.sample_ids, SALT))
    assert audit.data_version_before is None and audit.model_version_after is None
    assert "every sample was erased by first" in audit.summary.erased
    text = audit_path(settings.audit_dir, "by-mail").read_text()
    assert "s100" not in text and list(json.loads(text))[-1] == "forgotten_id_hashes"
    assert audit_path(settings.audit_dir, "by-mail").stat().st_mode & 0o777 == 0o600

    # once: approved now, it is not acknowledged again; nor does it count as erasing the ids
    assert acknowledge_open(request, settings, ledger, already) is None
    assert ErasedIds.of(settings, ledger).erased_by(["s100"]) == {"s100": ["first"]}


def test_the_batch_planner_approves_all_erased_requests_and_runs_the_rest():
    from tasks.batching import plan_batch

    class Index:
        def erased_by(self, ids, exclude=None):
            return {i: ["first"] for i in ids if i in ("s100", "s101")}

    def pending(request_id, minute, ids) -> RequestRecord:
        request = DeletionRequest(request_id=request_id, sample_ids=ids)
        stamp = datetime(2026, 1, 1, 0, minute, tzinfo=UTC)
        return RequestRecord(
            request_id=request_id,
            state=RequestState.PENDING,
            request=request,
            received_at=stamp,
            updated_at=stamp,
        )

    records = [
        pending("dup", 0, ["s100", "s101"]),
        pending("part", 1, ["s001", "s100"]),
        pending("typo", 2, ["s999", "s101"]),
        pending("other", 3, ["s002"]),
    ]
    plan = plan_batch(records, MANIFEST, max_forget_fraction=0.5, erased=Index())
    assert plan.acknowledged == {"dup": ["first"]}
    assert plan.members == ["part", "other"] and plan.sample_ids == ["s001", "s002"]
    assert plan.partly_erased == {"part": ["first"]}
    assert plan.refused == {
        "typo": "sample_ids: forget set: 1 ids not in the train split, e.g. ['s999']"
    }
    assert "s100" not in json.dumps(plan.model_dump())  # no erased id in the stored report


def test_the_scheduled_flow_approves_a_pending_request_whose_ids_are_all_erased(state):
    import logging

    from flows.scheduled import acknowledge_pending
    from tasks.batching import plan_batch

    settings, ledger = state
    ledger.submit(DeletionRequest(request_id="dup", sample_ids=["s101", "s103"]))
    ledger.submit(DeletionRequest(request_id="part", sample_ids=["s001", "s100"]))
    pending = ledger.list(RequestState.PENDING)
    index = ErasedIds.of(settings, ledger)
    plan = plan_batch(pending, MANIFEST, 0.5, index)
    acknowledge_pending(plan, pending, index, ledger, settings, logging.getLogger("test"))
    assert plan.acknowledged == {"dup": ["first", "m-a"]} and plan.members == ["part"]
    record = ledger.get("dup")
    assert record.state == RequestState.APPROVED and "by first, m-a" in record.message
    assert ledger.get("part").state == RequestState.PENDING  # the batch runs it


def test_ids_a_run_is_erasing_now_are_let_in_to_wait_for_it(state, monkeypatch):
    """The e-mail arrives while the web form's request runs: its data version without the ids
    is committed, it is not approved yet. The request is recorded (not refused); once that run
    is approved, it is acknowledged."""
    import tasks.erased_ids

    settings, ledger = state
    ledger.submit(DeletionRequest(request_id="in-flight", sample_ids=["s005", "s006"]))
    ledger.update("in-flight", RequestState.RUNNING)
    bodies = {"c2": "remove 2\n\nRequest-Id: in-flight", "c1": "Request-Id: first", "c0": "x"}
    monkeypatch.setattr(tasks.erased_ids, "git", lambda root, *args: bodies[args[-1]])
    gone = MANIFEST[~MANIFEST["sample_id"].isin(["s005", "s006"])]

    class Running(Repo):
        def history(self):
            return ["c2", "c1", "c0"]

        def load_manifest(self, rev=None):
            return MANIFEST if rev == "c2~1" else gone

    intake = Intake(Running(), ledger, ErasedIds.of(settings, ledger))
    by_mail = DeletionRequest(request_id="by-mail", sample_ids=["s006", "s100"])
    assert intake.check(by_mail) is None and intake.already_erased(by_mail) == {}
    with pytest.raises(RequestInvalid, match="s999"):  # a typo beside them is still refused
        intake.check(DeletionRequest(request_id="typo", sample_ids=["s006", "s999"]))
    ledger.update("in-flight", RequestState.HELD)  # parked: a review decides, not this request
    with pytest.raises(RequestInvalid, match="s006"):
        Intake(Running(), ledger, ErasedIds.of(settings, ledger)).check(by_mail)
