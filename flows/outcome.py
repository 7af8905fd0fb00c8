"""How a request's run ends: the exceptions that end it early, the outcome an approved request
keeps in the ledger, and the Markdown artifact Prefect shows for every outcome."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.data_versioning import DataVersion
from tasks.gate_report import GateReport
from tasks.requests import DeletionRequest, RequestState


class RequestRefused(Exception):
    """The request cannot be honoured as asked: nothing was versioned or registered."""


class RequestNotRunnable(Exception):
    """A run may not take the request up as it stands (held, withdrawn, erased, or the champion
    was moved by hand): nothing changed, the ledger state included."""


class GatesFailed(Exception):
    """Every candidate failed a gate: each is registered as `rejected`, the champion is
    unchanged, the forget set is erased and the request is held for review."""

    def __init__(self, message: str, report: GateReport, model_version: str, outcome: Outcome):
        super().__init__(message)
        self.report, self.model_version, self.outcome = report, model_version, outcome


class Outcome(BaseModel):
    """What a run did for an approved request; the ledger keeps it with the request."""

    request_id: str
    state: RequestState
    model_version: str
    parent_model_version: str
    gates: GateReport
    data_version_before: DataVersion
    data_version_after: DataVersion
    audit_path: str
    unlearn_time_s: float | None = None
    duplicate: bool = False
    method: str | None = None
    fallback_for: str | None = Field(
        None, description="the rejected version the exact fallback (`retrain`) stands in for"
    )
    note: str = ""


def artifact_key(request_id: str) -> str:
    return "request-" + "".join(c if c.isalnum() else "-" for c in request_id.lower())


def publish_outcome(
    request: DeletionRequest,
    state: RequestState,
    message: str,
    gates: GateReport | None = None,
    details: list[str] = (),
) -> None:
    """The request's outcome as a Prefect Markdown artifact (one key per request)."""
    selection = f"{len(request.sample_ids)} ids" if request.sample_ids else f"where {request.where}"
    lines = [
        f"# Deletion request `{request.request_id}`: **{state.value}**",
        "",
        f"- reason: {request.reason or '—'}",
        f"- selection: {selection}",
        f"- {message}",
        *(f"- {d}" for d in details),
    ]
    if gates is not None:
        lines += ["", "## Gates", "", gates.to_markdown()]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=artifact_key(request.request_id),
        description=f"Outcome of deletion request {request.request_id}",
    )


def outcome_details(outcome: Outcome) -> list[str]:
    return [
        *([outcome.note] if outcome.note else []),
        f"model version: {outcome.model_version} (from {outcome.parent_model_version})",
        f"data version: {outcome.data_version_before.git_rev[:10]} → "
        f"{outcome.data_version_after.git_rev[:10]}",
        f"audit record: `{outcome.audit_path}`",
    ]
