"""What kind of forget set a request names, found from the data (`detect_regime`), never from
how the request was phrased: systematic or scattered (`uib.methods.step_length` says what each
means for the step's length).

"Systematic" means a pattern the *retain set does not carry*. Part of a faulty source (one
digit's share of it) shares the patch with its other half, so the halves' test finds a
pattern; but the rest of the source stays in the retain set and still teaches it, and retrain
keeps it (measured on digits / patch-bias: bias_asr ≈ 0.9 after retrain, the slice's UA
0–0.29 for most digits). The knee's step removes the whole pattern, which validation (with no
patched image) prices as free, and takes the retained siblings' fit with it. So at the regime
test's own step `retained_siblings` also scores the retained samples of the forget set's
labels: their mean confidence drop beyond held-out samples', in units of half B's, estimates
how many retained samples carry the pattern too. With at least `sibling_ratio` per forget
sample (and their drops above held-out ones at `sibling_level`) the forget set is exchangeable
with its retained siblings, and it is scattered: retrain predicts it as it predicts unseen
samples of its kind. The whole source, a whole corruption or a whole class leaves none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import BaseModel
from scipy.stats import mannwhitneyu
from torch import nn

from uib.curvature import summed_gradient
from uib.methods.base import UnlearnContext
from uib.methods.if_step import (
    REMOVAL_TARGETS,
    Curvature,
    CurvatureConfig,
    ForgetScore,
    logits_of,
    set_step,
)
from uib.prior import damping


class Regime(BaseModel):
    """What kind of forget set a request names, and the evidence."""

    kind: Literal["systematic", "scattered"]
    reason: str
    transfer: float | None = None
    p_value: float | None = None
    siblings: float | None = None
    siblings_p: float | None = None


@dataclass
class Siblings:
    """Retained samples that carry the forget set's pattern too (`retained_siblings`): their
    estimated number, the one-sided p of any excess, the share of the scored rows, and the
    mean confidence drops of the scored rows and of class-matched held-out rows."""

    estimate: float
    p_value: float
    share: float
    retained_drop: float
    heldout_drop: float
    scored: int


@torch.no_grad()
def own_label_conf(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.softmax(logits_of(model, x), 1).gather(1, y[:, None]).squeeze(1)


def class_matched_mean(values: torch.Tensor, labels: torch.Tensor, like: torch.Tensor) -> float:
    """The mean of `values` reweighted so that `labels` have the label mix of `like`."""
    total, weight = 0.0, 0
    for label, count in zip(*torch.unique(like, return_counts=True), strict=True):
        chosen = values[labels == label]
        if len(chosen):
            total += float(chosen.mean()) * int(count)
            weight += int(count)
    return total / weight if weight else float("nan")


def removed_labels(ctx: UnlearnContext) -> list[int]:
    """The labels of the forget set that no retained sample carries: a whole class removed."""
    return sorted(set(ctx.forget_y.unique().tolist()) - set(ctx.retain_y.unique().tolist()))


def regime_without_curvature(ctx: UnlearnContext, config: CurvatureConfig) -> Regime | None:
    """The regime where no cross-fit is needed: set in the config, a label taken out of the
    retain set (systematic), or fewer than `min_pattern_size` samples (scattered)."""
    if config.regime != "auto":
        return Regime(kind=config.regime, reason="set in the method's config")
    gone = removed_labels(ctx)
    if gone:
        return Regime(kind="systematic", reason=f"removes every training sample of labels {gone}")
    if ctx.n_forget < config.min_pattern_size:
        return Regime(
            kind="scattered",
            reason=f"{ctx.n_forget} samples are too few to show a "
            f"shared pattern (min_pattern_size {config.min_pattern_size})",
        )
    return None


@torch.no_grad()
def detect_regime(
    model: nn.Module,
    ctx: UnlearnContext,
    curv: Curvature,
    config: CurvatureConfig,
    scorer: ForgetScore,
) -> Regime:
    """Systematic or scattered, by cross-fitting the IF step on two halves of the forget set.

    The step that removes half A's influence is scanned up every other η of the grid while it
    stays specific
    to A (held-out samples of the same labels lose at most half what A loses) and until A has
    lost half its confidence in its own labels. If the forget samples share a pattern, the
    other half B loses confidence with A; if they are scattered, B loses no more than the
    held-out samples (which the step did not aim at either). At the longest specific step,
    `transfer` = (drop of B − drop of held-out) / drop of A (means); systematic when it
    reaches `pattern_transfer` and B's per-sample drops exceed the held-out samples' at
    significance `pattern_level` (one-sided Mann–Whitney), so that one sample of B that
    happens to look like one of A (measured: 10 random MNIST ids, transfer 0.53) does not
    make a pattern. A forget set that takes every sample of a label out of the retain set
    is systematic without a test; fewer than `min_pattern_size` samples, or a set none of whose
    steps is specific, are scattered. A systematic verdict is then checked against the
    retain set at the same step (`retained_siblings`): with at least `sibling_ratio` siblings
    per forget sample, at `sibling_level`, the pattern lives on in the retain set and the forget
    set is scattered among its siblings (`Regime.siblings` holds the estimate either way).
    `model` holds θ0 again on return.
    """
    known = regime_without_curvature(ctx, config)
    if known is not None:
        return known
    cap = max(config.search_samples // 2, 1)
    order = torch.randperm(ctx.n_forget, generator=ctx.generator(offset=29)).to(ctx.device)
    half_a, half_b = order[: ctx.n_forget // 2][:cap], order[ctx.n_forget // 2 :][:cap]
    xa, ya = ctx.forget_x[half_a], ctx.forget_y[half_a]
    xb, yb = ctx.forget_x[half_b], ctx.forget_y[half_b]
    with torch.enable_grad():
        g_a = summed_gradient(model, xa, ya, loss_fn=REMOVAL_TARGETS[config.removal_target])
    direction = {
        name: g_a[name] / (ctx.n_retain * (f_r + damping(f_r, config.lam_scale)))
        for name, f_r in curv.retain.fisher.items()
    }
    matched = torch.isin(scorer.val_y, yb)
    vx, vy = scorer.val_x[matched][:cap], scorer.val_y[matched][:cap]

    def confidences() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (
            own_label_conf(model, xa, ya),
            own_label_conf(model, xb, yb),
            own_label_conf(model, vx, vy),
        )

    base, specific = confidences(), None
    mean_a0, mean_v0 = float(base[0].mean()), class_matched_mean(base[2], vy, yb)
    for eta in sorted(config.eta_grid):
        set_step(model, curv, eta, config.clip, direction=direction)
        drops = [b - c for b, c in zip(base, confidences(), strict=True)]
        drop_a, drop_v = float(drops[0].mean()), class_matched_mean(drops[2], vy, yb)
        if drop_a < 0.05:
            if drop_v >= 0.5 * mean_v0:
                break
            continue
        if drop_v > 0.5 * drop_a:
            break
        specific = (drop_a, drops[1], drop_v, drops[2], eta)
        if drop_a >= 0.5 * mean_a0:
            break
    set_step(model, curv, 0.0, None)
    if specific is None:
        return Regime(
            kind="scattered",
            reason="no step takes half of the forget set's fit "
            "without taking as much from held-out data",
        )
    drop_a, drops_b, drop_v, drops_v, eta = specific
    transfer = (float(drops_b.mean()) - drop_v) / drop_a
    p_value = (
        float(
            mannwhitneyu(drops_b.cpu().numpy(), drops_v.cpu().numpy(), alternative="greater").pvalue
        )
        if len(drops_v)
        else 1.0
    )
    systematic = transfer >= config.pattern_transfer and p_value < config.pattern_level
    reason = (
        f"removing half of the forget set takes {transfer:.2f} of the other "
        f"half's confidence beyond held-out data's (threshold "
        f"{config.pattern_transfer:g}), p = {p_value:.2g} (level "
        f"{config.pattern_level:g})"
    )
    if not systematic:
        return Regime(kind="scattered", transfer=transfer, p_value=p_value, reason=reason)
    siblings = retained_siblings(
        model, ctx, curv, config, (direction, eta), (drops_b, yb), (drops_v, vy)
    )
    shared = siblings.p_value < config.sibling_level and (
        siblings.estimate >= config.sibling_ratio * ctx.n_forget
    )
    reason += (
        f"; about {siblings.estimate:.0f} retained samples carry it too ("
        f"{siblings.scored} retained samples of its labels lose {siblings.retained_drop:.3f} "
        f"of confidence against held-out's {siblings.heldout_drop:.3f}: a share "
        f"{siblings.share:.2f} of the other half's excess, p = {siblings.p_value:.2g})"
    )
    if shared:
        reason += (
            f", at least {config.sibling_ratio:g} per forget sample at p < "
            f"{config.sibling_level:g}: the retain set carries the pattern too, retrain keeps "
            "it, and the forget set is scattered among its siblings"
        )
    return Regime(
        kind="scattered" if shared else "systematic",
        transfer=transfer,
        p_value=p_value,
        siblings=siblings.estimate,
        siblings_p=siblings.p_value,
        reason=reason,
    )


@torch.no_grad()
def retained_siblings(
    model: nn.Module,
    ctx: UnlearnContext,
    curv: Curvature,
    config: CurvatureConfig,
    step: tuple[dict[str, torch.Tensor], float],
    half_b: tuple[torch.Tensor, torch.Tensor],
    held_out: tuple[torch.Tensor, torch.Tensor],
) -> Siblings:
    """How many retained samples carry the forget set's pattern too: its siblings.

    At the regime test's step (`step`: the direction removing half A, and its η), the
    retained samples of the forget set's labels (`sibling_sample` of them at random) lose
    confidence in their labels. One without the pattern loses what a held-out sample of its
    label loses; a sibling loses what a sample of half B loses. With `share` the siblings'
    fraction of the retained rows, their mean drop is (1 − share) · held-out's + share · B's:

        share = (mean drop of retained − held-out's) / (mean drop of B − held-out's),

    held-out means class-matched (to the retained rows' labels, and to B's), share clipped to
    [0, 1], and `estimate` = share × every retained row of those labels: the regime test's
    `transfer` read on the retain set, in units of B's, so a sibling that carries half the
    pattern counts half. The one-sided Mann–Whitney test of the retained drops against the
    held-out ones (`p_value`) says whether there is any excess at all. A faulty source's
    partial slice has the rest of the source as siblings; the whole source or a whole
    corruption leaves none. Retained rows lose a little more than held-out ones even without
    siblings (the generalisation gap; measured on digits / patch-bias: a share of 0.17–0.24 for
    the whole faulty source, and up to 1.6 estimated siblings per forget sample, p 0.13, for a
    14-sample source forgotten whole), and the held-out rows are few (22 of a label on digits),
    so `detect_regime` asks for both the ratio and the test (docs/METHOD.md). `half_b`: B's drops and labels; `held_out`: the held-out drops and
    labels. `model` holds θ0 on return.
    """
    (direction, eta), (drops_b, yb), (drops_v, vy) = step, half_b, held_out
    labels = torch.unique(ctx.forget_y)
    same = torch.nonzero(torch.isin(ctx.retain_y, labels)).squeeze(1)
    if not len(same) or not len(drops_v):
        return Siblings(0.0, 1.0, 0.0, 0.0, 0.0, 0)
    order = torch.randperm(len(same), generator=ctx.generator(offset=37))
    rows = same[order[: config.sibling_sample].to(same.device)]
    xr, yr = ctx.retain_x[rows], ctx.retain_y[rows]
    set_step(model, curv, 0.0, None)
    before = own_label_conf(model, xr, yr)
    set_step(model, curv, eta, config.clip, direction=direction)
    drops_r = before - own_label_conf(model, xr, yr)
    set_step(model, curv, 0.0, None)
    held_r = class_matched_mean(drops_v, vy, yr)
    excess_r = float(drops_r.mean()) - held_r
    excess_b = float(drops_b.mean()) - class_matched_mean(drops_v, vy, yb)
    share = min(max(excess_r / excess_b, 0.0), 1.0) if excess_b > 0 else 0.0
    p_value = float(
        mannwhitneyu(drops_r.cpu().numpy(), drops_v.cpu().numpy(), alternative="greater").pvalue
    )
    return Siblings(
        estimate=share * len(same),
        p_value=p_value,
        share=share,
        retained_drop=float(drops_r.mean()),
        heldout_drop=held_r,
        scored=len(rows),
    )
