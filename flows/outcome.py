"""How a request's run ends: the exceptions that end it early, the outcome an approved request
keeps in the ledger, and the Markdown artifact Prefect shows for every outcome."""

from __future__ import annotations

from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, Field

from tasks.data_versioning import DataVersion
from tasks.erased_ids import Acknowledgement
from tasks.erasure import AuditRecord
from tasks.gate_report import GateReport
from tasks.requests import DeletionRequest, RequestRecord, RequestState
from tasks.review_page import mlflow_ui_command, mlflow_version_url, selection_text
from tasks.settings import Settings


class RequestRefused(Exception):
    """The request cannot be honoured as asked: nothing was versioned or registered."""


class RequestNotRunnable(Exception):
    """A run may not take the request up as it stands (held, withdrawn, erased, or the champion
    was moved by hand): nothing changed, the ledger state included."""


class ChampionUnfit(Exception):
    """The champion cannot be unlearned from (non-finite scores, another input shape or class
    count than the data's): nothing changed; the request is `failed`, to be sent again once a
    sound version is champion."""


class AlreadyErased(Exception):
    """Approved requests erased every id the request names: it is acknowledged, approved with
    no data or model version (`tasks.erased_ids`); the ledger and the audit record hold it."""

    def __init__(self, acknowledgement: Acknowledgement):
        super().__init__(acknowledgement.message)
        self.acknowledgement = acknowledgement


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
    decision: str = Field("", description="how the method treated the forget set (UnlearnReport)")
    fallback_for: str | None = Field(
        None, description="the rejected version the exact fallback (`retrain`) stands in for"
    )
    note: str = ""
    n_forgotten: int | None = Field(None, description="samples removed from the training data")
    mlflow_url: str | None = Field(None, description="the model version's page in the MLflow UI")
    mlflow_ui: str | None = Field(
        None, description="the command that serves a local store's UI at `mlflow_url` first"
    )
    already_erased_by: list[str] = Field(
        default_factory=list, description="approved requests that had erased some of its ids"
    )
    n_already_erased: int = Field(0, description="its ids they had erased (not forgotten again)")

    def already_erased_note(self) -> str:
        """`; N of its ids were erased already, by …`, or nothing."""
        if not self.already_erased_by:
            return ""
        n, by = self.n_already_erased, ", ".join(self.already_erased_by)
        return f"; {n} of its ids {'was' if n == 1 else 'were'} erased already, by {by}"


def review_links(settings: Settings, model_version: str, n_forgotten: int | None) -> dict:
    """The Outcome fields that tell a person where to review it and how much was removed."""
    return {
        "n_forgotten": n_forgotten,
        "mlflow_url": mlflow_version_url(settings.tracking_uri, settings.model_name, model_version),
        "mlflow_ui": mlflow_ui_command(settings.tracking_uri),
    }


def artifact_key(request_id: str) -> str:
    return "request-" + "".join(c if c.isalnum() else "-" for c in request_id.lower())


def next_step(request_id: str, state: RequestState, model_version: str | None = None) -> str | None:
    """What a person does next about a request in `state`, as the exact commands."""
    review = f'`uib request {{}} {request_id} --by YOUR_NAME --reason "WHY"`'
    if state == RequestState.HELD:
        return (
            f"a reviewer decides: {review.format('approve')} promotes "
            f"{f'version {model_version}' if model_version else 'the held candidate'} "
            f"despite the failed gates; {review.format('reject')} closes the request with the "
            f"champion unchanged; {review.format('retry')} runs the exact `retrain` on the "
            "retain set under the same gates"
        )
    if state == RequestState.REJECTED:
        return (
            "nothing was versioned or registered: send a corrected request "
            "(`uib request delete --where ATTR=VALUE …` or `--ids …`) under a new "
            f"`--request-id`, or close this one: {review.format('withdraw')}"
        )
    if state == RequestState.FAILED:
        return f"the run crashed; run it again: {review.format('retry')}"
    return None


def publish_outcome(
    request: DeletionRequest,
    state: RequestState,
    message: str,
    gates: GateReport | None = None,
    details: list[str] = (),
    model_version: str | None = None,
) -> None:
    """The request's outcome as a Prefect Markdown artifact (one key per request): the verdict,
    what was selected, the MLflow link, and on a rejection the next step."""
    lines = [
        f"# Deletion request `{request.request_id}`: **{state.value}**",
        "",
        f"- reason: {request.reason or '—'}",
        f"- selection: {selection_text(request)}",
        f"- {message}",
        *(f"- {d}" for d in details),
    ]
    if step := next_step(request.request_id, state, model_version):
        lines += ["", f"**Next step:** {step}."]
    if gates is not None:
        lines += ["", "## Gates", "", gates.to_markdown()]
    create_markdown_artifact(
        markdown="\n".join(lines),
        key=artifact_key(request.request_id),
        description=f"Outcome of deletion request {request.request_id}",
    )


def answer_duplicate(request: DeletionRequest, record: RequestRecord, logger) -> dict:
    """An approved request sent again: its recorded outcome, as `duplicate`; nothing runs."""
    if (acknowledgement := Acknowledgement.of(record)) is not None:
        publish_outcome(request, record.state, record.message)
        return acknowledgement.model_copy(update={"duplicate": True}).model_dump(mode="json")
    message = (
        f"already approved by an earlier run (model version {record.model_version}); nothing to do"
    )
    logger.info("request %s: %s", request.request_id, message)
    outcome = Outcome.model_validate(record.outcome)
    publish_outcome(request, record.state, message, outcome.gates, outcome_details(outcome))
    return outcome.model_copy(update={"duplicate": True}).model_dump(mode="json")


def already_erased_fields(audit: AuditRecord | None) -> dict:
    """The Outcome fields naming the ids approved requests had erased, from the audit record."""
    if audit is None:
        return {}
    return {
        "already_erased_by": audit.already_erased_by,
        "n_already_erased": len(audit.already_erased_id_hashes),
    }


def outcome_details(outcome: Outcome) -> list[str]:
    """The outcome's facts as artifact lines, the MLflow version page first."""
    lines = []
    if outcome.mlflow_url:
        serve = f" (serve the store first: `{outcome.mlflow_ui}`)" if outcome.mlflow_ui else ""
        lines.append(
            f"MLflow: [model version {outcome.model_version}]({outcome.mlflow_url}){serve}"
        )
    if outcome.n_forgotten is not None:
        lines.append(f"removed: {outcome.n_forgotten} samples" + outcome.already_erased_note())
    if outcome.decision:
        lines.append(f"{outcome.method}: {outcome.decision}")
    return [
        *lines,
        *([outcome.note] if outcome.note else []),
        f"model version: {outcome.model_version} (from {outcome.parent_model_version})",
        f"data version: {outcome.data_version_before.git_rev[:10]} → "
        f"{outcome.data_version_after.git_rev[:10]}",
        f"audit record: `{outcome.audit_path}`",
    ]
