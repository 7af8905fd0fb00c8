"""What a run leaves once a request's forget set is erased, written directly: for tests of
what later requests meet (`tasks.erased_ids`), without running the pipeline."""

from __future__ import annotations

from datetime import UTC, datetime

from tasks.erasure import AuditRecord, write_audit
from tasks.redaction import hash_ids
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings


def record_erased(
    settings: Settings,
    request_id: str,
    ids: list[str],
    state: RequestState = RequestState.APPROVED,
    members: tuple = (),
    message: str = "done",
) -> None:
    """`request_id`'s audit record (it erased `ids`) and its ledger row in `state`, ids hashed;
    its batch members' rows, `(id, ids)`, in `state` too."""
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    ledger.submit(DeletionRequest(request_id=request_id, sample_ids=ids))
    for member, named in members:
        ledger.submit(DeletionRequest(request_id=member, sample_ids=named))
        ledger.update(member, state, batch_id=request_id)
    now = datetime.now(UTC)
    record = AuditRecord(
        request_id=request_id,
        n_forgotten=len(ids),
        model_outcome=state.value,
        data_version_before=None,
        data_version_after=None,
        model_version_before="1",
        model_version_after="2",
        requested_at=now,
        completed_at=now,
        notes=[],
        gate_results={},
        unrecoverable_revs=[],
        purged_object_count=0,
        purged_objects=[],
        forgotten_id_hashes=sorted(hash_ids(ids, settings.salt())),
    )
    write_audit(settings.audit_dir, record)
    ledger.redact_ids(request_id)
    ledger.update(request_id, state, message)
