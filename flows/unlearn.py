"""The `unlearn` flow, the main job: one deletion request from intake to erasure.

    resolve ids → validate shift (GX) → version data (DVC) → unlearn (GPU task)
    → evaluate + gates → register (MLflow) → erase + audit

Validation runs on the manifests the new data version *would* have, before anything is
committed, so a refused request versions nothing and registers nothing. Every later stage is
idempotent per request id: the data commit carries the id, the unlearned candidate is a
persisted task result keyed by it, the model version is tagged with it at creation, and erasing
erased objects is a no-op. A rerun of a request whose candidate was already approved skips to
the stages still missing. The ledger marks a request `approved` only at the very end.

Invariant: the data repository's current version is the one the champion was trained or
unlearned on, unless it is the commit of an open request. Another request is refused until that
one is finished or reviewed, so no model is ever built on data it does not match.
"""

from __future__ import annotations

import json
import shutil

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from prefect.runtime import flow_run
from pydantic import BaseModel

from flows.train import recipe
from flows.unlearn_step import run_step_deployment
from tasks.data_versioning import DataRepo, DataVersion, read_staged, version_forget_set
from tasks.erasure import erase_request
from tasks.evaluation import GateReport, evaluate_candidate
from tasks.registry import (
    approved_version,
    champion,
    client_for,
    gate_report_of,
    load_version,
    log_audit,
    promote,
    register_candidate,
)
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestState,
    Resolved,
    resolve_request,
)
from tasks.settings import Settings
from tasks.unlearning import candidate_key, ensure_gpu_limit, run_unlearning
from tasks.validation import ValidationReport, validate_shift_task
from uib.samples import DataError, split_validation
from uib.scenarios import select_forget


class RequestRefused(Exception):
    """The request cannot be honoured as asked: nothing was versioned or registered."""


class GatesFailed(Exception):
    """The candidate failed a gate: it is registered as `rejected`, the champion is unchanged."""

    def __init__(self, message: str, report: GateReport, model_version: str):
        super().__init__(message)
        self.report, self.model_version = report, model_version


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


def artifact_key(request_id: str) -> str:
    return "request-" + "".join(c if c.isalnum() else "-" for c in request_id.lower())


def publish_outcome(request: DeletionRequest, state: RequestState, message: str,
                    gates: GateReport | None = None, details: list[str] = ()) -> None:
    """The request's outcome as a Prefect Markdown artifact (one key per request)."""
    selection = f"{len(request.sample_ids)} ids" if request.sample_ids else f"where {request.where}"
    lines = [f"# Deletion request `{request.request_id}`: **{state.value}**", "",
             f"- reason: {request.reason or '—'}", f"- selection: {selection}",
             f"- {message}", *(f"- {d}" for d in details)]
    if gates is not None:
        lines += ["", "## Gates", "", gates.to_markdown()]
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(request.request_id),
                             description=f"Outcome of deletion request {request.request_id}")


def outcome_details(outcome: Outcome) -> list[str]:
    return [f"model version: {outcome.model_version} (from {outcome.parent_model_version})",
            f"data version: {outcome.data_version_before.git_rev[:10]} → "
            f"{outcome.data_version_after.git_rev[:10]}",
            f"audit record: `{outcome.audit_path}`"]


# --------------------------------------------------------------------------- stages


def check_data_matches_champion(repo: DataRepo, champion_version, request_id: str) -> None:
    """Refuse when the data moved past the champion for another, still open, request."""
    trained_on = (champion_version.tags.get("data_version_after")
                  or champion_version.tags.get("data_git_rev"))
    head = repo.current()
    if trained_on in (None, head.git_rev) or repo.find_request(request_id) == head.git_rev:
        return
    raise RequestRefused(
        f"the current data version {head.git_rev[:10]} ({head.message!r}) is ahead of the "
        f"champion, version {champion_version.version}, built on {trained_on[:10]}: finish or "
        "review that request first")


def validate(request: DeletionRequest, resolved: Resolved, settings: Settings) -> ValidationReport:
    original, retain, forget = resolved.manifests()
    policy = settings.shift.model_copy(update={"allow_class_removal": request.allow_class_removal})
    report = validate_shift_task(original, retain, forget,
                                 request.sample_ids or resolved.forget_ids, policy,
                                 resolved.dataset.num_classes, request.request_id)
    if not report.success:
        raise RequestRefused("shift validation failed: " + "; ".join(
            f"{c.name} (observed {c.observed}, threshold {c.threshold})" for c in report.failed))
    return report


def erase_and_audit(request: DeletionRequest, settings: Settings, before: DataVersion,
                    after: DataVersion, forget_ids: list[str], parent: str, version: str,
                    run_id: str, gates: GateReport) -> str:
    audit = erase_request(
        settings.data_repo, request.request_id, before, after, forget_ids, settings.salt(),
        settings.audit_dir, request.requested_at,
        staged_path=settings.stage_dir(request.request_id) / "forget.npz",
        model_version_before=parent, model_version_after=version,
        gate_results=gates.model_dump(mode="json"),
    )
    log_audit(settings, run_id, audit["audit_path"])
    return audit["audit_path"]


def unlearn_remotely(settings: Settings, request_id: str, parent: str, after: DataVersion,
                     train_recipe) -> None:
    """The unlearning step as its own deployment; its candidate lands in this flow's cache."""
    run_step_deployment(settings, request_id, parent, after.git_rev)
    key = candidate_key(settings, parent, after.dvc_md5, train_recipe)
    if not (settings.results_dir / request_id / key).exists():
        raise RuntimeError(
            f"the unlearning step {settings.gpu_deployment!r} completed but its candidate is not "
            f"in {settings.results_dir / request_id}: the step's work pool must share UIB_HOME")


def process(request: DeletionRequest, settings: Settings) -> Outcome:
    """The whole way for a request that has no approved candidate yet."""
    client = client_for(settings)
    current = champion(client, settings)
    if current is None:
        raise RequestRefused("no champion model is registered: run `uib train` first")
    repo = DataRepo(settings.data_repo)
    check_data_matches_champion(repo, current, request.request_id)
    try:
        resolved = resolve_request(request, settings.data_repo)
    except DataError as error:
        raise RequestRefused(str(error)) from error
    validation = validate(request, resolved, settings)

    versions = version_forget_set(settings.data_repo, request.request_id, resolved.forget_ids,
                                  settings.stage_dir(request.request_id))
    before, after = (DataVersion.model_validate(versions[k]) for k in ("before", "after"))
    forget = read_staged(versions["staged"])
    retain = resolved.dataset.train.drop(forget.ids)
    held_out, test = split_validation(resolved.dataset.test)
    parent = str(current.version)
    train_recipe = recipe(settings, resolved.dataset.name)
    if settings.gpu_deployment:
        unlearn_remotely(settings, request.request_id, parent, after, train_recipe)
    else:
        ensure_gpu_limit()
    candidate, report = run_unlearning(settings, request.request_id, parent, after.dvc_md5,
                                       forget, retain, held_out, train_recipe)
    original = load_version(settings, parent)
    gates = evaluate_candidate(original, candidate, retain, forget, test, resolved.scenario,
                               settings.gates, resolved.removes_bias_slice())
    version, run_id = register_candidate(settings, request, original, candidate, report, gates,
                                         validation, versions, retain, test, forget, parent)
    if not gates.passed:
        raise GatesFailed(f"model version {version} rejected: {gates.message()}", gates, version)
    audit_path = erase_and_audit(request, settings, before, after, resolved.forget_ids, parent,
                                 version, run_id, gates)
    return Outcome(request_id=request.request_id, state=RequestState.APPROVED,
                   model_version=version, parent_model_version=parent, gates=gates,
                   data_version_before=before, data_version_after=after, audit_path=audit_path,
                   unlearn_time_s=report.time_s)


def finish(request: DeletionRequest, settings: Settings, version) -> Outcome:
    """A run crashed after the candidate was approved: promote it if nothing else moved the
    champion since, and erase unless the audit record shows it done."""
    client = client_for(settings)
    tags, parent = version.tags, version.tags["parent_model_version"]
    current = champion(client, settings)
    if current is not None and str(current.version) == parent:
        promote(client, settings, str(version.version))
    repo = DataRepo(settings.data_repo)
    before = repo.version(tags["data_version_before"])
    after = repo.version(tags["data_version_after"])
    gates = gate_report_of(version)
    audit_path = settings.audit_dir / f"{request.request_id}.json"
    done = audit_path.exists() and json.loads(audit_path.read_text()).get(
        "model_version_after") == str(version.version)
    if done:
        log_audit(settings, version.run_id, str(audit_path))
    else:
        manifest = repo.load_manifest(before.git_rev)
        ids = select_forget(manifest, ids=request.sample_ids, where=request.where)
        audit_path = erase_and_audit(request, settings, before, after, [str(i) for i in ids],
                                     parent, str(version.version), version.run_id, gates)
    return Outcome(request_id=request.request_id, state=RequestState.APPROVED,
                   model_version=str(version.version), parent_model_version=parent, gates=gates,
                   data_version_before=before, data_version_after=after,
                   audit_path=str(audit_path))


# --------------------------------------------------------------------------- the flow


def run_name() -> str:
    request = flow_run.parameters.get("request") or {}
    return f"unlearn-{request.get('request_id', 'new-request')}"


@flow(name="unlearn", flow_run_name=run_name, log_prints=True)
def unlearn_flow(request: dict, settings: dict | None = None) -> dict:
    """Handle one deletion request; a refused request or a failed gate ends the run Failed.

    Ledger states: `rejected` (refused, or a gate failed: open for review, may be run again),
    `failed` (crashed: run it again), `approved` (done; a rerun only acknowledges it).
    """
    settings = Settings(**(settings or {}))
    request = DeletionRequest.model_validate(request)
    ledger = RequestLedger(settings.ledger_path)
    logger = get_run_logger()
    with ledger.exclusive(request.request_id), ledger.serialized():
        record, _ = ledger.submit(request)
        if record.state == RequestState.APPROVED:
            message = (f"already approved by an earlier run (model version "
                       f"{record.model_version}); nothing to do")
            logger.info("request %s: %s", request.request_id, message)
            outcome = Outcome.model_validate(record.outcome)
            publish_outcome(request, record.state, message, outcome.gates,
                            outcome_details(outcome))
            return outcome.model_copy(update={"duplicate": True}).model_dump(mode="json")
        ledger.update(request.request_id, RequestState.RUNNING, "",
                      flow_run_id=str(flow_run.get_id()))
        try:
            done = approved_version(client_for(settings), settings, request.request_id)
            outcome = finish(request, settings, done) if done else process(request, settings)
        except RequestRefused as error:
            ledger.update(request.request_id, RequestState.REJECTED, str(error))
            publish_outcome(request, RequestState.REJECTED, str(error))
            raise
        except GatesFailed as error:
            ledger.update(request.request_id, RequestState.REJECTED, str(error),
                          model_version=error.model_version)
            publish_outcome(request, RequestState.REJECTED, str(error), error.report)
            raise
        except Exception as error:
            message = f"{type(error).__name__}: {error}"
            ledger.update(request.request_id, RequestState.FAILED, message)
            publish_outcome(request, RequestState.FAILED, message)
            raise
        shutil.rmtree(settings.results_dir / request.request_id, ignore_errors=True)
        message = "approved: every gate holds; forgotten samples erased"
        ledger.update(request.request_id, RequestState.APPROVED, message,
                      model_version=outcome.model_version, outcome=outcome.model_dump(mode="json"))
        publish_outcome(request, RequestState.APPROVED, message, outcome.gates,
                        outcome_details(outcome))
    logger.info("request %s approved: version %s is %s", request.request_id,
                outcome.model_version, settings.champion_alias)
    return outcome.model_dump(mode="json")
