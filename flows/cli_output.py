"""What the `uib` command line prints: progress from the first second, one clean line per
refusal or failure, and where to review the outcome.

Everything here goes to stderr but the commands' results (JSON or the demo's summary), so a
script can read stdout whatever the progress says.

Prefect logs every exception a flow or task run raises, with its traceback, at each level it
passes through: for a refused request about sixty lines of chained tracebacks precede the one
line that says why. Unless `--debug`, `clean_failures` keeps those records off the terminal —
the run's other log lines stay, as progress — and the command prints the reason once. The
records still reach Prefect's API handler (it runs first, on the run loggers), so a Prefect
server keeps the tracebacks; `--debug` shows them here as well.
"""

from __future__ import annotations

import logging
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer

FAILED_STATE = "Finished in state Failed"


class Terminal:
    """The flags every command reads; set by the app's callback (`uib --debug …`)."""

    debug: bool = False


def progress(message: str) -> None:
    """One line of progress on stderr, at once (before the heavy imports of a command)."""
    typer.echo(f"uib: {message}", err=True)
    sys.stderr.flush()


class HideFailureRecords(logging.Filter):
    """Drop the records that repeat a run's exception: those carrying a traceback, and the
    `Finished in state Failed(…)` lines that repeat its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info:
            return False
        return not str(record.msg).startswith(FAILED_STATE)


@contextmanager
def clean_failures(debug: bool) -> Iterator[None]:
    """Prefect's console output without failure tracebacks for the length of a command, unless
    `debug`; the filter is removed again on exit (the CLI runs in-process in tests)."""
    if debug:
        yield
        return
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    handlers = [h for h in logging.getLogger().handlers if isinstance(h, PrefectConsoleHandler)]
    hide = HideFailureRecords()
    for handler in handlers:
        handler.addFilter(hide)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(hide)


def invalid(what: str, error: Exception) -> typer.Exit:
    """Echo a validation error as `field: problem` lines; the exit code for bad input."""
    import pydantic

    if isinstance(error, pydantic.ValidationError):
        lines = [f"  {'.'.join(map(str, e['loc'])) or what}: {e['msg']}" for e in error.errors()]
        typer.echo(f"error: invalid {what}:\n" + "\n".join(lines), err=True)
    else:
        typer.echo(f"error: invalid {what}: {error}", err=True)
    return typer.Exit(2)


def fail(
    prefix: str,
    error: BaseException,
    expected: tuple[type[BaseException], ...] = (),
    home: str | Path | None = None,
) -> typer.Exit:
    """Print `prefix: reason` once (the traceback first with `--debug`); the exit code 1.

    An error of an `expected` kind (a refusal, a hold) is its message, and so is a fault of the
    host (`tasks.host_faults`: a full disk under the state folder `home`, a read-only DVC
    remote); anything else is a crash, named by its type, with a pointer to `--debug`.
    """
    from tasks.host_faults import host_fault

    if Terminal.debug:
        traceback.print_exception(error, file=sys.stderr)
    if home is not None and (fault := host_fault(error, home)) is not None:
        typer.echo(f"{prefix}: {fault}", err=True)
    elif isinstance(error, expected):
        typer.echo(f"{prefix}: {error}", err=True)
    else:
        hint = "" if Terminal.debug else " (run `uib --debug …` for the traceback)"
        typer.echo(f"{prefix}: {type(error).__name__}: {error}{hint}", err=True)
    return typer.Exit(1)


def expected_failures() -> tuple[type[BaseException], ...]:
    """The exceptions that end a run as designed: refused, not runnable, held for review, run
    by another process now, a store that stayed unreachable through the retries (its message
    names it), or a champion that cannot answer the data."""
    from flows.outcome import ChampionUnfit, GatesFailed, RequestNotRunnable, RequestRefused
    from flows.review import ReviewRefused
    from tasks.requests import RequestBusy
    from tasks.retrying import StoreUnreachable

    return (
        RequestRefused,
        RequestNotRunnable,
        GatesFailed,
        ReviewRefused,
        RequestBusy,
        StoreUnreachable,
        ChampionUnfit,
    )


def review_hint(outcome: dict) -> list[str]:
    """Where to review an outcome: the MLflow version page's URL, and the command that serves a
    local store there first."""
    url = outcome.get("mlflow_url")
    if not url:
        return []
    lines = [f"Review it in the MLflow UI: {url}"]
    if command := outcome.get("mlflow_ui"):
        lines.append(f"  (serve the store there first: {command})")
    return lines


def held_lines(outcome: dict) -> list[str]:
    """A held request for a person: what was removed already, and what a reviewer runs next."""
    rid, removed = outcome["request_id"], outcome.get("n_forgotten")
    count = f"{removed} sample{'' if removed == 1 else 's'}" if removed else "the forget set"
    return [
        f"{count} removed from the training data and erased; model version "
        f"{outcome.get('model_version')} is rejected and the champion unchanged",
        f'next: uib request approve|reject|retry {rid} --by YOUR_NAME --reason "WHY"',
        *review_hint(outcome),
    ]


def outcome_lines(outcome: dict, model_name: str, champion_alias: str) -> list[str]:
    """What an `unlearn` run did, for a person: samples removed, the version, where to look."""
    rid, version = outcome["request_id"], outcome.get("model_version")
    removed = outcome.get("n_forgotten")
    erasers = ", ".join(outcome.get("already_erased_by") or [])
    if outcome.get("kind") == "already-erased":  # every id was erased already
        again = " (acknowledged before)" if outcome.get("duplicate") else ""
        head = f"request {rid}{again} {outcome['message']}"
    elif outcome.get("duplicate"):
        head = f"request {rid} was already approved (model version {version}); nothing to do"
    else:
        plural = "" if removed == 1 else "s"
        count = f"{removed} sample{plural} removed from the training data; " if removed else ""
        head = (
            f"request {rid} {outcome['state']}: {count}{model_name} version {version} is "
            f"{champion_alias}"
        )
        if erasers:
            n = outcome.get("n_already_erased")
            head += f"; {n} of its ids {'was' if n == 1 else 'were'} erased already, by {erasers}"
    return [head, *review_hint(outcome)]


REPLY_KEYS = (
    "request_id",
    "state",
    "model_version",
    "parent_model_version",
    "duplicate",
    "n_forgotten",
    "mlflow_url",
)


def outcome_reply(outcome: dict) -> dict:
    """The JSON line `uib request delete` prints for a run: these keys, and the requests that
    had erased every id of an acknowledged one."""
    reply = {k: outcome.get(k) for k in REPLY_KEYS}
    if outcome.get("kind") == "already-erased":
        reply["already_erased_by"] = outcome["already_erased_by"]
    return reply
