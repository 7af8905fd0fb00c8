"""The model step of one request: the configured method, then by policy the exact fallback.

Each attempt is its own run of the GPU task (`tasks.unlearning`), gated and registered as a
version of its own. With `on_gate_failure=retrain` a candidate that fails a gate is followed by
`retrain` on the retain set — the exact answer, slow but never wrong about what it forgot —
tagged `fallback_for=<failed version>`; with `hold` the first failure ends the step.

Each attempt carries an `attempt` tag (a hash of everything its candidate and verdict depend on),
so a rerun after a crash takes a registered attempt back instead of registering it twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel
from torch import nn

from flows.unlearn_step import run_step_deployment
from tasks.data_versioning import DataVersion
from tasks.evaluation import evaluate_candidate
from tasks.gate_report import GateReport
from tasks.registry import client_for, config_hash, gate_report_of
from tasks.request_run import register_candidate, registered_attempt
from tasks.requests import DeletionRequest, Review
from tasks.settings import Settings
from tasks.unlearning import candidate_key, ensure_gpu_limit, run_unlearning
from tasks.validation import ValidationReport
from uib.samples import Samples
from uib.scenarios import ScenarioConfig
from uib.train import TrainConfig


@dataclass(frozen=True)
class Job:
    """What every attempt of one run shares: the request, its data and the parent model.

    `forget` is None for a retry after the erasure: then only a forget-free method can run and
    the gates that read the forget set are not measured (`tasks.gates.READS_FORGET`).
    """

    request: DeletionRequest
    settings: Settings
    parent: str
    original: nn.Module
    before: DataVersion
    after: DataVersion
    forget: Samples | None
    n_forget: int
    retain: Samples
    held_out: Samples
    test: Samples
    scenario: ScenarioConfig | None
    patch_bias: bool
    validation: ValidationReport | None
    recipe: TrainConfig
    review: Review | None = None
    class_names: tuple[str, ...] = ()


class Attempt(BaseModel):
    method: str
    model_version: str
    run_id: str
    gates: GateReport
    unlearn_time_s: float | None = None
    decision: str = ""


def attempt_plan(settings: Settings) -> list[Settings]:
    """The configured method, then `retrain` when the policy asks for the exact fallback."""
    plan = [settings]
    if settings.on_gate_failure == "retrain" and settings.method != "retrain":
        plan.append(settings.model_copy(update={"method": "retrain", "method_config": {}}))
    return plan


def run_attempts(job: Job) -> list[Attempt]:
    """Attempts in plan order until one passes every gate; the last one decides the request."""
    attempts: list[Attempt] = []
    for settings in attempt_plan(job.settings):
        failed = attempts[-1].model_version if attempts else None
        attempts.append(run_attempt(job, settings, fallback_for=failed))
        if attempts[-1].gates.passed:
            break
    return attempts


def attempt_hash(job: Job, settings: Settings) -> str:
    return config_hash(
        {
            "method": settings.method,
            "config": settings.method_config,
            "parent": job.parent,
            "data": job.after.dvc_md5,
            "recipe": job.recipe.model_dump(),
            "seed": settings.scenario.seed,
            "gates": settings.gates.model_dump(),
            "forget": job.forget is not None,
        }
    )


def run_attempt(job: Job, settings: Settings, fallback_for: str | None) -> Attempt:
    request_id = job.request.request_id
    key = attempt_hash(job, settings)
    client = client_for(settings)
    done = registered_attempt(client, settings, request_id, key)
    if done is not None:
        return Attempt(
            method=settings.method,
            model_version=str(done.version),
            run_id=done.run_id,
            gates=gate_report_of(done),
        )
    if settings.gpu_deployment and job.forget is not None:
        unlearn_remotely(settings, request_id, job.parent, job.after, job.recipe)
    else:  # a retry after the erasure runs here: the step's deployment reads the staged set
        ensure_gpu_limit()
    # after the erasure, an empty forget set: a forget-free method runs, its gates are not measured
    forget = job.forget if job.forget is not None else job.retain.take(np.arange(0))
    candidate, report = run_unlearning(
        settings,
        request_id,
        job.parent,
        job.after.dvc_md5,
        forget,
        job.retain,
        job.held_out,
        job.recipe,
    )
    gates = evaluate_candidate(
        job.original,
        candidate,
        job.retain,
        forget,
        job.test,
        job.scenario,
        settings.gates,
        job.patch_bias,
    )
    tags = {"attempt": key, "removes_bias_slice": str(job.patch_bias).lower()}
    if fallback_for:
        tags["fallback_for"] = fallback_for
    if job.review is not None:
        tags.update(
            retried_by=job.review.by,
            review_reason=job.review.reason,
            retry_of=job.review.model_version or "",
        )
    versions = {"before": job.before.model_dump(), "after": job.after.model_dump()}
    version, run_id = register_candidate(
        settings,
        job.request,
        job.original,
        candidate,
        report,
        gates,
        job.validation,
        versions,
        job.retain,
        job.test,
        job.forget,
        job.parent,
        job.n_forget,
        tags,
        class_names=job.class_names,
    )
    return Attempt(
        method=settings.method,
        model_version=version,
        run_id=run_id,
        gates=gates,
        unlearn_time_s=report.time_s,
        decision=report.decision(),
    )


def unlearn_remotely(
    settings: Settings, request_id: str, parent: str, after: DataVersion, train_recipe: TrainConfig
) -> None:
    """The unlearning step as its own deployment; its candidate lands in this flow's cache."""
    run_step_deployment(settings, request_id, parent, after.git_rev)
    key = candidate_key(settings, parent, after.dvc_md5, train_recipe)
    if not (settings.results_dir / request_id / key).exists():
        raise RuntimeError(
            f"the unlearning step {settings.gpu_deployment!r} completed but its candidate is not "
            f"in {settings.results_dir / request_id}: the step's work pool must share UIB_HOME"
        )
