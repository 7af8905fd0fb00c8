"""MLflow: the tracking store and the model registry the pipeline reviews and promotes in.

The original is version 1 with the `champion` alias. Each request's candidate becomes a new
version whose tags (request, data versions, gate verdict) are written in the same call that
creates it, so a crash can never leave an untagged version that a rerun would not recognise.
The alias moves only when every gate holds (or a reviewer approves); a failed candidate is
tagged `rejected` and its description opens with a `# REJECTED — …` headline, so it cannot be
mistaken for a good one in the MLflow UI. Every move of the alias the pipeline makes is recorded
as the registered-model tag `pipeline_champion`, so a move made by hand is noticed.
A request's own run and candidate are logged by `tasks.request_run`.
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
from torch import nn

from tasks.gate_report import GateReport
from tasks.private_state import secure_state
from tasks.quiet import quiet_logger
from tasks.review_page import VersionLinks, with_audit_link, with_headline
from tasks.review_page import headline as headline  # re-exported for flows.review
from tasks.settings import Settings
from uib.models import ModelSpec, attach_spec, is_exported, set_training, spec_of
from uib.train import predict_proba

# Explicit requirements keep MLflow from inferring them by importing and probing the model.
PIP_REQUIREMENTS = [f"torch=={torch.__version__.split('+')[0]}", "numpy"]
APPROVED, REJECTED = "passed", "failed"
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
