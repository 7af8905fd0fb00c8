"""`uib adopt`: start the pipeline from a team's own model and data. `flows.cli` merges it in."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from flows.cli_output import Terminal, clean_failures, fail, progress
from tasks.quiet import quiet_prefect

adopt_app = typer.Typer()


@adopt_app.command()
def adopt(
    model: str = typer.Option(
        ...,
        "--model",
        help="models:/NAME/VERSION, models:/NAME@ALIAS, runs:/RUN_ID/PATH, or a folder written "
        "by mlflow.pytorch.save_model",
    ),
    dataset: str = typer.Option(
        ..., "--dataset", help="folder:DIR, arrays:PATH (.npz or .parquet), digits, idx:DIR"
    ),
    recipe: Path | None = typer.Option(
        None,
        "--recipe",
        help="YAML of the retrain recipe: epochs, lr, batch_size, optimizer (adam|sgd), "
        "momentum, weight_decay, augment (true|false)",
    ),
    data_dir: Path | None = typer.Option(None, help="the IDX directory (dataset mnist)"),
) -> None:
    """Adopt a team's PyTorch model (logged to MLflow) and the data it was trained on.

    Checks that they fit (input shape, number of classes, finite scores, better than the
    majority class on the test split) before storing anything, then versions the data with DVC,
    registers the model as version 1 with alias champion, and keeps the recipe for retrain.
    Exit codes: 0 adopted (or already), 2 bad input (nothing stored), 1 failed.
    """
    from flows.cli import load_settings
    from flows.cli_output import invalid

    quiet_prefect()
    settings = load_settings()
    from flows.adopt import AdoptRequest
    from tasks.adoption import check_fit, load_team_model
    from tasks.registry import use_store
    from uib.data import load_dataset
    from uib.samples import DataError
    from uib.train import read_recipe

    progress(f"adopt: checking {model} against {dataset}…")
    try:
        request = AdoptRequest(
            model_uri=model,
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            recipe=read_recipe(recipe),
        )
        data = load_dataset(request.dataset, request.data_dir)
        use_store(settings)
        fit = check_fit(load_team_model(request.model_uri), data, request.model_uri)
    except DataError as error:
        raise invalid("adoption", error) from error
    progress(
        f"adopt: test accuracy {fit.test_accuracy:.4f} on {fit.n_test} samples, "
        f"{fit.num_classes} classes; versioning the data and registering the model in "
        f"{settings.home}/ (Prefect's temporary server starts first unless PREFECT_API_URL is "
        "set)…"
    )
    from flows.adopt import adopt_flow
    from flows.lifecycle import prefect_api

    try:
        with clean_failures(Terminal.debug), prefect_api():
            result = adopt_flow(request, settings.overrides())
    except DataError as error:
        raise invalid("adoption", error) from error
    except Exception as error:
        raise fail("error: adoption failed", error) from error
    how = "adopted" if result["adopted"] else "already adopted"
    typer.echo(
        f"{model} is {settings.model_name} version {result['model_version']} "
        f"({settings.champion_alias}, {how})",
        err=True,
    )
    typer.echo(json.dumps(result))
