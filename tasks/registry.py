"""MLflow: the tracking store and the model registry the pipeline reviews and promotes in.

The original is version 1 with the `champion` alias. Each request's candidate becomes a new
version whose tags (request, data versions, gate verdict) are written in the same call that
creates it, so a crash can never leave an untagged version that a rerun would not recognise.
The alias moves only when every gate holds (or a reviewer approves); a failed candidate is
tagged `rejected` and its description opens with a `# REJECTED — …` headline, so it cannot be
mistaken for a good one in the MLflow UI. Every move of the alias the pipeline makes is recorded
as the registered-model tag `pipeline_champion`, so a move made by hand is noticed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import mlflow
import numpy as np
import torch
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks import plots
from tasks.data_versioning import DataVersion
from tasks.erasure import audit_path
from tasks.faults import fault_point
from tasks.gate_report import GateReport
from tasks.private_state import secure_state
from tasks.quiet import quiet_logger
from tasks.requests import DeletionRequest
from tasks.retrying import NETWORK_RETRIES
from tasks.review_page import (
    VersionLinks,
    known_flow_run_url,
    selection_text,
    verdict_headline,
    version_description,
    with_audit_link,
    with_headline,
)
from tasks.review_page import headline as headline  # re-exported for flows.review
from tasks.run_datasets import forget_id_hashes, log_request_datasets, request_datasets
from tasks.settings import Settings
from tasks.validation import ValidationReport
from uib.api import UnlearnReport
from uib.models import ModelSpec, attach_spec, is_exported, set_training, spec_of
from uib.samples import Samples
from uib.train import predict_proba

# Explicit requirements keep MLflow from inferring them by importing and probing the model.
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
APPROVED, REJECTED = "passed", "failed"
BEFORE_STEP, AFTER_STEP = 0, 1
PIPELINE_CHAMPION = "pipeline_champion"
MODEL_SPEC_TAG = "model_spec"


@contextmanager
def environment_kept(name: str) -> Iterator[None]:
    """Leave the environment variable `name` as the user set it.

    MLflow exports what it is told for subprocesses to inherit: `set_tracking_uri` exports
    `MLFLOW_TRACKING_URI` (which `Settings` reads as the user's choice) and `set_experiment`
    `MLFLOW_EXPERIMENT_ID`. Left there, one state folder's store and experiment would follow
    every later Settings and every process started after it: a team's training script logged
    to experiment 1 of a store that has none.
    """
    before = os.environ.get(name)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def use_store(settings: Settings) -> None:
    """Point MLflow at the configured store, leaving the environment as the user set it."""
    with environment_kept("MLFLOW_TRACKING_URI"):
        mlflow.set_tracking_uri(settings.tracking_uri)


def client_for(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store; create the experiment with artifacts under <home>."""
    use_store(settings)
    client = MlflowClient()
    if client.get_experiment_by_name(settings.experiment) is None:
        location = None
        if settings.tracking_uri.startswith("sqlite:"):
            location = settings.artifact_root.as_uri()
        client.create_experiment(settings.experiment, artifact_location=location)
    with environment_kept("MLFLOW_EXPERIMENT_ID"):
        mlflow.set_experiment(settings.experiment)
    secure_state(settings.home)  # the state folder 700, its files 600
    return client


def champion(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    except MlflowException:
        return None


def load_version(settings: Settings, version: str) -> nn.Module:
    """The version's model in eval mode, with its spec (from its `model_spec` tag when the
    model was stored without one: an adopted `pt2` model)."""
    import mlflow.pytorch

    use_store(settings)
    uri = f"models:/{settings.model_name}/{version}"
    model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if getattr(model, "spec", None) is None:
        tag = (
            MlflowClient().get_model_version(settings.model_name, version).tags.get(MODEL_SPEC_TAG)
        )
        if tag is None:
            raise ValueError(
                f"model version {version}: no {MODEL_SPEC_TAG} tag and no spec on the model"
            )
        attach_spec(model, ModelSpec.model_validate_json(tag))
    set_training(model, False)
    return model


def find_versions(client: MlflowClient, settings: Settings, **tags: str) -> list[ModelVersion]:
    """Versions of the model carrying every `tag=value`, newest first."""
    query = " and ".join(
        [f"name = '{settings.model_name}'"] + [f"tags.{k} = '{v}'" for k, v in tags.items()]
    )
    try:
        found = client.search_model_versions(query)
    except MlflowException:
        return []
    return sorted(found, key=lambda v: int(v.version), reverse=True)


def approved_version(
    client: MlflowClient, settings: Settings, request_id: str
) -> ModelVersion | None:
    """The version that passed every gate for `request_id`, if a run registered one."""
    found = find_versions(client, settings, request_id=request_id, gates=APPROVED)
    return found[0] if found else None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _quiet(logger_name: str):
    """Silence a logger for one call (MLflow warns on every pickled model; ours are our own
    classes, and `pt2` would load back as an ExportedProgram rather than the module the
    pipeline continues from)."""
    return quiet_logger(logger_name, logging.ERROR)


def log_model(
    model: nn.Module, settings: Settings, example: np.ndarray, tags: dict[str, object]
) -> ModelVersion:
    """Log `model` in the active run and register it as a new version carrying `tags` and its
    spec (`model_spec`).

    Our own modules are pickled, so they load back as the modules the pipeline continues from;
    an exported one (an adopted team model, MLflow's default `pt2`) cannot be pickled and is
    exported again, in eval mode, as it came."""
    import mlflow.pytorch

    example = example[:4].astype(np.float32)
    set_training(model, False)
    serialization = "pt2" if is_exported(model) else "pickle"
    with _quiet("mlflow.pytorch"):
        info = mlflow.pytorch.log_model(
            model,
            name="model",
            signature=infer_signature(example, predict_proba(model, example)),
            input_example=example,
            pip_requirements=PIP_REQUIREMENTS,
            serialization_format=serialization,
        )
    tags = {**tags, MODEL_SPEC_TAG: spec_of(model).model_dump_json()}  # `rejected` stays first
    return mlflow.register_model(
        info.model_uri,
        settings.model_name,
        await_registration_for=60,
        tags={k: str(v) for k, v in tags.items()},
    )


def promote(client: MlflowClient, settings: Settings, version: str) -> None:
    """Move the alias and record the move as the pipeline's own (`pipeline_champion`)."""
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version)
    client.set_registered_model_tag(settings.model_name, PIPELINE_CHAMPION, version)


def recorded_champion(client: MlflowClient, settings: Settings) -> str | None:
    """The version the pipeline last made champion; None for a registry older than the record."""
    try:
        return client.get_registered_model(settings.model_name).tags.get(PIPELINE_CHAMPION)
    except MlflowException:
        return None


def set_headline(client: MlflowClient, settings: Settings, version: str, line: str) -> None:
    """Replace the description's headline (a review changes the verdict, not the record)."""
    current = client.get_model_version(settings.model_name, version).description or ""
    client.update_model_version(
        settings.model_name, version, description=with_headline(current, line)
    )


def tag_version(client: MlflowClient, settings: Settings, version: str, **tags: str) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, value)


def untag_version(client: MlflowClient, settings: Settings, version: str, key: str) -> None:
    with contextlib.suppress(MlflowException):  # already gone
        client.delete_model_version_tag(settings.model_name, version, key)


def gate_report_of(version: ModelVersion) -> GateReport:
    """The gate report a registered candidate was judged by."""
    return GateReport.model_validate(
        mlflow.artifacts.load_dict(f"runs:/{version.run_id}/gate_report.json")
    )


def log_request_run(
    request: DeletionRequest,
    report: UnlearnReport,
    gates: GateReport,
    validation: ValidationReport | None,
    figures: dict,
) -> None:
    """Params, metrics, reports and figures of one request, in the active run."""
    mlflow.set_tags({"request_id": request.request_id, "reason": request.reason})
    mlflow.log_params(
        {"method": report.method, **{f"{report.method}.{k}": v for k, v in report.config.items()}}
    )
    # One metric per statistic, step 0 the original and step 1 the candidate: its chart is the
    # change, its latest value the candidate's (what a search of runs compares); the one figure
    # of them all is plots/before_after.png.
    for step, metrics in ((BEFORE_STEP, gates.before), (AFTER_STEP, gates.after)):
        mlflow.log_metrics(
            {k: v for k, v in metrics.model_dump().items() if isinstance(v, float)}, step=step
        )
    mlflow.log_metrics(
        {
            "unlearn_time_s": report.time_s,
            "gates_passed": float(gates.passed),
            **{f"phase_{k}_s": v for k, v in report.phase_seconds.items()},
        }
    )
    for step, row in enumerate(report.loss_curve):
        mlflow.log_metrics({f"loss_{k}": v for k, v in row.items() if k != "epoch"}, step=step)
    mlflow.log_dict(gates.model_dump(mode="json"), "gate_report.json")
    mlflow.log_text(gates.to_markdown(), "gate_report.md")
    mlflow.log_dict(report.model_dump(mode="json"), "unlearn_report.json")
    if validation is not None:  # None: a retry after the erasure, validated by the first run
        mlflow.log_dict(validation.gx_result, "gx_validation_result.json")
        mlflow.log_text(validation.to_markdown(), "shift_validation.md")
    log_figures(figures)


def log_figures(figures: dict) -> None:
    """Each figure as `plots/<name>.png` in the active run, then closed."""
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)


def registered_attempt(
    client: MlflowClient, settings: Settings, request_id: str, attempt_hash: str
) -> ModelVersion | None:
    """The version a run already registered for this attempt (a rerun after a crash)."""
    found = find_versions(client, settings, request_id=request_id, attempt=attempt_hash)
    return found[0] if found else None


def request_figures(
    original: nn.Module,
    candidate: nn.Module,
    gates: GateReport,
    report: UnlearnReport,
    retain: Samples,
    test: Samples,
    forget: Samples | None,
    class_names: tuple[str, ...] = (),
) -> dict:
    """The request's plots; without the forget set (erased), those that do not read it."""
    if forget is not None:
        return plots.request_figures(
            original, candidate, gates, report, retain, test, forget, class_names
        )
    figures = {
        "before_after": plots.before_after(gates.before, gates.after),
        "per_class_accuracy": plots.per_class_accuracy(gates.before, gates.after, class_names),
        "loss_curves": plots.loss_curves(report.loss_curve),
    }
    if gates.after.bias_asr is not None:
        figures["bias_probe"] = plots.bias_probe(gates.before, gates.after)
    return figures


@task(name="register-candidate", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def register_candidate(
    settings: Settings,
    request: DeletionRequest,
    original: nn.Module,
    candidate: nn.Module,
    report: UnlearnReport,
    gates: GateReport,
    validation: ValidationReport | None,
    versions: dict,
    retain: Samples,
    test: Samples,
    forget: Samples | None,
    parent_version: str,
    n_forget: int,
    extra_tags: dict[str, str] | None = None,
    class_names: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Register the candidate with its tags and records; `champion` moves if the gates hold.

    Returns (model version, MLflow run id). A request that already has an approved version
    gets that one back, and an attempt already registered (same `attempt` tag) gets its version
    back: nothing is registered twice. `forget` is None for a retry after the erasure.
    """
    client = client_for(settings)
    done = approved_version(client, settings, request.request_id)
    if done is not None:
        return str(done.version), done.run_id
    # `rejected` first: MLflow lists a version's tags in the order they were set
    tags = {"rejected": gates.message()} if not gates.passed else {}
    tags |= {
        "request_id": request.request_id,
        "method": report.method,
        "config_hash": config_hash(report.config),
        "data_version_before": versions["before"]["git_rev"],
        "data_version_after": versions["after"]["git_rev"],
        "data_md5_before": versions["before"]["dvc_md5"],
        "data_md5_after": versions["after"]["dvc_md5"],
        "n_forget": n_forget,
        "parent_model_version": parent_version,
        "gates": APPROVED if gates.passed else REJECTED,
        **(extra_tags or {}),
    }
    figures = request_figures(original, candidate, gates, report, retain, test, forget, class_names)
    datasets = request_datasets(
        str(settings.data_repo),
        settings.remote_url,
        DataVersion.model_validate(versions["before"]),
        DataVersion.model_validate(versions["after"]),
        retain.y,
        n_forget,
        forget_id_hashes(settings, request.request_id, forget),
        selection_text(request),
    )
    attempt = str(tags.get("attempt", ""))
    if existing := attempt and registered_attempt(client, settings, request.request_id, attempt):
        # a retry of this task after the version was registered: take it back, not a second
        version, run = str(existing.version), client.get_run(existing.run_id)
    else:
        from tasks.mlflow_runs import close_orphaned_runs  # it imports this module

        close_orphaned_runs(
            settings,
            request.request_id,
            why="the next try of register-candidate: this one failed and MLflow did not "
            "answer when it was ended",
            status="FAILED",
        )
        with mlflow.start_run(run_name=request.request_id) as run:
            log_request_run(request, report, gates, validation, figures)
            log_request_datasets(datasets)
            version = str(log_model(candidate, settings, test.x, tags).version)
            fault_point("registered")
    links = VersionLinks(
        model_name=settings.model_name,
        experiment_id=run.info.experiment_id,
        run_id=run.info.run_id,
        data_repo=str(settings.data_repo),
        data_version_before=versions["before"]["git_rev"],
        data_version_after=versions["after"]["git_rev"],
        audit_file=audit_path(settings.audit_dir, request.request_id).name,
        flow_run_url=known_flow_run_url(),
        has_shift_validation=validation is not None,
    )
    client.update_model_version(
        settings.model_name,
        version,
        description=version_description(
            request, gates, report.method, n_forget, parent_version, links
        ),
    )
    client.set_tag(
        run.info.run_id,
        "mlflow.note.content",
        f"**{verdict_headline(gates, request.request_id, report.method)[2:]}**\n\nThe "
        "decision is on "
        f"[version {version}]({links.version(version)}) of `{settings.model_name}`.",
    )
    if gates.passed:
        promote(client, settings, version)
    return version, run.info.run_id


def log_audit(settings: Settings, run_id: str, audit_file: str) -> None:
    """Log the audit record to `run_id`, and point every version of the request at it."""
    client = client_for(settings)
    with mlflow.start_run(run_id=run_id) as run:
        mlflow.log_artifact(audit_file, artifact_path="audit")
    request_id = run.data.tags.get("request_id")
    if not request_id:
        return
    for version in find_versions(client, settings, request_id=request_id):
        links = VersionLinks(
            model_name=settings.model_name,
            experiment_id=run.info.experiment_id,
            run_id=version.run_id,
            data_repo=str(settings.data_repo),
            data_version_before=version.tags.get("data_version_before", ""),
            data_version_after=version.tags.get("data_version_after", ""),
            audit_file=os.path.basename(audit_file),
        )
        description = version.description or ""
        linked = with_audit_link(description, links, run_id)
        if linked != description:
            client.update_model_version(settings.model_name, version.version, description=linked)
