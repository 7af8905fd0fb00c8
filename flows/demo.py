"""`uib demo`: the whole product on scikit-learn's `digits`, with no server and no network."""

from __future__ import annotations

import json

from tasks.requests import DeletionRequest
from tasks.settings import Settings

DEMO_REQUEST = DeletionRequest(
    request_id="demo-remove-faulty-source",
    where={"source": "faulty"},
    reason="a faulty data source stamped a patch on its images and labelled them all class 0",
)


def run_demo(settings: Settings) -> dict:
    """Train the original if none is registered, then honour the demo's deletion request.

    A second run finds the champion registered and the request approved, and does neither again.
    """
    from flows.train import train_flow
    from flows.unlearn import unlearn_flow

    overrides = settings.model_dump(mode="json", exclude_unset=True)
    trained = train_flow(overrides)
    unlearn_flow(DEMO_REQUEST.model_dump(mode="json"), overrides)
    outcome_path = settings.home.resolve() / "outcomes" / f"{DEMO_REQUEST.request_id}.json"
    return {"trained": trained, "outcome": json.loads(outcome_path.read_text())}


def summary(settings: Settings, result: dict) -> str:
    outcome = result["outcome"]
    gates = outcome["gates"]
    before, after = gates["before"], gates["after"]
    lines = [
        f"Deletion request {outcome['request_id']}: {outcome['state']} "
        f"(UIB took {outcome['unlearn_time_s']:.2f} s)",
        "",
        f"{'metric':<14}{'before':>9}{'after':>9}",
    ]
    for key in ("TA", "RA", "UA", "forget_acc", "mia_efficacy", "bias_asr", "bias_corr"):
        if before.get(key) is not None:
            lines.append(f"{key:<14}{before[key]:>9.4f}{after[key]:>9.4f}")
    lines += ["", "Gates:"]
    for gate in gates["gates"]:
        mark = "pass" if gate["passed"] else "FAIL"
        lines.append(f"  [{mark}] {gate['name']:<26} {gate['value']:.4f} vs {gate['threshold']:.4f}  {gate['rule']}")
    lines += [
        "",
        f"Model {settings.model_name} version {outcome['model_version']} is now '{settings.champion_alias}'.",
        f"Data version {outcome['data_versions']['before']['git_rev'][:10]} → "
        f"{outcome['data_versions']['after']['git_rev'][:10]}; audit record: {outcome['audit_path']}",
        "",
        "Review it in the MLflow UI:",
        f"  .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}",
    ]
    return "\n".join(lines)
