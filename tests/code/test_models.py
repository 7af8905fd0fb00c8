"""Models, the training loop and device selection."""

import numpy as np
import pytest
import torch

from uib.device import autocast, select_device
from uib.models import build_model, default_arch, fresh_copy, model_from_state
from uib.samples import Samples
from uib.train import TrainConfig, predict, train_model


@pytest.mark.parametrize(
    ("arch", "shape"),
    [
        ("mlp", (1, 8, 8)),
        ("cnn", (1, 8, 8)),
        ("cnn", (1, 28, 28)),
        ("resnet18", (3, 32, 32)),
        ("resnet18", (1, 28, 28)),
    ],
)
def test_models_map_images_to_class_logits(arch, shape):
    model = build_model(arch, shape, 10).eval()
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert model.spec.arch == arch and model.spec.image_shape == shape


def test_default_architecture_follows_image_size():
    assert default_arch((1, 8, 8)) == "mlp"
    assert default_arch((1, 28, 28)) == "cnn"


def test_unknown_architecture_is_named():
    with pytest.raises(ValueError, match="unknown model architecture 'vit'"):
        build_model("vit", (1, 8, 8), 10)


def test_state_round_trip_and_fresh_copy():
    model = build_model("cnn", (1, 28, 28), 10)
    again = model_from_state(model.spec.model_dump(), model.state_dict())
    x = torch.rand(3, 1, 28, 28)
    torch.testing.assert_close(model.eval()(x), again.eval()(x))
    fresh = fresh_copy(model, seed=123)
    assert not torch.equal(next(fresh.parameters()), next(model.parameters()))


def test_training_is_seeded_and_learns_a_separable_task():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 256)
    x = (rng.random((256, 1, 8, 8)) * 0.2 + y[:, None, None, None] * 0.8).astype(np.float32)
    data = Samples(x, y, np.array([f"s-{i}" for i in range(256)]))
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("mlp", (1, 8, 8), 2)
        history = train_model(model, data, TrainConfig(epochs=40, seed=3), progress=False)
        runs.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])
    assert history.losses[-1] < history.losses[0]
    assert (predict(model, data.x) == y).mean() > 0.95


def test_device_selection_uses_cuda_only_when_present():
    device = select_device("auto")
    assert device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            select_device("cuda")
    with autocast(torch.device("cpu"), "bf16"):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled("cpu")


def test_cpu_work_flushes_denormals_and_restores_the_callers_setting():
    from uib.device import denormals_flushed, flushed_denormals

    cpu = torch.device("cpu")
    assert not denormals_flushed()
    with flushed_denormals(cpu):
        assert denormals_flushed()
    assert not denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        with flushed_denormals(cpu):
            assert denormals_flushed()
        assert denormals_flushed()
    finally:
        torch.set_flush_denormal(False)
