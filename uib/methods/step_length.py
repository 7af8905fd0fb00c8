"""How long an IF removal step a request gets: η, chosen on the held-out validation split, never
with a retrained model.

How long the step should be depends on what kind of forget set a request names, and the method
finds that out from the data (`detect_regime`), not from how the request was phrased:

- **systematic**: the forget samples share something the rest of the data lacks (a faulty
  source's patch, a legacy corruption, a whole class). Removing the influence of half of them
  removes much of the other half's fit too. There is no unseen data of that kind to match, so η
  is the knee of `val_acc − forget_conf` (`knee_eta`): forget as far as it stays cheap.
- **scattered**: a person's few records, a random subset. The samples are exchangeable with the
  rest of the training data, so a retrained model predicts them exactly as it predicts unseen
  data: their loss ranks like a held-out sample's. η is 0 unless their losses rank
  significantly low among same-class held-out losses, and then the shortest step after which
  they rank at the median (`unseen_matched_eta`). Retrain barely moves for such a set, and
  neither does this step: driving a random sample's confidence towards 0, as the knee would, is
  over-forgetting and costs accuracy for nothing.

The regime, and the siblings test that tells part of a systematic source from the whole of it,
are `uib.methods.regime`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from uib.methods.base import UnlearnContext, register
from uib.methods.if_step import (
    Curvature,
    CurvatureConfig,
    ForgetScore,
    knee_eta,
    logits_of,
    measure_curvature,
    set_step,
    use_removal_target,
)
from uib.methods.regime import (
    detect_regime,
    regime_without_curvature,
)
from uib.metrics import loss_percentiles, per_sample_loss


@dataclass
class RankedLosses:
    """The forget rows' loss percentiles among held-out losses of their label, and the null
    variance of their mean: forget rows and held-out rows exchangeable, so per label c with
    n_c forget and m_c held-out rows the Mann–Whitney variance (n_c + m_c + 1) / (12 n_c m_c),
    weighted by (n_c / n)². The held-out pool's own size counts: ranked against the same 25
    rows of a label, 2,400 forget rows are no surer than those 25 rows are typical."""

    ranks: np.ndarray
    null_variance: float

    @property
    def mean(self) -> float:
        return float(self.ranks.mean()) if len(self.ranks) else 0.5

    def remembered_p(self) -> float:
        """One-sided p of "ranked like held-out rows" against "ranked low" (remembered)."""
        if not len(self.ranks):
            return 1.0
        z = (self.mean - 0.5) / self.null_variance**0.5
        return float(0.5 * math.erfc(-z / 2**0.5))


def loss_ranks(model: nn.Module, scorer: ForgetScore) -> RankedLosses:
    """Each forget row's `uib.metrics.loss_percentiles` among the losses of the scorer's
    held-out reference rows (`ForgetScore.ref_x`)."""

    def losses(x, y):
        return per_sample_loss(logits_of(model, x).cpu(), y.cpu().numpy())

    forget_y, ref_labels = scorer.forget_y.cpu().numpy(), scorer.ref_y.cpu().numpy()
    ranks = loss_percentiles(
        losses(scorer.forget_x, scorer.forget_y),
        forget_y,
        losses(scorer.ref_x, scorer.ref_y),
        ref_labels,
    )
    ranked = ~np.isnan(ranks)
    n = int(ranked.sum())
    variance = 0.0
    for label, n_c in zip(*np.unique(forget_y[ranked], return_counts=True), strict=True):
        m_c = int(np.sum(ref_labels == label))
        variance += (n_c / n) ** 2 * (n_c + m_c + 1) / (12 * n_c * m_c)
    return RankedLosses(ranks[ranked], variance)


def like_unseen(
    model: nn.Module, ctx: UnlearnContext, config: CurvatureConfig, scorer: ForgetScore
) -> bool:
    """Whether the forget rows' losses at θ0 rank like held-out ones (`remembered_p` at least
    `rank_test_level`); starts the search trace in the notes and, when so, says it there."""
    ranked = loss_ranks(model, scorer)
    row = {"eta": 0.0, "rank": ranked.mean, "p_remembered": ranked.remembered_p(), "flipped": 0.0}
    ctx.notes["eta_search"] = [row]
    if row["p_remembered"] < config.rank_test_level:
        return False
    ctx.notes["eta_rule"] = (
        f"scattered, already like unseen data: mean loss rank {row['rank']:.2f} among "
        f"held-out samples, p = {row['p_remembered']:.2f} ≥ {config.rank_test_level:g}"
    )
    return True


def already_unseen(
    model: nn.Module, ctx: UnlearnContext, config: CurvatureConfig, scorer: ForgetScore | None
) -> bool:
    """A scattered forget set known as such without curvature (a person's few records) whose
    losses already rank like held-out ones: η = 0, decided before any per-sample gradient."""
    if config.eta is not None or scorer is None:
        return False
    regime = regime_without_curvature(ctx, config)
    if regime is None or regime.kind != "scattered":
        return False
    with ctx.phase("eta_search"):
        ctx.notes["regime"] = regime.model_dump()
        return like_unseen(model, ctx, config, scorer)


@torch.no_grad()
def unseen_matched_eta(
    model: nn.Module,
    ctx: UnlearnContext,
    curv: Curvature,
    config: CurvatureConfig,
    scorer: ForgetScore,
) -> float:
    """Scattered forget sets: 0 unless the forgotten samples' losses rank significantly low
    among same-class held-out losses (one-sided, `rank_test_level`); then the shortest step
    after which they rank at `unseen_rank` on average, or else the longest step that changes the
    predicted class of at most `max_flips` of the probe rows (the held-out rows and 250 of S_r).

    Up the grid to the first η that reaches the rank or flips too much, then three geometric
    bisections between it and the η before it.
    """
    if like_unseen(model, ctx, config, scorer):
        return 0.0
    trace = ctx.notes["eta_search"]
    ctx.notes["eta_rule"] = (
        f"scattered, remembered (mean loss rank {trace[0]['rank']:.2f}, p = "
        f"{trace[0]['p_remembered']:.3f}): the shortest step to rank "
        f"{config.unseen_rank:g} flipping ≤ {config.max_flips:g} of the probe"
    )
    probe = torch.cat([scorer.val_x, ctx.retain_x[curv.sample[:250]]])
    predicted = logits_of(model, probe).argmax(1)

    def outcome(eta: float) -> tuple[bool, bool]:
        """(rank reached, few enough flips) at θ0 + η · step."""
        set_step(model, curv, eta, config.clip)
        flipped = float((logits_of(model, probe).argmax(1) != predicted).float().mean())
        trace.append({"eta": eta, "rank": loss_ranks(model, scorer).mean, "flipped": flipped})
        return trace[-1]["rank"] >= config.unseen_rank, flipped <= config.max_flips

    low, high, at_high = 0.0, None, (False, False)
    for eta in sorted(config.eta_grid):
        reached, affordable = outcome(eta)
        if reached or not affordable:
            high, at_high = eta, (reached, affordable)
            break
        low = eta
    if high is None:
        return low
    below = low if low > 0 else high / 10**0.5
    for _ in range(3):
        mid = (below * high) ** 0.5
        reached, affordable = outcome(mid)
        if reached or not affordable:
            high, at_high = mid, (reached, affordable)
        else:
            below = low = mid
    return high if at_high == (True, True) else low


def select_eta(
    model: nn.Module,
    ctx: UnlearnContext,
    curv: Curvature,
    config: CurvatureConfig,
    scorer: ForgetScore | None,
    mask: dict[str, torch.Tensor] | None = None,
) -> float:
    """η by the forget set's regime (see the module's docstring); `model` holds θ0 on return
    only when η = 0 (the caller sets the step it takes)."""
    if config.eta is not None:
        return config.eta
    if scorer is None:
        ctx.notes["eta_rule"] = "fallback (no validation split)"
        return config.fallback_eta
    with ctx.phase("eta_search"):
        regime = detect_regime(model, ctx, curv, config, scorer)
        ctx.notes["regime"] = regime.model_dump()
        if regime.kind == "systematic":
            return knee_eta(model, ctx, curv, config, scorer, mask)
        if config.removal_target != "cross-entropy":
            use_removal_target(model, ctx, curv, config, "cross-entropy")
        return unseen_matched_eta(model, ctx, curv, config, scorer)


class InfluenceConfig(CurvatureConfig):
    pass


@register("influence", InfluenceConfig)
def influence(model: nn.Module, ctx: UnlearnContext, config: InfluenceConfig) -> nn.Module:
    """The influence-function removal step alone (diagonal Fisher, damped, η on validation)."""
    scorer = ForgetScore.for_request(ctx, config)
    if already_unseen(model, ctx, config, scorer):
        ctx.notes["eta"] = 0.0
        return model
    curv = measure_curvature(model, ctx, config)
    eta = select_eta(model, ctx, curv, config, scorer)
    set_step(model, curv, eta, config.clip)
    ctx.notes["eta"] = eta
    return model
