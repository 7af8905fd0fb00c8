"""One request's MLflow run: its params, metrics, reports and figures, and its candidate
registered as a version (`register_candidate`), promoted when every gate holds."""

from __future__ import annotations

import mlflow
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from prefect import task
from prefect.cache_policies import NO_CACHE
from torch import nn

from tasks import plots
from tasks.data_versioning import DataVersion
from tasks.erasure import audit_path
from tasks.faults import fault_point
from tasks.gate_report import GateReport
from tasks.mlflow_runs import close_orphaned_runs
from tasks.registry import (
    APPROVED,
    REJECTED,
    approved_version,
    client_for,
    config_hash,
    find_versions,
    log_model,
    promote,
)
from tasks.requests import DeletionRequest
from tasks.retrying import NETWORK_RETRIES
from tasks.review_page import (
    VersionLinks,
    known_flow_run_url,
    selection_text,
    verdict_headline,
    version_description,
)
from tasks.run_datasets import forget_id_hashes, log_request_datasets, request_datasets
from tasks.settings import Settings
from tasks.validation import ValidationReport
from uib.api import UnlearnReport
from uib.samples import Samples

BEFORE_STEP, AFTER_STEP = 0, 1


def log_request_run(
    request: DeletionRequest,
    report: UnlearnReport,
    gates: GateReport,
    validation: ValidationReport | None,
    figures: dict,
) -> None:
    """Params, metrics, reports and figures of one request, in the active run."""
    mlflow.set_tags({"request_id": request.request_id, "reason": request.reason})
    if decision := report.decision():
        mlflow.set_tag("decision", decision)
    mlflow.log_params(
        {"method": report.method, **{f"{report.method}.{k}": v for k, v in report.config.items()}}
    )
    # One metric per statistic, step 0 the original and step 1 the candidate: its chart is the
    # change, its latest value the candidate's (what a search of runs compares); the one figure
    # of them all is plots/before_after.png.
    for step, metrics in ((BEFORE_STEP, gates.before), (AFTER_STEP, gates.after)):
        mlflow.log_metrics(
            {k: v for k, v in metrics.model_dump().items() if isinstance(v, float)}, step=step
        )
    mlflow.log_metrics(
        {
            "unlearn_time_s": report.time_s,
            "gates_passed": float(gates.passed),
            **{f"phase_{k}_s": v for k, v in report.phase_seconds.items()},
        }
    )
    for step, row in enumerate(report.loss_curve):
        mlflow.log_metrics({f"loss_{k}": v for k, v in row.items() if k != "epoch"}, step=step)
    mlflow.log_dict(gates.model_dump(mode="json"), "gate_report.json")
    mlflow.log_text(gates.to_markdown(), "gate_report.md")
    mlflow.log_dict(report.model_dump(mode="json"), "unlearn_report.json")
    if validation is not None:  # None: a retry after the erasure, validated by the first run
        mlflow.log_dict(validation.gx_result, "gx_validation_result.json")
        mlflow.log_text(validation.to_markdown(), "shift_validation.md")
    log_figures(figures)


def log_figures(figures: dict) -> None:
    """Each figure as `plots/<name>.png` in the active run, then closed."""
    import matplotlib.pyplot as plt

    for name, fig in figures.items():
        mlflow.log_figure(fig, f"plots/{name}.png")
        plt.close(fig)


def registered_attempt(
    client: MlflowClient, settings: Settings, request_id: str, attempt_hash: str
) -> ModelVersion | None:
    """The version a run already registered for this attempt (a rerun after a crash)."""
    found = find_versions(client, settings, request_id=request_id, attempt=attempt_hash)
    return found[0] if found else None


def request_figures(
    original: nn.Module,
    candidate: nn.Module,
    gates: GateReport,
    report: UnlearnReport,
    retain: Samples,
    test: Samples,
    forget: Samples | None,
    class_names: tuple[str, ...] = (),
) -> dict:
    """The request's plots; without the forget set (erased), those that do not read it."""
    if forget is not None:
        return plots.request_figures(
            original, candidate, gates, report, retain, test, forget, class_names
        )
    figures = {
        "before_after": plots.before_after(gates.before, gates.after),
        "per_class_accuracy": plots.per_class_accuracy(gates.before, gates.after, class_names),
        "loss_curves": plots.loss_curves(report.loss_curve),
    }
    if gates.after.bias_asr is not None:
        figures["bias_probe"] = plots.bias_probe(gates.before, gates.after)
    return figures


@task(name="register-candidate", cache_policy=NO_CACHE, **NETWORK_RETRIES)
def register_candidate(
    settings: Settings,
    request: DeletionRequest,
    original: nn.Module,
    candidate: nn.Module,
    report: UnlearnReport,
    gates: GateReport,
    validation: ValidationReport | None,
    versions: dict,
    retain: Samples,
    test: Samples,
    forget: Samples | None,
    parent_version: str,
    n_forget: int,
    extra_tags: dict[str, str] | None = None,
    class_names: tuple[str, ...] = (),
) -> tuple[str, str]:
    """Register the candidate with its tags and records; `champion` moves if the gates hold.

    Returns (model version, MLflow run id). A request that already has an approved version
    gets that one back, and an attempt already registered (same `attempt` tag) gets its version
    back: nothing is registered twice. `forget` is None for a retry after the erasure.
    """
    client = client_for(settings)
    done = approved_version(client, settings, request.request_id)
    if done is not None:
        return str(done.version), done.run_id
    # `rejected` first: MLflow lists a version's tags in the order they were set
    tags = {"rejected": gates.message()} if not gates.passed else {}
    tags |= {
        "request_id": request.request_id,
        "method": report.method,
        "config_hash": config_hash(report.config),
        "data_version_before": versions["before"]["git_rev"],
        "data_version_after": versions["after"]["git_rev"],
        "data_md5_before": versions["before"]["dvc_md5"],
        "data_md5_after": versions["after"]["dvc_md5"],
        "n_forget": n_forget,
        "parent_model_version": parent_version,
        "gates": APPROVED if gates.passed else REJECTED,
        **(extra_tags or {}),
    }
    figures = request_figures(original, candidate, gates, report, retain, test, forget, class_names)
    datasets = request_datasets(
        str(settings.data_repo),
        settings.remote_url,
        DataVersion.model_validate(versions["before"]),
        DataVersion.model_validate(versions["after"]),
        retain.y,
        n_forget,
        forget_id_hashes(settings, request.request_id, forget),
        selection_text(request),
    )
    attempt = str(tags.get("attempt", ""))
    if existing := attempt and registered_attempt(client, settings, request.request_id, attempt):
        # a retry of this task after the version was registered: take it back, not a second
        version, run = str(existing.version), client.get_run(existing.run_id)
    else:
        close_orphaned_runs(
            settings,
            request.request_id,
            why="the next try of register-candidate: this one failed and MLflow did not "
            "answer when it was ended",
            status="FAILED",
        )
        with mlflow.start_run(run_name=request.request_id) as run:
            log_request_run(request, report, gates, validation, figures)
            log_request_datasets(datasets)
            version = str(log_model(candidate, settings, test.x, tags).version)
            fault_point("registered")
    links = VersionLinks(
        model_name=settings.model_name,
        experiment_id=run.info.experiment_id,
        run_id=run.info.run_id,
        data_repo=str(settings.data_repo),
        data_version_before=versions["before"]["git_rev"],
        data_version_after=versions["after"]["git_rev"],
        audit_file=audit_path(settings.audit_dir, request.request_id).name,
        flow_run_url=known_flow_run_url(),
        has_shift_validation=validation is not None,
    )
    client.update_model_version(
        settings.model_name,
        version,
        description=version_description(
            request, gates, report.method, n_forget, parent_version, links
        ),
    )
    client.set_tag(
        run.info.run_id,
        "mlflow.note.content",
        f"**{verdict_headline(gates, request.request_id, report.method)[2:]}**\n\nThe "
        "decision is on "
        f"[version {version}]({links.version(version)}) of `{settings.model_name}`.",
    )
    if gates.passed:
        promote(client, settings, version)
    return version, run.info.run_id
