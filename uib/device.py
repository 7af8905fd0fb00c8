"""Device selection and precision: CUDA when present, else CPU; fp32 unless bf16 is asked for.

bf16 is not the default: measured on an H200 (MNIST / patch-bias, one original), UIB under
bf16 autocast landed 3.95 pp from retrain where fp32 landed 0.53, and was not faster (0.68 s
against 0.58 s): the small models here are bound by kernel launches, not by arithmetic."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["fp32", "bf16"]
AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}


def select_device(preference: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA when available; `cuda`/`cpu`/`cuda:N` are taken as given."""
    if isinstance(preference, torch.device):
        return preference
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(preference)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {preference!r} was asked for but CUDA is not available")
    return device


def autocast(
    device: torch.device, precision: Precision = "fp32"
) -> contextlib.AbstractContextManager:
    """Autocast to `precision` on `device` (bf16 needs no loss scaling, unlike fp16); fp32 is
    a no-op."""
    dtype = AUTOCAST_DTYPES[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def denormals_flushed() -> bool:
    """Whether this thread's CPU arithmetic reads denormal floats as 0."""
    return torch.tensor([1e-40]).mul(1.0).item() == 0.0


@contextlib.contextmanager
def flushed_denormals(device: torch.device):
    """On CPU, read denormal floats (below 1.2e-38) as 0 while the block runs, then restore.

    A well-fitted model's gradients square to denormals in Adam's second moment and in the
    Fisher, and a CPU computes on denormals many times slower. Measured (one thread, ResNet-18's
    11M parameters): an Adam step took 0.285 s on 1e-20 gradients against 0.067 s on 1e-3 ones,
    and 0.091 s with denormals flushed; UIB's passes on digits ResNet-18 spent 20.5 s of 85.6 in
    Adam's `sqrt`. Retrain and every method run under it alike, so `time_ratio` stays fair."""
    if device.type != "cpu":
        yield
        return
    was = denormals_flushed()
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was)


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory since the last reset, in MiB; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
