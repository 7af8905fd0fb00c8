"""The `uib` command line. Heavy imports (Prefect, MLflow, GX) stay inside the commands that need them."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Machine unlearning with UIB: benchmark, train, delete, review.",
                  no_args_is_help=True, pretty_exceptions_enable=False)


def csv_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@app.command()
def benchmark(
    dataset: str = typer.Option("digits", help="digits | mnist | idx:DIR"),
    data_dir: Path | None = typer.Option(None, help="directory of the IDX files (mnist)"),
    scenario: str = typer.Option("patch-bias", help="patch-bias | corruption | class | random"),
    methods: str = typer.Option("retrain,finetune,influence,uib", help="comma-separated registry names"),
    seeds: int = typer.Option(3, min=1, help="seeds 0..N-1"),
    fraction: float = typer.Option(0.1, help="scenario fraction"),
    corruption: str = typer.Option("fog", help="corruption kind (corruption scenario)"),
    epochs: int | None = typer.Option(None, help="override the recipe's epochs (not for reports)"),
    device: str = typer.Option("auto", help="auto | cpu | cuda"),
    out: Path = typer.Option(Path("runs/benchmark"), help="output directory"),
) -> None:
    """Train the original once per seed, run each method from it, write results.csv and results.md."""
    from uib.benchmark import BenchmarkConfig, run_benchmark
    from uib.samples import DataError

    try:
        config = BenchmarkConfig(
            dataset=dataset, data_dir=str(data_dir) if data_dir else None, scenario=scenario,
            methods=csv_list(methods), seeds=list(range(seeds)), fraction=fraction,
            corruption=corruption, epochs=epochs, device=device,
        )
        run_benchmark(config, out)
    except (DataError, ValueError) as error:
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(2) from error
    typer.echo((out / "results.md").read_text())
    typer.echo(f"wrote {out / 'results.csv'}")


@app.command("methods")
def list_methods() -> None:
    """List the unlearning methods in the registry."""
    from uib import methods as registry

    for name in registry.available():
        typer.echo(f"{name:14s} {registry.get(name).summary}")


if __name__ == "__main__":
    app()
