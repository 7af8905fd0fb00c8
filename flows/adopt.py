"""The `adopt` flow: a team's own model and data become version 1 and the first data version.

Everything is checked before anything is stored (`tasks.adoption`): a refusal leaves the data
repository, the registry and the state folder as they were. Then the data is versioned with DVC,
the model is registered under the pipeline's model name with `stage=original` and a lineage tag
to where it came from, and it becomes `champion`. The retrain recipe is kept at
`<home>/recipe.json`, where `retrain`, the fallback and the benchmark read it. From then on
`uib request delete` works as it does on the built-in data.

A rerun after a crash picks up where it stopped: the data version it wrote is reused, the
version it registered is promoted; nothing is stored twice.
"""

from __future__ import annotations

import json

import mlflow
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic import BaseModel, ConfigDict, Field

from tasks.adoption import AdoptionError, FitReport, check_fit, load_team_model
from tasks.data_versioning import DataRepo, DataVersion, version_dataset
from tasks.private_state import private_dir, write_private
from tasks.registry import champion, client_for, find_versions, log_model, promote
from tasks.review_page import mlflow_version_url
from tasks.settings import Settings
from uib.data import Dataset, load_dataset
from uib.train import TrainConfig

ADOPTED_FROM = "adopted_from"


class AdoptRequest(BaseModel):
    """What `uib adopt` was asked: the model, the data source and the retrain recipe."""

    model_config = ConfigDict(extra="forbid")

    model_uri: str = Field(min_length=1)
    dataset: str = Field(min_length=1, description="a data source: folder:DIR, arrays:PATH, …")
    data_dir: str | None = None
    recipe: TrainConfig = Field(default_factory=TrainConfig)

    @property
    def data_message(self) -> str:
        return f"Adopt {self.dataset} for {self.model_uri}"


def adopted_versions(settings: Settings, request: AdoptRequest) -> list[str]:
    """Versions an earlier run of this same adoption registered (newest first)."""
    client = client_for(settings)
    return [
        str(v.version)
        for v in find_versions(client, settings, stage="original")
        if v.tags.get(ADOPTED_FROM) == request.model_uri
    ]


def refuse_taken_stores(settings: Settings, request: AdoptRequest) -> None:
    """Adoption starts a pipeline: the registry and the data repository must be new (or hold
    this adoption's own partial work)."""
    client = client_for(settings)
    others = [
        v.version
        for v in find_versions(client, settings)
        if v.tags.get(ADOPTED_FROM) != request.model_uri
    ]
    if others:
        raise AdoptionError(
            f"model_name: {settings.model_name!r} already has versions "
            f"{', '.join(sorted(map(str, others), key=int))}; adopt into a new UIB_HOME or set "
            "UIB_MODEL_NAME"
        )
    data = current_data(settings)
    if data is not None and data.message.strip() != request.data_message:
        raise AdoptionError(
            f"data_repo: {settings.data_repo} already holds a data version; adopt into a new "
            "UIB_HOME"
        )


def current_data(settings: Settings) -> DataVersion | None:
    repo = settings.data_repo
    if (repo / ".dvc").is_dir() and DataRepo(repo).has_data():
        return DataRepo(repo).current()
    return None


def first_data_version(settings: Settings, request: AdoptRequest, dataset: Dataset) -> DataVersion:
    """The data version this adoption wrote before a crash, else a new one."""
    done = current_data(settings)
    if done is not None:
        return done
    return DataVersion.model_validate(
        version_dataset(
            settings.data_repo,
            settings.remote_url,
            dataset,
            None,
            request.data_message,
            endpoint_url=settings.s3_endpoint_url,
        )
    )


def register_adopted(
    model, dataset: Dataset, data: DataVersion, fit: FitReport, request: AdoptRequest, s: Settings
) -> str:
    client_for(s)
    tags = {
        "stage": "original",
        ADOPTED_FROM: request.model_uri,
        "data_git_rev": data.git_rev,
        "data_dvc_md5": data.dvc_md5,
        "dataset": request.dataset,
    }
    with mlflow.start_run(run_name="adopt"):
        mlflow.log_params(
            {
                ADOPTED_FROM: request.model_uri,
                "dataset": request.dataset,
                "classes": ",".join(fit.class_names)[:500],
                **{f"recipe.{k}": v for k, v in request.recipe.model_dump().items()},
            }
        )
        mlflow.log_metrics({"TA": fit.test_accuracy, "majority_share": fit.majority_share})
        mlflow.log_dict(fit.model_dump(mode="json"), "adoption/fit_report.json")
        mlflow.log_dict(request.recipe.model_dump(mode="json"), "adoption/recipe.json")
        version = str(log_model(model, s, dataset.test.x, tags).version)
    client_for(s).update_model_version(
        s.model_name,
        version,
        description=(
            f"# ADOPTED — {request.model_uri}\n\nTest accuracy {fit.test_accuracy:.4f} on "
            f"{fit.n_test} samples of `{request.dataset}` (majority class {fit.majority_share:.4f})"
            f"; data version `{data.git_rev[:10]}`."
        ),
    )
    return version


def keep_recipe(settings: Settings, recipe: TrainConfig) -> None:
    """Written beside and moved into place, private like every file of the state folder."""
    path = settings.recipe_path
    private_dir(path.parent)
    tmp = path.with_name(path.name + ".tmp")
    write_private(tmp, json.dumps(recipe.model_dump(mode="json"), indent=2) + "\n")
    tmp.replace(path)


@flow(name="adopt", log_prints=True)
def adopt_flow(request: AdoptRequest, settings: dict | None = None) -> dict:
    """Adopt the model and data of `request`; returns the version, the data commit and the fit."""
    settings = Settings(**(settings or {}))
    request = AdoptRequest.model_validate(request)
    logger = get_run_logger()
    client = client_for(settings)
    current = champion(client, settings)
    if current is not None and current.tags.get(ADOPTED_FROM) == request.model_uri:
        logger.info("%s is already champion, version %s", request.model_uri, current.version)
        keep_recipe(settings, request.recipe)
        return {"model_version": str(current.version), "adopted": False}
    refuse_taken_stores(settings, request)
    dataset = load_dataset(request.dataset, request.data_dir)
    model = load_team_model(request.model_uri)
    fit = check_fit(model, dataset, request.model_uri)
    logger.info(
        "%s fits %s: test accuracy %.4f on %d samples",
        request.model_uri,
        request.dataset,
        fit.test_accuracy,
        fit.n_test,
    )
    data = first_data_version(settings, request, dataset)
    registered = adopted_versions(settings, request)
    version = (
        registered[0]
        if registered
        else register_adopted(model, dataset, data, fit, request, settings)
    )
    keep_recipe(settings, request.recipe)
    promote(client, settings, version)
    create_markdown_artifact(
        key="adopt",
        description=f"Adoption of {request.model_uri}",
        markdown="\n".join(
            [
                f"# Adopted {request.model_uri} as version {version} (champion)",
                "",
                f"- data: `{request.dataset}`, data version `{data.git_rev[:10]}` "
                f"({data.n_train} train, {data.n_test} test samples)",
                f"- classes: {', '.join(fit.class_names)}",
                f"- input shape: {fit.input_shape}",
                f"- test accuracy: {fit.test_accuracy:.4f} (majority class "
                f"{fit.majority_share:.4f})",
                f"- retrain recipe: `{request.recipe.model_dump_json()}`",
                f"- MLflow: {mlflow_version_url(settings.tracking_uri, settings.model_name, version)}",
            ]
        ),
    )
    return {
        "model_version": version,
        "adopted": True,
        "data_git_rev": data.git_rev,
        "fit": fit.model_dump(mode="json"),
    }
