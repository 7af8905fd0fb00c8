"""The statistics behind the gates: Clopper–Pearson bounds, the paired difference of two
accuracies on the same rows, and the class-stratified permutation test of forgotten losses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.stats import beta, rankdata

from uib.metrics import loss_percentiles

LOSS_TEST_DRAWS = 4000  # permutation draws of the loss test (p resolution 1/4001)


def cp_lower(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson lower bound of a proportion k/n at confidence 1 − alpha."""
    return 0.0 if k <= 0 else float(beta.ppf(alpha, k, n - k + 1))


def cp_upper(k: int, n: int, alpha: float) -> float:
    """One-sided Clopper–Pearson upper bound of a proportion k/n at confidence 1 − alpha."""
    return 1.0 if k >= n else float(beta.ppf(1.0 - alpha, k + 1, n - k))


def cp_two_sided(k: int, n: int, alpha: float) -> tuple[float, float]:
    return cp_lower(k, n, alpha / 2), cp_upper(k, n, alpha / 2)


def paired_difference(
    before: np.ndarray, after: np.ndarray, alpha: float
) -> tuple[float, tuple[float, float], int]:
    """(after − before accuracy, its two-sided interval, discordant rows) on the same rows.

    Only discordant rows move the difference: given D of them, b (wrong → right) is binomial,
    so the Clopper–Pearson interval of b/D maps onto the difference (2π − 1)·D/n.
    """
    before, after = np.asarray(before, bool), np.asarray(after, bool)
    n = len(before)
    gained, lost = int(np.sum(~before & after)), int(np.sum(before & ~after))
    discordant = gained + lost
    if n == 0:
        return math.nan, (math.nan, math.nan), 0
    diff = (gained - lost) / n
    if discordant == 0:
        return diff, (0.0, 0.0), 0
    low, high = cp_two_sided(gained, discordant, alpha)
    return diff, ((2 * low - 1) * discordant / n, (2 * high - 1) * discordant / n), discordant


@dataclass(frozen=True)
class LossTest:
    """The forgotten losses' percentiles among unseen losses of the same class, and the test."""

    n: int
    mean_percentile: float
    median_percentile: float
    p_value: float
    upper: float
    best_p: float


def loss_rank_test(
    forget_loss: np.ndarray,
    forget_y: np.ndarray,
    test_loss: np.ndarray,
    test_y: np.ndarray,
    alpha: float,
    draws: int = LOSS_TEST_DRAWS,
    seed: int = 0,
) -> LossTest:
    """One-sided, class-stratified permutation test: are the forgotten losses *lower* than unseen?

    Each forgotten sample's percentile u is the fraction of test samples of its class with a
    lower loss (ties count half): 0.5 on average for a sample the model never saw, near 0 for
    one it remembers. The statistic is the mean of u; its null distribution comes from
    shuffling, within each class, which of the pooled (forgotten + test) losses are the
    forgotten ones — exact in size at every n, and free of class-mix effects (an easy class
    does not look remembered). p = (1 + #{null ≤ observed}) / (draws + 1). `upper` is the
    one-sided upper bound of the mean percentile from the same null (a shift-model inversion:
    below 0.5 exactly when the test rejects); `best_p` is the p the most extreme outcome (every
    forgotten loss below every unseen one) would get, which says whether this size can decide.
    Forgotten samples of a class absent from the test rows are left out.
    """
    forget_loss, test_loss = np.asarray(forget_loss, float), np.asarray(test_loss, float)
    rng = np.random.default_rng(seed)
    percentiles, null, log_p_extreme = [], np.zeros(draws), 0.0
    for label in np.unique(forget_y):
        mine = forget_loss[forget_y == label]
        unseen = np.sort(test_loss[test_y == label])
        n_c, m_c = len(mine), len(unseen)
        if m_c == 0:
            continue
        percentiles.append(loss_percentiles(mine, np.full(n_c, label), unseen, np.full(m_c, label)))
        ranks = rankdata(np.concatenate([mine, unseen]))  # midranks, 1-based
        null += (_random_rank_sums(ranks, n_c, draws, rng) - n_c * (n_c + 1) / 2) / m_c
        log_p_extreme -= math.lgamma(n_c + m_c + 1) - math.lgamma(n_c + 1) - math.lgamma(m_c + 1)
    if not percentiles:
        return LossTest(0, math.nan, math.nan, 1.0, 1.0, 1.0)
    u = np.concatenate(percentiles)
    n = len(u)
    observed, null = float(u.mean()), null / n
    p_value = (1 + int(np.sum(null <= observed + 1e-12))) / (draws + 1)
    upper = min(1.0, max(observed, observed + 0.5 - float(np.quantile(null, alpha))))
    best_p = (1 + draws * math.exp(log_p_extreme)) / (draws + 1)
    return LossTest(n, observed, float(np.median(u)), p_value, upper, best_p)


def _random_rank_sums(
    ranks: np.ndarray, k: int, draws: int, rng: np.random.Generator, budget: int = 2_000_000
) -> np.ndarray:
    """Sums of `k` of `ranks` drawn without replacement, `draws` times, in bounded chunks."""
    size = len(ranks)
    take = min(k, size - k)  # draw the smaller side; the rest sums to the total minus it
    sums = np.empty(draws)
    chunk = max(1, budget // size)
    for start in range(0, draws, chunk):
        rows = min(chunk, draws - start)
        if take == 0:
            sums[start : start + rows] = 0.0
        else:
            keys = rng.random((rows, size))
            chosen = np.argpartition(keys, take - 1, axis=1)[:, :take]
            sums[start : start + rows] = ranks[chosen].sum(1)
    return sums if take == k else ranks.sum() - sums
