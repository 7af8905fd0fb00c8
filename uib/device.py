"""Device selection and mixed precision: CUDA with bf16 autocast when present, else CPU."""

from __future__ import annotations

import contextlib

import torch


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


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA (no loss scaling needed, unlike fp16); a no-op on CPU."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def peak_memory_mb(device: torch.device) -> float | None:
    """Peak CUDA memory since the last reset, in MiB; None on CPU."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2**20


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
