"""The `unlearn-scheduled` flow: the S3 inbox, then one batch of the pending requests.

Each run reads new request objects from the inbox (when `UIB_INBOX_URL` is set), plans a batch
of compatible pending requests (`tasks.batching`), runs it as one `unlearn` subflow and gives
every member the batch's outcome. Requests left out stay `pending` with the reason as their
message, for the next run. A batch of one runs as the request itself. A pending request every
id of which an approved request erased already is approved at once (`tasks.erased_ids`).
"""

from __future__ import annotations

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from flows.checks import check_data_matches_champion
from flows.outcome import RequestRefused
from flows.recovery import recover_orphans
from flows.unlearn import unlearn_flow
from tasks.batching import BatchPlan, plan_batch
from tasks.data_versioning import DataRepo
from tasks.erased_ids import ErasedIds, acknowledge_open
from tasks.registry import champion, client_for
from tasks.requests import (
    DeletionRequest,
    RequestBusy,
    RequestLedger,
    RequestRef,
    RequestState,
)
from tasks.settings import Settings

TERMINAL = (
    RequestState.APPROVED,
    RequestState.REJECTED,
    RequestState.FAILED,
    RequestState.HELD,
    RequestState.WITHDRAWN,
)


class ScheduledReport(BaseModel):
    inbox: dict | None = None
    plan: BatchPlan = Field(default_factory=BatchPlan)
    batch_id: str | None = None
    state: RequestState | None = None
    blocked: str | None = Field(None, description="why nothing ran, when something blocks")
    recovered: list[str] = Field(
        default_factory=list, description="running requests whose run had died, run again first"
    )
    message: str = ""


def reconcile_members(ledger: RequestLedger) -> list[str]:
    """Members of a batch whose run ended while the scheduled flow could not record it (a
    crash) take the batch's final state now."""
    fixed = []
    for record in ledger.list(RequestState.RUNNING):
        if record.batch_id and record.batch_id != record.request_id:
            batch = ledger.get(record.batch_id)
            if batch.state in TERMINAL:
                ledger.update(
                    record.request_id,
                    batch.state,
                    batch.message,
                    model_version=batch.model_version,
                    outcome=batch.outcome,
                )
                fixed.append(record.request_id)
    return fixed


def refused_batch_members(pending: list, ledger: RequestLedger) -> frozenset[str]:
    """Pending requests whose batch was refused: each runs alone (`plan_batch`)."""
    return frozenset(
        r.request_id
        for r in pending
        if r.batch_id
        and r.batch_id != r.request_id
        and (batch := ledger.find(r.batch_id)) is not None
        and batch.state == RequestState.REJECTED
    )


def blocker(settings: Settings, repo: DataRepo, ledger: RequestLedger) -> str | None:
    """Why no request can run now, or None (a held request blocks nobody)."""
    current = champion(client_for(settings), settings)
    if current is None:
        return "no champion model is registered: run `uib train` first"
    try:
        check_data_matches_champion(repo, current, "", ledger)
    except RequestRefused as error:
        return str(error)
    return None


def run_batch(
    batch: DeletionRequest, plan: BatchPlan, ledger: RequestLedger, settings: Settings
) -> tuple[RequestState, str]:
    """Run the batch as one `unlearn` subflow; every member takes its outcome.

    The batch is recorded in the ledger first and the subflow gets it by reference, so its ids
    (resolved, even for attribute predicates) never become a stored flow-run parameter.
    """
    members = [m for m in plan.members if m != batch.request_id]
    ledger.submit(batch)
    for member in members:
        ledger.update(
            member, RequestState.RUNNING, f"in batch {batch.request_id}", batch_id=batch.request_id
        )
    try:
        unlearn_flow(RequestRef(request_id=batch.request_id).model_dump(), settings.overrides())
    finally:
        final = ledger.get(batch.request_id)
        if members and final.state == RequestState.PENDING:  # the subflow never took it up
            final = ledger.update(batch.request_id, RequestState.FAILED, "its run did not start")
            for member in members:
                ledger.update(member, RequestState.PENDING, "its batch did not start")
            members = []
        if members and final.state == RequestState.REJECTED:  # refused as a whole: each alone
            for member in members:
                ledger.update(
                    member,
                    RequestState.PENDING,
                    f"its batch {batch.request_id} was refused ({final.message}); it runs "
                    "alone next",
                )
            members = []
        for member in members:
            erasers = ", ".join(plan.partly_erased.get(member, []))
            ledger.update(
                member,
                final.state,
                f"batch {batch.request_id}: {final.message}"
                + (f"; some of its ids were erased already, by {erasers}" if erasers else ""),
                flow_run_id=final.flow_run_id,
                model_version=final.model_version,
                outcome=final.outcome,
            )
    return final.state, final.message


def acknowledge_pending(
    plan: BatchPlan,
    pending: list,
    erased: ErasedIds,
    ledger: RequestLedger,
    settings: Settings,
    logger,
) -> None:
    """Approve the planned requests every id of which approved requests erased already."""
    requests = {r.request_id: r.request for r in pending}
    for request_id in list(plan.acknowledged):
        request = requests[request_id]
        already = erased.erased_by(request.sample_ids, exclude=request_id)
        try:
            acknowledge_open(request, settings, ledger, already)
        except RequestBusy:  # a run of it started meanwhile: it answers it
            plan.acknowledged.pop(request_id)
            logger.info("request %s: a run holds it; left to that run", request_id)


def publish(report: ScheduledReport) -> None:
    plan = report.plan
    lines = ["# Scheduled unlearning run", "", f"- {report.message}"]
    if report.inbox is not None:
        lines.append(f"- inbox: {report.inbox}")
    if plan.members:
        lines.append(
            f"- batch `{report.batch_id}`: {', '.join(plan.members)} "
            f"({len(plan.sample_ids)} samples) → **{report.state.value}**"
        )
    lines += [f"- refused `{rid}`: {why}" for rid, why in plan.refused.items()]
    lines += [
        f"- approved `{rid}`: every id erased already, by {', '.join(by)}"
        for rid, by in plan.acknowledged.items()
    ]
    lines += [f"- left pending `{rid}`: {why}" for rid, why in plan.queued.items()]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key="unlearn-scheduled",
        description="What the scheduled run did with the pending requests",
    )


@flow(name="unlearn-scheduled", log_prints=True)
def unlearn_scheduled_flow(settings: dict | None = None) -> dict:
    """Collect the inbox, then unlearn one batch of compatible pending requests."""
    settings = Settings(**(settings or {}))
    logger = get_run_logger()
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    report = ScheduledReport()
    if settings.inbox_url:
        from tasks.inbox import collect_inbox_task

        report.inbox = collect_inbox_task(settings).model_dump(mode="json")
    with ledger.serialized():
        if recovered := recover_orphans(settings, ledger, logger):  # their runs were killed
            report.recovered = recovered
        reconcile_members(ledger)
        pending = ledger.list(RequestState.PENDING)
        repo = DataRepo(settings.data_repo) if pending else None  # none before `train` ran
        if not pending:
            report.message = "no pending request"
        elif blocked := blocker(settings, repo, ledger):
            report.blocked = report.message = f"{len(pending)} requests left pending: {blocked}"
        else:
            erased = ErasedIds.of(settings, ledger)
            report.plan = plan_batch(
                pending,
                repo.load_manifest(),
                settings.shift.max_forget_fraction,
                erased,
                alone=refused_batch_members(pending, ledger),
            )
            for request_id, why in report.plan.refused.items():
                ledger.update(request_id, RequestState.REJECTED, why)
            acknowledge_pending(report.plan, pending, erased, ledger, settings, logger)
            for request_id, why in report.plan.queued.items():
                ledger.update(request_id, RequestState.PENDING, why)
            if report.plan.members:
                batch = report.plan.batch_request({r.request_id: r.request for r in pending})
                report.batch_id = batch.request_id
                try:
                    report.state, report.message = run_batch(batch, report.plan, ledger, settings)
                except Exception as error:
                    report.state = ledger.get(batch.request_id).state
                    report.message = str(error)
                    publish(report)
                    raise
            elif report.plan.acknowledged:
                report.message = "approved at once, their ids erased already: " + ", ".join(
                    report.plan.acknowledged
                )
            else:
                report.message = "no request could run"
    logger.info("scheduled run: %s", report.message)
    publish(report)
    return report.model_dump(mode="json")
