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
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, computed_field
from torch import nn

from tasks.settings import GateConfig
from uib.metrics import Metrics, evaluate
from uib.samples import Samples
from uib.scenarios import ScenarioConfig
from uib.train import predict_proba


class GateResult(BaseModel):
    name: str
    value: float
    threshold: float
    passed: bool
    rule: str

    @computed_field
    @property
    def shortfall(self) -> float:
        """How far the value is on the wrong side of the threshold (0 when passed)."""
        if self.passed:
            return 0.0
        return abs(self.value - self.threshold) if math.isfinite(self.value) else math.inf


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


Gate = Callable[[GateInput], GateResult | None]
GATES: dict[str, Gate] = {}


def gate(name: str) -> Callable[[Gate], Gate]:
    def register(check: Gate) -> Gate:
        GATES[name] = check
        return check

    return register


def at_least(name: str, value: float, threshold: float, rule: str) -> GateResult:
    passed = math.isfinite(value) and value >= threshold
    return GateResult(name=name, value=value, threshold=threshold, passed=passed, rule=rule)


def at_most(name: str, value: float, threshold: float, rule: str) -> GateResult:
    passed = math.isfinite(value) and value <= threshold
    return GateResult(name=name, value=value, threshold=threshold, passed=passed, rule=rule)


@gate("test_accuracy_retained")
def _test_accuracy(g: GateInput) -> GateResult:
    drop = g.config.max_ta_drop_pp
    return at_least("test_accuracy_retained", g.after.TA, g.before.TA - drop / 100,
                    f"TA ≥ TA_original − {drop:g} pp")


@gate("retain_accuracy_retained")
def _retain_accuracy(g: GateInput) -> GateResult:
    drop = g.config.max_ra_drop_pp
    return at_least("retain_accuracy_retained", g.after.RA, g.before.RA - drop / 100,
                    f"RA ≥ RA_original − {drop:g} pp")


@gate("forget_like_unseen")
def _forget_like_unseen(g: GateInput) -> GateResult:
    margin = g.config.forget_acc_margin_pp
    return at_most("forget_like_unseen", g.after.forget_acc, g.after.TA + margin / 100,
                   f"forget accuracy ≤ TA + {margin:g} pp")


@gate("mia_efficacy")
def _mia_efficacy(g: GateInput) -> GateResult | None:
    """The retain-calibrated level is the attack's non-member rate on truly unseen test data."""
    if g.patch_bias_request:
        return None
    fraction = g.config.mia_fraction
    return at_least("mia_efficacy", g.after.mia_efficacy, fraction * g.after.mia_test_level,
                    f"MIA-Efficacy ≥ {fraction:g} × retain-calibrated level")


@gate("bias_asr")
def _bias_asr(g: GateInput) -> GateResult | None:
    if not g.patch_bias_request:
        return None
    ceiling = g.config.bias_asr_ceiling
    value = math.nan if g.after.bias_asr is None else g.after.bias_asr
    return at_most("bias_asr", value, ceiling, f"bias_asr ≤ {ceiling:g}")


@gate("sanity")
def _sanity(g: GateInput) -> GateResult:
    return at_least("sanity", float(g.sane), 1.0, "finite parameters, outputs a valid distribution")


def is_sane(model: nn.Module, probe: np.ndarray) -> bool:
    """No NaN or Inf in the parameters, and softmax outputs that sum to one."""
    if not all(torch.isfinite(p).all() for p in model.parameters()):
        return False
    probs = predict_proba(model, probe)
    return bool(np.isfinite(probs).all() and np.allclose(probs.sum(1), 1.0, atol=1e-4))


def apply_gates(before: Metrics, after: Metrics, config: GateConfig, patch_bias_request: bool,
                sane: bool) -> GateReport:
    inputs = GateInput(before, after, config, patch_bias_request, sane)
    results = [r for check in GATES.values() if (r := check(inputs)) is not None]
    return GateReport(passed=all(r.passed for r in results), gates=results, before=before,
                      after=after)


@task(name="evaluate-and-gate", cache_policy=NO_CACHE)
def evaluate_candidate(original: nn.Module, candidate: nn.Module, retain: Samples,
                       forget: Samples, test: Samples, scenario: ScenarioConfig | None,
                       config: GateConfig, patch_bias_request: bool) -> GateReport:
    """Metrics of the original and the candidate on the same data, and the gate verdict."""
    probe = scenario if patch_bias_request else None
    before = evaluate(original, retain, forget, test, probe)
    after = evaluate(candidate, retain, forget, test, probe)
    return apply_gates(before, after, config, patch_bias_request,
                       is_sane(candidate, test.x[:256]))
