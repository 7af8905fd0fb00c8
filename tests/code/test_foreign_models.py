"""A team's model as MLflow's default `pt2` format gives it back: a torch.export GraphModule.

`.train()`/`.eval()` raise on it and its BatchNorm and dropout run in the mode written into its
graph; `uib.models.set_training` switches that mode, so fitting, curvature and evaluation
treat it as an nn.Module. `torch.export(...).module()` is what `mlflow.pytorch.load_model`
returns for `pt2`; the MLflow round trip itself is in tests/integration/test_adopt.py.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import uib
from uib.models import (
    ADOPTED,
    ModelSpec,
    attach_spec,
    fresh_copy,
    is_exported,
    is_training,
    set_training,
    spec_of,
)
from uib.samples import split_validation
from uib.scenarios import build_scenario
from uib.train import TrainConfig, predict


class TeamNet(nn.Module):
    def __init__(self, channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv = nn.Conv2d(channels, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.drop = nn.Dropout(0.2)
        self.fc = nn.Linear(16 * 4 * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.max_pool2d(torch.relu(self.bn(self.conv(x))), 2)
        return self.fc(self.drop(h.flatten(1)))


def exported(model: nn.Module, x: torch.Tensor) -> torch.fx.GraphModule:
    """Exported from a copy: an exported module shares its tensors with the one it came from."""
    batch = torch.export.Dim("batch", min=1)
    program = torch.export.export(copy.deepcopy(model), (x,), dynamic_shapes=({0: batch},))
    return program.module()


def test_an_exported_model_is_switched_between_training_and_eval_in_its_graph():
    torch.manual_seed(0)
    eager = TeamNet().eval()
    x = torch.rand(16, 1, 8, 8)
    graph = exported(eager, x[:4])
    assert is_exported(graph) and not is_training(graph)
    with pytest.raises(NotImplementedError):
        graph.train()
    expected = eager(x)
    assert set_training(graph, True) is False and is_training(graph)
    stats = graph.get_buffer("bn.running_mean").clone()
    first, second = graph(x), graph(x)
    assert not torch.allclose(first, second)  # dropout draws anew
    assert not torch.allclose(stats, graph.get_buffer("bn.running_mean"))  # BatchNorm updates
    assert set_training(graph, False) is True and not is_training(graph)
    graph.load_state_dict(eager.state_dict())
    torch.testing.assert_close(graph(x), expected)
    torch.testing.assert_close(graph(x[:1]), expected[:1])  # no batch statistics in eval


def test_a_model_exported_in_training_mode_scores_with_its_running_statistics_in_eval():
    torch.manual_seed(0)
    eager = TeamNet()
    x = torch.rand(32, 1, 8, 8)
    eager.train()
    eager(x)  # running statistics that differ from the initial ones
    graph = exported(eager, x[:4])
    set_training(graph, False)
    torch.testing.assert_close(graph(x), eager.eval()(x))


def test_an_adopted_model_keeps_its_spec_through_copies_and_retrains_from_fresh_weights():
    graph = exported(TeamNet().eval(), torch.rand(4, 1, 8, 8))
    with pytest.raises(ValueError, match="without a ModelSpec"):
        spec_of(graph)
    attach_spec(graph, ModelSpec(arch=ADOPTED, image_shape=(1, 8, 8), num_classes=10))
    assert spec_of(copy.deepcopy(graph)).arch == ADOPTED  # a GraphModule copy drops attributes
    with torch.no_grad():
        graph.get_buffer("bn.running_var").fill_(7.0)
    fresh = fresh_copy(graph, seed=1)
    assert is_exported(fresh) and spec_of(fresh).num_classes == 10
    assert torch.equal(fresh.get_buffer("bn.running_var"), torch.ones(16))
    assert torch.equal(fresh.get_parameter("bn.weight"), torch.ones(16))
    before, after = dict(graph.named_parameters()), dict(fresh.named_parameters())
    assert not torch.equal(before["conv.weight"], after["conv.weight"])
    assert after["conv.bias"].abs().max() <= 1 / np.sqrt(9)  # ±1/√fan_in, as nn.Conv2d draws


def test_uib_unlearns_an_exported_model_exactly_as_the_module_it_came_from(digits):
    scenario = build_scenario(digits)
    retain, forget = scenario.split()
    validation, _ = split_validation(scenario.dataset.test)
    torch.manual_seed(0)
    eager = TeamNet().eval()
    x, y = torch.as_tensor(scenario.dataset.train.x), torch.as_tensor(scenario.dataset.train.y)
    optimizer = torch.optim.Adam(eager.parameters(), 1e-2)
    eager.train()
    for _ in range(8):
        for idx in torch.randperm(len(y)).split(64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(eager(x[idx]), y[idx]).backward()
            optimizer.step()
    eager.eval()
    spec = ModelSpec(arch=ADOPTED, image_shape=(1, 8, 8), num_classes=10)
    graph = attach_spec(exported(eager, x[:4]), spec)
    attach_spec(eager, spec)
    results = {}
    for name, model in (("eager", eager), ("graph", graph)):
        candidate, report = uib.unlearn(
            model, forget, retain, "uib", validation=validation, progress=False
        )
        results[name] = (predict(candidate, forget.x), report.notes["eta"])
    assert is_exported(candidate)
    np.testing.assert_array_equal(results["eager"][0], results["graph"][0])
    assert results["eager"][1] == results["graph"][1]
    retrained, _ = uib.unlearn(
        graph, forget, retain, "retrain", train_config=TrainConfig(epochs=2), progress=False
    )
    assert is_exported(retrained) and not is_training(retrained)


def test_uib_passes_keep_batchnorm_statistics_unless_asked_to_train_them(digits):
    """`batchnorm="frozen"` (the default) runs the passes as the model is evaluated; "train"
    lets BatchNorm re-estimate its running statistics from retain batches."""
    scenario = build_scenario(digits)
    retain, forget = scenario.split()
    validation, _ = split_validation(scenario.dataset.test)
    torch.manual_seed(0)
    model = attach_spec(
        TeamNet().eval(), ModelSpec(arch=ADOPTED, image_shape=(1, 8, 8), num_classes=10)
    )
    config = {"eta": 1e-3, "stop_at_gap": None, "passes": 1}
    stats = {}
    for mode in ("frozen", "train"):
        candidate, _ = uib.unlearn(
            model, forget, retain, "uib", {**config, "batchnorm": mode}, progress=False
        )
        stats[mode] = candidate.bn.running_mean
    torch.testing.assert_close(stats["frozen"], model.bn.running_mean)
    assert not torch.allclose(stats["train"], model.bn.running_mean)


def test_an_export_is_recognised_by_its_graph_with_or_without_guards():
    """`_guards_fn` and the raising `.train` depend on the torch release; the ATen graph does not."""
    model = TeamNet().eval()
    program = torch.export.export(copy.deepcopy(model), (torch.rand(4, 1, 8, 8),))
    for graph in (program.module(), program.module(check_guards=False)):
        assert is_exported(graph) and is_exported(copy.deepcopy(graph))
        set_training(graph, True)
        assert is_training(graph) and is_training(copy.deepcopy(graph))
    assert not is_exported(torch.fx.symbolic_trace(model)) and not is_exported(model)
