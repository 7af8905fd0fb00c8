"""Loops and samplers shared by several methods."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from uib.device import autocast
from uib.methods.base import UnlearnContext
from uib.models import set_training
from uib.train import batches

LossFn = Callable[
    [nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], dict[str, torch.Tensor]
]


OPTIMIZERS: dict[str, Callable[[list, float], torch.optim.Optimizer]] = {
    "adam": lambda params, lr: torch.optim.Adam(params, lr=lr),
    "sgd": lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=0.9),
}


def stratified_sample(y: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of `n` rows of `y` with each label represented in proportion (all rows if n ≥ len)."""
    if n >= len(y):
        return torch.arange(len(y))
    y_cpu = y.cpu()
    picks = []
    labels, counts = torch.unique(y_cpu, return_counts=True)
    quotas = (counts.double() * n / len(y)).floor().long()
    short = n - int(quotas.sum())
    quotas[torch.argsort(counts, descending=True)[:short]] += 1
    for label, quota in zip(labels, quotas, strict=True):
        rows = torch.nonzero(y_cpu == label).squeeze(1)
        picks.append(rows[torch.randperm(len(rows), generator=generator)[:quota]])
    return torch.cat(picks).sort().values


def paired_loop(
    model: nn.Module,
    ctx: UnlearnContext,
    loss_fn: LossFn,
    epochs: int,
    lr: float,
    batch_size: int,
    retain_x: torch.Tensor | None = None,
    retain_y: torch.Tensor | None = None,
    grad_mask: dict[str, torch.Tensor] | None = None,
    desc: str = "unlearn",
    optimizer: str = "adam",
) -> nn.Module:
    """Adam over retain batches, each paired with the next forget batch (cycled).

    `loss_fn(model, xr, yr, xf, yf)` returns named terms; their sum is minimised and each is
    logged to `ctx.loss_curve` once per epoch. `grad_mask` zeroes the gradient of frozen entries.
    """
    retain_x = ctx.retain_x if retain_x is None else retain_x
    retain_y = ctx.retain_y if retain_y is None else retain_y
    generator = ctx.generator(offset=7)
    optimizer = OPTIMIZERS[optimizer]([p for p in model.parameters() if p.requires_grad], lr)
    params = dict(model.named_parameters())
    forget_batch = max(1, min(batch_size, ctx.n_forget))
    set_training(model, True)
    for epoch in tqdm(range(epochs), desc=desc, disable=not ctx.progress, leave=False):
        forget_order = batches(ctx.n_forget, forget_batch, generator) if ctx.n_forget else []
        sums: dict[str, float] = {}
        steps = 0
        for step, idx in enumerate(batches(len(retain_y), batch_size, generator)):
            fidx = forget_order[step % len(forget_order)].to(ctx.device) if forget_order else None
            idx = idx.to(ctx.device)
            xf = ctx.forget_x[fidx] if fidx is not None else None
            yf = ctx.forget_y[fidx] if fidx is not None else None
            with autocast(ctx.device, ctx.precision):
                terms = loss_fn(model, retain_x[idx], retain_y[idx], xf, yf)
                loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if grad_mask is not None:
                for name, mask in grad_mask.items():
                    if params[name].grad is not None:
                        params[name].grad.mul_(mask)
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
            steps += 1
        ctx.loss_curve.append(
            {"epoch": float(epoch), **{k: v / max(steps, 1) for k, v in sums.items()}}
        )
    set_training(model, False)
    if ctx.loss_curve:
        ctx.losses.update({k: v for k, v in ctx.loss_curve[-1].items() if k != "epoch"})
    return model


def forget_loop(
    model: nn.Module,
    ctx: UnlearnContext,
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor], dict],
    epochs: int,
    lr: float,
    batch_size: int,
    desc: str,
) -> nn.Module:
    """Adam over the forget set alone (gradient ascent baselines)."""
    generator = ctx.generator(offset=11)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    set_training(model, True)
    for epoch in tqdm(range(epochs), desc=desc, disable=not ctx.progress, leave=False):
        sums: dict[str, float] = {}
        for idx in batches(ctx.n_forget, batch_size, generator):
            idx = idx.to(ctx.device)
            with autocast(ctx.device, ctx.precision):
                terms = loss_fn(model, ctx.forget_x[idx], ctx.forget_y[idx])
                loss = sum(terms.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        ctx.loss_curve.append({"epoch": float(epoch), **sums})
    set_training(model, False)
    return model


def kl_to_teacher(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """KL(teacher ‖ student) over the batch, as SCRUB uses it."""
    return F.kl_div(
        F.log_softmax(student_logits.float(), 1),
        F.log_softmax(teacher_logits.float(), 1),
        reduction="batchmean",
        log_target=True,
    )


def random_other_labels(
    y: torch.Tensor, num_classes: int, generator: torch.Generator
) -> torch.Tensor:
    """A uniformly random label different from each true one."""
    shift = torch.randint(1, num_classes, y.shape, generator=generator).to(y.device)
    return (y + shift) % num_classes


def saliency_mask(grads: dict[str, torch.Tensor], fraction: float) -> dict[str, torch.Tensor]:
    """1 for the `fraction` of entries with the largest |gradient| over all blocks, else 0 (SalUn)."""
    flat = torch.cat([g.abs().flatten() for g in grads.values()])
    k = max(1, int(fraction * flat.numel()))
    threshold = torch.topk(flat, k).values.min()
    return {name: (g.abs() >= threshold).float() for name, g in grads.items()}
