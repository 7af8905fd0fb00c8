"""The `unlearn` flow, the main job: one deletion request from intake to erasure.

    resolve ids → validate shift (GX) → version data (DVC) → unlearn (GPU task)
    → evaluate + gates → register (MLflow) [→ by policy: retrain, gates, register]
    → erase + audit (whatever the gates said) → approved | held for review

Validation runs on the manifests the new data version *would* have, before anything is
committed, so a refused request versions nothing and registers nothing. Every later stage is
idempotent per request id: the data commit carries the id, the unlearned candidate is a
persisted task result keyed by it, the model version is tagged with it (and its attempt) at
creation, and erasing erased objects is a no-op. A rerun of a request whose candidate was
already approved skips to the stages still missing. The ledger marks a request `approved` only
at the very end.

The forget set's bytes are erased as soon as the model step that reads them is done, whether
a gate held or not: the right to erasure does not wait for a reviewer. A held request is
therefore retried with a method that reads no forget sample (`retrain`).

Invariant: the data repository's current version is the one the champion was trained or
unlearned on, or is ahead of it only by commits of requests the ledger holds as parked (held,
rejected on review, withdrawn: their samples are already out of every later retain set) or of
the request running. Anything else refuses loudly, so no model is built on data it does not
match. A champion alias moved by hand is noticed before every run (`flows.review`).
"""

from __future__ import annotations

import shutil

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from flows.attempts import Attempt, Job, run_attempts
from flows.checks import check_data_matches_champion, validate
from flows.finish import (
    erase_and_audit,
    finish,
    finish_held,
    hash_erased_ids,
    interrupted_hold,
)
from flows.outcome import (
    AlreadyErased,
    GatesFailed,
    Outcome,
    RequestNotRunnable,
    RequestRefused,
    already_erased_fields,
    answer_duplicate,
    outcome_details,
    publish_outcome,
    review_links,
)
from flows.recovery import take_over
from flows.train import recipe
from tasks.data_versioning import DataRepo, DataVersion, read_staged, version_forget_set
from tasks.erased_ids import ErasedIds, acknowledge, finish_acknowledgement
from tasks.erasure import AuditRecord, audit_path, read_audit, update_audit
from tasks.faults import fault_point
from tasks.intake import resolve_request
from tasks.ownership import heartbeat
from tasks.registry import (
    approved_version,
    champion,
    client_for,
    load_version,
    log_audit,
)
from tasks.registry_hygiene import mark_erased_lineage
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestRef,
    RequestState,
    Review,
)
from tasks.settings import Settings
from uib.samples import DataError, split_validation

# --------------------------------------------------------------------------- stages


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
        original=load_version(settings, parent),
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


# --------------------------------------------------------------------------- the flow


def held_again(outcome: Outcome) -> GatesFailed:
    return GatesFailed(
        f"held for review: model version {outcome.model_version} ({outcome.method}) rejected: "
        f"{outcome.gates.message()}; the forget set is erased (finished after an interrupted run)",
        outcome.gates,
        outcome.model_version,
        outcome,
    )


def run_name() -> str:
    request = flow_run.parameters.get("request") or {}
    return f"unlearn-{request.get('request_id', 'new-request')}"


def keep_by_reference(request_id: str, logger) -> None:
    """Once the ledger holds a request given whole, the run's stored `request` parameter
    becomes the reference, so Prefect keeps no sample id of it (the event that started the run,
    if any, keeps what its producer sent). A failure only warns: the run goes on."""
    run_id = flow_run.get_id()
    if run_id is None:  # called as a plain function
        return
    from prefect.client.orchestration import get_client

    reference = RequestRef(request_id=request_id).model_dump(mode="json")
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(run_id, parameters={**flow_run.parameters, "request": reference})
    except Exception as error:  # the API is down: the run itself does not need it
        logger.warning("request %s: its flow-run parameter keeps its ids (%s)", request_id, error)


@flow(name="unlearn", flow_run_name=run_name, log_prints=True)
def unlearn_flow(request: dict, settings: dict | None = None, review: dict | None = None) -> dict:
    """Handle one deletion request; a refused request or a failed gate ends the run Failed.

    `request` is the request the ledger holds under an id (`{"request_id": …, "in_ledger":
    true}`: what the CLI, the scheduled flow and a review send, so no sample id becomes a
    stored parameter), or a whole request, which the run records first (`RequestLedger.submit`).

    Ledger states: `rejected` (refused, or rejected on review), `held` (every candidate failed a
    gate: the forget set is erased, a reviewer decides), `failed` (crashed: run it again),
    `approved` (done; a rerun only acknowledges it), `withdrawn`. `review` is the reviewer's
    `retry` action when `uib request retry` runs it: only then does a held request run again.
    """
    from flows.review import not_runnable, reconcile_champion  # it runs this flow for `retry`

    settings = Settings(**(settings or {}))
    if RequestRef.given(request):
        request_id, whole = RequestRef.model_validate(request).request_id, None
    else:
        whole = DeletionRequest.model_validate(request)
        request_id = whole.request_id
    review = Review.model_validate(review) if review else None
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    logger = get_run_logger()
    beat = heartbeat(lambda: ledger.beat(request_id))
    with ledger.exclusive(request_id), ledger.serialized(), beat:
        if whole is None:
            record = ledger.find(request_id)
            if record is None:
                raise RequestNotRunnable(
                    f"request_id: {request_id!r} is not in the ledger; send the whole request"
                )
        else:
            record, _ = ledger.submit(whole)
            if whole.sample_ids is not None:
                keep_by_reference(request_id, logger)
        request = record.request  # its ids are salted hashes once its forget set is erased
        if record.state != RequestState.APPROVED:
            take_over(record, settings, ledger, logger)  # what a killed run of it left
            reconcile_champion(settings, ledger, logger)
            record = ledger.get(request.request_id)
        if record.state == RequestState.APPROVED:
            return answer_duplicate(request, record, logger)
        done = approved_version(client_for(settings), settings, request.request_id)
        cut_short = record.state in (
            RequestState.RUNNING,
            RequestState.FAILED,
            RequestState.PENDING,
        )
        held = (
            interrupted_hold(settings, request.request_id)
            if cut_short and not (done or review)
            else None
        )
        if (
            done is None
            and held is None
            and (why := not_runnable(record, settings, ledger, review))
        ):
            raise RequestNotRunnable(why)
        ledger.update(
            request.request_id, RequestState.RUNNING, "", flow_run_id=str(flow_run.get_id())
        )
        try:
            if done:
                outcome = finish(request, settings, done)
            elif held:  # a run killed in or after the erasure had held it: hold it again
                raise held_again(finish_held(request, settings, held))
            else:
                outcome = process(request, settings, ledger, review)
            # the versions that learned the erased samples; a failure leaves it to a rerun
            mark_erased_lineage(settings, request.request_id, outcome.parent_model_version)
        except AlreadyErased as erased:  # acknowledged: approved, no data or model version
            publish_outcome(request, RequestState.APPROVED, str(erased))
            return erased.acknowledgement.model_dump(mode="json")
        except RequestRefused as error:
            ledger.update(request.request_id, RequestState.REJECTED, str(error))
            publish_outcome(request, RequestState.REJECTED, str(error))
            raise
        except GatesFailed as error:
            ledger.update(
                request.request_id,
                RequestState.HELD,
                str(error),
                model_version=error.model_version,
                outcome=error.outcome.model_dump(mode="json"),
            )
            publish_outcome(
                request,
                RequestState.HELD,
                str(error),
                error.report,
                outcome_details(error.outcome),
                error.model_version,
            )
            logger.warning("request %s %s", request.request_id, error)
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {error}; send the request again to retry it"
            ledger.update(request.request_id, RequestState.FAILED, message)
            publish_outcome(request, RequestState.FAILED, message)
            raise
        except BaseException as error:  # Ctrl-C, SIGTERM (flows.lifecycle): not a fault of it
            message = (
                f"interrupted ({str(error) or type(error).__name__}); send it again to finish it"
            )
            ledger.update(request.request_id, RequestState.FAILED, message)
            raise
        shutil.rmtree(settings.results_dir / request.request_id, ignore_errors=True)
        message = (
            "approved: "
            + (f"{outcome.note}, which passes every gate" if outcome.note else "every gate holds")
            + "; forgotten samples erased"
            + outcome.already_erased_note()
        )
        ledger.update(
            request.request_id,
            RequestState.APPROVED,
            message,
            model_version=outcome.model_version,
            outcome=outcome.model_dump(mode="json"),
        )
        publish_outcome(
            request, RequestState.APPROVED, message, outcome.gates, outcome_details(outcome)
        )
    logger.info(
        "request %s approved: version %s is %s",
        request.request_id,
        outcome.model_version,
        settings.champion_alias,
    )
    return outcome.model_dump(mode="json")
