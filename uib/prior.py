"""UIB's dynamic prior: a per-layer Gaussian built from the shift between D and D_r.

Per parameter block l (every weight and bias tensor is one block), UIB-METHOD.md:

    μ = θ0 + η · g_f / (n_r · (F_r + λ))          the influence-function removal step
    s = F_f / (F_m + λ), normalised to mean 1      the systematic-pattern signal
    Λ = n_r · (F_r + λ) · shift(α, s)              shift-aware precision

F_m is the retain Fisher reweighted to the forget set's label distribution (F_r when the
retain set has none of those labels): s then measures what the slice adds beyond its labels.
Against plain F_r, a slice whose samples all carry label c (a faulty source labelled c) lights up
class c's own output weights, and holding those at μ costs class c its accuracy (measured:
0.96 → 0.48–0.83 on digits / patch-bias).

F_r is the mean per-sample Fisher, so n_r · (F_r + λ) is the precision of the Laplace
posterior of D_r (the summed Fisher); with the (β / n_r) weight of the KL the pull is
β · ½ Σ (F_r + λ) · shift · (m − μ)², on the scale of the retain loss's own curvature.

How the shift signal reshapes the precision is a registered rule:
- `release`: shift = 1 / (1 + α s), the formulation in UIB-METHOD.md: entries the forget slice
  leans on get a weak prior and are free to move away from μ.
- `hold`: shift = 1 + α s: those entries are held at μ, where the IF step put them. Measured on
  digits / patch-bias (3 seeds), the passes over the retain sample restore the shortcut under
  `release` (bias_asr 0.14–0.28 at α = 10–100) and keep it broken under `hold` (0.01–0.02),
  so `hold` is the default.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from uib.curvature import GradientStats


@dataclass
class LayerPrior:
    mean: torch.Tensor
    precision: torch.Tensor
    signal: torch.Tensor


SHIFT_RULES: dict[str, Callable[[float, torch.Tensor], torch.Tensor]] = {
    "release": lambda alpha, signal: 1.0 / (1.0 + alpha * signal),
    "hold": lambda alpha, signal: 1.0 + alpha * signal,
}


def damping(fisher_r: torch.Tensor, lam_scale: float) -> torch.Tensor:
    """λ = lam_scale · mean(F_r) of the block; a floor keeps all-zero blocks finite."""
    return lam_scale * fisher_r.mean().clamp_min(1e-12)


def if_direction(
    retain: GradientStats, forget: GradientStats, n_retain: int, lam_scale: float
) -> dict[str, torch.Tensor]:
    """The full (η = 1) IF step per block: g_f / (n_r · (F_r + λ))."""
    return {
        name: forget.grad_sum[name] / (n_retain * (f_r + damping(f_r, lam_scale)))
        for name, f_r in retain.fisher.items()
    }


def clip_step(step: torch.Tensor, theta0: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Bound the step's norm by `clip` · ‖θ0‖ of the block (applied after scaling by η)."""
    if clip is None:
        return step
    limit = clip * theta0.norm().clamp_min(1e-8)
    norm = step.norm()
    return step * (limit / norm) if norm > limit else step


def build_prior(
    theta0: dict[str, torch.Tensor],
    retain: GradientStats,
    forget: GradientStats,
    n_retain: int,
    eta: float,
    alpha: float,
    lam_scale: float,
    clip: float | None = None,
    shift_rule: str = "hold",
) -> dict[str, LayerPrior]:
    if shift_rule not in SHIFT_RULES:
        raise ValueError(f"unknown shift rule {shift_rule!r}; known: {sorted(SHIFT_RULES)}")
    shift = SHIFT_RULES[shift_rule]
    direction = if_direction(retain, forget, n_retain, lam_scale)
    prior = {}
    for name, f_r in retain.fisher.items():
        lam = damping(f_r, lam_scale)
        f_m = retain.weighted_fisher[name] if retain.weighted_fisher is not None else f_r
        signal = forget.fisher[name] / (f_m + damping(f_m, lam_scale))
        signal = signal / signal.mean().clamp_min(1e-12)
        step = clip_step(eta * direction[name], theta0[name], clip)
        prior[name] = LayerPrior(
            mean=theta0[name].detach().float() + step,
            precision=n_retain * (f_r + lam) * shift(alpha, signal),
            signal=signal,
        )
    return prior


@torch.no_grad()
def reset_slice_entries(
    model: torch.nn.Module, prior: dict[str, LayerPrior], threshold: float | None
) -> float:
    """Set to 0, in `model` and in the prior's mean, every entry whose shift signal s exceeds
    `threshold` (s has mean 1 per block); return the share of entries reset.

    Such an entry is one the slice leans on far more than the retain data does: a weight that
    reads the corner where a faulty source pastes its patch, say. A model that never
    saw the slice has no use for it and leaves it near its small initial value, so a patched
    input passes through it unread; the original has trained it, and the IF step, a first-order
    move along the label's evidence, only bends where it sends that input. Measured on MNIST /
    patch-bias (seeds 1–3): after the step, patched 1s were read as 4 (529 of 568 on seed 2)
    where retrain reads them as 1; with the entries above s = 30 set to 0 (0.7 % of them) the
    slice's kind of input is read as its digit again (slice_acc 0.79 → 0.95). Zero is the point
    with no information, the one weight decay and L1 pull unused weights towards. The hold rule
    then keeps them there through the passes. Only for a relabelled slice
    (`uib.methods.uib.reset_admitted`): on a correctly labelled fog slice the same reset reads
    the fog better afterwards, away from retrain (docs/METHOD.md)."""
    if threshold is None:
        return 0.0
    reset, total = 0, 0
    for name, param in model.named_parameters():
        if name not in prior:
            continue
        layer = prior[name]
        chosen = layer.signal > threshold
        layer.mean = torch.where(chosen, torch.zeros_like(layer.mean), layer.mean)
        param.copy_(torch.where(chosen, torch.zeros_like(param), param))
        reset, total = reset + int(chosen.sum()), total + chosen.numel()
    return reset / max(total, 1)
