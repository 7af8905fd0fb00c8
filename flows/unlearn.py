"""The `unlearn` flow, the main job: one deletion request from intake to erasure.

    resolve ids → validate shift (GX) → version data (DVC) → unlearn (GPU task)
    → evaluate + gates → register (MLflow) [→ by policy: retrain, gates, register]
    → erase + audit (whatever the gates said) → approved | held for review   (`flows.stages`)

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

from flows.finish import (
    finish,
    finish_held,
    interrupted_hold,
)
from flows.outcome import (
    AlreadyErased,
    ChampionUnfit,
    GatesFailed,
    Outcome,
    RequestNotRunnable,
    RequestRefused,
    answer_duplicate,
    outcome_details,
    publish_outcome,
)
from flows.recovery import take_over
from flows.stages import process
from tasks.host_faults import host_fault
from tasks.ownership import heartbeat
from tasks.registry import (
    approved_version,
    client_for,
)
from tasks.registry_hygiene import mark_erased_lineage
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestRecord,
    RequestRef,
    RequestState,
    Review,
)
from tasks.retrying import StoreUnreachable, unreachable_store
from tasks.settings import Settings

# --------------------------------------------------------------------------- the flow


def held_again(outcome: Outcome) -> GatesFailed:
    return GatesFailed(
        f"held for review: model version {outcome.model_version} ({outcome.method}) rejected: "
        f"{outcome.gates.message()}; the forget set is erased (finished after an interrupted run)",
        outcome.gates,
        outcome.model_version,
        outcome,
    )


def fail_if_unreachable(
    request: DeletionRequest,
    record: RequestRecord,
    ledger: RequestLedger,
    settings: Settings,
    error: Exception,
) -> None:
    """Raise `StoreUnreachable` when `error` is a store's outage met before the run started.

    A request that was to run (pending, or failed before) is then recorded `failed` with the
    message naming the store, as a failure inside the run would be; before, it stayed `pending`
    with no message (or `failed` with the reason of an earlier run) while the CLI exited 1.
    A request in any other state keeps it: it was not going to run.
    """
    outage = unreachable_store(error, settings)
    if outage is None:
        return
    if record.state in (RequestState.PENDING, RequestState.FAILED):
        ledger.update(request.request_id, RequestState.FAILED, outage)
        publish_outcome(request, RequestState.FAILED, outage)
    raise StoreUnreachable(outage) from error


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
        try:
            if record.state != RequestState.APPROVED:
                take_over(record, settings, ledger, logger)  # what a killed run of it left
                reconcile_champion(settings, ledger, logger)
                record = ledger.get(request.request_id)
            if record.state == RequestState.APPROVED:
                return answer_duplicate(request, record, logger)
            done = approved_version(client_for(settings), settings, request.request_id)
        except Exception as error:  # MLflow away before the run starts: as inside it
            fail_if_unreachable(request, record, ledger, settings, error)
            raise
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
        except Exception as error:  # a full disk, a read-only remote, a store away: one line
            outage = unreachable_store(error, settings)
            message = (
                host_fault(error, settings.home)
                or outage
                or (str(error) if isinstance(error, ChampionUnfit) else None)
                or f"{type(error).__name__}: {error}; send the request again to retry it"
            )
            ledger.update(request.request_id, RequestState.FAILED, message)
            publish_outcome(request, RequestState.FAILED, message)
            if outage and message == outage:
                raise StoreUnreachable(outage) from error
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
