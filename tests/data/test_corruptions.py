import numpy as np
import pytest

from uib import corruptions
from uib.corruptions import CORRUPTIONS, apply, available
from uib.samples import DataError

KINDS = [
    "shot_noise",
    "impulse_noise",
    "glass_blur",
    "motion_blur",
    "shear",
    "scale",
    "rotate",
    "brightness",
    "translate",
    "stripe",
    "fog",
    "spatter",
    "dotted_line",
    "zigzag",
    "canny_edges",
]
SEEDLESS = {"scale", "brightness", "stripe", "canny_edges"}


@pytest.fixture(scope="module")
def images(digits, mnist_dir):
    from uib.data import load_dataset

    mnist = load_dataset("mnist", mnist_dir)
    return {8: digits.train.x[:24], 28: mnist.test.x[:24]}


def test_registry_holds_the_fifteen_mnist_c_kinds():
    assert available() == KINDS
    assert all(CORRUPTIONS[k] is getattr(corruptions, k) for k in KINDS)


def test_unknown_kind_lists_the_known_ones(images):
    with pytest.raises(DataError, match="'snow'.*known: shot_noise, impulse_noise"):
        apply("snow", images[8], 0)


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("kind", KINDS)
def test_corruption_contract(images, kind, size):
    x = images[size]
    before = x.copy()
    out = apply(kind, x, 7)
    assert out.shape == x.shape and out.dtype == np.float32
    assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(out, apply(kind, x, np.random.default_rng(7)))
    np.testing.assert_array_equal(out[:, 0], apply(kind, x[:, 0], 7))
    changed = np.abs(out - x).reshape(len(x), -1).max(axis=1) > 0.01
    assert changed.mean() >= 0.9, f"{kind} left {np.sum(~changed)} of {len(x)} images unchanged"


@pytest.mark.parametrize("kind", sorted(set(KINDS) - SEEDLESS))
def test_other_seed_other_result(images, kind):
    x = images[28]
    assert not np.array_equal(apply(kind, x, 1), apply(kind, x, 2))


@pytest.mark.parametrize("kind", KINDS)
def test_images_of_a_batch_do_not_mix(images, kind):
    x = images[28][:6].copy()
    out = apply(kind, x, 3)
    x[-1] = 1.0 - x[-1]
    np.testing.assert_array_equal(apply(kind, x, 3)[:-1], out[:-1])


def test_empty_batch_and_bad_shapes(images):
    assert apply("fog", np.zeros((0, 1, 28, 28), np.float32), 0).shape == (0, 1, 28, 28)
    with pytest.raises(DataError, match=r"\(N, H, W\)"):
        apply("fog", np.zeros((2, 3, 8, 8), np.float32), 0)
    with pytest.raises(DataError, match="fog"):
        apply("fog", np.zeros((8, 8), np.float32), 0)


def test_what_some_corruptions_do(images):
    x = images[28]
    np.testing.assert_allclose(apply("brightness", x), np.clip(x + 0.5, 0, 1))
    striped = apply("stripe", x)
    np.testing.assert_allclose(striped[..., :7], 1 - x[..., :7])
    np.testing.assert_array_equal(striped[..., 7:21], x[..., 7:21])
    np.testing.assert_allclose(striped[..., 21:], 1 - x[..., 21:])
    assert set(np.unique(apply("canny_edges", x))) == {0.0, 1.0}
    assert apply("scale", x).sum() < 0.7 * x.sum()
    noisy = apply("shot_noise", x, 0)
    assert (noisy[x == 0] == 0).all()
    moved = apply("translate", x, 0)
    shifts = {(dr, dc): _shift(x, dr, dc) for dr in (-3, 3) for dc in (-3, 3)}
    used = [
        next((s for s, y in shifts.items() if np.allclose(moved[i], y[i], atol=1e-6)), None)
        for i in range(len(x))
    ]
    assert None not in used and len(set(used)) > 1


def _shift(x: np.ndarray, dr: int, dc: int) -> np.ndarray:
    """Images moved by (dr, dc) pixels, zeros shifted in."""
    out = np.zeros_like(x)
    h, w = x.shape[-2:]
    out[..., max(dr, 0) : h + min(dr, 0), max(dc, 0) : w + min(dc, 0)] = x[
        ..., max(-dr, 0) : h + min(-dr, 0), max(-dc, 0) : w + min(-dc, 0)
    ]
    return out
