"""One training loop for the original model, `retrain` and every fine-tuning baseline."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from uib.device import Precision, autocast, select_device
from uib.samples import Samples


class TrainConfig(BaseModel):
    """The recipe. EVALUATION.md: the original and `retrain` share it; never shorten retrain."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    precision: Precision = Field("fp32", description="bf16: autocast; see uib.device")
    seed: int = 0

    @classmethod
    def for_dataset(cls, name: str, **overrides) -> TrainConfig:
        """digits: MLP, 60 epochs of Adam; MNIST-sized data: small CNN, 12 epochs."""
        epochs = 60 if name == "digits" else 12
        return cls(**{"epochs": epochs, **overrides})


class TrainHistory(BaseModel):
    losses: list[float] = []
    seconds: float = 0.0


def to_tensors(data: Samples, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(data.x, device=device), torch.as_tensor(data.y, device=device)


def batches(n: int, batch_size: int, generator: torch.Generator | None) -> list[torch.Tensor]:
    """Shuffled index batches when a generator is given, in order otherwise."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def fit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    batch_size: int,
    seed: int,
    extra_loss: Callable[[nn.Module], torch.Tensor] | None = None,
    progress: bool = True,
    desc: str = "train",
    precision: Precision = "fp32",
) -> list[float]:
    """Minibatch cross-entropy (plus `extra_loss`, if any, per step); returns mean loss per epoch.

    The epoch's loss is summed on the device and read once per epoch, not once per step."""
    generator = torch.Generator().manual_seed(seed)
    device = x.device
    model.train()
    losses = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        total, count = torch.zeros((), device=device), 0
        for idx in batches(len(y), batch_size, generator):
            idx = idx.to(device)
            with autocast(device, precision):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float() * len(idx)
            count += len(idx)
        losses.append(float(total) / max(count, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    model.eval()
    return losses


def train_model(
    model: nn.Module,
    data: Samples,
    config: TrainConfig,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train `model` in place with Adam on `data` by the recipe `config`."""
    import time

    device = select_device(device or "auto")
    torch.manual_seed(config.seed)
    model.to(device)
    x, y = to_tensors(data, device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start = time.perf_counter()
    losses = fit(
        model,
        x,
        y,
        config.epochs,
        optimizer,
        config.batch_size,
        config.seed,
        progress=progress,
        precision=config.precision,
    )
    return TrainHistory(losses=losses, seconds=time.perf_counter() - start)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    x: np.ndarray | torch.Tensor,
    device: torch.device | None = None,
    batch_size: int = 2048,
) -> torch.Tensor:
    """Logits in float32 on the CPU, computed in eval mode in batches (never autocast: every
    metric and gate reads these)."""
    device = device or next(model.parameters()).device
    model.eval()
    x = torch.as_tensor(x)
    outs = []
    for start in range(0, len(x), batch_size):
        outs.append(model(x[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, model.spec.num_classes)


def predict_proba(model: nn.Module, x, device: torch.device | None = None) -> np.ndarray:
    return torch.softmax(predict_logits(model, x, device), dim=1).numpy()


def predict(model: nn.Module, x, device: torch.device | None = None) -> np.ndarray:
    return predict_logits(model, x, device).argmax(dim=1).numpy()
