"""The CUDA table of issue 11, as one prepared script for the device machine (H200).

It runs the `uib` library alone (no Prefect, no MLflow): per MNIST seed and scenario, one
original, then retrain, influence and UIB from it on CUDA, UIB once in fp32 and once in bf16
on the same original, and prints one Markdown table (every metric, avg_gap, slice_gap,
time_ratio against retrain on the same device). Prepare here, from the repository root:

    echo /.whl/ >> .git/info/exclude; echo /.mnist/ >> .git/info/exclude
    cp -r ../shared/data/mnist .mnist
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl pydantic pydantic-core annotated-types typing-inspection

then `run` with carry [".whl", ".mnist"] and the command

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && PYTHONPATH=/tmp/site:. PYTHONUNBUFFERED=1 \
        python3 docs/cuda_table.py --data-dir .mnist --out $OUT/cuda.md

It fits in about four minutes of an H200 (three seeds of patch-bias and one of class, the
small CNN; `--resnet` adds ResNet-18 rows on patch-bias seed 1).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import uib
from uib.data import load_dataset
from uib.metrics import avg_gap, evaluate, slice_gap
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.scenarios import ScenarioConfig, build_scenario
from uib.train import TrainConfig, train_model

RUNS = [("patch-bias", 1), ("patch-bias", 2), ("patch-bias", 3), ("class", 1)]
SHOWN = ["UA", "RA", "TA", "mia_efficacy", "redirect_asr", "slice_acc"]


def one_original(dataset, scenario_name: str, seed: int, arch: str | None) -> list[dict]:
    scenario = build_scenario(dataset, ScenarioConfig(name=scenario_name, seed=seed))
    retain, forget = scenario.split()
    validation, test = split_validation(scenario.dataset.test)
    recipe = TrainConfig.for_dataset(dataset.name, seed=seed)
    torch.manual_seed(seed)
    arch = arch or default_arch(dataset.image_shape)
    original = build_model(arch, dataset.image_shape, dataset.num_classes)
    train_model(original, scenario.dataset.train, recipe, "cuda", progress=False)
    rows = []
    for method, precision in [
        ("retrain", "fp32"),
        ("influence", "fp32"),
        ("uib", "fp32"),
        ("uib", "bf16"),
    ]:
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            method,
            train_config=recipe,
            validation=validation,
            device="cuda",
            seed=seed,
            progress=False,
            precision=precision,
        )
        metrics = evaluate(model, retain, forget, test, scenario.config, seed=seed)
        rows.append(
            {
                "scenario": scenario_name,
                "arch": arch,
                "seed": seed,
                "method": f"{method} ({precision})",
                **metrics.model_dump(),
                "time_s": report.time_s,
                "peak_mb": report.peak_memory_mb,
            }
        )
    reference = rows[0]
    for row in rows:
        row["avg_gap"] = avg_gap(row, reference)
        row["slice_gap"] = slice_gap(row, reference)
        row["time_ratio"] = row["time_s"] / reference["time_s"]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--resnet", action="store_true")
    args = parser.parse_args()
    assert torch.cuda.is_available(), "this script is for the CUDA machine"
    dataset = load_dataset("mnist", args.data_dir)
    runs = [(s, seed, None) for s, seed in RUNS]
    if args.resnet:
        runs.append(("patch-bias", 1, "resnet18"))
    rows = []
    for scenario_name, seed, arch in runs:
        rows += one_original(dataset, scenario_name, seed, arch)
        print(pd.DataFrame(rows).tail(4)[["method", *SHOWN, "avg_gap", "time_ratio"]], flush=True)
    table = pd.DataFrame(rows)[
        ["scenario", "arch", "seed", "method", *SHOWN, "avg_gap", "slice_gap", "time_ratio"]
    ]
    args.out.write_text(table.to_markdown(index=False, floatfmt=".3f"))
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    print(table.to_markdown(index=False, floatfmt=".3f"))


if __name__ == "__main__":
    main()
