"""Per-sample gradients and what UIB builds from them: diagonal Fisher and the summed gradient.

Two exact ways to the same statistics, in chunks of rows, so that memory is bounded by the
chunk size and never by the data set size; no Hessian is ever formed:

- `factored`: when every trainable parameter sits in a `Linear`, a `Conv2d` or a BatchNorm
  with running statistics, one batched backward gives each layer's inputs `a` and output
  gradients `g`, and a sample's weight gradient is `g aᵀ` (summed over positions for a
  convolution). Squared and summed over rows, a Linear layer's Fisher is `(g²)ᵀ a²`, one matrix
  product: its per-sample gradients are never materialised. Nor are a convolution's with at most
  `PAIRED_POSITIONS` output positions (summed over pairs of positions); with more, they are
  formed as a `bmm` of `g` with the unfolded input. A BatchNorm's, in eval mode, are `Σ g · x̂`
  and `Σ g` over positions (`x̂` its input normalised by the running statistics): two floats a
  channel, so a ResNet's BatchNorm layers no longer send the whole model to `vmap`.
- `vmap`: `torch.func` (`vmap` over `grad`) for any model: every sample's full gradient,
  chunk by chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from uib.models import set_training

PAIRED_POSITIONS = 4
"""A convolution with at most this many output positions has its squared per-sample gradients
summed over position pairs (`pair_products`), never formed; see `StatsAccumulator`. P positions
cost P² products a row instead of P, so it pays only for few. Measured, ResNet-18 on 8×8 rows
(stages at 64, 16, 4 and 1 positions), one thread, Fisher of 128 rows: 10.05 s with none paired,
2.53 s pairing 1 position, 1.14 s pairing up to 4, 1.96 s up to 16."""


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def default_chunk_size(model: nn.Module, device: torch.device) -> int:
    """Rows per chunk: about 2M materialised gradient floats a chunk on CPU (32–1024 rows),
    256M on CUDA (64–4096 rows). See `materialised_floats`.

    Measured on 2 CPU cores, vmap path: the small CNN (225k parameters) ran 0.40 ms a sample
    at 32 rows and 1.16 ms at 256 (the chunk falls out of cache); the digits MLP (10k
    parameters) runs fastest at 128–256 rows. Factored path, the same CNN: 111 rows a chunk.
    """
    budget, low, high = (2**28, 64, 4096) if device.type == "cuda" else (2**21, 32, 1024)
    return int(min(high, max(low, budget // max(materialised_floats(model), 1))))


def materialised_floats(model: nn.Module) -> int:
    """Gradient floats held per row of a chunk: a convolution's weight gradient on the factored
    path (a Linear layer's is never formed: its rows of `a` and `g`), every parameter on vmap's."""
    layers = factored_layers(model)
    if layers is None:
        return sum(p.numel() for p in trainable(model).values())

    def floats(m: nn.Module) -> int:
        if isinstance(m, nn.Conv2d):
            return m.weight.numel()
        if isinstance(m, nn.Linear):
            return m.in_features + m.out_features
        return 2 * m.num_features

    return sum(floats(m) for m in layers.values())


def per_sample_grads(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, chunk_size: int = 32
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield, chunk by chunk, {parameter name: (chunk, *shape)} gradients of each sample's loss.

    The model is evaluated in eval mode (BatchNorm uses its running statistics), so a
    sample's gradient does not depend on the other samples of its chunk.
    """
    was_training = set_training(model, False)
    params = {k: v.detach() for k, v in trainable(model).items()}
    buffers = {k: v.detach() for k, v in model.named_buffers()}

    def sample_loss(p, xi, yi):
        logits = functional_call(model, (p, buffers), (xi.unsqueeze(0),))
        return F.cross_entropy(
            logits.to(torch.promote_types(logits.dtype, torch.float32)), yi.unsqueeze(0)
        )

    sample_grad = vmap(grad(sample_loss), in_dims=(None, 0, 0))
    try:
        for start in range(0, len(y), chunk_size):
            yield sample_grad(params, x[start : start + chunk_size], y[start : start + chunk_size])
    finally:
        set_training(model, was_training)


def per_sample_grads_loop(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The slow reference: one autograd call per sample, stacked. For tests and benchmarks."""
    set_training(model, False)
    params = trainable(model)
    rows: dict[str, list[torch.Tensor]] = {k: [] for k in params}
    for xi, yi in zip(x, y, strict=True):
        loss = F.cross_entropy(model(xi.unsqueeze(0)).float(), yi.unsqueeze(0))
        for name, g in zip(params, torch.autograd.grad(loss, list(params.values())), strict=True):
            rows[name].append(g)
    return {k: torch.stack(v) for k, v in rows.items()}


@dataclass
class GradientStats:
    """Per parameter tensor: diagonal empirical Fisher (mean of squared gradients) and the sum.

    `weighted_fisher` is the Fisher under per-sample weights, when weights were given.
    """

    fisher: dict[str, torch.Tensor]
    grad_sum: dict[str, torch.Tensor]
    n: int
    weighted_fisher: dict[str, torch.Tensor] | None = None


def gradient_stats(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int = 32,
    weights: torch.Tensor | None = None,
    path: str = "auto",
) -> GradientStats:
    """Diagonal Fisher and gradient sum of the per-sample losses, by the `factored` path where
    the model allows it (`auto`), else by `vmap`; both are exact."""
    if path not in ("auto", "factored", "vmap"):
        raise ValueError(f"path must be auto, factored or vmap, got {path!r}")
    layers = factored_layers(model) if path != "vmap" else None
    if path == "factored" and layers is None:
        raise ValueError(
            "the factored path needs every trainable parameter in a Linear, a Conv2d "
            "(groups=1, numeric zero padding) or a BatchNorm with running statistics"
        )
    accumulate = StatsAccumulator(trainable(model), weights is not None)
    chunks = (
        factored_chunks(model, layers, x, y, chunk_size)
        if layers is not None
        else (
            {k: (g, None) for k, g in chunk.items()}
            for chunk in per_sample_grads(model, x, y, chunk_size)
        )
    )
    start = 0
    for chunk in chunks:
        rows = next(iter(chunk.values()))[0].shape[0]
        accumulate(chunk, weights[start : start + rows] if weights is not None else None)
        start += rows
    return accumulate.result(len(y), weights)


class StatsAccumulator:
    """Sums of squared gradients, of weighted squared gradients and of gradients, per parameter.

    A chunk maps each parameter to `(per_sample, None)`, rows first, or, for a factored weight,
    to `(g, a)`, never formed: a Linear layer's rows `g_i aᵢᵀ` (g: rows × out, a: rows × in), or
    a convolution's over its P positions, `Σ_p g_ip a_ipᵀ` (g: rows × P × out, a: rows × P × in).
    Squared, the latter is `Σ_pq (g_ip ⊙ g_iq)(a_ip ⊙ a_iq)ᵀ`: one matrix product over P² pairs
    a row (`pair_products`), which for P = 1 is the Linear layer's `(g²)ᵀ a²`.
    """

    def __init__(self, params: dict[str, torch.Tensor], weighted: bool):
        dtypes = {k: torch.promote_types(v.dtype, torch.float32) for k, v in params.items()}
        self.squares = {k: torch.zeros_like(v, dtype=dtypes[k]) for k, v in params.items()}
        self.sums = {k: torch.zeros_like(v, dtype=dtypes[k]) for k, v in params.items()}
        self.weighted = (
            {k: torch.zeros_like(v, dtype=dtypes[k]) for k, v in params.items()}
            if weighted
            else None
        )

    def __call__(
        self,
        chunk: dict[str, tuple[torch.Tensor, torch.Tensor | None]],
        weights: torch.Tensor | None,
    ) -> None:
        for name, (g, a) in chunk.items():
            dtype = self.sums[name].dtype
            g = g.to(dtype)
            if a is None:
                g2 = g.pow(2)
                self.squares[name] += g2.sum(0)
                self.sums[name] += g.sum(0)
                if self.weighted is not None:
                    w = weights.to(dtype).view(-1, *[1] * (g2.dim() - 1))
                    self.weighted[name] += (w * g2).sum(0)
            else:
                a = a.to(dtype)
                if g.dim() == 2:
                    g, a = g.unsqueeze(1), a.unsqueeze(1)
                g2, a2 = pair_products(g), pair_products(a)
                shape = self.sums[name].shape
                self.squares[name] += (g2.flatten(0, 1).T @ a2.flatten(0, 1)).view(shape)
                self.sums[name] += (g.flatten(0, 1).T @ a.flatten(0, 1)).view(shape)
                if self.weighted is not None:
                    w = weights.to(dtype).view(-1, 1, 1)
                    self.weighted[name] += ((w * g2).flatten(0, 1).T @ a2.flatten(0, 1)).view(shape)

    def result(self, n: int, weights: torch.Tensor | None) -> GradientStats:
        rows = max(n, 1)
        weighted = None
        if self.weighted is not None:
            total = float(weights.sum()) or 1.0
            weighted = {k: v / total for k, v in self.weighted.items()}
        return GradientStats({k: v / rows for k, v in self.squares.items()}, self.sums, n, weighted)


def pair_products(t: torch.Tensor) -> torch.Tensor:
    """(rows, P, d) → (rows, P², d): `t_p ⊙ t_q` for every pair of positions p, q."""
    return (t.unsqueeze(2) * t.unsqueeze(1)).flatten(1, 2)


def factored_layers(model: nn.Module) -> dict[str, nn.Module] | None:
    """{module name: module} of the modules that own trainable parameters, when every one is a
    Linear, a Conv2d or a BatchNorm that `factored_chunks` handles; None otherwise."""
    layers = {}
    for name, module in model.named_modules():
        if not any(p.requires_grad for p in module.parameters(recurse=False)):
            continue
        conv_ok = (
            isinstance(module, nn.Conv2d)
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        )
        norm_ok = isinstance(module, nn.modules.batchnorm._BatchNorm) and (
            module.running_mean is not None
        )
        if not (isinstance(module, nn.Linear) or conv_ok or norm_ok):
            return None
        if any(not p.requires_grad for p in module.parameters(recurse=False)):
            return None
        layers[name] = module
    return layers


def factored_chunks(
    model: nn.Module,
    layers: dict[str, nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    chunk_size: int,
) -> Iterator[dict[str, tuple[torch.Tensor, torch.Tensor | None]]]:
    """Per chunk, the per-sample gradient of every parameter in `StatsAccumulator`'s form, from
    one forward and one backward to the layers' outputs (never to the weights themselves)."""
    was_training = set_training(model, False)
    seen: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}

    def keep(module, inputs, output):
        if module in seen:
            raise RuntimeError(f"{module} is called twice in one forward; use path='vmap'")
        seen[module] = (inputs[0].detach(), output)

    handles = [m.register_forward_hook(keep) for m in layers.values()]
    try:
        for start in range(0, len(y), chunk_size):
            seen.clear()
            logits = model(x[start : start + chunk_size])
            loss = F.cross_entropy(
                logits.to(torch.promote_types(logits.dtype, torch.float32)),
                y[start : start + chunk_size],
                reduction="sum",
            )
            modules = list(seen)
            grads = torch.autograd.grad(loss, [seen[m][1] for m in modules])
            by_module = {m: (seen[m][0], g.detach()) for m, g in zip(modules, grads, strict=True)}
            chunk = {}
            for name, module in layers.items():
                prefix = f"{name}." if name else ""
                chunk.update(
                    {prefix + k: v for k, v in layer_grads(module, *by_module[module]).items()}
                )
            yield chunk
    finally:
        for handle in handles:
            handle.remove()
        seen.clear()
        set_training(model, was_training)


def layer_grads(module: nn.Module, a: torch.Tensor, g: torch.Tensor) -> dict[str, tuple]:
    """One layer's per-sample gradients from its input `a` and output gradient `g`."""
    grads: dict[str, tuple] = {}
    if isinstance(module, nn.Linear) and a.dim() == 2:
        grads["weight"] = (g, a)
        bias = g
    elif isinstance(module, nn.Linear):
        a, g = a.flatten(1, -2), g.flatten(1, -2)
        grads["weight"] = (torch.einsum("bto,bti->boi", g, a), None)
        bias = g.sum(1)
    elif isinstance(module, nn.modules.batchnorm._BatchNorm):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        scale = torch.rsqrt(module.running_var.view(shape) + module.eps)
        normalised = (a - module.running_mean.view(shape)) * scale
        a, g = (normalised * g).reshape(*g.shape[:2], -1), g.reshape(*g.shape[:2], -1)
        grads["weight"] = (a.sum(2), None)
        bias = g.sum(2)
    else:
        unfolded = F.unfold(a, module.kernel_size, module.dilation, module.padding, module.stride)
        g = g.flatten(2)
        if g.shape[2] <= PAIRED_POSITIONS:
            grads["weight"] = (g.transpose(1, 2), unfolded.transpose(1, 2))
        else:
            grads["weight"] = (
                torch.bmm(g, unfolded.transpose(1, 2)).view(-1, *module.weight.shape),
                None,
            )
        bias = g.sum(2)
    if module.bias is not None:
        grads["bias"] = (bias, None)
    return grads


def summed_cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), y, reduction="sum")


def summed_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int = 128,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = summed_cross_entropy,
) -> dict[str, torch.Tensor]:
    """Σ_i ∇ℓ_i by ordinary batched backward passes (eval mode): the sum needs no per-sample
    gradients. On 2 CPU cores, the small CNN: 0.11 ms a row at 128 rows a batch, 0.23 at 512.
    `loss_fn(logits, y)` is the summed loss of a batch (cross-entropy by default)."""
    was_training = set_training(model, False)
    params = trainable(model)
    total = {
        k: torch.zeros_like(v, dtype=torch.promote_types(v.dtype, torch.float32))
        for k, v in params.items()
    }
    for start in range(0, len(y), batch_size):
        loss = loss_fn(model(x[start : start + batch_size]), y[start : start + batch_size])
        for (name, _), g in zip(
            params.items(), torch.autograd.grad(loss, list(params.values())), strict=True
        ):
            total[name] += g.to(total[name].dtype)
    set_training(model, was_training)
    return total


def newton_removal_step(
    model: nn.Module,
    retain_x: torch.Tensor,
    retain_y: torch.Tensor,
    forget: GradientStats,
    l2: float = 0.0,
) -> dict[str, torch.Tensor]:
    """The exact IF step H_r⁻¹ g_f with the full Hessian of Σ_retain ℓ + (l2/2)‖θ‖².

    Quadratic in the parameter count: a reference for small models (and for tests of the
    diagonal approximation UIB uses), not for production networks.
    """
    params = {k: v.detach() for k, v in trainable(model).items()}
    names, shapes = list(params), [v.shape for v in params.values()]
    sizes = [v.numel() for v in params.values()]
    flat0 = torch.cat([v.flatten() for v in params.values()])

    def retain_loss(flat):
        parts = dict(
            zip(
                names,
                (c.view(s) for c, s in zip(flat.split(sizes), shapes, strict=True)),
                strict=True,
            )
        )
        logits = functional_call(model, parts, (retain_x,))
        return F.cross_entropy(logits, retain_y, reduction="sum") + 0.5 * l2 * flat.pow(2).sum()

    hessian = torch.func.hessian(retain_loss)(flat0)
    g_f = torch.cat([forget.grad_sum[k].flatten() for k in names])
    step = torch.linalg.solve(hessian, g_f)
    return dict(
        zip(names, (c.view(s) for c, s in zip(step.split(sizes), shapes, strict=True)), strict=True)
    )
