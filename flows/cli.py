"""The `uib` command line. Heavy imports (Prefect, MLflow, GX) stay inside the commands that need them."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import typer

from flows.cli_adopt import adopt_app
from flows.cli_input import BadArgument, parse_where, read_ids_file
from flows.cli_library import library_app
from flows.cli_output import (
    Terminal,
    clean_failures,
    expected_failures,
    fail,
    held_lines,
    invalid,
    outcome_lines,
    outcome_reply,
    progress,
)
from flows.cli_submit import check_request, submit_by_event
from flows.lifecycle import handle_termination, prefect_api
from tasks.quiet import quiet_prefect

app = typer.Typer(
    help="Machine unlearning with UIB: benchmark, train or adopt, delete, review.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main(
    debug: bool = typer.Option(
        False, "--debug", help="show the tracebacks behind a refusal or failure"
    ),
) -> None:
    """Machine unlearning with UIB: benchmark, train, delete, review."""
    Terminal.debug = debug
    handle_termination()


app.add_typer(library_app)
app.add_typer(adopt_app)

request_app = typer.Typer(help="Submit and review data-deletion requests.", no_args_is_help=True)
app.add_typer(request_app, name="request")


def load_settings():
    import pydantic

    from tasks.settings import Settings

    try:
        return Settings()
    except pydantic.ValidationError as error:
        raise invalid("settings (UIB_* environment)", error) from error


@app.command()
def train() -> None:
    """Run the `train` flow: version the dataset, train the original, register it as champion."""
    quiet_prefect()
    settings = load_settings()
    progress(
        f"train: versioning the dataset and training the original in {settings.home}/ "
        "(Prefect's temporary server starts first unless PREFECT_API_URL is set)…"
    )
    from flows.train import train_flow

    try:
        with clean_failures(Terminal.debug), prefect_api():
            result = train_flow(settings.overrides())
    except Exception as error:
        raise fail("error: training failed", error, home=settings.home) from error
    how = "trained and registered" if result["trained"] else "already registered"
    typer.echo(f"champion: version {result['model_version']} ({how})")


@request_app.command("delete")
def request_delete(
    ids: list[str] | None = typer.Option(None, "--ids", help="sample ids to forget (repeatable)"),
    ids_file: Path | None = typer.Option(
        None,
        "--ids-file",
        help="a file of sample ids to forget, one per line (blank lines ignored); for large "
        "requests",
        dir_okay=False,
    ),
    where: list[str] | None = typer.Option(
        None,
        "--where",
        help="a clause ATTR=V, ATTR!=V, ATTR<V (<=, >, >= on numbers and ISO dates) or 'ATTR in (A, B)'; repeatable, ANDed: the same ATTR twice must hold both",
    ),
    request_id: str | None = typer.Option(None, "--request-id", help="default: a new random id"),
    reason: str = typer.Option("", "--reason", help="why the data must go"),
    allow_class_removal: bool = typer.Option(False, help="allow a whole class to vanish"),
    run_here: bool = typer.Option(
        False, "--run-here", help="run the flow in this process even when PREFECT_API_URL is set"
    ),
) -> None:
    """Honour one deletion request.

    Both modes first check it: exit 2 naming the field, with nothing recorded, when it is
    malformed or cannot apply to the current data version, then record it in the ledger and
    hand it on by reference (its ids stay in the ledger, never in a Prefect parameter or
    event). With PREFECT_API_URL set: emit `uib.deletion.requested` for the `unlearn-on-event`
    deployment; print the request id and return (follow it with `uib requests`). Otherwise run
    the `unlearn` flow here; exit 1 with the reason when it is refused or fails a gate.
    """
    quiet_prefect()
    progress("request delete: checking the request against the current data version…")
    import pydantic

    from tasks.requests import DeletionRequest

    try:
        listed = [*(ids or []), *(read_ids_file(ids_file) if ids_file else [])]
        clauses = parse_where(where) if where else None
    except BadArgument as error:
        raise invalid(error.option, error) from error
    fields = {
        "request_id": request_id or f"req-{uuid.uuid4().hex[:12]}",
        "sample_ids": listed or None,
        "where": clauses,
        "reason": reason,
        "allow_class_removal": allow_class_removal,
    }
    try:
        request = DeletionRequest(**fields)
    except pydantic.ValidationError as error:
        raise invalid("request", error) from error
    settings = load_settings()
    existing, erased = check_request(request, settings)
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value() and not run_here:
        try:
            reply = submit_by_event(request, settings, existing, erased)
        except typer.Exit:
            raise
        except Exception as error:  # a full disk: one line, not a traceback
            raise fail(
                f"request {request.request_id} not submitted", error, home=settings.home
            ) from error
        typer.echo(json.dumps(reply))
        return
    from tasks.review_page import selection_text

    progress(
        f"request {request.request_id} ({selection_text(request)}): running the unlearn flow "
        "here — validate, version the data, unlearn, gate, register, erase…"
    )
    from flows.unlearn import GatesFailed, unlearn_flow
    from tasks.requests import RequestLedger, RequestRef

    try:
        RequestLedger(settings.ledger_path, salt=settings.salt).submit(request)
    except ValueError as error:  # sent with other content since `check_request`
        raise invalid("request", error) from error
    except Exception as error:  # a full disk: one line, not a traceback
        raise fail(
            f"request {request.request_id} not recorded", error, home=settings.home
        ) from error
    reference = RequestRef(request_id=request.request_id).model_dump(mode="json")
    try:
        with clean_failures(Terminal.debug), prefect_api():
            outcome = unlearn_flow(reference, settings.overrides())
    except Exception as error:
        exit_code = fail(
            f"request {request.request_id} not approved",
            error,
            expected_failures(),
            home=settings.home,
        )
        if isinstance(error, GatesFailed):
            for line in held_lines(error.outcome.model_dump(mode="json")):
                typer.echo(line, err=True)
        raise exit_code from error
    for line in outcome_lines(outcome, settings.model_name, settings.champion_alias):
        typer.echo(line, err=True)
    typer.echo(json.dumps(outcome_reply(outcome)))


BY = typer.Option(..., "--by", help="who decides (recorded in the ledger, tags and audit)")
REASON = typer.Option(..., "--reason", help="why (recorded with the name)")
REQUEST_ID = typer.Argument(..., help="the request id, as `uib requests` lists it")


@request_app.command("approve")
def request_approve(request_id: str = REQUEST_ID, by: str = BY, reason: str = REASON) -> None:
    """Promote a held request's candidate; refused when the champion moved since."""
    review_command("approve", request_id, by, reason)


@request_app.command("reject")
def request_reject(request_id: str = REQUEST_ID, by: str = BY, reason: str = REASON) -> None:
    """Close a held request as rejected; the champion stays."""
    review_command("reject", request_id, by, reason)


@request_app.command("retry")
def request_retry(
    request_id: str = REQUEST_ID,
    by: str = BY,
    reason: str = REASON,
    method: str = typer.Option(
        "retrain", "--method", help="what to run (an erased forget set leaves only `retrain`)"
    ),
) -> None:
    """Run the `unlearn` flow again, here, for a held, rejected or failed request."""
    review_command("retry", request_id, by, reason, method)


@request_app.command("withdraw")
def request_withdraw(request_id: str = REQUEST_ID, by: str = BY, reason: str = REASON) -> None:
    """Close a pending, held, rejected or failed request; erased data stays erased."""
    review_command("withdraw", request_id, by, reason)


def review_command(
    action: str, request_id: str, by: str, reason: str, method: str = "retrain"
) -> None:
    """Exit 2 naming the field for bad input, 1 when the action does not apply or fails."""
    quiet_prefect()
    import pydantic

    from tasks.requests import Review
    from tasks.settings import Settings

    try:
        review = Review(action=action, by=by, reason=reason)
    except pydantic.ValidationError as error:
        raise invalid("review", error) from error
    settings = load_settings()
    try:
        Settings(**{**settings.overrides(), "method": method, "method_config": {}})
    except pydantic.ValidationError as error:
        raise invalid("--method", error) from error
    if action == "retry":
        progress(f"retry of request {request_id}: running the unlearn flow here with `{method}`…")
    from flows.review import ReviewRefused, review_request

    try:
        with clean_failures(Terminal.debug), prefect_api():
            result = review_request(settings, request_id, review, method)
    except KeyError as error:
        raise invalid("request_id", error.args[0]) from error
    except ReviewRefused as error:
        raise fail("error", error, (ReviewRefused,)) from error
    except Exception as error:  # a retry's run: refused, held again, or crashed
        raise fail(
            f"request {request_id} not approved", error, expected_failures(), settings.home
        ) from error
    typer.echo(result.model_dump_json())


@app.command()
def serve(limit: int | None = typer.Option(None, help="most flow runs at once")) -> None:
    """Serve the deployments (on event, scheduled, train, GPU step) against PREFECT_API_URL."""
    quiet_prefect()
    settings = load_settings()
    from flows.deploy import serve as serve_deployments

    try:
        serve_deployments(settings, limit)
    except RuntimeError as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from error


@app.command("requests")
def list_requests(as_json: bool = typer.Option(False, "--json", help="one JSON array")) -> None:
    """List deletion requests with their state, flow run, model version and last review."""
    from tasks.requests import RequestLedger

    records = RequestLedger(load_settings().ledger_path).list()
    records_by_id = {r.request_id: r for r in records}
    rows = [
        {
            "request_id": r.request_id,
            "state": r.state.value,
            "flow_run_id": r.flow_run_id,
            "model_version": r.model_version,
            "batch_id": r.batch_id,
            "message": r.message,
            "requested_at": r.request.requested_at.isoformat(),  # the sender's claim
            "received_at": r.received_at.isoformat(),  # the ledger's: the queue's order
            "updated_at": r.updated_at.isoformat(),
            "reviews": [v.model_dump(mode="json") for v in r.reviews],
        }
        for r in records
    ]
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        version = f"v{row['model_version']}" if row["model_version"] else "-"
        review = records_by_id[row["request_id"]].reviews
        last = f"[{review[-1].line()}] " if review else ""
        typer.echo(
            f"{row['request_id']:<32} {row['state']:<9} {version:<5} "
            f"{row['flow_run_id'] or '-':<37} {last}{row['message'][:100]}"
        )


@app.command()
def demo() -> None:
    """The main job on `digits`: train if needed, delete the faulty source's samples, review."""
    quiet_prefect()
    settings = load_settings()
    progress(
        f"demo: state folder {settings.home}/, MLflow at {settings.tracking_uri}; loading the "
        "pipeline and starting Prefect's temporary server (about 10–20 s)…"
    )
    from flows.demo import run_demo, summary

    try:
        with clean_failures(Terminal.debug), prefect_api():
            result = run_demo(settings, progress)
    except Exception as error:
        raise fail(
            "demo request not approved", error, expected_failures(), settings.home
        ) from error
    typer.echo(summary(settings, result))


if __name__ == "__main__":
    app()
