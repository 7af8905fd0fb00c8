"""The `train` flow: build and version the dataset, train the original, register it as champion."""

from __future__ import annotations

import mlflow
import torch
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from tasks.data_versioning import DataVersion, version_dataset
from tasks.registry import champion, client_for, log_model, promote, set_tags
from tasks.settings import Settings
from uib.data import load_dataset
from uib.metrics import evaluate
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.scenarios import build_scenario
from uib.train import TrainConfig, train_model


def recipe(settings: Settings, dataset_name: str) -> TrainConfig:
    overrides = {"epochs": settings.train_epochs} if settings.train_epochs else {}
    return TrainConfig.for_dataset(dataset_name, seed=settings.scenario.seed, **overrides)


@task(name="train-original", cache_policy=NO_CACHE)
def train_original(scenario, settings: Settings):
    dataset = scenario.dataset
    config = recipe(settings, dataset.name)
    torch.manual_seed(config.seed)
    model = build_model(default_arch(dataset.image_shape), dataset.image_shape, dataset.num_classes)
    history = train_model(model, dataset.train, config, settings.device)
    return model.cpu().eval(), history, config


@task(name="register-original", cache_policy=NO_CACHE)
def register_original(model, scenario, data: DataVersion, history, config: TrainConfig,
                      settings: Settings) -> str:
    client = client_for(settings)
    retain, forget = scenario.split()
    _, test = split_validation(scenario.dataset.test)
    metrics = evaluate(model, retain, forget, test, scenario.config)
    with mlflow.start_run(run_name="train-original"):
        mlflow.log_params({**config.model_dump(), "dataset": scenario.dataset.name,
                           **{f"scenario.{k}": v for k, v in scenario.config.model_dump().items()}})
        mlflow.log_metrics({k: v for k, v in metrics.model_dump().items() if isinstance(v, float)})
        for epoch, loss in enumerate(history.losses):
            mlflow.log_metric("train_loss", loss, step=epoch)
        version = log_model(model, settings, scenario.dataset.test.x)
    number = str(version.version)
    set_tags(client, settings, number, {
        "stage": "original", "data_git_rev": data.git_rev, "data_dvc_md5": data.dvc_md5,
        "dataset": scenario.dataset.name, "scenario": scenario.config.model_dump_json(),
    })
    promote(client, settings, number)
    return number


@flow(name="train", log_prints=True)
def train_flow(settings: dict | None = None) -> dict:
    """Train and register the original model unless a champion is already registered."""
    settings = Settings(**(settings or {}))
    logger = get_run_logger()
    current = champion(client_for(settings), settings)
    if current is not None:
        logger.info("champion is already version %s; nothing to train", current.version)
        return {"model_version": str(current.version), "trained": False}
    dataset = load_dataset(settings.dataset, settings.data_dir)
    scenario = build_scenario(dataset, settings.scenario)
    data = DataVersion.model_validate(version_dataset(
        settings.data_repo, settings.remote_url, scenario.dataset, scenario.config,
        f"{settings.dataset} / {settings.scenario.name} dataset"))
    model, history, config = train_original(scenario, settings)
    version = register_original(model, scenario, data, history, config, settings)
    logger.info("registered the original as version %s (%s)", version, settings.champion_alias)
    return {"model_version": version, "trained": True, "data_version": data.model_dump()}
