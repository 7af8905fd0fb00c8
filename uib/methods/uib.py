"""UIB-IF and its variants, and the plain influence-function step they start from.

Both share one curvature pass (per-sample gradients over a stratified retain sample S_r and
the forget set) and one rule for η, the length of the IF step: η is chosen on the held-out
validation split, never with a retrained model (see `select_eta`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.func import functional_call

from uib.curvature import GradientStats, gradient_stats, trainable
from uib.methods.base import MethodConfig, UnlearnContext, register
from uib.methods.common import kl_to_teacher, paired_loop, saliency_mask, stratified_sample
from uib.objective import prior_kl, sample_parameters
from uib.prior import LayerPrior, build_prior, clip_step, if_direction

DEFAULT_ETA_GRID = [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0]


class CurvatureConfig(MethodConfig):
    lam_scale: float = Field(1e-3, gt=0, description="λ = lam_scale · mean(F_r) per block")
    eta: float | None = Field(None, ge=0, description="IF step length; None: chosen on validation")
    eta_grid: list[float] = Field(default_factory=lambda: list(DEFAULT_ETA_GRID))
    fallback_eta: float = Field(0.01, ge=0, description="η when no validation split is given")
    search_samples: int = Field(1000, ge=10, description="validation and forget rows scored per η")
    clip: float | None = Field(1.0, gt=0, description="per-block step norm ≤ clip · ‖θ0‖, after η")
    retain_sample: int | None = Field(None, ge=1, description="|S_r|; None: min(|D_r|, max(|ΔD|, 1000))")
    chunk_size: int = Field(256, ge=1, description="rows per vmap chunk: bounds peak memory")


@dataclass
class Curvature:
    theta0: dict[str, torch.Tensor]
    retain: GradientStats
    forget: GradientStats
    direction: dict[str, torch.Tensor]
    sample: torch.Tensor


def retain_sample_size(config: CurvatureConfig, n_retain: int, n_forget: int) -> int:
    wanted = config.retain_sample or max(n_forget, 1000)
    return min(n_retain, wanted)


def measure_curvature(model: nn.Module, ctx: UnlearnContext, config: CurvatureConfig) -> Curvature:
    size = retain_sample_size(config, ctx.n_retain, ctx.n_forget)
    sample = stratified_sample(ctx.retain_y, size, ctx.generator(offset=1)).to(ctx.device)
    with ctx.phase("curvature"):
        retain = gradient_stats(model, ctx.retain_x[sample], ctx.retain_y[sample], config.chunk_size)
        forget = gradient_stats(model, ctx.forget_x, ctx.forget_y, config.chunk_size)
    theta0 = {k: v.detach().clone() for k, v in trainable(model).items()}
    direction = if_direction(retain, forget, ctx.n_retain, config.lam_scale)
    ctx.notes["retain_sample"] = size
    return Curvature(theta0, retain, forget, direction, sample)


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean()) if len(y) else 0.0


@torch.no_grad()
def set_step(model: nn.Module, curv: Curvature, eta: float, clip: float | None,
             mask: dict[str, torch.Tensor] | None = None) -> None:
    """Parameters ← θ0 + clip(η · IF step), restricted to `mask` where one is given."""
    for name, p in trainable(model).items():
        step = clip_step(eta * curv.direction[name], curv.theta0[name], clip)
        if mask is not None:
            step = step * mask[name]
        p.copy_(curv.theta0[name] + step)


@torch.no_grad()
def select_eta(model: nn.Module, ctx: UnlearnContext, curv: Curvature, config: CurvatureConfig,
               mask: dict[str, torch.Tensor] | None = None) -> float:
    """Pick η on the grid that best separates unseen data from the forget set.

    Score = accuracy on held-out validation − accuracy on the forget set, each on at most
    `search_samples` rows; the smallest η of the best score wins. A forgotten slice should be
    predicted like data the model never saw, while unseen data keeps its accuracy: too short a
    step leaves the forget set fitted, too long a step wrecks validation accuracy.
    """
    if config.eta is not None:
        return config.eta
    if ctx.val_x is None:
        ctx.notes["eta_rule"] = "fallback (no validation split)"
        return config.fallback_eta
    model.eval()
    n = config.search_samples
    val_x, val_y = ctx.val_x[:n], ctx.val_y[:n]
    rows = torch.randperm(ctx.n_forget, generator=ctx.generator(offset=13))[:n].to(ctx.device)
    f_x, f_y = ctx.forget_x[rows], ctx.forget_y[rows]
    trace = []
    with ctx.phase("eta_search"):
        for eta in sorted(config.eta_grid):
            set_step(model, curv, eta, config.clip, mask)
            val_acc, forget_acc = accuracy(model, val_x, val_y), accuracy(model, f_x, f_y)
            trace.append({"eta": eta, "val_acc": val_acc, "forget_acc": forget_acc,
                          "score": val_acc - forget_acc})
    best = max(trace, key=lambda t: t["score"])
    ctx.notes["eta_search"] = trace
    ctx.notes["eta_rule"] = "validation: max(val_acc - forget_acc)"
    return best["eta"]


class InfluenceConfig(CurvatureConfig):
    pass


@register("influence", InfluenceConfig)
def influence(model: nn.Module, ctx: UnlearnContext, config: InfluenceConfig) -> nn.Module:
    """The influence-function removal step alone (diagonal Fisher, damped, η on validation)."""
    curv = measure_curvature(model, ctx, config)
    eta = select_eta(model, ctx, curv, config)
    set_step(model, curv, eta, config.clip)
    ctx.notes["eta"] = eta
    return model


class UIBConfig(CurvatureConfig):
    beta: float = Field(60.0, ge=0, description="weight of I(X_r; θ): the KL to the dynamic prior")
    alpha: float = Field(5.0, ge=0, description="how strongly the shift signal s reshapes the prior")
    shift_rule: Literal["hold", "release"] = Field("hold", description="see uib.prior.SHIFT_RULES")
    sigma: float = Field(1e-3, ge=0, description="std of q(θ); fixed")
    lr: float = Field(1e-3, gt=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    passes: int = Field(8, ge=0, description="T, in passes over S_r")
    batch_size: int = Field(128, ge=1)
    gamma: float = Field(0.1, ge=0, description="weight of the R^(l) term of a uib+X variant")
    saliency: float = Field(0.5, gt=0, le=1, description="uib+salun: fraction of entries that move")


def uib_loss(model: nn.Module, prior: dict[str, LayerPrior], ctx: UnlearnContext, config: UIBConfig,
             plugin_name: str):
    params = {k: p for k, p in model.named_parameters() if k in prior}
    buffers = dict(model.named_buffers())
    kl_weight = config.beta / ctx.n_retain
    teacher = ctx.frozen_original() if plugin_name == "scrub" else None

    def loss(m, xr, yr, xf, yf):
        theta = {**dict(m.named_parameters()), **sample_parameters(params, config.sigma)}
        out_r = functional_call(m, (theta, buffers), (xr,))
        terms = {"retain_ce": F.cross_entropy(out_r.float(), yr),
                 "kl_prior": kl_weight * prior_kl(params, prior, config.sigma)}
        if plugin_name in ("neggrad", "scrub") and xf is not None:
            out_f = functional_call(m, (theta, buffers), (xf,))
            if plugin_name == "neggrad":
                terms["r_neg_forget_ce"] = -config.gamma * F.cross_entropy(out_f.float(), yf)
            else:
                terms["r_scrub"] = config.gamma * (kl_to_teacher(out_r, teacher(xr))
                                                   - kl_to_teacher(out_f, teacher(xf)))
        return terms

    return loss


def run_uib(model: nn.Module, ctx: UnlearnContext, config: UIBConfig, plugin: str) -> nn.Module:
    curv = measure_curvature(model, ctx, config)
    mask = None
    if plugin == "salun":
        probe = build_prior(curv.theta0, curv.retain, curv.forget, ctx.n_retain, 0.0, config.alpha,
                            config.lam_scale)
        mask = saliency_mask({k: p.signal for k, p in probe.items()}, config.saliency)
    eta = select_eta(model, ctx, curv, config, mask)
    ctx.notes["eta"] = eta
    with ctx.phase("prior"):
        prior = build_prior(curv.theta0, curv.retain, curv.forget, ctx.n_retain, eta, config.alpha,
                            config.lam_scale, config.clip, config.shift_rule)
        set_step(model, curv, eta, config.clip, mask)
    if mask is not None:
        for name, p in prior.items():
            p.mean = torch.where(mask[name].bool(), p.mean, curv.theta0[name])
    if config.passes:
        loss = uib_loss(model, prior, ctx, config, plugin)
        xs, ys = ctx.retain_x[curv.sample], ctx.retain_y[curv.sample]
        with ctx.phase("optimise"):
            paired_loop(model, ctx, loss, config.passes, config.lr, config.batch_size, xs, ys,
                        grad_mask=mask, optimizer=config.optimizer, desc=f"uib{'+' + plugin if plugin != 'none' else ''}")
    with torch.no_grad():
        params = {k: p for k, p in model.named_parameters() if k in prior}
        ctx.losses["kl_prior_total"] = float(prior_kl(params, prior, config.sigma))
    return model


def register_uib(name: str, plugin: str, doc: str) -> None:
    def method(model: nn.Module, ctx: UnlearnContext, config: UIBConfig) -> nn.Module:
        return run_uib(model, ctx, config, plugin)

    method.__doc__ = doc
    register(name, UIBConfig)(method)


register_uib("uib", "none", "UIB-IF: the IF step in a shift-aware dynamic prior, then the variational bound.")
register_uib("uib+neggrad", "neggrad", "UIB with R = −γ · CE(forget batch).")
register_uib("uib+scrub", "scrub", "UIB with R = γ · (KL to the teacher on retain − on forget).")
register_uib("uib+salun", "salun", "UIB moving only the entries with the top shift signal s.")
