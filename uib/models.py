"""The classifiers: an MLP for 8×8 digits, a small CNN for 28×28, a CIFAR-style ResNet-18."""

from __future__ import annotations

from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn


class ModelSpec(BaseModel):
    """Everything needed to rebuild a model's architecture; travels with its weights."""

    model_config = ConfigDict(extra="forbid")

    arch: str
    image_shape: tuple[int, int, int]
    num_classes: int


class MLP(nn.Module):
    def __init__(self, image_shape: tuple[int, int, int], num_classes: int, hidden: int = 128):
        super().__init__()
        c, h, w = image_shape
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(c * h * w, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    """conv 32, conv 64, fc 128 — the budget in UIB-METHOD.md was measured on this one.

    Valid (unpadded) convolutions on images of 16 px and more: 225k parameters on 28×28.
    Smaller images are padded so that two conv + pool stages still leave a feature map.
    """

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c, h, w = image_shape
        pad = 0 if min(h, w) >= 16 else 1
        self.features = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        with torch.no_grad():
            flat = self.features(torch.zeros(1, c, h, w)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 128),
            nn.ReLU(),
            nn.Linear(128, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style: a 3×3 stem without max-pooling, four stages of two basic blocks."""

    def __init__(self, image_shape: tuple[int, int, int], num_classes: int):
        super().__init__()
        c = image_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()
        )
        blocks, cin = [], 64
        for cout, stride in [(64, 1), (128, 2), (256, 2), (512, 2)]:
            blocks += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))


ARCHITECTURES: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "mlp": MLP,
    "cnn": SmallCNN,
    "resnet18": ResNet18,
}


def available() -> list[str]:
    return sorted(ARCHITECTURES)


def default_arch(image_shape: tuple[int, int, int]) -> str:
    """The MLP for tiny images (8×8 digits), the small CNN otherwise."""
    return "mlp" if image_shape[1] * image_shape[2] <= 256 else "cnn"


def build_model(arch: str, image_shape: tuple[int, int, int], num_classes: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {arch!r}; known: {available()}")
    model = ARCHITECTURES[arch](tuple(image_shape), num_classes)
    model.spec = ModelSpec(arch=arch, image_shape=tuple(image_shape), num_classes=num_classes)
    return model


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A newly initialised model of the same architecture (what `retrain` starts from)."""
    torch.manual_seed(seed)
    spec = model.spec
    return build_model(spec.arch, spec.image_shape, spec.num_classes).to(
        next(model.parameters()).device
    )


def model_from_state(spec: ModelSpec | dict, state_dict: dict) -> nn.Module:
    spec = ModelSpec.model_validate(spec)
    model = build_model(spec.arch, spec.image_shape, spec.num_classes)
    model.load_state_dict(state_dict)
    return model
