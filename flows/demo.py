"""`uib demo`: the whole product on scikit-learn's `digits`, with no server and no network."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import BaseModel

from flows.cli_output import review_hint
from tasks.requests import DeletionRequest
from tasks.review_page import mlflow_ui_command, mlflow_version_url
from tasks.settings import Settings

DEMO_REQUEST = DeletionRequest(
    request_id="demo-remove-faulty-source",
    where={"source": "faulty"},
    reason="a faulty data source stamped a patch on its images and labelled them all class 0",
)
SHOWN_METRICS = ("TA", "RA", "UA", "forget_acc", "mia_efficacy", "bias_asr", "bias_corr")


class DemoResult(BaseModel):
    trained: bool
    outcome: dict
    champion_version: str


def run_demo(settings: Settings, progress: Callable[[str], None] = lambda line: None) -> DemoResult:
    """Train the original if none is registered, then honour the demo's deletion request.

    The request id is fixed, so a second run finds the request approved and registers nothing.
    `progress` hears, in a line, each step as it starts.
    """
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow
    from tasks.registry import champion, client_for

    overrides = settings.overrides()
    progress("1/2 the original: version the dataset and train it, unless one is registered…")
    trained = train_flow(overrides)["trained"]
    progress(
        f"2/2 deletion request {DEMO_REQUEST.request_id} (where {DEMO_REQUEST.where}): "
        "validate, version the data, unlearn, gate, register, erase…"
    )
    outcome = unlearn_flow(DEMO_REQUEST.model_dump(mode="json"), overrides)
    current = champion(client_for(settings), settings)
    return DemoResult(trained=trained, outcome=outcome, champion_version=str(current.version))


def summary(settings: Settings, result: DemoResult) -> str:
    outcome = result.outcome
    gates = outcome["gates"]
    before, after = gates["before"], gates["after"]
    how = (
        "already approved by an earlier run; nothing registered again"
        if outcome["duplicate"]
        else f"UIB took {outcome['unlearn_time_s']:.2f} s"
    )
    removed = outcome.get("n_forgotten")
    lines = [
        f"Original model: {'trained and registered' if result.trained else 'already registered'}",
        f"Deletion request {outcome['request_id']} (where {DEMO_REQUEST.where}): "
        f"{outcome['state']} ({how})",
        *([f"Removed {removed} samples from the training data."] if removed else []),
        "",
        f"{'metric':<14}{'before':>9}{'after':>9}",
    ]
    for key in SHOWN_METRICS:
        if before.get(key) is not None:
            lines.append(f"{key:<14}{before[key]:>9.4f}{after[key]:>9.4f}")
    lines += ["", "Gates:"]
    for gate in gates["gates"]:
        mark = "pass" if gate["passed"] else "FAIL"
        interval = gate.get("interval")
        bounds = f"[{interval[0]:.4f}, {interval[1]:.4f}]" if interval else "—"
        size = "" if gate.get("n") is None else f"n={gate['n']}"
        lines.append(
            f"  [{mark}] {gate['name']:<26} {gate['value']:.4f} vs "
            f"{gate['threshold']:.4f}  {bounds:<18} {size:<7} {gate['rule']}"
        )
        if gate.get("judged_by"):
            lines.append(f"         {'':<26} {gate['judged_by']}")
    lines += [
        "",
        f"The request made {settings.model_name} version {outcome['model_version']} (unlearned "
        f"from version {outcome['parent_model_version']}); '{settings.champion_alias}' is now "
        f"version {result.champion_version}.",
        f"Data version {outcome['data_version_before']['git_rev'][:10]} → "
        f"{outcome['data_version_after']['git_rev'][:10]}; audit record: {outcome['audit_path']}",
        "",
        *review_hint(
            {
                "mlflow_url": mlflow_version_url(
                    settings.tracking_uri, settings.model_name, outcome["model_version"]
                ),
                "mlflow_ui": mlflow_ui_command(settings.tracking_uri),
            }
        ),
    ]
    return "\n".join(lines)
