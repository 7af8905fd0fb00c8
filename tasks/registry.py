"""MLflow: the tracking store and the model registry the pipeline reviews and promotes in.

The original is version 1 with the `champion` alias. Each request's candidate becomes a new
version, tagged with the request and the data versions; the alias moves only when every gate
holds, and a failed candidate is tagged `rejected` with the failed gates.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.models import infer_signature
from torch import nn

from tasks.settings import Settings
from uib.train import predict_proba

PIP_REQUIREMENTS = ["torch", "numpy"]


def client_for(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store; create the experiment with artifacts under <home>."""
    mlflow.set_tracking_uri(settings.tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(settings.experiment) is None:
        location = None
        if settings.tracking_uri.startswith("sqlite:"):
            location = settings.artifact_root.as_uri()
        client.create_experiment(settings.experiment, artifact_location=location)
    mlflow.set_experiment(settings.experiment)
    return client


def champion(client: MlflowClient, settings: Settings) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(settings.model_name, settings.champion_alias)
    except mlflow.exceptions.MlflowException:
        return None


def load_version(settings: Settings, version: str) -> nn.Module:
    import mlflow.pytorch

    model = mlflow.pytorch.load_model(f"models:/{settings.model_name}/{version}", map_location="cpu")
    return model.eval()


def version_for_request(client: MlflowClient, settings: Settings, request_id: str) -> ModelVersion | None:
    """The candidate a request already registered, if any (reruns must not register twice)."""
    found = client.search_model_versions(f"name = '{settings.model_name}' and tags.request_id = '{request_id}'")
    return max(found, key=lambda v: int(v.version)) if found else None


def config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def log_model(model: nn.Module, settings: Settings, example: np.ndarray) -> ModelVersion:
    """Log `model` in the active run and register it as a new version of the model."""
    import mlflow.pytorch

    example = example[:4].astype(np.float32)
    info = mlflow.pytorch.log_model(
        model, name="model", registered_model_name=settings.model_name,
        signature=infer_signature(example, predict_proba(model, example)), input_example=example,
        pip_requirements=PIP_REQUIREMENTS, await_registration_for=60, serialization_format="pickle",
    )
    return MlflowClient().get_model_version(settings.model_name, str(info.registered_model_version))


def log_json(name: str, payload: dict | str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(payload if isinstance(payload, str) else json.dumps(payload, indent=2, default=str))
        mlflow.log_artifact(str(path))


def log_figures(figures: dict) -> None:
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)


def set_tags(client: MlflowClient, settings: Settings, version: str, tags: dict[str, object]) -> None:
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, version, key, str(value))


def promote(client: MlflowClient, settings: Settings, version: str) -> None:
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, version)
