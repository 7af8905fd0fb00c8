"""What every unlearning method receives, and the registry they all sit in."""

from __future__ import annotations

import contextlib
import copy
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from uib.device import Precision
from uib.models import set_training
from uib.train import TrainConfig


class MethodConfig(BaseModel):
    """Base of every method's typed config; unknown keys are an error that names them."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class UnlearnContext:
    """The request's data on the method's device, the original model and the run's bookkeeping."""

    original: nn.Module
    forget_x: torch.Tensor
    forget_y: torch.Tensor
    retain_x: torch.Tensor
    retain_y: torch.Tensor
    val_x: torch.Tensor | None
    val_y: torch.Tensor | None
    device: torch.device
    train_config: TrainConfig
    num_classes: int
    seed: int = 0
    progress: bool = True
    precision: Precision = "fp32"
    phase_seconds: dict[str, float] = field(default_factory=dict)
    losses: dict[str, float] = field(default_factory=dict)
    loss_curve: list[dict[str, float]] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def n_retain(self) -> int:
        return len(self.retain_y)

    @property
    def n_forget(self) -> int:
        return len(self.forget_y)

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.phase_seconds[name] = (
                self.phase_seconds.get(name, 0.0) + time.perf_counter() - start
            )

    def generator(self, offset: int = 0) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed * 1000 + offset)

    def frozen_original(self) -> nn.Module:
        teacher = copy.deepcopy(self.original)
        set_training(teacher, False)
        for p in teacher.parameters():
            p.requires_grad_(False)
        return teacher


MethodFn = Callable[[nn.Module, UnlearnContext, MethodConfig], nn.Module]


@dataclass(frozen=True)
class Method:
    name: str
    config_cls: type[MethodConfig]
    run: MethodFn
    summary: str
    reads_forget: bool = True


REGISTRY: dict[str, Method] = {}


def register(
    name: str, config_cls: type[MethodConfig], reads_forget: bool = True
) -> Callable[[MethodFn], MethodFn]:
    def wrap(fn: MethodFn) -> MethodFn:
        if name in REGISTRY:
            raise ValueError(f"method {name!r} is registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        REGISTRY[name] = Method(name, config_cls, fn, summary, reads_forget)
        return fn

    return wrap


def available() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Method:
    if name not in REGISTRY:
        raise ValueError(f"unknown unlearning method {name!r}; available: {', '.join(REGISTRY)}")
    return REGISTRY[name]
