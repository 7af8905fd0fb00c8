"""Baselines tuned as fairly as UIB: the same data, the same tuning seeds, one rule for all.

UIB's defaults were tuned on digits seeds 0–2 (and MNIST seed 0); a baseline run with one
fixed configuration would be judged against a tuned UIB. Here every baseline gets a small grid
over its step size and length (`TUNING_GRIDS`, the one home of the grids), run from the same
original per seed and scenario as `retrain`, and the configuration with the lowest mean
`avg_gap` over every (seed, scenario) wins (`RULE`). A winner at the edge of its grid says only
that the best configuration may lie beyond it, so the grid then grows one step past that edge
(`outward_neighbours`, on the `LADDERS`) and the rule picks again, up to `GROW_ROUNDS` times.
The digits winners are the registry's defaults, other data sets' are in `TUNED_ON`;
`docs/BENCHMARKS.md` shows the grids, the rule and what each winner scored. Reported benchmark
seeds never take part: they start after the tuning seeds.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

import uib
from uib import methods
from uib.metrics import avg_gap, evaluate, slice_gap
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.train import TrainConfig, train_model

RULE = "lowest mean avg_gap over every tuning seed and scenario (ties: the first in grid order)"
TUNING_SEEDS: dict[str, list[int]] = {"digits": [0, 1, 2], "mnist": [0]}
"""The seeds UIB's defaults were tuned on, per data set; reported benchmark seeds start after."""
TUNING_SCENARIOS = ["patch-bias", "class", "random", "corruption"]
STEP_GRID = {"lr": [1e-4, 3e-4, 1e-3, 3e-3], "epochs": [1, 2, 5]}
TUNING_GRIDS: dict[str, dict[str, list]] = {
    "finetune": STEP_GRID,
    "neggrad": {"lr": [1e-5, 3e-5, 1e-4, 3e-4], "epochs": [1, 2, 5]},
    "neggrad+": STEP_GRID,
    "random-label": STEP_GRID,
    "scrub": {"lr": [1e-4, 3e-4, 1e-3, 3e-3], "epochs": [2, 3, 5]},
    "salun": STEP_GRID,
    "l1-sparse": STEP_GRID,
    "ssd": {"selection": [1.0, 3.0, 10.0, 50.0], "dampening": [0.1, 1.0, 10.0]},
}
LOG_LADDER = [1e-6, 3e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0]
LOG_LADDER += [10.0, 30.0, 100.0, 300.0]
LADDERS: dict[str, list] = {
    "lr": LOG_LADDER,
    "selection": LOG_LADDER,
    "dampening": LOG_LADDER,
    "epochs": [1, 2, 3, 5, 10, 20],
}
"""Where a grid grows when its winner sits at an edge (`outward_neighbours`): the next value."""
GROW_ROUNDS = 3


TUNED_ON: dict[str, dict[str, dict]] = {
    "mnist": {
        "finetune": {"epochs": 10, "lr": 1e-2},
        "neggrad": {"epochs": 5, "lr": 1e-5},
        "neggrad+": {"epochs": 1, "lr": 3e-5},
        "random-label": {"epochs": 1, "lr": 3e-4},
        "scrub": {"epochs": 3, "lr": 3e-5},
        "salun": {"epochs": 1, "lr": 3e-4},
        "l1-sparse": {"epochs": 5, "lr": 1e-3},
        "ssd": {"dampening": 10.0, "selection": 1.0},
    }
}
"""Per data set other than digits (whose winners are the registry's defaults): each baseline's
winner on that data set's tuning seeds, as `uib tune` recorded it in `docs/results/tuning-<name>/`.
The benchmark runs a baseline with these on that data set: a learning rate tuned for the MLP on
8×8 digits is not one for the CNN on MNIST (SCRUB's digits winner collapses there, RA 0.40)."""


def tuned_config(method: str, dataset_name: str) -> dict:
    """`method`'s fields tuned on `dataset_name`; {} where none are recorded (the defaults)."""
    return dict(TUNED_ON.get(dataset_name, {}).get(method, {}))


class TuningConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    methods: list[str] = Field(default_factory=lambda: list(TUNING_GRIDS))
    grids: dict[str, dict[str, list]] = Field(
        default_factory=lambda: dict(TUNING_GRIDS), description="per method: field → values"
    )
    dataset: str = "digits"
    data_dir: str | None = None
    scenarios: list[str] = Field(default_factory=lambda: list(TUNING_SCENARIOS))
    seeds: list[int] | None = Field(None, description="default: the data set's `TUNING_SEEDS`")
    grow_rounds: int = Field(
        GROW_ROUNDS, ge=0, description="rounds of `outward_neighbours` after the grid; 0: none"
    )
    resume: bool = Field(
        False, description="keep the rows of an earlier run's tuning.csv in `out`; run the rest"
    )
    device: str = "auto"
    progress: bool = True


def grid_points(method: str, grids: dict[str, dict[str, list]] = TUNING_GRIDS) -> list[dict]:
    """Every configuration of `method`'s grid, in grid order."""
    if method not in grids:
        raise ValueError(f"methods: no tuning grid for {method!r}; grids: {sorted(grids)}")
    grid = grids[method]
    return [dict(zip(grid, values, strict=True)) for values in itertools.product(*grid.values())]


def outward_neighbours(
    winner: dict, evaluated: list[dict], below: dict[str, float] | None = None
) -> list[dict]:
    """The winner's neighbours one `LADDERS` step beyond the edge of what was evaluated.

    A winner at the smallest learning rate tried says only that the best one may be smaller; so
    on every field where the winner sits at an edge of the evaluated values, the next ladder value
    beyond it is tried, alone and together with the other fields' (a winner at the largest lr and
    the most epochs gets three new points). A field with one value is at both edges. Nothing new
    once the winner is inside on every field, or its ladder has ended. `below` bounds a field
    from above (exclusive): no more epochs over the retained data than retraining takes."""
    choices = {}
    for field, value in winner.items():
        seen = [point[field] for point in evaluated]
        ladder = LADDERS.get(field, [])
        options = [value]
        if value <= min(seen):
            options += [v for v in ladder if v < value][-1:]
        if value >= max(seen):
            bound = (below or {}).get(field, float("inf"))
            options += [v for v in ladder if value < v < bound][:1]
        choices[field] = options
    points = [
        dict(zip(choices, values, strict=True)) for values in itertools.product(*choices.values())
    ]
    return [point for point in points if point not in evaluated]


def measurer(config: TuningConfig, scenario_name: str, seed: int, dataset):
    """Train one original and one retrain; return `measure(method, fields)`: that method's gaps
    to the retrain, run from that original."""
    from uib.scenarios import ScenarioConfig, build_scenario

    scenario = build_scenario(dataset, ScenarioConfig(name=scenario_name, seed=seed))
    retain, forget = scenario.split()
    validation, test = split_validation(scenario.dataset.test)
    recipe = TrainConfig.for_dataset(dataset.name, seed=seed)
    torch.manual_seed(seed)
    original = build_model(
        default_arch(dataset.image_shape), dataset.image_shape, dataset.num_classes
    )
    train_model(original, scenario.dataset.train, recipe, config.device, progress=False)

    def run(method: str, fields: dict | None) -> dict:
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            method,
            fields,
            train_config=recipe,
            validation=validation,
            device=config.device,
            seed=seed,
            progress=False,
        )
        metrics = evaluate(model, retain, forget, test, scenario.config, seed=seed).model_dump()
        return {**metrics, "time_s": report.time_s}

    reference = run("retrain", None)

    def measure(method: str, fields: dict) -> dict:
        measured = run(method, fields)
        return {
            "avg_gap": avg_gap(measured, reference),
            "slice_gap": slice_gap(measured, reference),
            "time_ratio": measured["time_s"] / reference["time_s"],
        }

    return measure


def best_configs(results: pd.DataFrame) -> pd.DataFrame:
    """Per method, the configuration `RULE` picks, with its mean avg_gap."""
    means = (
        results.groupby(["method", "config"], sort=False)["avg_gap"]
        .mean()
        .reset_index()
        .rename(columns={"avg_gap": "mean_avg_gap"})
    )
    best = means.loc[means.groupby("method", sort=False)["mean_avg_gap"].idxmin()]
    return best.reset_index(drop=True)


def config_text(fields: dict) -> str:
    """A configuration as `tuning.csv` stores it."""
    return json.dumps(fields, sort_keys=True)


ROW_KEY = ("method", "config", "scenario", "seed")
"""What makes a row of `tuning.csv` one measurement."""


def row_key(row: dict) -> tuple[str, str, str, int]:
    return row["method"], row["config"], row["scenario"], int(row["seed"])


def earlier_rows(path: Path, dataset: str) -> list[dict]:
    """The rows of an earlier run's tuning.csv, refused if they tuned another data set."""
    if not path.exists():
        return []
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"--resume: {path} is no tuning.csv ({error})") from None
    missing = sorted({"dataset", "avg_gap", *ROW_KEY} - set(table))
    if missing:
        raise ValueError(f"--resume: {path} has no {missing} column; it cannot be resumed")
    others = sorted(set(table["dataset"]) - {dataset})
    if others:
        raise ValueError(f"--resume: {path} tuned {others}, this run tunes {dataset!r}")
    return table.to_dict("records")


def run_tuning(config: TuningConfig, out: Path | str) -> pd.DataFrame:
    """Tune every method on its grid, then grow each grid where its winner sits at an edge
    (`outward_neighbours`, up to `grow_rounds` times). Writes `tuning.csv` (every point, seed and
    scenario, with the round that added it) after each point and `best.json` after each round;
    returns the winners, with `open_edge` where the rounds ran out before the winner was inside."""
    from uib.data import load_dataset

    for name in config.methods:
        for fields in grid_points(name, config.grids):
            methods.get(name).config_cls.model_validate(fields)
    dataset = load_dataset(config.dataset, config.data_dir)
    seeds = config.seeds if config.seeds is not None else TUNING_SEEDS.get(dataset.name, [0])
    jobs = [(s, seed) for s in config.scenarios for seed in seeds]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = earlier_rows(out / "tuning.csv", dataset.name) if config.resume else []
    points = {name: grid_points(name, config.grids) for name in config.methods}
    below = {"epochs": TrainConfig.for_dataset(dataset.name).epochs}
    measurers: dict[tuple, Callable[[str, dict], dict]] = {}
    for round_ in range(config.grow_rounds + 1):
        wanted = [
            (name, config_text(fields), *job)
            for job in jobs
            for name in config.methods
            for fields in points[name]
        ]
        done = {row_key(r) for r in rows}
        todo = [k for k in wanted if k not in done]
        for name, text, scenario, seed in tqdm(
            todo, desc=f"tune, round {round_}", disable=not config.progress
        ):
            job = (scenario, seed)
            if job not in measurers:
                measurers[job] = measurer(config, *job, dataset)
            rows.append(
                {
                    "dataset": dataset.name,
                    "method": name,
                    "config": text,
                    "scenario": scenario,
                    "seed": seed,
                    **measurers[job](name, json.loads(text)),
                    "round": round_,
                }
            )
            pd.DataFrame(rows).to_csv(out / "tuning.csv", index=False)
        ours = set(wanted)  # a resumed file may hold other methods, points, scenarios or seeds
        best = best_configs(pd.DataFrame([r for r in rows if row_key(r) in ours]))
        grown = {
            r.method: outward_neighbours(json.loads(r.config), points[r.method], below)
            for r in best.itertuples()
        }
        best["open_edge"] = [bool(grown[name]) for name in best["method"]]
        write_best(out, config, seeds, best)
        if not any(grown.values()):
            break
        for name, new in grown.items():
            points[name] += new
    return best


def write_best(out: Path, config: TuningConfig, seeds: list[int], best: pd.DataFrame) -> None:
    (out / "best.json").write_text(
        json.dumps(
            {
                "rule": RULE,
                "dataset": config.dataset,
                "seeds": seeds,
                "scenarios": config.scenarios,
                "best": {r.method: json.loads(r.config) for r in best.itertuples()},
                "open_edge": sorted(best.loc[best["open_edge"], "method"]),
            },
            indent=2,
        )
    )
