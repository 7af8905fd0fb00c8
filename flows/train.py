"""The `train` flow: build and version the dataset, train the original, register it as champion.

Deterministic: the same settings give the same data version (same DVC hash) and the same
weights. A rerun with a champion registered does nothing; one that crashed after registering
the original promotes that version instead of registering a second original.
"""

from __future__ import annotations

import mlflow
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks.data_versioning import DataVersion, version_dataset
from tasks.registry import champion, client_for, find_versions, log_model, promote
from tasks.settings import Settings
from uib.data import load_dataset
from uib.metrics import evaluate
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.scenarios import Scenario, build_scenario
from uib.train import TrainConfig, TrainHistory, train_model


def recipe(settings: Settings, dataset_name: str) -> TrainConfig:
    """The adopted model's recipe (`uib adopt --recipe`), else the dataset's (EVALUATION.md);
    with the epochs settings may lower for tests."""
    overrides = {"epochs": settings.train_epochs} if settings.train_epochs else {}
    if settings.recipe_path.exists():
        kept = TrainConfig.model_validate_json(settings.recipe_path.read_text())
        return kept.model_copy(update=overrides)
    return TrainConfig.for_dataset(dataset_name, seed=settings.scenario.seed, **overrides)


@task(name="train-original", cache_policy=NO_CACHE)
def train_original(scenario: Scenario, settings: Settings) -> tuple[nn.Module, TrainHistory]:
    dataset = scenario.dataset
    config = recipe(settings, dataset.name)
    torch.manual_seed(config.seed)
    model = build_model(default_arch(dataset.image_shape), dataset.image_shape, dataset.num_classes)
    history = train_model(model, dataset.train, config, settings.device)
    return model.cpu().eval(), history


@task(name="register-original", cache_policy=NO_CACHE)
def register_original(
    model: nn.Module,
    scenario: Scenario,
    data: DataVersion,
    history: TrainHistory,
    settings: Settings,
) -> str:
    """Log the original with its metrics and register it as a version tagged `stage=original`."""
    client_for(settings)
    config = recipe(settings, scenario.dataset.name)
    retain, forget = scenario.split()
    _, test = split_validation(scenario.dataset.test)
    metrics = evaluate(model, retain, forget, test, scenario.config)
    tags = {
        "stage": "original",
        "data_git_rev": data.git_rev,
        "data_dvc_md5": data.dvc_md5,
        "dataset": scenario.dataset.name,
        "scenario": scenario.config.model_dump_json(),
    }
    with mlflow.start_run(run_name="train-original"):
        mlflow.log_params(
            {
                **config.model_dump(),
                "dataset": scenario.dataset.name,
                **{f"scenario.{k}": v for k, v in scenario.config.model_dump().items()},
            }
        )
        mlflow.log_metrics({k: v for k, v in metrics.model_dump().items() if isinstance(v, float)})
        for epoch, loss in enumerate(history.losses):
            mlflow.log_metric("train_loss", loss, step=epoch)
        return str(log_model(model, settings, scenario.dataset.test.x, tags).version)


@flow(name="train", log_prints=True)
def train_flow(settings: dict | None = None) -> dict:
    """Train and register the original model unless a champion is already registered."""
    settings = Settings(**(settings or {}))
    logger = get_run_logger()
    client = client_for(settings)
    current = champion(client, settings)
    if current is not None:
        logger.info("champion is already version %s; nothing to train", current.version)
        return {"model_version": str(current.version), "trained": False}
    registered = find_versions(client, settings, stage="original")
    if registered:
        version = str(registered[0].version)
        logger.info("the original is registered as version %s; promoting it", version)
    else:
        dataset = load_dataset(settings.dataset, settings.data_dir)
        scenario = build_scenario(dataset, settings.scenario)
        data = DataVersion.model_validate(
            version_dataset(
                settings.data_repo,
                settings.remote_url,
                scenario.dataset,
                scenario.config,
                f"{settings.dataset} / {settings.scenario.name} dataset",
                endpoint_url=settings.s3_endpoint_url,
            )
        )
        model, history = train_original(scenario, settings)
        version = register_original(model, scenario, data, history, settings)
        logger.info("registered the original as version %s", version)
    promote(client, settings, version)
    return {"model_version": version, "trained": not registered}
