"""The stages of one request that has no approved candidate yet, in order: the champion and
the data checked, the forget set resolved, the shift validated, the data versioned, the
candidates made and gated, the forget set erased with its audit record, the outcome concluded.
`flows.unlearn` runs them under the request's ledger state and locks.
"""

from __future__ import annotations

from flows.attempts import Attempt, Job, run_attempts
from flows.checks import check_champion_answers, check_data_matches_champion, validate
from flows.finish import (
    erase_and_audit,
    hash_erased_ids,
)
from flows.outcome import (
    AlreadyErased,
    GatesFailed,
    Outcome,
    RequestRefused,
    already_erased_fields,
    review_links,
)
from flows.train import recipe
from tasks.data_versioning import DataRepo, DataVersion, read_staged, version_forget_set
from tasks.erased_ids import ErasedIds, acknowledge, finish_acknowledgement
from tasks.erasure import AuditRecord, audit_path, read_audit, update_audit
from tasks.faults import fault_point
from tasks.intake import resolve_request
from tasks.registry import (
    champion,
    client_for,
    load_version,
    log_audit,
)
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestState,
    Review,
)
from tasks.settings import Settings
from uib.samples import DataError, split_validation


def process(
    request: DeletionRequest, settings: Settings, ledger: RequestLedger, review: Review | None
) -> Outcome:
    """The whole way for a request that has no approved candidate yet."""
    client = client_for(settings)
    current = champion(client, settings)
    if current is None:
        raise RequestRefused("no champion model is registered: run `uib train` first")
    repo = DataRepo(settings.data_repo)
    check_data_matches_champion(repo, current, request.request_id, ledger)
    parent = str(current.version)
    audit = read_audit(settings.audit_dir, request.request_id)
    if audit is not None and audit.acknowledges:  # a crash cut its acknowledgement short
        raise AlreadyErased(finish_acknowledgement(settings, ledger, audit))
    if audit is not None:
        return process_erased(request, settings, ledger, review, parent, audit)
    try:
        resolved = resolve_request(request, settings.data_repo, ErasedIds.of(settings, ledger))
    except DataError as error:
        raise RequestRefused(str(error)) from error
    if not resolved.forget_ids:  # approved requests erased every id it names
        raise AlreadyErased(acknowledge(request, settings, ledger, resolved.already_erased))
    original = load_version(settings, parent)
    check_champion_answers(original, resolved.dataset, parent)
    fault_point("after-resolve")
    validation = validate(request, resolved, settings)

    versions = version_forget_set(
        settings.data_repo,
        request.request_id,
        resolved.forget_ids,
        settings.stage_dir(request.request_id),
    )
    before, after = (DataVersion.model_validate(versions[k]) for k in ("before", "after"))
    fault_point("after-versioning")
    forget = read_staged(versions["staged"])
    held_out, test = split_validation(resolved.dataset.test)
    job = Job(
        request=request,
        settings=settings,
        parent=parent,
        original=original,
        before=before,
        after=after,
        forget=forget,
        n_forget=len(forget),
        retain=resolved.dataset.train.drop(forget.ids),
        held_out=held_out,
        test=test,
        scenario=resolved.scenario,
        patch_bias=resolved.removes_bias_slice(),
        class_names=resolved.dataset.class_names,
        validation=validation,
        recipe=recipe(settings, resolved.dataset.name),
        review=review,
    )
    attempts = run_attempts(job)
    fault_point("after-attempts")
    state = RequestState.APPROVED if attempts[-1].gates.passed else RequestState.HELD
    path = erase_and_audit(
        request, settings, before, after, resolved.forget_ids, parent, attempts[-1], state
    )
    fault_point("after-erasure")
    return conclude(request, job, attempts, path)


def process_erased(
    request: DeletionRequest,
    settings: Settings,
    ledger: RequestLedger,
    review: Review | None,
    parent: str,
    audit: AuditRecord,
) -> Outcome:
    """A retry once the forget samples are erased: a forget-free method on the current data.

    The current version holds neither this request's samples nor any later request's, so the
    candidate is trained on what every approved request left; the audit record is updated.
    """
    hash_erased_ids(settings, request.request_id)  # a crash may have cut the first run short
    repo = DataRepo(settings.data_repo)
    after = repo.current()
    dataset, scenario = repo.load()
    held_out, test = split_validation(dataset.test)
    earlier = ledger.get(request.request_id).model_version
    patch_bias = False
    if earlier:
        tags = client_for(settings).get_model_version(settings.model_name, earlier).tags
        patch_bias = tags.get("removes_bias_slice") == "true"
    job = Job(
        request=request,
        settings=settings,
        parent=parent,
        original=load_version(settings, parent),
        before=audit.data_version_before,
        after=after,
        forget=None,
        n_forget=audit.n_forgotten,
        retain=dataset.train,
        held_out=held_out,
        test=test,
        scenario=scenario,
        patch_bias=patch_bias,
        class_names=dataset.class_names,
        validation=None,
        recipe=recipe(settings, dataset.name),
        review=review,
    )
    attempts = run_attempts(job)
    final = attempts[-1]
    state = RequestState.APPROVED if final.gates.passed else RequestState.HELD
    update_audit(
        settings.audit_dir,
        request.request_id,
        model_outcome=state.value,
        model_version_after=final.model_version,
        gate_results=final.gates.model_dump(mode="json"),
    )
    path = str(audit_path(settings.audit_dir, request.request_id))
    log_audit(settings, final.run_id, path)
    return conclude(request, job, attempts, path)


def conclude(
    request: DeletionRequest, job: Job, attempts: list[Attempt], audit_file: str
) -> Outcome:
    """The outcome of the attempts: approved, or GatesFailed (held for review)."""
    final = attempts[-1]
    fallback = attempts[-2] if len(attempts) > 1 else None
    note = ""
    if fallback is not None:
        failed = ", ".join(g.name for g in fallback.gates.failed)
        note = (
            f"{fallback.method} candidate v{fallback.model_version} failed {failed}; "
            f"the exact fallback `{final.method}` is v{final.model_version}"
        )
    state = RequestState.APPROVED if final.gates.passed else RequestState.HELD
    outcome = Outcome(
        request_id=request.request_id,
        state=state,
        model_version=final.model_version,
        parent_model_version=job.parent,
        gates=final.gates,
        data_version_before=job.before,
        data_version_after=job.after,
        audit_path=audit_file,
        unlearn_time_s=final.unlearn_time_s,
        method=final.method,
        decision=final.decision,
        fallback_for=fallback.model_version if fallback else None,
        note=note,
        **review_links(job.settings, final.model_version, job.n_forget),
        **already_erased_fields(read_audit(job.settings.audit_dir, request.request_id)),
    )
    if final.gates.passed:
        return outcome
    raise GatesFailed(
        f"held for review: model version {final.model_version} ({final.method}) rejected: "
        f"{final.gates.message()}" + (f" ({note})" if note else "") + "; the forget set is erased",
        final.gates,
        final.model_version,
        outcome,
    )
