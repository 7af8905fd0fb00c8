"""The baselines UIB is measured against, each a registered function with its own config.

The step sizes and lengths in the configs are tuned, as UIB's were: `uib tune` (`uib.tuning`)
ran each baseline's grid on digits seeds 0–2 over patch-bias, class, random and corruption and
kept the configuration with the lowest mean avg_gap (docs/BENCHMARKS.md, "Tuned baselines")."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from uib.curvature import default_chunk_size, gradient_stats, trainable
from uib.methods.base import MethodConfig, UnlearnContext, register
from uib.methods.common import (
    forget_loop,
    kl_to_teacher,
    paired_loop,
    random_other_labels,
    saliency_mask,
    stratified_sample,
)
from uib.models import fresh_copy
from uib.train import fit


class RetrainConfig(MethodConfig):
    """No knobs: `retrain` uses the original's recipe (`train_config`), never a shorter one."""


@register("retrain", RetrainConfig, reads_forget=False)
def retrain(model: nn.Module, ctx: UnlearnContext, config: RetrainConfig) -> nn.Module:
    """Train from scratch on the retain set: the gold standard every metric is compared with."""
    recipe = ctx.train_config
    with ctx.phase("retrain"):
        fresh = fresh_copy(model, seed=recipe.seed + 1 + ctx.seed)
        optimizer = recipe.make_optimizer(fresh.parameters())
        losses = fit(
            fresh,
            ctx.retain_x,
            ctx.retain_y,
            recipe.epochs,
            optimizer,
            recipe.batch_size,
            recipe.seed + ctx.seed,
            progress=ctx.progress,
            desc="retrain",
            precision=recipe.precision,
            augment=recipe.augment,
        )
    ctx.loss_curve += [{"epoch": float(i), "retain_ce": v} for i, v in enumerate(losses)]
    ctx.losses["retain_ce"] = losses[-1]
    return fresh


class FinetuneConfig(MethodConfig):
    epochs: int = Field(10, ge=1)
    lr: float = Field(3e-2, gt=0)
    batch_size: int = Field(128, ge=1)


def retain_ce(model, xr, yr, xf, yf) -> dict[str, torch.Tensor]:
    return {"retain_ce": F.cross_entropy(model(xr), yr)}


@register("finetune", FinetuneConfig)
def finetune(model: nn.Module, ctx: UnlearnContext, config: FinetuneConfig) -> nn.Module:
    """Keep training on the retain set only (forgetting by neglect)."""
    with ctx.phase("finetune"):
        return paired_loop(
            model, ctx, retain_ce, config.epochs, config.lr, config.batch_size, desc="finetune"
        )


class NegGradConfig(MethodConfig):
    epochs: int = Field(5, ge=1)
    lr: float = Field(3e-5, gt=0)
    batch_size: int = Field(64, ge=1)


@register("neggrad", NegGradConfig)
def neggrad(model: nn.Module, ctx: UnlearnContext, config: NegGradConfig) -> nn.Module:
    """Gradient ascent on the forget set's loss."""

    def loss(m, xf, yf):
        return {"neg_forget_ce": -F.cross_entropy(m(xf), yf)}

    with ctx.phase("ascent"):
        return forget_loop(model, ctx, loss, config.epochs, config.lr, config.batch_size, "neggrad")


class NegGradPlusConfig(MethodConfig):
    epochs: int = Field(5, ge=1)
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(128, ge=1)
    forget_weight: float = Field(0.3, ge=0, le=1)


@register("neggrad+", NegGradPlusConfig)
def neggrad_plus(model: nn.Module, ctx: UnlearnContext, config: NegGradPlusConfig) -> nn.Module:
    """Descent on retain and ascent on forget, mixed by `forget_weight`."""
    w = config.forget_weight

    def loss(m, xr, yr, xf, yf):
        return {
            "retain_ce": (1 - w) * F.cross_entropy(m(xr), yr),
            "neg_forget_ce": -w * F.cross_entropy(m(xf), yf),
        }

    with ctx.phase("optimise"):
        return paired_loop(
            model, ctx, loss, config.epochs, config.lr, config.batch_size, desc="neggrad+"
        )


class RandomLabelConfig(MethodConfig):
    epochs: int = Field(10, ge=1)
    lr: float = Field(1e-2, gt=0)
    batch_size: int = Field(128, ge=1)


@register("random-label", RandomLabelConfig)
def random_label(model: nn.Module, ctx: UnlearnContext, config: RandomLabelConfig) -> nn.Module:
    """Fit the forget set to random wrong labels while fitting the retain set to its own."""
    generator = ctx.generator(offset=3)

    def loss(m, xr, yr, xf, yf):
        wrong = random_other_labels(yf, ctx.num_classes, generator)
        return {
            "retain_ce": F.cross_entropy(m(xr), yr),
            "random_label_ce": F.cross_entropy(m(xf), wrong),
        }

    with ctx.phase("optimise"):
        return paired_loop(
            model, ctx, loss, config.epochs, config.lr, config.batch_size, desc="random-label"
        )


class ScrubConfig(MethodConfig):
    epochs: int = Field(3, ge=1)
    max_epochs: int = Field(
        2, ge=0, description="epochs that also push away from the teacher on forget"
    )
    lr: float = Field(3e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    gamma: float = Field(1.0, ge=0, description="weight of the forget-set divergence")


@register("scrub", ScrubConfig)
def scrub(model: nn.Module, ctx: UnlearnContext, config: ScrubConfig) -> nn.Module:
    """SCRUB: stay close to the teacher on retain, move away from it on forget."""
    teacher = ctx.frozen_original()
    epoch_box = {"epoch": 0}

    def loss(m, xr, yr, xf, yf):
        out_r = m(xr)
        terms = {
            "retain_ce": F.cross_entropy(out_r, yr),
            "retain_kl": kl_to_teacher(out_r, teacher(xr)),
        }
        if epoch_box["epoch"] < config.max_epochs:
            terms["neg_forget_kl"] = -config.gamma * kl_to_teacher(m(xf), teacher(xf))
        return terms

    with ctx.phase("optimise"):
        for epoch in range(config.epochs):
            epoch_box["epoch"] = epoch
            paired_loop(
                model, ctx, loss, 1, config.lr, config.batch_size, desc=f"scrub {epoch + 1}"
            )
    return model


class SalUnConfig(MethodConfig):
    epochs: int = Field(20, ge=1)
    lr: float = Field(1e-2, gt=0)
    batch_size: int = Field(128, ge=1)
    saliency: float = Field(0.5, gt=0, le=1, description="fraction of weights allowed to move")


@register("salun", SalUnConfig)
def salun(model: nn.Module, ctx: UnlearnContext, config: SalUnConfig) -> nn.Module:
    """SalUn: random-label unlearning restricted to the weights salient for the forget loss."""
    with ctx.phase("saliency"):
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(ctx.forget_x), ctx.forget_y).backward()
        mask = saliency_mask(
            {k: p.grad.detach() for k, p in trainable(model).items()}, config.saliency
        )
        model.zero_grad(set_to_none=True)
    generator = ctx.generator(offset=5)

    def loss(m, xr, yr, xf, yf):
        wrong = random_other_labels(yf, ctx.num_classes, generator)
        return {
            "retain_ce": F.cross_entropy(m(xr), yr),
            "random_label_ce": F.cross_entropy(m(xf), wrong),
        }

    with ctx.phase("optimise"):
        return paired_loop(
            model,
            ctx,
            loss,
            config.epochs,
            config.lr,
            config.batch_size,
            grad_mask=mask,
            desc="salun",
        )


class SSDConfig(MethodConfig):
    selection: float = Field(1.0, gt=0, description="α: dampen where F_f > α · F_r")
    dampening: float = Field(10.0, gt=0, description="λ: scale by min(λ · F_r / F_f, 1)")
    retain_sample: int = Field(1000, ge=1)
    chunk_size: int | None = Field(None, ge=1, description="None: see default_chunk_size")


@register("ssd", SSDConfig)
def ssd(model: nn.Module, ctx: UnlearnContext, config: SSDConfig) -> nn.Module:
    """Selective synaptic dampening: shrink the weights far more important to forget than retain."""
    with ctx.phase("curvature"):
        rows = stratified_sample(ctx.retain_y, config.retain_sample, ctx.generator(offset=1)).to(
            ctx.device
        )
        chunk = config.chunk_size or default_chunk_size(model, ctx.device)
        f_r = gradient_stats(model, ctx.retain_x[rows], ctx.retain_y[rows], chunk).fisher
        f_f = gradient_stats(model, ctx.forget_x, ctx.forget_y, chunk).fisher
    with ctx.phase("dampen"), torch.no_grad():
        dampened = 0
        for name, p in trainable(model).items():
            selected = f_f[name] > config.selection * f_r[name]
            scale = (config.dampening * f_r[name] / f_f[name].clamp_min(1e-30)).clamp(max=1.0)
            p.mul_(torch.where(selected, scale, torch.ones_like(scale)).to(p.dtype))
            dampened += int(selected.sum())
    ctx.notes["dampened_parameters"] = dampened
    return model


class L1SparseConfig(MethodConfig):
    epochs: int = Field(10, ge=1)
    lr: float = Field(3e-2, gt=0)
    batch_size: int = Field(128, ge=1)
    l1: float = Field(5e-5, ge=0, description="initial L1 weight, decayed linearly to 0")


@register("l1-sparse", L1SparseConfig)
def l1_sparse(model: nn.Module, ctx: UnlearnContext, config: L1SparseConfig) -> nn.Module:
    """Fine-tune on retain with a decaying L1 penalty that prunes what retain does not need."""
    state = {"weight": config.l1}

    def loss(m, xr, yr, xf, yf):
        l1 = sum(p.abs().sum() for p in m.parameters())
        return {"retain_ce": F.cross_entropy(m(xr), yr), "l1": state["weight"] * l1}

    with ctx.phase("optimise"):
        for epoch in range(config.epochs):
            state["weight"] = config.l1 * (1 - epoch / config.epochs)
            paired_loop(
                model, ctx, loss, 1, config.lr, config.batch_size, desc=f"l1-sparse {epoch + 1}"
            )
    return model
