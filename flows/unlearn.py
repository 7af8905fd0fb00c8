"""The `unlearn` flow, the main job: one deletion request from intake to erasure.

    resolve ids → validate shift (GX) → version data (DVC) → unlearn (GPU task)
    → evaluate + gates → register (MLflow) → erase + audit

Validation runs on the manifests the new data version *would* have, before anything is
committed, so a refused request versions nothing and registers nothing. Every stage after it
is idempotent per request id (the data commit carries the id, the model version is tagged
with it, erasure of erased objects is a no-op), and the ledger marks a request `approved`
only at the end: a rerun after a crash finishes the job exactly once.
"""

from __future__ import annotations

import json
import re

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run

from flows.train import recipe
from tasks.data_versioning import read_staged, version_forget_set
from tasks.erasure import erase_request
from tasks.evaluation import GateReport, evaluate_candidate
from tasks.registry import (
    champion,
    client_for,
    register_candidate,
    version_for_request,
)
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestState,
    resolve_request,
    split_manifests,
)
from tasks.settings import Settings
from tasks.unlearning import ensure_gpu_limit, unlearn_task
from tasks.validation import validate_shift_task
from uib.samples import DataError, split_validation


class RequestRefused(Exception):
    """Validation refused the request: nothing was versioned or registered."""


class GatesFailed(Exception):
    """The candidate failed a gate: it is registered as `rejected`, the champion is unchanged."""

    def __init__(self, message: str, report: GateReport, model_version: str):
        super().__init__(message)
        self.report, self.model_version = report, model_version


def artifact_key(request_id: str) -> str:
    return "request-" + re.sub(r"[^a-z0-9-]", "-", request_id.lower())


def publish_outcome(request: DeletionRequest, state: RequestState, message: str,
                    gates: GateReport | None = None, model_version: str | None = None) -> None:
    lines = [f"# Deletion request `{request.request_id}`: **{state.value}**", "",
             f"- reason: {request.reason or '—'}",
             f"- selection: {request.sample_ids and f'{len(request.sample_ids)} ids' or request.where}",
             f"- model version: {model_version or '—'}", f"- {message}", ""]
    if gates is not None:
        lines += ["## Gates", "", gates.to_markdown()]
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(request.request_id),
                             description=f"Outcome of deletion request {request.request_id}")


def run_request(request: DeletionRequest, settings: Settings) -> dict:
    logger = get_run_logger()
    client = client_for(settings)
    current = champion(client, settings)
    if current is None:
        raise RequestRefused("no champion model is registered: run `uib train` first")
    try:
        resolved = resolve_request(request, settings.data_repo)
    except DataError as error:
        raise RequestRefused(str(error)) from error
    original_m, retain_m, forget_m = split_manifests(resolved)
    policy = settings.shift.model_copy(update={"allow_class_removal": request.allow_class_removal})
    validation = validate_shift_task(original_m, retain_m, forget_m, request.sample_ids or resolved.forget_ids,
                                     policy, resolved.dataset.num_classes, request.request_id)
    if not validation.success:
        raise RequestRefused("shift validation failed: " + "; ".join(
            f"{c.name} (observed {c.observed}, threshold {c.threshold})" for c in validation.failed))

    versions = version_forget_set(settings.data_repo, request.request_id, resolved.forget_ids,
                                  settings.stage_dir(request.request_id))
    forget = read_staged(versions["staged"])
    retain = resolved.dataset.train.drop(forget.ids)
    held_out, test = split_validation(resolved.dataset.test)
    parent = version_for_request(client, settings, request.request_id)
    base_version = str((parent.tags.get("parent_model_version") if parent else None) or current.version)
    ensure_gpu_limit()
    original, candidate, report = unlearn_task(settings, base_version, forget, retain, held_out,
                                               recipe(settings, resolved.dataset.name))
    patch_bias_request = bool(getattr(resolved.scenario, "name", None) == "patch-bias"
                              and forget_m["patched"].astype(bool).all())
    gates = evaluate_candidate(original, candidate, retain, forget, test, resolved.scenario,
                               settings.gates, patch_bias_request)
    version, run_id = register_candidate(settings, request, original, candidate, report, gates,
                                         validation, versions, retain, test, forget, base_version)
    if not gates.passed:
        raise GatesFailed(f"model version {version} rejected: {gates.message()}", gates, version)

    audit = erase_request(
        settings.data_repo, request.request_id, versions["before"], versions["after"],
        resolved.forget_ids, settings.salt(), settings.audit_dir, request.requested_at,
        staged_path=versions["staged"], model_version_before=base_version,
        model_version_after=version, gate_results=gates.model_dump(mode="json"),
    )
    with mlflow.start_run(run_id=run_id):
        mlflow.log_artifact(audit["audit_path"])
    logger.info("request %s approved: version %s is %s", request.request_id, version, settings.champion_alias)
    return {"request_id": request.request_id, "state": RequestState.APPROVED.value, "model_version": version,
            "gates": gates.model_dump(mode="json"), "data_versions": versions,
            "audit_path": audit["audit_path"], "unlearn_time_s": report.time_s}


@flow(name="unlearn", log_prints=True)
def unlearn_flow(request: dict, settings: dict | None = None) -> dict:
    """Handle one deletion request; a refused request or a failed gate ends the run Failed."""
    settings = Settings(**(settings or {}))
    request = DeletionRequest.model_validate(request)
    ledger = RequestLedger(settings.ledger_path)
    record, _ = ledger.submit(request)
    if record.state == RequestState.APPROVED:
        message = f"request {request.request_id} was already approved (model version {record.model_version})"
        get_run_logger().info(message)
        return {"request_id": request.request_id, "state": record.state.value,
                "model_version": record.model_version, "duplicate": True}
    ledger.update(request.request_id, RequestState.RUNNING, "", flow_run_id=str(flow_run.get_id()))
    try:
        outcome = run_request(request, settings)
    except RequestRefused as error:
        ledger.update(request.request_id, RequestState.REJECTED, str(error))
        publish_outcome(request, RequestState.REJECTED, str(error))
        raise
    except GatesFailed as error:
        ledger.update(request.request_id, RequestState.REJECTED, str(error), model_version=error.model_version)
        publish_outcome(request, RequestState.REJECTED, str(error), error.report, error.model_version)
        raise
    except Exception as error:
        ledger.update(request.request_id, RequestState.FAILED, f"{type(error).__name__}: {error}")
        publish_outcome(request, RequestState.FAILED, f"{type(error).__name__}: {error}")
        raise
    ledger.update(request.request_id, RequestState.APPROVED, "approved: every gate holds",
                  model_version=outcome["model_version"])
    publish_outcome(request, RequestState.APPROVED, "approved: every gate holds; forgotten samples erased",
                    GateReport.model_validate(outcome["gates"]), outcome["model_version"])
    outcome_path = settings.home.resolve() / "outcomes" / f"{request.request_id}.json"
    outcome_path.parent.mkdir(parents=True, exist_ok=True)
    outcome_path.write_text(json.dumps(outcome, indent=2, default=str))
    return outcome


