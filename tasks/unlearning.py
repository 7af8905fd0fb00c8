"""The unlearning stage: the GPU task, limited to one run at a time per `gpu` tag.

Its result (the candidate's weights and the report) is persisted under `<home>/results` with a key
made of the request id, the parent model version, the data version and the method config, so a
rerun after a crash later in the flow takes the candidate back instead of unlearning again.
The exact fallback (`retrain`) is the same task with the method overridden in its settings, so
it is a task run of its own with a key of its own.

Once a request's forget samples are erased, only a method that reads none of them can run for it
(`FORGET_FREE`, the registry's `reads_forget=False`: `retrain`), with an empty forget set.
"""

from __future__ import annotations

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE, CachePolicy
from torch import nn

import uib
from tasks.registry import config_hash, load_version
from tasks.settings import Settings
from uib import methods
from uib.api import UnlearnReport
from uib.device import select_device
from uib.samples import Samples
from uib.train import TrainConfig

GPU_TAG = "gpu"
FORGET_FREE = frozenset(m for m in methods.available() if not methods.get(m).reads_forget)


def ensure_gpu_limit(limit: int = 1) -> None:
    """Create the `gpu` tag concurrency limit on the Prefect server when it has none.

    Best effort: on a server that refuses (or none at all) the task still runs, unlimited.
    """
    from prefect.client.orchestration import get_client

    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_concurrency_limit_by_tag(GPU_TAG)
            except Exception:
                client.create_concurrency_limit(tag=GPU_TAG, concurrency_limit=limit)
    except Exception as error:  # noqa: BLE001 - a missing limit must not stop a deletion
        get_run_logger().warning("could not set the %r concurrency limit: %s", GPU_TAG, error)


@task(
    name="unlearn",
    tags=[GPU_TAG],
    retries=1,
    retry_delay_seconds=5,
    timeout_seconds=3600,
    cache_policy=NO_CACHE,
)
def unlearn_task(
    settings: Settings,
    model_version: str,
    forget: Samples,
    retain: Samples,
    validation: Samples,
    recipe: TrainConfig,
) -> tuple[dict[str, torch.Tensor], UnlearnReport]:
    """The champion from the registry, `uib.unlearn` on CUDA when present, else CPU.

    Returns the candidate's state dict (on the CPU), not the module: an adopted `pt2` module
    cannot be pickled into Prefect's result store, and its weights are all that differ."""
    original = load_version(settings, model_version)
    device = select_device(settings.device)
    candidate, report = uib.unlearn(
        original,
        forget,
        retain,
        settings.method,
        settings.method_config,
        train_config=recipe,
        validation=validation,
        device=device,
        seed=settings.scenario.seed,
    )
    get_run_logger().info(
        "%s on %s: %.2f s %s", settings.method, device, report.time_s, report.phase_seconds
    )
    return {k: v.detach().cpu() for k, v in candidate.state_dict().items()}, report


def candidate_key(
    settings: Settings, model_version: str, data_md5: str, recipe: TrainConfig
) -> str:
    """Everything the candidate depends on: parent version, data version, method, recipe, seed."""
    return "-".join(
        [
            f"v{model_version}",
            data_md5.removesuffix(".dir"),
            settings.method,
            config_hash(settings.method_config),
            config_hash(recipe.model_dump()),
            f"seed{settings.scenario.seed}",
        ]
    )


def run_unlearning(
    settings: Settings,
    request_id: str,
    model_version: str,
    data_md5: str,
    forget: Samples,
    retain: Samples,
    validation: Samples,
    recipe: TrainConfig,
) -> tuple[nn.Module, UnlearnReport]:
    """`unlearn_task` with its result persisted under `candidate_key`, named by its method;
    the candidate is the parent version with the persisted weights loaded.

    One folder per request, removed when the request is closed.
    """
    key = candidate_key(settings, model_version, data_md5, recipe)
    persisted = unlearn_task.with_options(
        cache_policy=CachePolicy.from_cache_key_fn(lambda *_: key),
        persist_result=True,
        result_storage=settings.results_dir / request_id,
        task_run_name=f"unlearn-{settings.method}",
    )
    state, report = persisted(settings, model_version, forget, retain, validation, recipe)
    candidate = load_version(settings, model_version)
    candidate.load_state_dict(state)
    return candidate, report
