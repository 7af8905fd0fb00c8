"""The influence-function (IF) removal step that UIB starts from: its curvature (per-sample
gradients over a stratified retain sample S_r and the forget set), its direction, and the
validation score behind the knee rule for its length. How long a step a request gets is
`uib.methods.step_length`'s business."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import nn

from uib.curvature import (
    GradientStats,
    default_chunk_size,
    gradient_stats,
    summed_cross_entropy,
    summed_gradient,
    trainable,
)
from uib.methods.base import MethodConfig, UnlearnContext
from uib.methods.common import stratified_sample
from uib.models import set_training
from uib.prior import clip_step, if_direction

DEFAULT_ETA_GRID = [round(10 ** (k / 2), 14) for k in range(-18, 1)]  # 1e-9, 3.2e-9, …, 1
EVAL_BATCH = 128  # rows a forward pass; on 2 CPU cores the CNN runs 2× faster a row than at 512


class CurvatureConfig(MethodConfig):
    lam_scale: float = Field(1e-3, gt=0, description="λ = lam_scale · mean(F_r) per block")
    eta: float | None = Field(None, ge=0, description="IF step length; None: chosen on validation")
    eta_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_ETA_GRID))
    fallback_eta: float = Field(0.01, ge=0, description="η when no validation split is given")
    search_samples: int = Field(250, ge=10, description="validation and forget rows scored per η")
    forget_weight: float = Field(
        1.0, gt=0, description="w in the η score val_acc − w · forget_conf"
    )
    min_gain: float = Field(
        0.1,
        ge=0,
        description="the best score must beat η = 0's by this much, "
        "else the slice is not separable from unseen data and η = 0",
    )
    eta_scale: float = Field(
        1.0, gt=0, description="the step taken is eta_scale × the knee's η (systematic slices)"
    )
    pattern_transfer: float = Field(
        0.3,
        ge=0,
        description="a forget set is systematic when the "
        "step removing half of it takes at least this share of the "
        "other half's confidence beyond what it takes from unseen "
        "data of the same labels; see detect_regime",
    )
    pattern_level: float = Field(
        0.01,
        gt=0,
        lt=1,
        description="and when the other half's "
        "drops exceed held-out data's at this significance "
        "(one-sided Mann–Whitney)",
    )
    sibling_ratio: float = Field(
        1.0,
        ge=0,
        description="a shared pattern is the forget set's own only while fewer than this many "
        "retained samples per forget sample carry it too (the estimated siblings); with more, "
        "retrain keeps the pattern and the forget set is scattered among its siblings; see "
        "retained_siblings",
    )
    sibling_level: float = Field(
        0.1,
        gt=0,
        lt=1,
        description="and when the retained samples' drops exceed held-out ones at this "
        "significance (one-sided Mann–Whitney)",
    )
    sibling_sample: int = Field(
        1000,
        ge=10,
        description="retained rows of the forget set's labels scored for siblings (a random "
        "subsample when there are more; the count is scaled back up)",
    )
    min_pattern_size: int = Field(
        10,
        ge=2,
        description="fewer forget samples are scattered: "
        "halves this small cannot tell a shared pattern from two "
        "similar samples",
    )
    unseen_rank: float = Field(
        0.5,
        gt=0,
        le=1,
        description="scattered forget sets: the mean rank "
        "of their losses among same-class held-out losses to reach",
    )
    rank_test_level: float = Field(
        0.05,
        gt=0,
        lt=1,
        description="scattered forget sets: no step "
        "unless their losses rank low at this significance",
    )
    rank_reference: int = Field(
        1000,
        ge=10,
        description="scattered forget sets: held-out rows "
        "drawn at random to rank their losses against",
    )
    max_flips: float = Field(
        0.002,
        ge=0,
        description="scattered forget sets: the step may change "
        "the predicted class of at most this share of held-out and retained "
        "probe rows",
    )
    regime: Literal["auto", "systematic", "scattered"] = Field(
        "auto", description="auto: told apart by detect_regime"
    )
    clip: float | None = Field(1.0, gt=0, description="per-block step norm ≤ clip · ‖θ0‖, after η")
    removal_target: Literal["label-margin", "cross-entropy"] = Field(
        "label-margin",
        description="the loss whose summed forget gradient g_f the IF step removes from a "
        "systematic slice (and the regime test's halves); a scattered set takes "
        "cross-entropy's, see use_removal_target and label_margin_loss",
    )
    retain_sample: int = Field(1000, ge=1, description="|S_r| (all of D_r when smaller)")
    forget_sample: int | None = Field(
        500,
        ge=1,
        description="forget rows behind F_f; None: all. g_f always sums the whole forget set",
    )
    chunk_size: int | None = Field(
        None,
        ge=1,
        description="rows per vmap chunk (bounds peak memory); "
        "None: sized to the model, see default_chunk_size",
    )


def label_margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Σ_i (mean over k ≠ y_i of z_ik − z_i,y_i): minus each row's margin of its label over the
    mean of the other logits, every row weighted alike.

    Its gradient in the logits is u − e_y, u uniform over the other classes; cross-entropy's is
    p − e_y = (1 − p_y)(r − e_y), r the model's own runner-up mix. Two things follow, each
    measured on MNIST / patch-bias (docs/METHOD.md):
    - The evidence taken from the label goes to no class in particular, and the rest of the
      input decides, as it does for a model that never saw the slice. Cross-entropy gives it to
      the slice's runner-ups, and a step long enough to break a shortcut *moves* it (seed 1:
      patched digits sent 50 % to class 4 by UIB, 86 % by the IF step alone).
    - Every row counts alike. Under cross-entropy a fitted row weighs 1 − p_y, which spans
      orders of magnitude, so the few worst-fitted rows set the direction instead of what the
      slice shares (seed 2: the step removing half of the faulty source took as much from real
      zeros as from the other half, and the source was taken for scattered records).
    """
    logits = logits.float()
    label = logits.gather(1, y[:, None])
    others = (logits.sum(1, keepdim=True) - label) / (logits.shape[1] - 1)
    return (others - label).sum()


REMOVAL_TARGETS = {"label-margin": label_margin_loss, "cross-entropy": summed_cross_entropy}


@dataclass
class Curvature:
    theta0: dict[str, torch.Tensor]
    retain: GradientStats
    forget: GradientStats
    direction: dict[str, torch.Tensor]
    sample: torch.Tensor
    chunk: int


def label_matching_weights(
    retain_y: torch.Tensor, forget_y: torch.Tensor, num_classes: int
) -> torch.Tensor | None:
    """Per retain row: π_forget(y) / π_retain(y), so the weighted retain sample has the forget
    set's label mix; None when the retain sample shares no label with the forget set."""
    p_forget = torch.bincount(forget_y, minlength=num_classes).float() / len(forget_y)
    p_retain = torch.bincount(retain_y, minlength=num_classes).float() / max(len(retain_y), 1)
    ratio = torch.where(
        p_retain > 0, p_forget / p_retain.clamp_min(1e-12), torch.zeros_like(p_forget)
    )
    weights = ratio[retain_y]
    return weights if float(weights.sum()) > 0 else None


def forget_stats(
    model: nn.Module, ctx: UnlearnContext, size: int | None, chunk: int, removal_target: str
) -> GradientStats:
    """F_f from per-sample gradients of `size` forget rows (all when None); g_f, the summed
    gradient of `removal_target`'s loss, from all rows."""
    loss_fn = REMOVAL_TARGETS[removal_target]
    if size is None or size >= ctx.n_forget:
        stats = gradient_stats(model, ctx.forget_x, ctx.forget_y, chunk)
        if loss_fn is summed_cross_entropy:
            return stats
        fisher = stats.fisher
    else:
        rows = torch.randperm(ctx.n_forget, generator=ctx.generator(offset=17))[:size]
        rows = rows.to(ctx.device)
        fisher = gradient_stats(model, ctx.forget_x[rows], ctx.forget_y[rows], chunk).fisher
    g_f = summed_gradient(model, ctx.forget_x, ctx.forget_y, loss_fn=loss_fn)
    return GradientStats(fisher, g_f, ctx.n_forget)


def measure_curvature(model: nn.Module, ctx: UnlearnContext, config: CurvatureConfig) -> Curvature:
    size = min(ctx.n_retain, config.retain_sample)
    sample = stratified_sample(ctx.retain_y, size, ctx.generator(offset=1)).to(ctx.device)
    chunk = config.chunk_size or default_chunk_size(model, ctx.device)
    weights = label_matching_weights(ctx.retain_y[sample], ctx.forget_y, ctx.num_classes)
    with ctx.phase("curvature"):
        retain = gradient_stats(model, ctx.retain_x[sample], ctx.retain_y[sample], chunk, weights)
        forget = forget_stats(model, ctx, config.forget_sample, chunk, config.removal_target)
    theta0 = {k: v.detach().clone() for k, v in trainable(model).items()}
    direction = if_direction(retain, forget, ctx.n_retain, config.lam_scale)
    ctx.notes["retain_sample"] = size
    return Curvature(theta0, retain, forget, direction, sample, chunk)


def use_removal_target(
    model: nn.Module, ctx: UnlearnContext, curv: Curvature, config: CurvatureConfig, target: str
) -> None:
    """Recompute g_f (and the IF direction) of `curv` for `target`'s loss, with `model` at θ0.

    A scattered forget set takes cross-entropy's: its records share no pattern for the step to
    move elsewhere, the step is short, and each record's own influence (weighted by how badly
    it is fitted, as the IF derivation has it) is what ranks its loss like a held-out one.
    Measured on digits, a random 10 % under the label margin: the chosen step left the loss rank
    where it was (0.489 → 0.488), under cross-entropy it rose."""
    with torch.enable_grad():
        g_f = summed_gradient(model, ctx.forget_x, ctx.forget_y, loss_fn=REMOVAL_TARGETS[target])
    curv.forget = GradientStats(curv.forget.fisher, g_f, ctx.n_forget)
    curv.direction = if_direction(curv.retain, curv.forget, ctx.n_retain, config.lam_scale)


@torch.no_grad()
def logits_of(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(x[i : i + EVAL_BATCH]).float() for i in range(0, len(x), EVAL_BATCH)])


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((logits_of(model, x).argmax(1) == y).float().mean()) if len(y) else 0.0


@torch.no_grad()
def set_step(
    model: nn.Module,
    curv: Curvature,
    eta: float,
    clip: float | None,
    mask: dict[str, torch.Tensor] | None = None,
    direction: dict[str, torch.Tensor] | None = None,
) -> None:
    """Parameters ← θ0 + clip(η · IF step), restricted to `mask` where one is given.

    `direction` defaults to the whole forget set's IF step."""
    direction = direction if direction is not None else curv.direction
    for name, p in trainable(model).items():
        step = clip_step(eta * direction[name], curv.theta0[name], clip)
        if mask is not None:
            step = step * mask[name]
        p.copy_(curv.theta0[name] + step)


@dataclass
class ForgetScore:
    """The validation score that picks η for a systematic slice: val_acc − w · forget_conf.

    A forgotten slice should be predicted like data the model never saw, while unseen data
    keeps its accuracy. forget_conf is the mean probability of the forget rows' own labels
    (smooth where accuracy saturates at 0). With w = 1 the argmax is the knee past which each
    further unit of forgetting costs as much validation accuracy: early for a random slice
    (forgetting it costs accuracy everywhere), late for a systematic one (its confidence
    collapses while validation accuracy holds). Validation rows of a class the retain set no
    longer has are left out (forgetting a whole class must not count against it). Each side
    is scored on at most `search_samples` rows.

    The retain passes then win back part of what the step removed, so UIB takes `eta_scale`
    times the knee. Measured on digits, seeds 0–2 (tuning seeds): patch-bias bias_asr
    0.07–0.25 at 2–3× on the hardest seed, 0.005–0.015 at 4×; on MNIST seed 0, 8 passes of
    64 rows: patch-bias avg_gap 0.46 pp at 4× against 26 at 2× (the passes restored the
    shortcut).
    """

    val_x: torch.Tensor
    val_y: torch.Tensor
    forget_x: torch.Tensor
    forget_y: torch.Tensor
    weight: float
    ref_x: torch.Tensor
    ref_y: torch.Tensor

    @classmethod
    def for_request(cls, ctx: UnlearnContext, config: CurvatureConfig) -> ForgetScore | None:
        """`ref_x`, `ref_y`: up to `rank_reference` held-out rows drawn at random, which the
        scattered rule ranks the forget set's losses against. The first rows of a split need
        not be typical: MNIST's test set opens with its easier half, and ranked against its
        first 250 rows a random 10 % of the training set looked remembered (mean rank 0.45,
        against 0.50 on all 5,000)."""
        if ctx.val_x is None:
            return None
        n = config.search_samples
        kept = torch.isin(ctx.val_y, torch.unique(ctx.retain_y))
        val_x, val_y = ctx.val_x[kept], ctx.val_y[kept]
        rows = torch.randperm(ctx.n_forget, generator=ctx.generator(offset=13))[:n].to(ctx.device)
        reference = torch.randperm(len(val_y), generator=ctx.generator(offset=31))
        reference = reference[: config.rank_reference].to(ctx.device)
        return cls(
            val_x[:n],
            val_y[:n],
            ctx.forget_x[rows],
            ctx.forget_y[rows],
            config.forget_weight,
            val_x[reference],
            val_y[reference],
        )

    @torch.no_grad()
    def __call__(self, model: nn.Module) -> dict[str, float]:
        set_training(model, False)
        val_acc = accuracy(model, self.val_x, self.val_y)
        forget = torch.softmax(logits_of(model, self.forget_x), 1)
        forget_acc = float((forget.argmax(1) == self.forget_y).float().mean())
        forget_conf = float(forget.gather(1, self.forget_y[:, None]).mean())
        return {
            "val_acc": val_acc,
            "forget_acc": forget_acc,
            "forget_conf": forget_conf,
            "score": val_acc - self.weight * forget_conf,
        }


@torch.no_grad()
def knee_eta(
    model: nn.Module,
    ctx: UnlearnContext,
    curv: Curvature,
    config: CurvatureConfig,
    scorer: ForgetScore,
    mask: dict[str, torch.Tensor] | None = None,
) -> float:
    """`eta_scale` × the η of the grid with the best `ForgetScore` (the smallest on ties).

    `model` holds θ0 when called, and η = 0 is scored first. When no η beats it by `min_gain`
    the forget set is not separable from unseen data (a random slice: every unit of its
    confidence removed costs a unit of validation accuracy, measured on MNIST) and η = 0: the
    step would only damage the model. The scan ends once validation accuracy has halved.
    """
    baseline = {"eta": 0.0, **scorer(model)}
    trace = []
    for eta in sorted(config.eta_grid):
        set_step(model, curv, eta, config.clip, mask)
        trace.append({"eta": eta, **scorer(model)})
        if trace[-1]["val_acc"] < 0.5 * baseline["val_acc"]:
            break
    ctx.notes["eta_search"] = [baseline, *trace]
    best = max(trace, key=lambda t: t["score"])
    if best["score"] - baseline["score"] < config.min_gain:
        ctx.notes["eta_rule"] = (
            f"no separable slice: the best score gains "
            f"{best['score'] - baseline['score']:.3f} < {config.min_gain:g}"
        )
        return 0.0
    ctx.notes["eta_rule"] = (
        f"validation: {config.eta_scale:g} × argmax(val_acc - {scorer.weight:g} × forget_conf)"
    )
    return config.eta_scale * best["eta"]
