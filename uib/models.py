"""The classifiers (an MLP for 8×8 digits and tabular rows, a small CNN for 28×28, a CIFAR-style
ResNet-18) and the three things every method needs of any model, its own or a team's: its spec,
its train/eval mode, and a freshly initialised copy.

A team's model logged with MLflow's default `pt2` format loads as a torch.export GraphModule:
no submodules, `.train()`/`.eval()` raise `NotImplementedError`, and BatchNorm and dropout run
in the mode the model was exported in, written into the graph's calls. `set_training` switches
those calls instead, so fitting, curvature and evaluation treat it as they treat an nn.Module.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn


class ModelSpec(BaseModel):
    """Everything needed to rebuild a model's architecture; travels with its weights."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(description="a key of ARCHITECTURES, or ADOPTED for a team's model")
    image_shape: tuple[int, ...] = Field(description="one input's shape: (C, H, W), or (F,)")
    num_classes: int = Field(ge=2)


ADOPTED = "adopted"


class MLP(nn.Module):
    def __init__(self, image_shape: tuple[int, ...], num_classes: int, hidden: int = 128):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(math.prod(image_shape), hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
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


def default_arch(image_shape: tuple[int, ...]) -> str:
    """The MLP for tabular rows and tiny images (8×8 digits), the small CNN otherwise."""
    return "mlp" if len(image_shape) != 3 or image_shape[1] * image_shape[2] <= 256 else "cnn"


def build_model(arch: str, image_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown model architecture {arch!r}; known: {available()}")
    model = ARCHITECTURES[arch](tuple(image_shape), num_classes)
    model.spec = ModelSpec(arch=arch, image_shape=tuple(image_shape), num_classes=num_classes)
    return model


def fresh_copy(model: nn.Module, seed: int) -> nn.Module:
    """A newly initialised model of the same architecture (what `retrain` starts from).

    One of ours is built anew; an adopted model is copied and every parameter and BatchNorm
    statistic re-initialised by PyTorch's own defaults for its layer type (`reinitialise`).
    """
    torch.manual_seed(seed)
    spec = spec_of(model)
    device = next(model.parameters()).device
    if spec.arch in ARCHITECTURES:
        return build_model(spec.arch, spec.image_shape, spec.num_classes).to(device)
    fresh = copy.deepcopy(model)
    reinitialise(fresh)
    set_training(fresh, False)
    return fresh


def reinitialise(model: nn.Module) -> None:
    """Re-draw every parameter as a fresh layer would have it, read from its name and shape:
    ≥2-d weights (conv, linear) by kaiming-uniform(a=√5) with biases uniform in ±1/√fan_in, as
    nn.Linear and nn.ConvNd do; a 1-d weight with no bias sibling of higher rank (norm layers)
    is ones and its bias zeros; running means zero, running variances one, counters zero."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in params.items():
            owner, _, leaf = name.rpartition(".")
            weight = params.get(f"{owner}.weight" if owner else "weight")
            if p.dim() >= 2:
                nn.init.kaiming_uniform_(p, a=math.sqrt(5))
            elif leaf == "bias" and weight is not None and weight.dim() >= 2:
                fan_in = math.prod(weight.shape[1:])
                bound = 1 / math.sqrt(fan_in) if fan_in else 0.0
                nn.init.uniform_(p, -bound, bound)
            elif leaf == "weight":
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
        for name, b in model.named_buffers():
            leaf = name.rpartition(".")[2]
            if leaf == "running_var":
                b.fill_(1)
            elif leaf in ("running_mean", "num_batches_tracked"):
                b.zero_()


# The graph calls whose behaviour depends on the mode, and the position of their `training` flag.
_MODE_ARGUMENT = {
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
    torch.ops.aten.alpha_dropout.default: 2,
}


def is_exported(model: nn.Module) -> bool:
    """A torch.export module (MLflow's `pt2`): its mode lives in its graph, not its submodules.

    Told by the graph itself, which calls ATen operators directly (a symbolically traced
    GraphModule calls its submodules instead): the `_guards_fn` submodule and the raising
    `.train` that `ExportedProgram.module()` adds depend on the torch release and do not all
    survive a `deepcopy`."""
    return isinstance(model, torch.fx.GraphModule) and any(
        node.op == "call_function" and isinstance(node.target, torch._ops.OpOverload)
        for node in model.graph.nodes
    )


def is_training(model: nn.Module) -> bool:
    return exported_mode(model) if is_exported(model) else model.training


def exported_mode(model: torch.fx.GraphModule) -> bool:
    """True when any BatchNorm or dropout call of the graph runs in training mode."""
    return any(
        node.op == "call_function"
        and node.target in _MODE_ARGUMENT
        and len(node.args) > _MODE_ARGUMENT[node.target]
        and node.args[_MODE_ARGUMENT[node.target]] is True
        for node in model.graph.nodes
    )


def set_training(model: nn.Module, training: bool) -> bool:
    """Put `model` in training (True) or eval mode; returns the mode it was in.

    An nn.Module uses `.train()`. An exported GraphModule has its BatchNorm and dropout calls'
    `training` flags rewritten and its code recompiled (only when the mode changes), which is
    what `.train()` would do to the modules it was exported from."""
    was = is_training(model)
    if not is_exported(model):
        model.train(training)  # the model's own, overrides included
        return was
    nn.Module.train(model, training)  # the class's: the instance's `.train` raises
    if was != training:
        for node in model.graph.nodes:
            where = _MODE_ARGUMENT.get(node.target) if node.op == "call_function" else None
            if where is not None and len(node.args) > where:
                node.args = (*node.args[:where], training, *node.args[where + 1 :])
        model.recompile()
    return was


_META_SPEC = "uib_spec"


def attach_spec(model: nn.Module, spec: ModelSpec | dict) -> nn.Module:
    """Give a model loaded without one (an adopted `pt2` model) its spec; returns the model.

    A GraphModule's deepcopy keeps only its graph, state and `meta`, so the spec goes there too.
    """
    spec = ModelSpec.model_validate(spec)
    model.spec = spec
    if isinstance(model, torch.fx.GraphModule):
        model.meta[_META_SPEC] = spec
    return model


def spec_of(model: nn.Module) -> ModelSpec:
    """The model's spec; a ValueError for a model that has none (give it one: `attach_spec`)."""
    spec = getattr(model, "spec", None)
    if spec is None and isinstance(model, torch.fx.GraphModule):
        spec = model.meta.get(_META_SPEC)
    if spec is None:
        raise ValueError(
            f"model: a {type(model).__name__} without a ModelSpec (its input shape and number "
            "of classes); give it one with uib.models.attach_spec"
        )
    return ModelSpec.model_validate(spec)


def model_from_state(spec: ModelSpec | dict, state_dict: dict) -> nn.Module:
    spec = ModelSpec.model_validate(spec)
    model = build_model(spec.arch, spec.image_shape, spec.num_classes)
    model.load_state_dict(state_dict)
    return model
