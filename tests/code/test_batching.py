"""Pending requests are batched first come, first served, within the forget-fraction policy."""

from datetime import UTC, datetime, timedelta

import pandas as pd

from tasks.batching import plan_batch
from tasks.requests import DeletionRequest, RequestRecord, RequestState

MANIFEST = pd.DataFrame(
    {
        "sample_id": [f"s{i:03d}" for i in range(100)] + ["t000"],
        "split": ["train"] * 100 + ["test"],
        "source": ["faulty"] * 5 + ["clean"] * 95 + ["clean"],
    }
)
START = datetime(2026, 11, 24, tzinfo=UTC)


def pending(request_id, minutes, **selection) -> RequestRecord:
    request = DeletionRequest(
        request_id=request_id, requested_at=START + timedelta(minutes=minutes), **selection
    )
    return RequestRecord(
        request_id=request_id,
        state=RequestState.PENDING,
        request=request,
        received_at=request.requested_at,
        updated_at=START,
    )


def test_compatible_requests_share_a_batch_and_the_rest_wait():
    records = [
        pending("late", 9, sample_ids=["s050"]),
        pending("first", 0, sample_ids=["s001", "s010"]),
        pending("overlap", 1, sample_ids=["s010", "s011"]),
        pending("slice", 2, where={"source": "faulty"}),
        pending("class", 3, sample_ids=["s020"], allow_class_removal=True),
        pending("too-many", 4, sample_ids=[f"s{i:03d}" for i in range(30, 45)]),
        pending("unknown", 5, sample_ids=["s001", "nope-1"]),
        pending("test-split", 6, sample_ids=["t000"]),
    ]
    plan = plan_batch(records, MANIFEST, max_forget_fraction=0.15)
    assert plan.members == ["first", "overlap", "late"]
    assert plan.sample_ids == ["s001", "s010", "s011", "s050"]
    assert not plan.allow_class_removal
    assert set(plan.queued) == {"slice", "class", "too-many"}
    assert "slices and scattered ids" in plan.queued["slice"]
    assert "allow_class_removal" in plan.queued["class"]
    assert "15%" in plan.queued["too-many"]
    assert set(plan.refused) == {"unknown", "test-split"}
    assert "nope-1" in plan.refused["unknown"]

    batch = plan.batch_request({r.request_id: r.request for r in records})
    assert batch.request_id.startswith("batch-") and batch.sample_ids == plan.sample_ids
    assert "first, overlap, late" in batch.reason


def test_slices_batch_with_slices():
    records = [
        pending("faulty", 0, where={"source": "faulty"}),
        pending("ids", 1, sample_ids=["s050"]),
        pending("faulty-again", 2, where={"source": "faulty", "split": "train"}),
    ]
    plan = plan_batch(records, MANIFEST, max_forget_fraction=0.15)
    assert plan.members == ["faulty", "faulty-again"] and list(plan.queued) == ["ids"]
    assert plan.sample_ids == ["s000", "s001", "s002", "s003", "s004"]


def test_a_batch_of_one_runs_as_the_request_itself():
    records = [pending("only", 0, where={"source": "faulty"})]
    plan = plan_batch(records, MANIFEST, max_forget_fraction=0.15)
    assert plan.members == ["only"]
    assert plan.batch_request({"only": records[0].request}) is records[0].request


def test_members_of_a_refused_batch_run_alone_one_by_one():
    """A batch passes the shift validation as a whole; after one was refused, each of its
    members runs as a batch of its own, so one request that removes a class spoils only itself."""
    records = [
        pending("a", 0, where={"source": "faulty"}),
        pending("b", 1, where={"source": "clean"}),
        pending("c", 2, where={"source": "faulty"}),
    ]
    alone = frozenset({"a", "b"})
    plan = plan_batch(records, MANIFEST, max_forget_fraction=1.0, alone=alone)
    assert plan.members == ["a"] and set(plan.queued) == {"b", "c"}
    assert "its batch was refused" in plan.queued["b"]
    assert "runs alone first" in plan.queued["c"]
    later = plan_batch(records[1:], MANIFEST, max_forget_fraction=1.0, alone=frozenset({"b"}))
    assert later.members == ["b"]
    after = plan_batch(records[2:], MANIFEST, max_forget_fraction=1.0, alone=frozenset())
    assert after.members == ["c"]
    assert plan_batch(records, MANIFEST, 1.0).members == ["a", "b", "c"]  # nothing refused yet
