"""The library's commands of the `uib` command line: benchmark, report, micro-benchmarks, the
method registry. `flows.cli` merges them into its top level."""

from __future__ import annotations

from pathlib import Path

import typer

from tasks.quiet import quiet_prefect

library_app = typer.Typer()


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@library_app.command()
def benchmark(
    dataset: str = typer.Option(
        "digits", help="digits | mnist | idx:DIR | folder:DIR | arrays:FILE"
    ),
    data_dir: Path | None = typer.Option(None, help="directory of the IDX files (mnist)"),
    scenario: str = typer.Option(
        "patch-bias", help="patch-bias | corruption | class | random | class-sample"
    ),
    counts: str | None = typer.Option(
        None, help="random / class-sample: comma-separated forget-set sizes, e.g. 1,2,10,100"
    ),
    methods: str = typer.Option(
        "retrain,finetune,influence,uib", help="comma-separated registry names, or `all`"
    ),
    seeds: int = typer.Option(3, min=1, help="how many seeds"),
    first_seed: int = typer.Option(
        0, min=0, help="seeds first_seed..first_seed+N-1 (leave tuning seeds out)"
    ),
    fraction: float = typer.Option(0.1, help="scenario fraction"),
    corruption: str = typer.Option("fog", help="corruption kind (corruption scenario)"),
    epochs: int | None = typer.Option(None, help="override the recipe's epochs (not for reports)"),
    arch: str | None = typer.Option(
        None, help="mlp | cnn | resnet18 (default: the data set's: mlp for 8×8 digits, else cnn)"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    out: Path = typer.Option(Path("runs/benchmark"), help="output directory"),
    set_: list[str] = typer.Option(
        [], "--set", help="a method's config field: METHOD.FIELD=VALUE (repeatable)"
    ),
    mlflow: bool = typer.Option(
        False, "--mlflow", help="run as the Prefect `benchmark` flow, logged to MLflow"
    ),
    noise_floor: bool = typer.Option(
        False, "--noise-floor", help="add `retrain-reseeded`: a second retrain from another init"
    ),
    recipe: Path | None = typer.Option(
        None, "--recipe", help="YAML of the training recipe (as for `uib adopt`)"
    ),
    tuned: bool = typer.Option(
        True,
        "--tuned/--untuned",
        help="baselines with the configuration tuned on this data set (`uib tune`), or the "
        "registry's defaults",
    ),
) -> None:
    """Train the original once per seed, run each method from it, write results.csv and results.md."""
    from uib.benchmark import BenchmarkConfig, run_benchmark
    from uib.samples import DataError
    from uib.train import read_recipe

    try:
        config = BenchmarkConfig(
            recipe=read_recipe(recipe) if recipe else None,
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            scenario=scenario,
            methods=method_names(methods),
            seeds=list(range(first_seed, first_seed + seeds)),
            fraction=fraction,
            corruption=corruption,
            epochs=epochs,
            arch=arch,
            device=device,
            counts=parse_counts(counts),
            method_configs=method_overrides(set_),
            noise_floor=noise_floor,
            tuned=tuned,
        )
        if mlflow:
            quiet_prefect()
            from flows.benchmark import benchmark_flow

            benchmark_flow(config.model_dump(), str(out))
        else:
            run_benchmark(config, out)
    except (DataError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo((out / "results.md").read_text())
    typer.echo(f"wrote {out / 'results.csv'}")


def parse_counts(value: str | None, option: str = "--counts") -> list[int] | None:
    """`--counts 1,2,10` → [1, 2, 10]; a value that is no whole number is refused by name."""
    if not value:
        return None
    try:
        return [int(c) for c in csv_list(value)]
    except ValueError:
        raise ValueError(f"{option} {value!r}: expected comma-separated whole numbers") from None


def method_names(value: str) -> list[str]:
    from uib import methods as registry

    return registry.available() if value.strip() == "all" else csv_list(value)


def method_overrides(assignments: list[str]) -> dict[str, dict]:
    """`uib.retain_sample=2000` → {"uib": {"retain_sample": "2000"}}; the method's config parses
    the value. `none` sets a field that may be None (`uib.stop_at_gap=none`)."""
    configs: dict[str, dict] = {}
    for assignment in assignments:
        target, sep, value = assignment.partition("=")
        method, dot, field = target.partition(".")
        if not (sep and dot and method and field):
            raise ValueError(f"--set {assignment!r}: expected METHOD.FIELD=VALUE")
        configs.setdefault(method, {})[field] = None if value.strip().lower() == "none" else value
    return configs


@library_app.command()
def tune(
    methods: str = typer.Option(
        "all", help="comma-separated baselines with a tuning grid, or `all`"
    ),
    dataset: str = typer.Option(
        "digits", help="digits | mnist | idx:DIR | folder:DIR | arrays:FILE"
    ),
    data_dir: Path | None = typer.Option(None, help="directory of the IDX files (mnist)"),
    seeds: str | None = typer.Option(
        None, help="comma-separated tuning seeds; default: the data set's (digits 0,1,2; mnist 0)"
    ),
    scenarios: str = typer.Option(
        "patch-bias,class,random,corruption", help="comma-separated scenarios to tune on"
    ),
    grow_rounds: int | None = typer.Option(
        None,
        min=0,
        help="rounds that grow a grid one step beyond a winner at its edge; 0: the grid alone "
        "(default: uib.tuning.GROW_ROUNDS)",
    ),
    resume: bool = typer.Option(
        False, "--resume", help="keep the points an earlier run wrote to OUT/tuning.csv"
    ),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    out: Path = typer.Option(Path("runs/tuning"), help="output directory"),
) -> None:
    """Tune the baselines as UIB was tuned: each method's grid on the tuning seeds and scenarios,
    the lowest mean avg_gap wins, and a grid grows where its winner sits at an edge; writes
    tuning.csv and best.json."""
    from uib.samples import DataError
    from uib.tuning import TUNING_GRIDS, TuningConfig, run_tuning

    try:
        names = list(TUNING_GRIDS) if methods.strip() == "all" else csv_list(methods)
        config = TuningConfig(
            methods=names,
            dataset=dataset,
            data_dir=str(data_dir) if data_dir else None,
            seeds=parse_counts(seeds, "--seeds"),
            scenarios=csv_list(scenarios),
            resume=resume,
            device=device,
            **({} if grow_rounds is None else {"grow_rounds": grow_rounds}),
        )
        best = run_tuning(config, out)
    except (DataError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo(best.to_markdown(index=False, floatfmt=".3f"))
    typer.echo(f"wrote {out / 'best.json'}")


@library_app.command()
def report(
    runs: list[Path] = typer.Argument(..., help="benchmark output folders (with results.csv)"),
    figures: Path | None = typer.Option(None, help="write gap-vs-time-<folder>.png here"),
) -> None:
    """Re-tabulate benchmark results (mean ± std per method) and redraw their plots."""
    import pandas as pd

    from uib.benchmark import small_request_table, summarise

    for run in runs:
        results = pd.read_csv(run / "results.csv")
        seeds = sorted(results["seed"].unique().tolist())
        typer.echo(f"## {run.name} (seeds {seeds})\n\n{summarise(results)}")
        if "forget_size" in results and results["forget_size"].nunique() > 1:
            typer.echo(f"\nAgainst the original of each seed:\n\n{small_request_table(results)}")
        if figures:
            from tasks.plots import gap_against_time

            figures.mkdir(parents=True, exist_ok=True)
            gap_against_time(results, run.name).savefig(
                figures / f"gap-vs-time-{run.name}.png", dpi=110
            )


@library_app.command()
def microbench(
    what: str = typer.Argument(..., help="grads | memory | scaling"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    data_dir: Path | None = typer.Option(
        None, help="directory of the MNIST IDX files (memory, scaling)"
    ),
    out: Path | None = typer.Option(None, help="also write the table as CSV here"),
) -> None:
    """Per-sample-gradient speed, UIB's peak memory, or UIB's cost against forget and retain size."""
    from uib import microbench as bench

    folder = str(data_dir) if data_dir else None
    runs = {
        "grads": lambda: bench.gradient_speed(device=device),
        "memory": lambda: bench.memory_scaling(data_dir=folder, device=device),
        "scaling": lambda: bench.cost_scaling(data_dir=folder, device=device),
    }
    if what not in runs:
        typer.echo(f"error: what: expected one of {sorted(runs)}, got {what!r}", err=True)
        raise typer.Exit(2)
    table = runs[what]()
    typer.echo(table.to_markdown(index=False, floatfmt=".3f"))
    if out:
        table.to_csv(out, index=False)


@library_app.command("methods")
def list_methods() -> None:
    """List the unlearning methods in the registry."""
    from uib import methods as registry

    for name in registry.available():
        typer.echo(f"{name:14s} {registry.get(name).summary}")
