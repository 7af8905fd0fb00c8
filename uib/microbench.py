"""Micro-benchmarks behind docs/BENCHMARKS.md: per-sample gradients, and peak memory.

`gradient_speed` times `torch.func` (vmap over grad, in chunks) against one autograd call per
sample on the same rows. `unlearn_peak_memory` measures what one `uib.unlearn` call adds to the
process's peak: CUDA's allocator peak on a GPU; on CPU the resident-set high-water mark, reset
before the call through /proc/self/clear_refs (Linux).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from uib.curvature import per_sample_grads, per_sample_grads_loop
from uib.device import select_device
from uib.models import build_model, default_arch


def _seconds(fn, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def gradient_speed(arch: str = "cnn", rows: int = 512, chunk_sizes=(8, 16, 32, 64, 128),
                   device: str = "auto", repeats: int = 3, seed: int = 0) -> pd.DataFrame:
    """ms per sample for the autograd loop and for vmap at each chunk size (best of `repeats`)."""
    device = select_device(device)
    torch.manual_seed(seed)
    model = build_model(arch, (1, 28, 28), 10).to(device)
    x = torch.randn(rows, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (rows,), device=device)

    def best(fn) -> float:
        fn()  # warm-up
        return min(_seconds(fn, device) for _ in range(repeats)) * 1000 / rows

    loop_ms = best(lambda: per_sample_grads_loop(model, x, y))
    table = [{"method": "autograd loop", "chunk_size": 1, "ms_per_sample": loop_ms}]
    for chunk in chunk_sizes:
        ms = best(lambda chunk=chunk: [None for _ in per_sample_grads(model, x, y, chunk)])
        table.append({"method": "torch.func vmap", "chunk_size": chunk, "ms_per_sample": ms})
    result = pd.DataFrame(table)
    result["speedup"] = loop_ms / result["ms_per_sample"]
    return result


def _rss_high_water_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def unlearn_peak_memory(original, forget, retain, validation, train_config, method: str = "uib",
                        config: dict | None = None, device: str = "auto") -> float:
    """MiB that one `uib.unlearn` call adds to the peak (CUDA allocator, or CPU resident set)."""
    from uib.api import unlearn

    device = select_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        unlearn(original, forget, retain, method, config, train_config=train_config,
                validation=validation, device=device, progress=False)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_mb()
    unlearn(original, forget, retain, method, config, train_config=train_config,
            validation=validation, device=device, progress=False)
    return _rss_high_water_mb() - base


def memory_scaling(dataset_name: str = "mnist", data_dir: str | None = None,
                   retain_sizes=(2000, 6000, 12000, 21600), chunk_sizes=(16, 32, 128),
                   device: str = "auto", seed: int = 0) -> pd.DataFrame:
    """Peak MiB of UIB against the retain-set size (rows of D_r handed to the call) and the
    chunk size, on the `random` scenario. The original is trained for one epoch: memory does
    not depend on how well it is trained."""
    from uib.data import load_dataset
    from uib.samples import split_validation
    from uib.scenarios import ScenarioConfig, build_scenario
    from uib.train import TrainConfig, train_model

    dataset = load_dataset(dataset_name, data_dir)
    scenario = build_scenario(dataset, ScenarioConfig(name="random", seed=seed))
    retain, forget = scenario.split()
    validation, _ = split_validation(dataset.test)
    recipe = TrainConfig.for_dataset(dataset.name, seed=seed, epochs=1)
    torch.manual_seed(seed)
    original = build_model(default_arch(dataset.image_shape), dataset.image_shape,
                           dataset.num_classes)
    train_model(original, scenario.dataset.train, recipe, device, progress=False)
    rows = []
    for chunk in chunk_sizes:
        for size in retain_sizes:
            part = retain.take(np.arange(min(size, len(retain))))
            peak = unlearn_peak_memory(original, forget, part, validation, recipe,
                                       config={"chunk_size": chunk}, device=device)
            rows.append({"n_retain": len(part), "chunk_size": chunk, "peak_mb": peak})
    return pd.DataFrame(rows)
