"""How `uib request delete` hands a request over: checked against the data and the ledger
before anything is recorded, then recorded and sent by event (or acknowledged when approved
requests erased every id it names)."""

from __future__ import annotations

import typer

from flows.cli_output import invalid


def check_request(request, settings):
    """What both modes check before anything is recorded or run: (the ledger's record of the
    request, if any; {id: who erased it} when approved requests erased every id it names).
    Exit 2 naming the field when the request cannot apply as written (unknown ids or
    attributes, a predicate matching nothing, a reused id with other content), 1 when there is
    no data version to apply it to."""
    from tasks.data_versioning import DataRepo
    from tasks.erased_ids import ErasedIds
    from tasks.intake import Intake, RequestInvalid
    from tasks.requests import RequestLedger

    if not (settings.data_repo / ".dvc").is_dir():
        typer.echo("error: no data version yet: run `uib train` first", err=True)
        raise typer.Exit(1)
    ledger = (
        RequestLedger(settings.ledger_path, salt=settings.salt)
        if settings.ledger_path.exists()
        else None
    )
    intake = Intake(DataRepo(settings.data_repo), ledger, ErasedIds.of(settings, ledger))
    try:
        return intake.check(request), intake.already_erased(request)
    except RequestInvalid as error:
        raise invalid("request", error) from error


def submit_by_event(request, settings, existing, erased=None) -> dict:
    """After `check_request`: the ledger, then the event, which names the request by reference
    (of any size); exit 1 when the event is not delivered. A request every id of which
    approved requests erased (`erased`) is approved here instead, with no event."""
    from tasks.erased_ids import acknowledge_open
    from tasks.events import emit_deletion_request
    from tasks.requests import RequestLedger, RequestState

    settled = (
        RequestState.APPROVED,
        RequestState.RUNNING,
        RequestState.HELD,
        RequestState.WITHDRAWN,
    )  # held: reviewed with `uib request …`, not sent again
    ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
    orphaned = existing is not None and ledger.owner_gone(existing)  # its run was killed
    if existing is not None and not orphaned and (existing.state in settled or existing.reviews):
        return {
            "request_id": request.request_id,
            "state": existing.state.value,
            "event_id": None,
            "duplicate": True,
        }
    try:
        record, _ = ledger.submit(request)
    except ValueError as error:  # sent with other content since `check_request`
        raise invalid("request", error) from error
    if erased and (done := acknowledge_open(request, settings, ledger, erased)):
        typer.echo(done.message, err=True)
        reply = {"request_id": request.request_id, "state": "approved", "event_id": None}
        return {**reply, "duplicate": False, "already_erased_by": done.already_erased_by}
    rerun = record.state in (RequestState.REJECTED, RequestState.FAILED) or bool(orphaned)
    if rerun:
        why = f"submitted again: {orphaned}" if orphaned else "submitted again"
        record = ledger.update(request.request_id, RequestState.PENDING, why)
    try:
        attempt = record.updated_at.isoformat() if rerun else ""
        event = emit_deletion_request(request, attempt, by_reference=True)
    except Exception as error:
        typer.echo(
            f"error: the event for request {request.request_id} was not delivered "
            f"({error}); it stays pending in the ledger",
            err=True,
        )
        raise typer.Exit(1) from error
    return {
        "request_id": request.request_id,
        "state": record.state.value,
        "event_id": str(event),
        "duplicate": False,
    }
