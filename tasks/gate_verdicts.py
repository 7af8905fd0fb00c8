"""How a gate's statistic becomes its verdict (`GateResult`): a point threshold, the retained
performance with its paired interval, or a forget-set proportion decided by its one-sided
Clopper–Pearson bound (and *not decidable* where no outcome at its size could fail it)."""

from __future__ import annotations

import math

import numpy as np

from tasks.gate_report import GateResult
from tasks.gate_stats import cp_lower, cp_upper, paired_difference


def at_least(name: str, value: float, threshold: float, rule: str, **details) -> GateResult:
    passed = math.isfinite(value) and value >= threshold
    return GateResult(
        name=name, value=value, threshold=threshold, passed=passed, rule=rule, **details
    )


def at_most(name: str, value: float, threshold: float, rule: str, **details) -> GateResult:
    passed = math.isfinite(value) and value <= threshold
    return GateResult(
        name=name, value=value, threshold=threshold, passed=passed, rule=rule, **details
    )


def not_decidable(n: int, judged_by: str) -> str:
    return f"not decidable at this size (n = {n}); judged by {judged_by}"


def retained_gate(
    name: str,
    metric: str,
    after: float,
    before: float,
    drop_pp: float,
    rows: str,
    correct: tuple[np.ndarray, np.ndarray] | None,
    alpha: float,
) -> GateResult:
    rule = f"{metric} ≥ {metric}_original − {drop_pp:g} pp"
    threshold = before - drop_pp / 100
    if correct is None:
        return at_least(name, after, threshold, rule, statistic=f"{metric}: accuracy on the {rows}")
    n = len(correct[0])
    diff, (low, high), discordant = paired_difference(*correct, alpha)
    statistic = (
        f"{metric}: accuracy on the {n} {rows}; after − before {diff:+.4f}, paired "
        f"interval [{low:+.4f}, {high:+.4f}] from {discordant} discordant rows"
    )
    interval = (before + low, before + high) if math.isfinite(low) else None
    return at_least(name, after, threshold, rule, statistic=statistic, n=n, interval=interval)


def bounded_proportion(
    name: str,
    value: float,
    n: int | None,
    threshold: float,
    rule: str,
    statistic: str,
    alpha: float,
    fails_above: bool,
    judged_by: str,
) -> GateResult:
    """A proportion over the forget set, decided by its one-sided Clopper–Pearson bound.

    `fails_above`: the gate fails when the lower bound exceeds the threshold; otherwise when
    the upper bound is below it. Not decidable when all n rows on the wrong side could not fail.
    """
    if n is None or n == 0 or not math.isfinite(value):
        check = at_most if fails_above else at_least
        return check(name, value, threshold, rule, statistic=statistic, n=n)
    k = int(round(value * n))
    if fails_above:
        bound, extreme = cp_lower(k, n, alpha), cp_lower(n, n, alpha)
        interval = (bound, 1.0)
        passed, decidable = bound <= threshold, extreme > threshold
    else:
        bound, extreme = cp_upper(k, n, alpha), cp_upper(0, n, alpha)
        interval = (0.0, bound)
        passed, decidable = bound >= threshold, extreme < threshold
    return GateResult(
        name=name,
        value=value,
        threshold=threshold,
        passed=passed,
        rule=rule,
        statistic=statistic,
        n=n,
        interval=interval,
        decidable=decidable,
        judged_by=None if decidable else not_decidable(n, judged_by),
    )
