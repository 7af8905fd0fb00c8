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
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks import plots
from tasks.evaluation import GateReport
from tasks.requests import DeletionRequest
from tasks.settings import Settings
from uib.metrics import MembershipAttack, mia_features
from uib.samples import Samples
from uib.train import predict_logits, predict_proba

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
