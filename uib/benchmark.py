"""The benchmark protocol of EVALUATION.md: one original per seed, every method from it.

Writes `results.csv` (one row per method and seed, plus `original`) and `results.md`
(mean ± std per method). Retrain runs first in every seed: it is the reference of
`time_ratio` and `avg_gap`. With `noise_floor`, a second retrain from another initialisation
and batch order (`retrain-reseeded`) measures how far two retrains land from each other: no
method can be expected closer to retrain than that.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

import uib
from uib import methods
from uib.metrics import METRIC_COLUMNS, avg_gap, evaluate, slice_gap
from uib.models import available as available_archs
from uib.models import build_model, default_arch
from uib.samples import split_validation
from uib.train import TrainConfig, train_model
from uib.tuning import tuned_config

COLUMNS = [
    "method",
    "seed",
    "forget_size",
    *METRIC_COLUMNS,
    "time_s",
    "time_ratio",
    "avg_gap",
    "slice_gap",
]
RESEED_OFFSET = 1000  # `retrain-reseeded`: the recipe's seed moved far from every benchmark seed


class BenchmarkConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    dataset: str = "digits"
    data_dir: str | None = None
    scenario: str = "patch-bias"
    fraction: float = 0.1
    target_class: int = 0
    corruption: str = "fog"
    counts: list[int] | None = Field(
        None,
        description="random / class-sample: forget sets of "
        "these sizes, all unlearned from the same original",
    )
    methods: list[str] = Field(default_factory=lambda: ["retrain", "finetune", "influence", "uib"])
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2])
    arch: str | None = Field(
        None, description="the model's architecture (`uib.models`); default: the data set's"
    )
    epochs: int | None = Field(None, description="override the recipe's epochs (never for reports)")
    recipe: TrainConfig | None = Field(
        None, description="the original's and retrain's recipe; default: the dataset's"
    )
    method_configs: dict[str, dict] = Field(default_factory=dict)
    tuned: bool = Field(
        True,
        description="baselines run with the configuration tuned on this data set's tuning seeds "
        "where one is recorded (`uib.tuning.TUNED_ON`); False: the registry's defaults",
    )
    noise_floor: bool = Field(
        False, description="add `retrain-reseeded`: retrain from another init"
    )
    device: str = "auto"

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, arch: str | None) -> str | None:
        if arch is not None and arch not in available_archs():
            raise ValueError(f"arch: unknown architecture {arch!r}; known: {available_archs()}")
        return arch

    def config_of(self, method: str, dataset_name: str) -> dict:
        """`method`'s fields: the data set's tuned ones (when `tuned`), then `method_configs`'."""
        tuned = tuned_config(method, dataset_name) if self.tuned else {}
        return {**tuned, **self.method_configs.get(method, {})}

    def recipe_for(self, dataset_name: str, seed: int) -> TrainConfig:
        """`recipe` (a team's, from `--recipe`) or the dataset's, with `epochs` and `seed` set."""
        base = self.recipe or TrainConfig.for_dataset(dataset_name)
        return base.model_copy(
            update={"seed": seed, **({"epochs": self.epochs} if self.epochs else {})}
        )

    progress: bool = True


def check_methods(names: list[str]) -> list[str]:
    for name in names:
        methods.get(name)
    return ["retrain", *[n for n in names if n != "retrain"]]


def scenarios_of(config: BenchmarkConfig, seed: int, dataset) -> list:
    """The seed's scenarios: one, or one per forget-set size of `counts` (these inject nothing,
    so they share the training data and the original)."""
    from uib.scenarios import ScenarioConfig, build_scenario

    base = {
        "name": config.scenario,
        "seed": seed,
        "fraction": config.fraction,
        "target_class": config.target_class,
        "corruption": config.corruption,
    }
    if config.counts is None:
        return [build_scenario(dataset, ScenarioConfig(**base))]
    if config.scenario not in ("random", "class-sample"):
        raise ValueError(
            f"counts: only for the random and class-sample scenarios, not {config.scenario!r}"
        )
    return [build_scenario(dataset, ScenarioConfig(**base, count=n)) for n in config.counts]


def run_seed(config: BenchmarkConfig, seed: int, dataset) -> list[dict]:
    scenarios = scenarios_of(config, seed, dataset)
    training = scenarios[0].dataset
    validation, test = split_validation(training.test)
    recipe = config.recipe_for(dataset.name, seed)
    torch.manual_seed(seed)
    arch = config.arch or default_arch(dataset.image_shape)
    original = build_model(arch, dataset.image_shape, dataset.num_classes)
    train_model(original, training.train, recipe, config.device, progress=config.progress)
    return [
        row
        for scenario in scenarios
        for row in run_scenario(config, scenario, original, recipe, validation, test)
    ]


def run_scenario(
    config: BenchmarkConfig, scenario, original, recipe: TrainConfig, validation, test
) -> list[dict]:
    """Every method on one forget set from `original`, retrain first."""
    seed = scenario.config.seed
    retain, forget = scenario.split()

    def measure(model) -> dict:
        return {
            "forget_size": len(forget),
            **evaluate(model, retain, forget, test, scenario.config, seed=seed).model_dump(),
        }

    rows = [{"method": "original", "seed": seed, **measure(original)}]
    for name in check_methods(config.methods):
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            name,
            config.config_of(name, scenario.dataset.name),
            train_config=recipe,
            validation=validation,
            device=config.device,
            seed=seed,
            progress=config.progress,
        )
        rows.append({"method": name, "seed": seed, **measure(model), "time_s": report.time_s})
    if config.noise_floor:
        reseeded = recipe.model_copy(update={"seed": recipe.seed + RESEED_OFFSET})
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            "retrain",
            train_config=reseeded,
            device=config.device,
            seed=seed,
            progress=config.progress,
        )
        rows.append(
            {"method": "retrain-reseeded", "seed": seed, **measure(model), "time_s": report.time_s}
        )
    reference = next(r for r in rows if r["method"] == "retrain")
    for row in rows:
        row["avg_gap"] = avg_gap(row, reference)
        row["slice_gap"] = slice_gap(row, reference)
        if "time_s" in row:
            row["time_ratio"] = row["time_s"] / reference["time_s"]
    return rows


def summarise(results: pd.DataFrame) -> str:
    """Mean ± std per method over seeds, as a Markdown table (metrics as fractions, gap in pp);
    one row per forget-set size and method when the results hold several sizes."""
    sizes = "forget_size" in results and results["forget_size"].nunique() > 1
    keys = ["forget_size", "method"] if sizes else ["method"]
    numeric = [
        c
        for c in COLUMNS
        if c not in ("method", "seed", "forget_size") and c in results and results[c].notna().any()
    ]
    lines = ["| " + " | ".join(keys + numeric) + " |", "|---" * (len(keys) + len(numeric)) + "|"]
    for key, group in results.groupby(keys, sort=False):
        cells = [str(k) for k in (key if isinstance(key, tuple) else (key,))]
        for col in numeric:
            values = group[col].dropna()
            cells.append("" if values.empty else f"{values.mean():.3f} ± {values.std(ddof=0):.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def small_request_table(results: pd.DataFrame) -> str:
    """Per forget-set size and method: TA and RA against the original of the same seed (pp),
    the forget set's accuracy and loss rank among test losses, time_ratio and avg_gap, as
    Markdown (mean ± std over seeds)."""
    original = results[results["method"] == "original"].set_index(["seed", "forget_size"])
    lines = [
        "| ids | method | ΔTA (pp) | ΔRA (pp) | forget acc | forget loss rank | MIA-Eff. "
        "| time_ratio | avg_gap (pp) |",
        "|---" * 9 + "|",
    ]

    def cell(values, scale=1.0, sign=""):
        values = pd.Series(values, dtype=float) * scale
        return f"{values.mean():{sign}.3f} ± {values.std(ddof=0):.3f}"

    for (size, method), group in results[results["method"] != "original"].groupby(
        ["forget_size", "method"], sort=False
    ):
        base = original.loc[list(zip(group["seed"], group["forget_size"], strict=True))]
        lines.append(
            "| "
            + " | ".join(
                [
                    str(size),
                    method,
                    cell(group["TA"].values - base["TA"].values, 100, "+"),
                    cell(group["RA"].values - base["RA"].values, 100, "+"),
                    cell(1 - group["UA"]),
                    cell(group["forget_loss_rank"]),
                    cell(group["mia_efficacy"]),
                    cell(group["time_ratio"]),
                    cell(group["avg_gap"]),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_benchmark(config: BenchmarkConfig, out: Path | str) -> pd.DataFrame:
    from uib.data import load_dataset

    check_methods(config.methods)
    for name, fields in config.method_configs.items():
        if name not in config.methods:
            raise ValueError(f"method_configs names {name!r}, which is not among the methods run")
        methods.get(name).config_cls.model_validate(fields)
    dataset = load_dataset(config.dataset, config.data_dir)
    rows = [row for seed in config.seeds for row in run_seed(config, seed, dataset)]
    results = pd.DataFrame(rows).reindex(columns=COLUMNS)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results.to_csv(out / "results.csv", index=False)
    configured = {
        n: fields for n in config.methods if (fields := config.config_of(n, dataset.name))
    }
    header = (
        f"# {config.dataset} / {config.scenario}: seeds {config.seeds}\n\n"
        f"Model: {config.arch or default_arch(dataset.image_shape)}. "
        f"Recipe: {config.recipe_for(dataset.name, seed=0).model_dump(exclude={'seed'})}; "
        f"device {config.device}.\n\nConfigured (all else the registry's defaults): "
        f"{configured or 'nothing'}.\n\n"
    )
    (out / "results.md").write_text(header + summarise(results))
    return results
