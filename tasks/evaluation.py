"""Evaluate a candidate model against the original and hold it to the gates of EVALUATION.md.

No retrained model exists in the pipeline, so each gate compares the candidate with the
original or with itself. Gates are a registry of named checks; a check returns None where it
does not apply to the request (MIA for patch-bias requests, the bias probe for the others).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from prefect import task
from pydantic import BaseModel
from torch import nn

from tasks.settings import GateConfig
from uib.metrics import Metrics, evaluate
from uib.samples import Samples
from uib.train import predict_proba


class GateResult(BaseModel):
    name: str
    value: float
    threshold: float
    passed: bool
    rule: str

    @property
    def shortfall(self) -> float:
        """How far the value is on the wrong side of the threshold (0 when passed)."""
        return 0.0 if self.passed else abs(self.value - self.threshold)


class GateReport(BaseModel):
    passed: bool
    gates: list[GateResult]
    before: Metrics
    after: Metrics

    @property
    def failed(self) -> list[GateResult]:
        return [g for g in self.gates if not g.passed]

    def message(self) -> str:
        if self.passed:
            return f"all {len(self.gates)} gates passed"
        return "failed gates: " + "; ".join(
            f"{g.name} {g.value:.4f} vs {g.threshold:.4f} ({g.rule}, short by {g.shortfall:.4f})"
            for g in self.failed
        )

    def to_markdown(self) -> str:
        lines = ["| gate | value | threshold | rule | result |", "| --- | --- | --- | --- | --- |"]
        for g in self.gates:
            verdict = "pass" if g.passed else f"**FAIL** (short by {g.shortfall:.4f})"
            lines.append(f"| {g.name} | {g.value:.4f} | {g.threshold:.4f} | {g.rule} | {verdict} |")
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class GateInput:
    before: Metrics
    after: Metrics
    config: GateConfig
    patch_bias_request: bool
    sane: bool


def at_least(name: str, value: float, threshold: float, rule: str) -> GateResult:
    return GateResult(name=name, value=value, threshold=threshold, passed=value >= threshold, rule=rule)


def at_most(name: str, value: float, threshold: float, rule: str) -> GateResult:
    return GateResult(name=name, value=value, threshold=threshold, passed=value <= threshold, rule=rule)


GATES: dict[str, Callable[[GateInput], GateResult | None]] = {
    "test_accuracy_retained": lambda g: at_least(
        "test_accuracy_retained", g.after.TA, g.before.TA - g.config.max_ta_drop_pp / 100,
        f"TA ≥ TA_original − {g.config.max_ta_drop_pp:g} pp"),
    "retain_accuracy_retained": lambda g: at_least(
        "retain_accuracy_retained", g.after.RA, g.before.RA - g.config.max_ra_drop_pp / 100,
        f"RA ≥ RA_original − {g.config.max_ra_drop_pp:g} pp"),
    "forget_like_unseen": lambda g: at_most(
        "forget_like_unseen", g.after.forget_acc, g.after.TA + g.config.forget_acc_margin_pp / 100,
        f"forget accuracy ≤ TA + {g.config.forget_acc_margin_pp:g} pp"),
    "mia_efficacy": lambda g: None if g.patch_bias_request else at_least(
        "mia_efficacy", g.after.mia_efficacy, g.config.mia_fraction * g.after.mia_test_level,
        f"MIA-Efficacy ≥ {g.config.mia_fraction:g} × retain-calibrated level"),
    "bias_asr": lambda g: at_most(
        "bias_asr", g.after.bias_asr, g.config.bias_asr_ceiling,
        f"bias_asr ≤ {g.config.bias_asr_ceiling:g}") if g.patch_bias_request else None,
    "sanity": lambda g: at_least(
        "sanity", float(g.sane), 1.0, "finite parameters, outputs a valid distribution"),
}


def is_sane(model: nn.Module, probe: np.ndarray) -> bool:
    """No NaN or Inf in the parameters, and softmax outputs that sum to one."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    probs = predict_proba(model, probe)
    return bool(np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-4))


def apply_gates(before: Metrics, after: Metrics, config: GateConfig, patch_bias_request: bool,
                sane: bool) -> GateReport:
    inputs = GateInput(before, after, config, patch_bias_request, sane)
    results = [r for gate in GATES.values() if (r := gate(inputs)) is not None]
    for r in results:
        if not math.isfinite(r.value):
            r.passed = False
    return GateReport(passed=all(r.passed for r in results), gates=results, before=before, after=after)


@task(name="evaluate-and-gate")
def evaluate_candidate(original: nn.Module, candidate: nn.Module, retain: Samples, forget: Samples,
                       test: Samples, scenario, config: GateConfig, patch_bias_request: bool) -> GateReport:
    """Metrics of the original and the candidate on the same data, and the gate verdict."""
    probe = scenario if patch_bias_request else None
    before = evaluate(original, retain, forget, test, probe)
    after = evaluate(candidate, retain, forget, test, probe)
    return apply_gates(before, after, config, patch_bias_request, is_sane(candidate, test.x[:256]))
