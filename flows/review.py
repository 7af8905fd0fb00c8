"""Reviewing a request, and noticing a champion alias moved by hand.

A request is `held` when every candidate failed a gate: each is registered `rejected`, the
champion is unchanged and the forget set is already erased (a model gate never holds the erasure
back). Other requests proceed meanwhile. A person then decides, by name and with a reason:

- `approve` (held): promote the held candidate, while its parent is still the champion;
- `reject` (held): close the request, the champion unchanged;
- `retry` (held, rejected, failed): run the `unlearn` flow again with `retrain` (or a named
  method; once the forget set is erased, only a method that reads none of it);
- `withdraw` (pending, held, rejected, failed): close it; nothing versioned is touched and
  erased data stays erased.

Each action is recorded three times: in the ledger (the request's reviews: who, why, when), on
the model version (tags `approved_by` / `rejected_by` / `retried_by` / `withdrawn_by` and
`review_reason`, and the description's headline), and in the audit record. A batch is reviewed
as one request; its members take its state.

Until a reviewer acts, a plain run does not take a held, withdrawn, reviewed or erased request
up again (`not_runnable`); only `retry` does.

MLflow's registry webhooks do not exist for the file and SQLite stores, so a champion alias
moved in the MLflow UI is noticed at the start of the next `unlearn` run instead
(`reconcile_champion`), against the `pipeline_champion` record `tasks.registry.promote` keeps.
"""

from __future__ import annotations

import shutil
from typing import Literal

from pydantic import BaseModel

from flows.unlearn import Outcome, RequestNotRunnable
from tasks.erasure import audit_path, read_audit, update_audit
from tasks.registry import (
    PIPELINE_CHAMPION,
    champion,
    client_for,
    headline,
    log_audit,
    promote,
    recorded_champion,
    set_headline,
    tag_version,
    untag_version,
)
from tasks.registry_hygiene import mark_erased_lineage
from tasks.requests import (
    PARKED,
    RequestLedger,
    RequestRecord,
    RequestRef,
    RequestState,
    Review,
)
from tasks.settings import Settings
from tasks.unlearning import FORGET_FREE

S = RequestState
APPLIES_TO: dict[str, tuple[RequestState, ...]] = {
    "approve": (S.HELD,),
    "reject": (S.HELD,),
    "retry": (S.HELD, S.REJECTED, S.FAILED),
    "withdraw": (S.PENDING, S.HELD, S.REJECTED, S.FAILED),
}
HAND_MOVED = "alias moved by hand"


class ReviewRefused(Exception):
    """The action does not apply to the request as it stands; nothing changed."""


class ChampionMovedByHand(RequestNotRunnable):
    """The champion alias points at a version the pipeline did not promote."""


class ReviewResult(BaseModel):
    request_id: str
    action: Literal["approve", "reject", "retry", "withdraw"]
    state: RequestState
    model_version: str | None
    champion: str | None
    message: str


def review_request(
    settings: Settings, request_id: str, review: Review, method: str = "retrain"
) -> ReviewResult:
    """Apply one review action; `method` is what `retry` runs. KeyError: unknown request."""
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    with ledger.serialized():
        record = ledger.get(request_id)
        check_applies(record, review.action)
        review = review.model_copy(update={"model_version": record.model_version})
        if review.action == "approve":
            record = approve(settings, ledger, record, review)
        elif review.action == "reject":
            record = close(settings, ledger, record, review, S.REJECTED, "rejected")
        elif review.action == "withdraw":
            record = close(settings, ledger, record, review, S.WITHDRAWN, "withdrawn")
        else:
            record = retry(settings, ledger, record, review, method)
    current = champion(client_for(settings), settings)
    return ReviewResult(
        request_id=request_id,
        action=review.action,
        state=record.state,
        model_version=record.model_version,
        champion=str(current.version) if current else None,
        message=record.message,
    )


def check_applies(record: RequestRecord, action: str) -> None:
    rid = record.request_id
    if record.batch_id and record.batch_id != rid:
        raise ReviewRefused(
            f"request {rid} ran in batch {record.batch_id}: review the batch "
            f"(`uib request {action} {record.batch_id} …`)"
        )
    if record.state not in APPLIES_TO[action]:
        allowed = ", ".join(s.value for s in APPLIES_TO[action])
        raise ReviewRefused(
            f"request {rid} is {record.state.value}: {action} applies to a "
            f"request that is {allowed}"
        )


def approve(
    settings: Settings, ledger: RequestLedger, record: RequestRecord, review: Review
) -> RequestRecord:
    """Promote the held candidate, unless the champion moved since it was unlearned."""
    client = client_for(settings)
    candidate = record.model_version
    if not candidate:
        raise ReviewRefused(f"request {record.request_id} has no candidate to approve; retry")
    parent = client.get_model_version(settings.model_name, candidate).tags.get(
        "parent_model_version"
    )
    current = champion(client, settings)
    now = str(current.version) if current else None
    if now not in (parent, candidate):
        raise ReviewRefused(
            f"the champion moved since: it is version {now}, and request {record.request_id}'s "
            f"candidate, version {candidate}, was unlearned from version {parent}; retry"
        )
    return complete_approval(settings, ledger, record, review)


def complete_approval(
    settings: Settings, ledger: RequestLedger, record: RequestRecord, review: Review
) -> RequestRecord:
    """Promote the held candidate and record the approval everywhere (the data is erased)."""
    rid, version = record.request_id, record.model_version
    client = client_for(settings)
    promote(client, settings, version)
    untag_version(client, settings, version, "rejected")  # the alias never points at `rejected`
    tag_version(client, settings, version, approved_by=review.by, review_reason=review.reason)
    outcome = Outcome.model_validate(record.outcome)
    failed = failed_gates(record)
    set_headline(
        client,
        settings,
        version,
        headline(
            "approved", rid, f"approved by {review.by} despite failed {failed}: {review.reason}"
        ),
    )
    record_in_audit(settings, rid, review, "approved", version, client)
    message = f"approved on review by {review.by}: {review.reason} (failed {failed})"
    outcome = outcome.model_copy(update={"state": S.APPROVED, "note": message})
    ledger.review(rid, review, S.APPROVED, message)
    mark_erased_lineage(settings, rid, outcome.parent_model_version)
    record = ledger.update(
        rid, S.APPROVED, model_version=version, outcome=outcome.model_dump(mode="json")
    )
    shutil.rmtree(settings.results_dir / rid, ignore_errors=True)
    return propagate(ledger, record)


def close(
    settings: Settings,
    ledger: RequestLedger,
    record: RequestRecord,
    review: Review,
    state: RequestState,
    verb: str,
) -> RequestRecord:
    """Reject or withdraw: the champion and every version stay as they are."""
    rid, version = record.request_id, record.model_version
    client = client_for(settings)
    current = champion(client, settings)
    if version and (current is None or str(current.version) != version):
        tag_version(
            client, settings, version, **{f"{verb}_by": review.by}, review_reason=review.reason
        )
        set_headline(
            client,
            settings,
            version,
            headline(
                "rejected",
                rid,
                f"failed {failed_gates(record)}; {verb} by {review.by}: {review.reason}",
            ),
        )
    if read_audit(settings.audit_dir, rid) is not None:  # erased: its models carry it still
        record_in_audit(settings, rid, review, state.value, None, client)
        candidate = client.get_model_version(settings.model_name, version) if version else None
        parent = candidate.tags.get("parent_model_version") if candidate else None
        mark_erased_lineage(settings, rid, parent)
    message = f"{verb} on review by {review.by}: {review.reason}"
    if state == S.WITHDRAWN:
        message += "; nothing versioned was touched, erased data stays erased"
    record = ledger.review(rid, review, state, message)
    shutil.rmtree(settings.results_dir / rid, ignore_errors=True)
    return propagate(ledger, record)


def retry(
    settings: Settings, ledger: RequestLedger, record: RequestRecord, review: Review, method: str
) -> RequestRecord:
    """Run the `unlearn` flow again for the request with `method`, under the same gates."""
    from flows.unlearn import unlearn_flow

    rid = record.request_id
    erased = read_audit(settings.audit_dir, rid) is not None
    if erased and method not in FORGET_FREE:
        raise ReviewRefused(
            f"request {rid}'s forget set is erased: only "
            f"{', '.join(sorted(FORGET_FREE))} can run for it, not {method!r}"
        )
    client = client_for(settings)
    if record.model_version:
        tag_version(
            client,
            settings,
            record.model_version,
            retried_by=review.by,
            review_reason=review.reason,
        )
    if erased:
        record_in_audit(settings, rid, review, None, None, client)
    ledger.review(rid, review, record.state, f"retry by {review.by} with {method}: {review.reason}")
    overrides = settings.overrides()
    if method != settings.method:
        overrides.update(method=method, method_config={})
    try:
        reference = RequestRef(request_id=rid).model_dump()
        unlearn_flow(reference, overrides, review.model_dump(mode="json"))
    finally:
        propagate(ledger, ledger.get(rid))
    return ledger.get(rid)


def failed_gates(record: RequestRecord) -> str:
    """The names of the gates the request's candidate failed, from its recorded outcome."""
    if not record.outcome:
        return "its gates"
    return ", ".join(g.name for g in Outcome.model_validate(record.outcome).gates.failed) or "—"


def record_in_audit(
    settings: Settings,
    request_id: str,
    review: Review,
    outcome: str | None,
    version: str | None,
    client,
) -> None:
    """Append the review to the audit record and log it again with the version's run."""
    update_audit(
        settings.audit_dir,
        request_id,
        model_outcome=outcome,
        model_version_after=version,
        review=review,
    )
    if review.model_version:
        run_id = client.get_model_version(settings.model_name, review.model_version).run_id
        log_audit(settings, run_id, str(audit_path(settings.audit_dir, request_id)))


def propagate(ledger: RequestLedger, record: RequestRecord) -> RequestRecord:
    """A batch's members take the batch's state after a review."""
    for member in ledger.list():
        if member.batch_id == record.request_id and member.request_id != record.request_id:
            ledger.update(
                member.request_id,
                record.state,
                f"batch {record.request_id}: {record.message}",
                model_version=record.model_version,
                outcome=record.outcome,
            )
    return record


def not_runnable(
    record: RequestRecord, settings: Settings, ledger: RequestLedger, review: Review | None
) -> str | None:
    """Why a run may not take the request up now, or None; a retry passes its review."""
    rid, last = record.request_id, (record.reviews[-1].line() if record.reviews else "")
    if record.state == RequestState.WITHDRAWN:
        return f"request {rid} was withdrawn ({last}); nothing to do"
    if review is None and record.state == RequestState.HELD:
        return (
            f"request {rid} is held for review ({record.message}): approve, reject, retry "
            f"or withdraw it (`uib request approve {rid} --by NAME --reason TEXT`, …)"
        )
    if review is None and record.state == RequestState.REJECTED and record.reviews:
        return f"request {rid} was rejected on review ({last}): `uib request retry` runs it again"
    audit = read_audit(settings.audit_dir, rid)
    erased = audit is not None and not audit.acknowledges  # not one cut short: a run ends it
    if erased and review is None:
        if record.state not in PARKED:  # a run crashed between the erasure and the ledger
            ledger.update(
                rid,
                RequestState.HELD,
                "held for review: its forget set is erased and no candidate was approved",
            )
        return (
            f"request {rid}'s forget set is erased and no candidate was approved: review it "
            "(`uib request retry|approve|reject|withdraw`)"
        )
    if erased and settings.method not in FORGET_FREE:
        return (
            f"request {rid}'s forget set is erased: only {', '.join(sorted(FORGET_FREE))} "
            f"can run for it, not {settings.method!r}"
        )
    return None


def reconcile_champion(settings: Settings, ledger: RequestLedger, logger) -> None:
    """Before a run: the champion must be the version the pipeline last promoted.

    If someone moved the alias to a held request's candidate, that is an approval made in the
    MLflow UI: the request is completed as approved (`approved_by=alias moved by hand`). Any
    other difference refuses the run, naming the version and what to do.
    """
    client = client_for(settings)
    current = champion(client, settings)
    if current is None:
        return
    version, recorded = str(current.version), recorded_champion(client, settings)
    if recorded is None:  # a registry from before the record was kept: start it now
        client.set_registered_model_tag(settings.model_name, PIPELINE_CHAMPION, version)
        return
    if version == recorded:
        return
    held = [
        r
        for r in ledger.list(S.HELD)
        if r.model_version == version and r.batch_id in (None, r.request_id)
    ]
    if not held:
        raise ChampionMovedByHand(
            f"the '{settings.champion_alias}' alias of {settings.model_name} points at version "
            f"{version}, but the pipeline last made version {recorded} champion and version "
            f"{version} is no held request's candidate: set the alias back to version "
            f"{recorded} (MLflow UI, or MlflowClient().set_registered_model_alias"
            f"('{settings.model_name}', '{settings.champion_alias}', '{recorded}')); to keep "
            f"version {version}, check that its data version is the current one and set the "
            f"registered-model tag {PIPELINE_CHAMPION}={version}. No run starts until then"
        )
    record = held[0]
    review = Review(
        action="approve",
        by=HAND_MOVED,
        model_version=version,
        reason=f"'{settings.champion_alias}' moved from version {recorded} to "
        f"version {version} outside the pipeline",
    )
    logger.warning(
        "CHAMPION MOVED BY HAND: '%s' points at version %s (the pipeline made "
        "version %s champion); it is held request %s's candidate, so that request is "
        "now approved (approved_by=%s)",
        settings.champion_alias,
        version,
        recorded,
        record.request_id,
        HAND_MOVED,
    )
    complete_approval(settings, ledger, record, review)
