"""The `unlearn-step` flow: the GPU stage alone, deployable on its own work pool.

The `unlearn` flow runs everything else on CPU and, when `UIB_GPU_DEPLOYMENT` names this flow's
deployment, hands it the stage with `run_deployment`. Both read and write the same state folder
(a shared volume): the step reads the data version and the staged forget set, and persists the
candidate under the key the `unlearn` flow then finds in its own cache.
"""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.train import recipe
from tasks.data_versioning import DataRepo, read_staged
from tasks.settings import Settings
from tasks.unlearning import run_unlearning
from uib.samples import split_validation


@flow(name="unlearn-step", log_prints=True)
def unlearn_step_flow(
    request_id: str, model_version: str, data_rev: str, settings: dict | None = None
) -> dict:
    """Unlearn `request_id`'s staged forget set from `model_version` on the data at `data_rev`."""
    settings = Settings(**(settings or {}))
    repo = DataRepo(settings.data_repo)
    after = repo.version(data_rev)
    dataset, _ = repo.load(after.git_rev)
    forget = read_staged(settings.stage_dir(request_id) / "forget.npz")
    validation, _ = split_validation(dataset.test)
    _, report = run_unlearning(
        settings,
        request_id,
        model_version,
        after.dvc_md5,
        forget,
        dataset.train,
        validation,
        recipe(settings, dataset.name),
    )
    get_run_logger().info(
        "request %s: candidate from version %s in %.2f s", request_id, model_version, report.time_s
    )
    return {"request_id": request_id, "time_s": report.time_s}


def run_step_deployment(
    settings: Settings, request_id: str, model_version: str, data_rev: str
) -> None:
    """Run the step as `settings.gpu_deployment` and wait for it; raise unless it completed."""
    from prefect.deployments import run_deployment

    run = run_deployment(
        settings.gpu_deployment,
        timeout=None,
        parameters={
            "request_id": request_id,
            "model_version": model_version,
            "data_rev": data_rev,
            "settings": settings.overrides(),
        },
    )
    if not run.state.is_completed():
        raise RuntimeError(
            f"the unlearning step {settings.gpu_deployment!r} ended "
            f"{run.state.name}: {run.state.message or 'no message'}"
        )
