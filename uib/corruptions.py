"""The fifteen MNIST-C corruptions (Mu & Gilmer, 2019) as batched NumPy/SciPy functions.

Each takes images (N, H, W) or (N, 1, H, W) in [0, 1] and a seed or `np.random.Generator`, and
returns a new float32 array of the same shape in [0, 1]; `apply_per_channel` takes images of any
number of channels (N, C, H, W). Severities follow MNIST-C's defaults on
28×28; lengths in pixels (blur sigmas, shifts, line widths) scale with the image height, so the
same corruption also reads on 8×8 digits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np
from scipy import ndimage, signal

from uib.samples import DataError

Corruption = Callable[..., np.ndarray]
CORRUPTIONS: dict[str, Corruption] = {}
MNIST_SIZE = 28


def available() -> list[str]:
    return list(CORRUPTIONS)


def apply(
    kind: str, x: np.ndarray, rng_or_seed: np.random.Generator | int = 0, **params
) -> np.ndarray:
    """`kind` applied to `x`; `params` override its MNIST-C severity (see each function)."""
    if kind not in CORRUPTIONS:
        raise DataError(f"corruption: unknown kind {kind!r}; known: {', '.join(available())}")
    return CORRUPTIONS[kind](x, rng_or_seed, **params)


def apply_per_channel(
    kind: str, x: np.ndarray, rng_or_seed: np.random.Generator | int = 0, **params
) -> np.ndarray:
    """`kind` applied to images (N, C, H, W) of any number of channels: each channel in turn
    with the same random draws (the same rotation, noise mask, blob or line in every channel of
    an image). One channel gives exactly `apply`, and leaves a passed generator where `apply`
    would. On colour images `brightness` adds to every channel (a step towards white), and
    `canny_edges` finds edges per channel."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise DataError(f"corruption {kind}: need images (N, C, H, W), got {x.shape}")
    rng = np.random.default_rng(rng_or_seed)
    start = rng.bit_generator.state
    out = np.empty(x.shape, np.float32)
    for c in range(x.shape[1]):
        rng.bit_generator.state = start
        out[:, c] = apply(kind, x[:, c], rng, **params)
    return out


def corruption(fn: Callable[..., np.ndarray]) -> Corruption:
    """Register `fn(images (N, H, W) float64, rng, **params)` under its name, shape-agnostic."""

    @functools.wraps(fn)
    def batched(x: np.ndarray, rng: np.random.Generator | int = 0, **params) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim == 4 and x.shape[1] == 1:
            images = x[:, 0]
        elif x.ndim == 3:
            images = x
        else:
            raise DataError(
                f"corruption {fn.__name__}: need (N, H, W) or (N, 1, H, W), got {x.shape}"
            )
        if not len(images):
            return np.zeros(x.shape, np.float32)
        out = fn(images.astype(np.float64), np.random.default_rng(rng), **params)
        return np.clip(out, 0.0, 1.0).astype(np.float32).reshape(x.shape)

    CORRUPTIONS[fn.__name__] = batched
    return batched


def _px(images: np.ndarray, length: float) -> float:
    """`length` pixels on 28×28, scaled to the height of `images`."""
    return length * images.shape[1] / MNIST_SIZE


def _blur(images: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(images, sigma=(0, sigma, sigma), mode="nearest")


def _warp(images: np.ndarray, matrices: np.ndarray, shifts: np.ndarray | None = None):
    """Bilinear resampling, zero outside: output pixel p of image n reads the input at
    A_n (p - centre) + centre + t_n, with `matrices` A (N, 2, 2) and `shifts` t (N, 2) acting on
    (row, col) coordinates.
    """
    n, h, w = images.shape
    centre = np.array([(h - 1) / 2, (w - 1) / 2])
    grid = np.stack(np.meshgrid(np.arange(h), np.arange(w), indexing="ij"), -1) - centre
    src = np.einsum("nij,hwj->nhwi", matrices, grid) + centre
    if shifts is not None:
        src = src + shifts[:, None, None, :]
    batch = np.broadcast_to(np.arange(n)[:, None, None], (n, h, w))
    coords = np.stack([batch, src[..., 0], src[..., 1]])
    return ndimage.map_coordinates(images, coords, order=1, mode="constant", cval=0.0)


def _sobel(images: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative along spatial `axis`; `ndimage.sobel` would also smooth across the batch."""
    derivative = ndimage.correlate1d(images, [-1.0, 0.0, 1.0], axis=axis, mode="nearest")
    return ndimage.correlate1d(derivative, [1.0, 2.0, 1.0], axis=3 - axis, mode="nearest")


def _signs(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.choice([-1.0, 1.0], size=n)


def _stroke(distance: np.ndarray, width: float) -> np.ndarray:
    """MNIST-C's line profile: 1 on the line, falling off as log(1 - d/width) + 1."""
    d = np.clip(np.abs(distance), 0, width * (1 - 1e-9))
    return np.clip(np.log1p(-d / width) + 1, 0, 1)


def _plasma(rng: np.random.Generator, n: int, size: int, decay: float) -> np.ndarray:
    """Diamond-square height maps (n, size, size) in [0, 1]; `size` a power of two."""
    m = np.zeros((n, size, size))
    step, wibble = size, 100.0

    def jittered(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble**2 * rng.uniform(-1, 1, total.shape)

    while step >= 2:
        half = step // 2
        corners = m[:, ::step, ::step]
        square = corners + np.roll(corners, -1, axis=1)
        square = square + np.roll(square, -1, axis=2)
        m[:, half::step, half::step] = jittered(square)
        centres = m[:, half::step, half::step]
        m[:, ::step, half::step] = jittered(
            centres + np.roll(centres, 1, axis=1) + corners + np.roll(corners, -1, axis=2)
        )
        m[:, half::step, ::step] = jittered(
            centres + np.roll(centres, 1, axis=2) + corners + np.roll(corners, -1, axis=1)
        )
        step, wibble = half, wibble / decay
    m -= m.min(axis=(1, 2), keepdims=True)
    return m / np.maximum(m.max(axis=(1, 2), keepdims=True), 1e-12)


@corruption
def shot_noise(images, rng, photons: float = 3.0):
    return rng.poisson(images * photons) / photons


@corruption
def impulse_noise(images, rng, amount: float = 0.17):
    hit = rng.random(images.shape) < amount
    salt = rng.random(images.shape) < 0.5
    return np.where(hit, salt.astype(np.float64), images)


@corruption
def glass_blur(images, rng, sigma: float = 0.7, max_delta: float = 1.0, iterations: int = 2):
    """Blur, swap every pixel with a random neighbour with probability 1/2 (in MNIST-C's
    bottom-right to top-left order, so swaps chain), blur again."""
    n, h, w = images.shape
    delta = max(1, round(_px(images, max_delta)))
    x = _blur(images, _px(images, sigma))
    batch = np.arange(n)
    positions = [(r, c) for r in range(h - delta, delta, -1) for c in range(w - delta, delta, -1)]
    for _ in range(iterations):
        offsets = rng.integers(-delta, delta, size=(len(positions), 2, n))
        swap = rng.random((len(positions), n)) < 0.5
        for (r, c), (dr, dc), on in zip(positions, offsets, swap, strict=True):
            r2, c2 = r + dr, c + dc
            here, there = x[batch, r, c], x[batch, r2, c2]
            x[batch, r, c] = np.where(on, there, here)
            x[batch, r2, c2] = np.where(on, here, there)
    return _blur(x, _px(images, sigma))


@corruption
def motion_blur(images, rng, sigma: float = 3.0, max_angle: float = 45.0):
    """One-sided Gaussian streak at a random angle in ±`max_angle` degrees, as ImageMagick's."""
    n = len(images)
    s = max(_px(images, sigma), 0.5)
    taps = np.arange(int(np.ceil(3 * s)) + 1)
    weights = np.exp(-(taps**2) / (2 * s**2))
    weights /= weights.sum()
    angle = np.deg2rad(rng.uniform(-max_angle, max_angle, n))
    radius = taps[-1]
    size = 2 * radius + 1
    rows = radius - taps[None] * np.sin(angle)[:, None]
    cols = radius - taps[None] * np.cos(angle)[:, None]
    kernel = np.zeros((n, size + 1, size + 1))
    r0, c0 = np.floor(rows).astype(int), np.floor(cols).astype(int)
    fr, fc = rows - r0, cols - c0
    batch = np.broadcast_to(np.arange(n)[:, None], rows.shape)
    for dr, dc, share in (
        (0, 0, (1 - fr) * (1 - fc)),
        (0, 1, (1 - fr) * fc),
        (1, 0, fr * (1 - fc)),
        (1, 1, fr * fc),
    ):
        np.add.at(kernel, (batch, r0 + dr, c0 + dc), weights * share)
    return signal.fftconvolve(images, kernel[:, :size, :size], mode="same", axes=(1, 2))


@corruption
def shear(images, rng, amount: float = 0.4):
    """Horizontal shear by ±`amount` radians about the image centre (skimage's convention)."""
    a = _signs(rng, len(images)) * amount
    m = np.zeros((len(images), 2, 2))
    m[:, 0, 0] = np.cos(a)
    m[:, 1, 0] = -np.sin(a)
    m[:, 1, 1] = 1.0
    return _warp(images, m)


@corruption
def scale(images, rng, factor: float = 0.7):
    """Shrink about the centre to `factor` of the size."""
    m = np.broadcast_to(np.eye(2) / factor, (len(images), 2, 2))
    return _warp(images, m)


@corruption
def rotate(images, rng, angle: float = 0.4):
    """Rotate by ±`angle` radians about the centre."""
    a = _signs(rng, len(images)) * angle
    cos, sin = np.cos(a), np.sin(a)
    m = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], 1)
    return _warp(images, m)


@corruption
def brightness(images, rng, amount: float = 0.5):
    """HSV value + `amount`, which for grey images is plain addition."""
    return images + amount


@corruption
def translate(images, rng, shift: float = 3.0):
    """Shift by ±`shift` pixels along each axis (whole pixels, at least one)."""
    pixels = max(1, round(_px(images, shift)))
    shifts = rng.choice([-pixels, pixels], size=(len(images), 2)).astype(np.float64)
    return _warp(images, np.broadcast_to(np.eye(2), (len(images), 2, 2)), shifts)


@corruption
def stripe(images, rng):
    """Invert the left and right quarters of the columns."""
    w = images.shape[2]
    x = images.copy()
    x[:, :, : w // 4] = 1 - x[:, :, : w // 4]
    x[:, :, w - w // 4 :] = 1 - x[:, :, w - w // 4 :]
    return x


@corruption
def fog(images, rng, strength: float = 3.0, decay: float = 1.4):
    n, h, w = images.shape
    size = 1 << int(np.ceil(np.log2(max(h, w, 2))))
    haze = _plasma(rng, n, size, decay)[:, :h, :w]
    peak = images.max(axis=(1, 2), keepdims=True)
    return (images + strength * haze) * peak / (peak + strength)


@corruption
def spatter(
    images,
    rng,
    loc: float = 0.65,
    spread: float = 0.3,
    sigma: float = 1.0,
    threshold: float = 0.65,
    mask_sigma: float = 1.5,
    colour: float = 63 / 255,
):
    """Grey blobs: thresholded smoothed noise, smoothed again and kept where it is solid."""
    liquid = _blur(rng.normal(loc, spread, images.shape), _px(images, sigma))
    mask = _blur((liquid > threshold).astype(np.float64), _px(images, mask_sigma))
    mask[mask < 0.8] = 0
    return images * (1 - mask) + colour * mask


@corruption
def dotted_line(images, rng, width: float = 2.3, dash: float = 2.0):
    """A line between random rows of the left and right edges, with every other dash removed."""
    n, h, w = images.shape
    start, end = rng.integers(0, h - 1, size=(2, n))
    cols = np.arange(w)
    line = start[:, None] + (end - start)[:, None] * cols / (w - 1)
    ink = _stroke(np.arange(h)[None, :, None] - line[:, None, :], max(1.0, _px(images, width)))
    dash_px = max(1, round(_px(images, dash)))
    ink[:, :, (cols // dash_px) % 2 == 0] = 0
    return images + ink


@corruption
def zigzag(
    images,
    rng,
    width: float = 2.3,
    period: float = 2.0,
    amplitude: float = 2.0,
    margin: float = 2.0,
    max_tilt: float = 5.0,
):
    """A triangle wave from near the left edge to near the right one, along a random row and
    tilt: MNIST-C's polyline of half-period `period` and amplitude `amplitude`."""
    n, h, w = images.shape
    c0, c1 = _px(images, margin), w - 1 - _px(images, margin)
    r0 = rng.integers(0, h - 1, size=n).astype(np.float64)
    tilt = rng.uniform(-_px(images, max_tilt), _px(images, max_tilt), size=n)
    theta = np.arctan(tilt / (c1 - c0))[:, None, None]
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    dr, dc = rows[None] - r0[:, None, None], cols[None] - c0
    along = dc * np.cos(theta) + dr * np.sin(theta)
    across = dr * np.cos(theta) - dc * np.sin(theta)
    a = max(1.0, _px(images, period))
    b = max(1.0, _px(images, amplitude))
    wave = b * (2 / np.pi) * np.arcsin(np.sin(np.pi * along / (2 * a)))
    ink = _stroke(across - wave, max(1.0, _px(images, width)))
    ink[(along < 0) | (along > (c1 - c0) / np.cos(theta))] = 0
    return images + ink


@corruption
def canny_edges(images, rng, sigma: float = 1.0, low: float = 0.1, high: float = 0.2):
    """Canny: Gaussian smoothing, Sobel gradients, non-maximum suppression along the gradient,
    then hysteresis (weak edges survive only when connected to a strong one)."""
    smooth = _blur(images, _px(images, sigma))
    gr, gc = _sobel(smooth, axis=1), _sobel(smooth, axis=2)
    magnitude = np.hypot(gr, gc)
    direction = (np.round(np.arctan2(gr, gc) / (np.pi / 4)).astype(int)) % 4
    padded = np.pad(magnitude, ((0, 0), (1, 1), (1, 1)))
    h, w = images.shape[1:]
    peak = np.zeros_like(magnitude, dtype=bool)
    for d, (sr, sc) in enumerate(((0, 1), (1, 1), (1, 0), (1, -1))):
        ahead = padded[:, 1 + sr : 1 + sr + h, 1 + sc : 1 + sc + w]
        behind = padded[:, 1 - sr : 1 - sr + h, 1 - sc : 1 - sc + w]
        peak |= (direction == d) & (magnitude >= ahead) & (magnitude >= behind)
    weak = peak & (magnitude >= low)
    strong = weak & (magnitude >= high)
    connect = np.zeros((3, 3, 3), dtype=bool)
    connect[1] = True
    labels, _ = ndimage.label(weak, structure=connect)
    keep = np.isin(labels, np.unique(labels[strong]))
    return (keep & weak).astype(np.float64)
