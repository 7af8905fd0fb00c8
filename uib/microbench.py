"""Micro-benchmarks behind docs/BENCHMARKS.md: per-sample gradients, and peak memory.

`gradient_speed` times the diagonal Fisher and gradient sum by one autograd call per sample,
by `torch.func` (vmap over grad, in chunks) and by the factored path, on the same rows.
`cost_scaling` measures how UIB's time, against retrain's, grows with the forget set and with
the retain sample. `unlearn_peak_memory` measures what one `uib.unlearn` call adds to the
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

from uib.curvature import gradient_stats, per_sample_grads_loop
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


def gradient_speed(
    arch: str = "cnn",
    rows: int = 512,
    chunk_sizes=(16, 32, 64, 128),
    device: str = "auto",
    repeats: int = 3,
    seed: int = 0,
    image_shape: tuple[int, int, int] = (1, 28, 28),
) -> pd.DataFrame:
    """ms per sample to get the diagonal Fisher and the gradient sum (what UIB needs of the
    per-sample gradients) by an autograd loop, by `torch.func` vmap and by the factored path, at
    each chunk size (best of `repeats`), for rows of `image_shape` (MNIST's by default)."""
    device = select_device(device)
    torch.manual_seed(seed)
    model = build_model(arch, image_shape, 10).to(device)
    x = torch.randn(rows, *image_shape, device=device)
    y = torch.randint(0, 10, (rows,), device=device)

    def best(fn) -> float:
        fn()  # warm-up
        return min(_seconds(fn, device) for _ in range(repeats)) * 1000 / rows

    def loop() -> None:
        grads = per_sample_grads_loop(model, x, y)
        {k: (g.pow(2).mean(0), g.sum(0)) for k, g in grads.items()}

    loop_ms = best(loop)
    table = [{"method": "autograd loop", "chunk_size": 1, "ms_per_sample": loop_ms}]
    for path, label in (("vmap", "torch.func vmap"), ("factored", "factored (layer hooks)")):
        for chunk in chunk_sizes:
            ms = best(lambda chunk=chunk, path=path: gradient_stats(model, x, y, chunk, path=path))
            table.append({"method": label, "chunk_size": chunk, "ms_per_sample": ms})
    result = pd.DataFrame(table)
    result["speedup"] = loop_ms / result["ms_per_sample"]
    return result


def _rss_high_water_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) / 1024


def _rss_mb() -> float:
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) / 1024


def unlearn_peak_memory(
    original,
    forget,
    retain,
    validation,
    train_config,
    method: str = "uib",
    config: dict | None = None,
    device: str = "auto",
) -> float:
    """MiB that one `uib.unlearn` call adds to the peak (CUDA allocator, or CPU resident set)."""
    from uib.api import unlearn

    device = select_device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        unlearn(
            original,
            forget,
            retain,
            method,
            config,
            train_config=train_config,
            validation=validation,
            device=device,
            progress=False,
        )
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    Path("/proc/self/clear_refs").write_text("5")
    base = _rss_mb()
    unlearn(
        original,
        forget,
        retain,
        method,
        config,
        train_config=train_config,
        validation=validation,
        device=device,
        progress=False,
    )
    return _rss_high_water_mb() - base


def memory_scaling(
    dataset_name: str = "mnist",
    data_dir: str | None = None,
    retain_sizes=(2000, 6000, 12000, 21600),
    chunk_sizes=(32, 256, 1024),
    device: str = "auto",
    seed: int = 0,
    repeats: int = 3,
) -> pd.DataFrame:
    """Peak MiB of UIB (median and max of `repeats` calls) against the retain-set size (rows of
    D_r handed to the call) and the chunk size, on the `random` scenario. The original is trained for one epoch: memory does
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
    original = build_model(
        default_arch(dataset.image_shape), dataset.image_shape, dataset.num_classes
    )
    train_model(original, scenario.dataset.train, recipe, device, progress=False)
    rows = []
    for chunk in chunk_sizes:
        for size in retain_sizes:
            part = retain.take(np.arange(min(size, len(retain))))
            peaks = [
                unlearn_peak_memory(
                    original,
                    forget,
                    part,
                    validation,
                    recipe,
                    config={"chunk_size": chunk},
                    device=device,
                )
                for _ in range(repeats)
            ]
            rows.append(
                {
                    "n_retain": len(part),
                    "chunk_size": chunk,
                    "peak_mb": float(np.median(peaks)),
                    "max_mb": max(peaks),
                }
            )
    return pd.DataFrame(rows)


def cost_scaling(
    dataset_name: str = "mnist",
    data_dir: str | None = None,
    scenario: str = "patch-bias",
    forget_fractions=(0.01, 0.05, 0.1, 0.2),
    retain_samples=(250, 500, 1000, 2000, 4000),
    seed: int = 1,
    device: str = "auto",
) -> pd.DataFrame:
    """UIB's seconds, per phase, and `time_ratio` / `avg_gap` against retrain in the same process.

    One original and one retrain per forget fraction (of the training set; for `patch-bias` the
    faulty share of each other class is set so the slice is that fraction); then, on the 10 %
    original, UIB at each retain-sample size. The original's recipe is the benchmark's."""
    from uib.data import load_dataset
    from uib.methods.uib import UIBConfig

    dataset = load_dataset(dataset_name, data_dir)
    rows = []
    for fraction in sorted(set(forget_fractions) | {0.1}):
        sizes = retain_samples if fraction == 0.1 else (UIBConfig().retain_sample,)
        rows += _scaling_rows(dataset, scenario, fraction, sizes, seed, device)
    return pd.DataFrame(rows)


def _scaling_rows(
    dataset, scenario: str, fraction: float, retain_samples, seed: int, device: str
) -> list[dict]:
    from uib.api import unlearn
    from uib.metrics import avg_gap, evaluate
    from uib.samples import split_validation
    from uib.scenarios import ScenarioConfig, build_scenario
    from uib.train import TrainConfig, train_model

    share = (dataset.num_classes - 1) / dataset.num_classes if scenario == "patch-bias" else 1.0
    built = build_scenario(
        dataset, ScenarioConfig(name=scenario, seed=seed, fraction=fraction / share)
    )
    retain, forget = built.split()
    validation, test = split_validation(built.dataset.test)
    recipe = TrainConfig.for_dataset(dataset.name, seed=seed)
    torch.manual_seed(seed)
    original = build_model(
        default_arch(dataset.image_shape), dataset.image_shape, dataset.num_classes
    )
    train_model(original, built.dataset.train, recipe, device, progress=False)

    def run(method: str, config: dict | None = None) -> tuple[dict, object]:
        model, report = unlearn(
            original,
            forget,
            retain,
            method,
            config,
            train_config=recipe,
            validation=validation,
            device=device,
            seed=seed,
            progress=False,
        )
        return evaluate(model, retain, forget, test, built.config, seed=seed).model_dump(), report

    reference, retrained = run("retrain")
    rows = []
    for size in retain_samples:
        metrics, report = run("uib", {"retain_sample": size})
        rows.append(
            {
                "forget_fraction": len(forget) / len(built.dataset.train),
                "n_forget": len(forget),
                "retain_sample": min(size, len(retain)),
                "uib_s": report.time_s,
                "retrain_s": retrained.time_s,
                "time_ratio": report.time_s / retrained.time_s,
                "avg_gap": avg_gap(metrics, reference),
                "passes": report.notes.get("passes_run"),
                **{f"{phase}_s": seconds for phase, seconds in report.phase_seconds.items()},
            }
        )
    return rows
