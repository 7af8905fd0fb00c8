"""The gates of EVALUATION.md: a registry of named checks on a candidate's metrics and evidence.

No retrained model exists in the pipeline, so each gate compares the candidate with the
original or with itself. Gates are a registry of named checks; a check returns None where it
does not apply to the request (MIA for patch-bias requests, the bias probe for the others, the
redirect check when a whole class is removed).

Every gate states what it measures, on how many rows, and its uncertainty at
`GateConfig.confidence`:

- retained performance (TA, RA) is decided on the point value: before and after are measured on
  the same rows, so the difference is exact for those rows; the report adds the paired interval
  of the difference from the discordant rows;
- proportions over the forget set (forget accuracy, MIA-Efficacy, the redirect share) are
  decided by a one-sided Clopper–Pearson bound: they fail only when the bound lies entirely on
  the wrong side of the threshold. Where even the most extreme outcome at this size could not
  fail, the gate passes as *not decidable* and names the gate that decides instead;
- `forget_loss_like_unseen` is the test that works at any size: a class-stratified permutation
  rank test of the forgotten samples' losses against unseen (test) losses.

`apply_gates` without `Evidence` (per-row facts) decides on the point values alone, as reports
did before; `evaluate_candidate` always gathers the evidence.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from tasks.gate_report import GateReport, GateResult
from tasks.gate_stats import cp_two_sided, loss_rank_test
from tasks.gate_verdicts import (
    at_least,
    at_most,
    bounded_proportion,
    not_decidable,
    retained_gate,
)
from tasks.settings import GateConfig
from uib.metrics import Metrics


@dataclass(frozen=True)
class Evidence:
    """Per-row facts behind the gates, gathered by `evaluate_candidate` from both models.

    Correctness vectors are booleans per row, before (original) and after (candidate); losses
    are the candidate's per-sample cross-entropy against each row's label; `forget_pred` is the
    candidate's predicted class of each forgotten sample; `forget_neighbour_y` the majority label
    of its nearest retained rows (`uib.neighbours`), None where not gathered.
    """

    forget_y: np.ndarray
    forget_pred: np.ndarray
    forget_loss: np.ndarray
    test_y: np.ndarray
    test_loss: np.ndarray
    test_correct: tuple[np.ndarray, np.ndarray]
    retain_correct: tuple[np.ndarray, np.ndarray]
    removes_class: bool = False
    bias_probe_n: int | None = None
    sanity_n: int | None = None
    forget_neighbour_y: np.ndarray | None = None

    @property
    def n_forget(self) -> int:
        return len(self.forget_y)


@dataclass(frozen=True)
class GateInput:
    before: Metrics
    after: Metrics
    config: GateConfig
    patch_bias_request: bool
    sane: bool
    evidence: Evidence | None = None

    @property
    def alpha(self) -> float:
        return 1.0 - self.config.confidence


Gate = Callable[[GateInput], GateResult | None]
GATES: dict[str, Gate] = {}
READS_FORGET: set[str] = set()
NOT_MEASURED = (
    "not measured: the forget samples are erased, and the candidate's method never "
    "saw them (exact by construction)"
)


def gate(name: str, reads_forget: bool = False) -> Callable[[Gate], Gate]:
    """Register a gate; `reads_forget`: it needs the forget samples themselves."""

    def register(check: Gate) -> Gate:
        GATES[name] = check
        if reads_forget:
            READS_FORGET.add(name)
        return check

    return register


def not_measured(name: str, check: Gate, g: GateInput) -> GateResult | None:
    """A forget-set gate once the forget samples are gone (a forget-free retry): it passes,
    saying why, where it would apply."""
    applies = check(g) is not None
    return (
        GateResult(
            name=name,
            value=math.nan,
            threshold=math.nan,
            passed=True,
            rule=NOT_MEASURED,
            decidable=False,
            judged_by=NOT_MEASURED,
        )
        if applies
        else None
    )


# --- the gates --------------------------------------------------------------------------------


@gate("test_accuracy_retained")
def _test_accuracy(g: GateInput) -> GateResult:
    correct = g.evidence.test_correct if g.evidence else None
    return retained_gate(
        "test_accuracy_retained",
        "TA",
        g.after.TA,
        g.before.TA,
        g.config.max_ta_drop_pp,
        "test rows",
        correct,
        g.alpha,
    )


@gate("retain_accuracy_retained")
def _retain_accuracy(g: GateInput) -> GateResult:
    correct = g.evidence.retain_correct if g.evidence else None
    return retained_gate(
        "retain_accuracy_retained",
        "RA",
        g.after.RA,
        g.before.RA,
        g.config.max_ra_drop_pp,
        "retained training rows",
        correct,
        g.alpha,
    )


def _forget_judge(g: GateInput) -> str:
    return (
        "bias_asr and forget_loss_like_unseen"
        if g.patch_bias_request
        else "forget_loss_like_unseen"
    )


@gate("forget_like_unseen", reads_forget=True)
def _forget_like_unseen(g: GateInput) -> GateResult:
    margin = g.config.forget_acc_margin_pp
    n = g.evidence.n_forget if g.evidence else None
    rows = "forgotten samples" if n is None else f"{n} forgotten samples"
    return bounded_proportion(
        "forget_like_unseen",
        g.after.forget_acc,
        n,
        g.after.TA + margin / 100,
        f"forget accuracy ≤ TA + {margin:g} pp",
        f"accuracy on the {rows} (one-sided lower bound)",
        g.alpha,
        fails_above=True,
        judged_by=_forget_judge(g),
    )


@gate("forget_loss_like_unseen", reads_forget=True)
def _forget_loss_like_unseen(g: GateInput) -> GateResult | None:
    """Forgotten samples' losses against unseen ones: significantly lower = still remembered."""
    e = g.evidence
    if e is None:
        return None
    result = loss_rank_test(e.forget_loss, e.forget_y, e.test_loss, e.test_y, g.alpha)
    decidable = result.best_p < g.alpha
    passed = (not decidable) or result.p_value >= g.alpha
    statistic = (
        f"mean percentile of the {result.n} forgotten samples' losses among unseen "
        f"test losses of their class (0.5 = like unseen; median "
        f"{result.median_percentile:.2f}); one-sided permutation p = {result.p_value:.4f}"
    )
    judge = "bias_asr" if g.patch_bias_request else "forget_like_unseen and mia_efficacy"
    return GateResult(
        name="forget_loss_like_unseen",
        value=result.mean_percentile,
        threshold=0.5,
        passed=passed,
        rule=f"forgotten losses not lower than unseen ones (p ≥ {g.alpha:.2g})",
        statistic=statistic,
        n=result.n,
        interval=None if result.n == 0 else (0.0, result.upper),
        decidable=decidable,
        judged_by=None if decidable else not_decidable(result.n, judge),
        p_value=result.p_value,
    )


@gate("mia_efficacy", reads_forget=True)
def _mia_efficacy(g: GateInput) -> GateResult | None:
    """The retain-calibrated level is the attack's non-member rate on truly unseen test data."""
    if g.patch_bias_request:
        return None
    fraction = g.config.mia_fraction
    n = g.evidence.n_forget if g.evidence else None
    rows = "forgotten samples" if n is None else f"{n} forgotten samples"
    return bounded_proportion(
        "mia_efficacy",
        g.after.mia_efficacy,
        n,
        fraction * g.after.mia_test_level,
        f"MIA-Efficacy ≥ {fraction:g} × retain-calibrated level",
        f"share of the {rows} a membership attack calls non-members (one-sided upper bound)",
        g.alpha,
        fails_above=False,
        judged_by="forget_loss_like_unseen",
    )


@gate("bias_asr")
def _bias_asr(g: GateInput) -> GateResult | None:
    if not g.patch_bias_request:
        return None
    ceiling = g.config.bias_asr_ceiling
    value = math.nan if g.after.bias_asr is None else g.after.bias_asr
    n = g.evidence.bias_probe_n if g.evidence else None
    rows = "patched test images" if n is None else f"{n} patched test images"
    interval = None
    if n and math.isfinite(value):
        interval = cp_two_sided(int(round(value * n)), n, g.alpha)
    return at_most(
        "bias_asr",
        value,
        ceiling,
        f"bias_asr ≤ {ceiling:g}",
        statistic=f"share of the {rows} of other classes predicted as the target class",
        n=n,
        interval=interval,
    )


@gate("no_redirect", reads_forget=True)
def _no_redirect(g: GateInput) -> GateResult | None:
    """A forgotten slice must not collapse onto one class its inputs do not support.

    The share of forgotten samples predicted as class j, over classes j other than each
    sample's label and other than the label of its nearest retained rows (a wrongly labelled
    slice read as what it looks like is forgotten, not moved: `uib.neighbours`); the largest
    one is bounded below (Bonferroni over the classes that could reach the ceiling together).
    Not applicable when the request removes a whole class: its images must then go somewhere.
    """
    e = g.evidence
    if e is None or e.removes_class or e.n_forget == 0:
        return None
    ceiling = g.config.max_redirect_share
    moved = e.forget_pred != e.forget_y
    if e.forget_neighbour_y is not None:
        moved &= e.forget_pred != e.forget_neighbour_y
    wrong = e.forget_pred[moved]
    counts = np.bincount(wrong.astype(int)) if len(wrong) else np.zeros(1, int)
    top = int(np.argmax(counts))
    share = float(counts[top]) / e.n_forget
    together = max(1, math.ceil(1 / ceiling))
    where = f" (class {top})" if counts[top] else ""
    besides = "" if e.forget_neighbour_y is None else " or their nearest retained rows' label"
    return bounded_proportion(
        "no_redirect",
        share,
        e.n_forget,
        ceiling,
        f"redirect share ≤ {ceiling:g}",
        f"largest share of the {e.n_forget} forgotten samples predicted as one class other than "
        f"their label{besides}{where} (one-sided lower bound)",
        g.alpha / together,
        fails_above=True,
        judged_by="test_accuracy_retained and retain_accuracy_retained (so few samples cannot "
        "show a collapse)",
    )


@gate("sanity")
def _sanity(g: GateInput) -> GateResult:
    n = g.evidence.sanity_n if g.evidence else None
    rows = "test rows" if n is None else f"{n} test rows"
    return at_least(
        "sanity",
        float(g.sane),
        1.0,
        "finite parameters, outputs a valid distribution",
        statistic=f"parameters finite and softmax sums to one on {rows}",
        n=n,
    )


def apply_gates(
    before: Metrics,
    after: Metrics,
    config: GateConfig,
    patch_bias_request: bool,
    sane: bool,
    evidence: Evidence | None = None,
) -> GateReport:
    """Every gate that applies; with evidence of no forget sample (erased before a forget-free
    retry), the gates that read the forget set are recorded as not measured."""
    inputs = GateInput(before, after, config, patch_bias_request, sane, evidence)
    erased = evidence is not None and evidence.n_forget == 0
    results = [
        r
        for name, check in GATES.items()
        if (
            r := not_measured(name, check, inputs)
            if erased and name in READS_FORGET
            else check(inputs)
        )
        is not None
    ]
    return GateReport(
        passed=all(r.passed for r in results),
        gates=results,
        before=before,
        after=after,
        confidence=config.confidence,
    )
