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
from dataclasses import dataclass

import mlflow
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

import uib
from flows.train import recipe
from tasks import plots
from tasks.data_versioning import DataRepo, read_staged, version_forget_set
from tasks.erasure import erase_request
from tasks.evaluation import GateReport, evaluate_candidate
from tasks.registry import (
    champion,
    client_for,
    config_hash,
    load_version,
    log_figures,
    log_json,
    log_model,
    promote,
    set_tags,
    version_for_request,
)
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.settings import Settings
from tasks.validation import validate_shift_task
from uib.data import Dataset
from uib.device import select_device
from uib.metrics import MembershipAttack, mia_features
from uib.samples import DataError, Samples, split_validation
from uib.scenarios import select_forget
from uib.train import predict_logits


class RequestRefused(Exception):
    """Validation refused the request: nothing was versioned or registered."""


class GatesFailed(Exception):
    """The candidate failed a gate: it is registered as `rejected`, the champion is unchanged."""


@dataclass
class Resolved:
    dataset: Dataset
    scenario: object
    forget_ids: list[str]
    data_rev: str


@task(name="resolve-request", cache_policy=NO_CACHE)
def resolve_request(request: DeletionRequest, settings: Settings) -> Resolved:
    """The request's training-sample ids, read from the data version it applies to.

    A rerun of a request whose data commit exists reads the version before that commit.
    """
    repo = DataRepo(settings.data_repo)
    done = repo.find_request(request.request_id)
    rev = f"{done}~1" if done else repo.current().git_rev
    dataset, scenario = repo.load(rev)
    if request.sample_ids is not None:
        ids = select_forget(dataset.manifest, ids=request.sample_ids)
    else:
        ids = select_forget(dataset.manifest, where=request.where)
    return Resolved(dataset, scenario, [str(i) for i in ids], repo.version(rev).git_rev)


def split_manifests(resolved: Resolved):
    manifest = resolved.dataset.manifest
    forget = manifest["sample_id"].isin(resolved.forget_ids)
    return manifest, manifest[~forget], manifest[forget]


@task(name="unlearn", tags=["gpu"], retries=1, retry_delay_seconds=5, timeout_seconds=3600,
      cache_policy=NO_CACHE)
def unlearn_task(settings: Settings, model_version: str, forget: Samples, retain: Samples,
                 validation: Samples, dataset_name: str):
    """The GPU task: the champion from the registry, `uib.unlearn` on CUDA when present."""
    original = load_version(settings, model_version)
    device = select_device(settings.device)
    candidate, report = uib.unlearn(
        original, forget, retain, settings.method, settings.method_config,
        train_config=recipe(settings, dataset_name), validation=validation, device=device,
        seed=settings.scenario.seed,
    )
    get_run_logger().info("%s on %s: %.2f s %s", settings.method, device, report.time_s, report.phase_seconds)
    return original, candidate.cpu().eval(), report


def mia_scores(models: dict, retain: Samples, test: Samples, forget: Samples) -> dict:
    """Each model's attack member probabilities on retain, test and forget samples."""
    out = {}
    for name, model in models.items():
        feats = {n: mia_features(predict_logits(model, s.x), s.y)
                 for n, s in (("retain", retain), ("test", test), ("forget", forget))}
        attack = MembershipAttack(feats["retain"], feats["test"])
        out[name] = {n: attack.member_probability(f) for n, f in feats.items()}
    return out


@task(name="register-candidate", cache_policy=NO_CACHE)
def register_candidate(settings: Settings, request: DeletionRequest, original, candidate, report,
                       gates: GateReport, validation_report, versions: dict, retain: Samples,
                       test: Samples, forget: Samples, champion_version: str) -> tuple[str, str]:
    """A new model version with tags, metrics, plots and reports; champion moves if gates hold.

    Returns (model version, MLflow run id). A rerun finds the approved version the request
    registered; after a rejection it registers a new candidate.
    """
    client = client_for(settings)
    existing = version_for_request(client, settings, request.request_id)
    if existing is not None and existing.tags.get("gates") == "passed":
        version, run_id = str(existing.version), existing.run_id
    else:
        with mlflow.start_run(run_name=request.request_id) as run:
            mlflow.set_tags({"request_id": request.request_id, "reason": request.reason})
            mlflow.log_params({"method": report.method, **{f"uib.{k}": v for k, v in report.config.items()}})
            for prefix, metrics in (("before", gates.before), ("after", gates.after)):
                mlflow.log_metrics({f"{prefix}_{k}": v for k, v in metrics.model_dump().items()
                                    if isinstance(v, float)})
            mlflow.log_metrics({"unlearn_time_s": report.time_s, "gates_passed": float(gates.passed),
                                **{f"phase_{k}_s": v for k, v in report.phase_seconds.items()}})
            for i, row in enumerate(report.loss_curve):
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=i)
            log_json("gate_report.json", gates.model_dump(mode="json"))
            log_json("gate_report.md", gates.to_markdown())
            log_json("unlearn_report.json", report.model_dump(mode="json"))
            log_json("gx_validation_result.json", validation_report.gx_result)
            log_json("shift_validation.md", validation_report.to_markdown())
            figures = {
                "per_class_accuracy": plots.per_class_accuracy(gates.before, gates.after),
                "mia_histograms": plots.mia_histograms(
                    mia_scores({"before": original, "after": candidate}, retain, test, forget)),
                "loss_curves": plots.loss_curves(report.loss_curve),
            }
            if gates.after.bias_asr is not None:
                figures["bias_probe"] = plots.bias_probe(gates.before, gates.after)
            log_figures(figures)
            version = str(log_model(candidate, settings, test.x).version)
            run_id = run.info.run_id
        set_tags(client, settings, version, {
            "request_id": request.request_id, "method": report.method,
            "config_hash": config_hash(report.config),
            "data_version_before": versions["before"]["git_rev"],
            "data_version_after": versions["after"]["git_rev"],
            "data_md5_before": versions["before"]["dvc_md5"],
            "data_md5_after": versions["after"]["dvc_md5"],
            "parent_model_version": champion_version,
            "gates": "passed" if gates.passed else "failed",
        })
        client.update_model_version(
            settings.model_name, version,
            description=f"Deletion request `{request.request_id}`: {request.reason or 'no reason given'}\n\n"
                        f"Gates {'passed' if gates.passed else 'FAILED'}.\n\n{gates.to_markdown()}")
    if gates.passed:
        promote(client, settings, version)
    else:
        set_tags(client, settings, version, {"rejected": gates.message()})
    return version, run_id


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
        resolved = resolve_request(request, settings)
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
    original, candidate, report = unlearn_task(settings, base_version, forget, retain, held_out,
                                               resolved.dataset.name)
    patch_bias_request = bool(getattr(resolved.scenario, "name", None) == "patch-bias"
                              and forget_m["patched"].astype(bool).all())
    gates = evaluate_candidate(original, candidate, retain, forget, test, resolved.scenario,
                               settings.gates, patch_bias_request)
    version, run_id = register_candidate(settings, request, original, candidate, report, gates,
                                         validation, versions, retain, test, forget, base_version)
    if not gates.passed:
        raise GatesFailed(f"model version {version} rejected: {gates.message()}")

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
    except (RequestRefused, GatesFailed) as error:
        state = RequestState.REJECTED
        ledger.update(request.request_id, state, str(error))
        publish_outcome(request, state, str(error))
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


