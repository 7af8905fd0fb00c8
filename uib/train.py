"""One training loop for the original model, `retrain` and every fine-tuning baseline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from tqdm.auto import tqdm

from uib.device import Precision, autocast, flushed_denormals, select_device
from uib.models import set_training, spec_of
from uib.samples import DataError, Samples


class TrainConfig(BaseModel):
    """The recipe. EVALUATION.md: the original and `retrain` share it; never shorten retrain."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(60, ge=1)
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(128, ge=1)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = Field("adam", description="sgd: with `momentum`")
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    augment: bool = Field(
        False, description="shift each training image by up to 2 px (zero padded), per step"
    )
    precision: Precision = Field("fp32", description="bf16: autocast; see uib.device")
    seed: int = 0

    def make_optimizer(self, params) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params, lr=self.lr, momentum=self.momentum, weight_decay=self.weight_decay
            )
        return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)

    @classmethod
    def for_dataset(cls, name: str, **overrides) -> TrainConfig:
        """digits: MLP, 60 epochs of Adam; MNIST-sized data: small CNN, 12 epochs."""
        epochs = 60 if name == "digits" else 12
        return cls(**{"epochs": epochs, **overrides})


def read_recipe(path: Path | None) -> TrainConfig:
    """The retrain recipe from a YAML (or JSON) file of `TrainConfig` fields; the defaults
    without one. Unknown keys and bad values are refused by name."""
    if path is None:
        return TrainConfig()
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise DataError(f"recipe: cannot read {path} ({error.strerror or error})") from None
    except yaml.YAMLError as error:
        raise DataError(f"recipe: {path} is not YAML ({error})") from None
    if not isinstance(raw, dict):
        raise DataError(f"recipe: {path} must hold a mapping of TrainConfig fields")
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors())
        raise DataError(f"recipe: {problems}") from None


class TrainHistory(BaseModel):
    losses: list[float] = []
    seconds: float = 0.0


def to_tensors(data: Samples, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.as_tensor(data.x, device=device), torch.as_tensor(data.y, device=device)


def random_shift(x: torch.Tensor, generator: torch.Generator, pad: int = 2) -> torch.Tensor:
    """Each image of a (N, C, H, W) batch moved by up to `pad` pixels, zeros shifted in."""
    if x.dim() != 4:
        return x
    n, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    dy, dx = (torch.randint(0, 2 * pad + 1, (2, n), generator=generator)).tolist()
    return torch.stack(
        [padded[i, :, a : a + h, b : b + w] for i, (a, b) in enumerate(zip(dy, dx, strict=True))]
    )


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
    augment: bool = False,
) -> list[float]:
    """Minibatch cross-entropy (plus `extra_loss`, if any, per step); returns mean loss per epoch.

    The epoch's loss is summed on the device and read once per epoch, not once per step."""
    generator = torch.Generator().manual_seed(seed)
    device = x.device
    set_training(model, True)
    losses = []
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        total, count = torch.zeros((), device=device), 0
        for idx in batches(len(y), batch_size, generator):
            idx = idx.to(device)
            inputs = random_shift(x[idx], generator) if augment else x[idx]
            with autocast(device, precision):
                loss = F.cross_entropy(model(inputs), y[idx])
                if extra_loss is not None:
                    loss = loss + extra_loss(model)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.detach().float() * len(idx)
            count += len(idx)
        losses.append(float(total) / max(count, 1))
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
    set_training(model, False)
    return losses


def train_model(
    model: nn.Module,
    data: Samples,
    config: TrainConfig,
    device: torch.device | str | None = None,
    progress: bool = True,
) -> TrainHistory:
    """Train `model` in place on `data` by the recipe `config`."""
    import time

    device = select_device(device or "auto")
    torch.manual_seed(config.seed)
    model.to(device)
    x, y = to_tensors(data, device)
    optimizer = config.make_optimizer(model.parameters())
    start = time.perf_counter()
    with flushed_denormals(device):
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
            augment=config.augment,
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
    set_training(model, False)
    x = torch.as_tensor(x)
    outs = []
    for start in range(0, len(x), batch_size):
        outs.append(model(x[start : start + batch_size].to(device)).float().cpu())
    return torch.cat(outs) if outs else torch.empty(0, spec_of(model).num_classes)


def predict_proba(model: nn.Module, x, device: torch.device | None = None) -> np.ndarray:
    return torch.softmax(predict_logits(model, x, device), dim=1).numpy()


def predict(model: nn.Module, x, device: torch.device | None = None) -> np.ndarray:
    return predict_logits(model, x, device).argmax(dim=1).numpy()
