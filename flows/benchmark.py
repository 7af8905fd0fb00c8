"""The `benchmark` flow: `uib.benchmark` as a Prefect flow, every run logged to MLflow."""

from __future__ import annotations

import math
from pathlib import Path

import mlflow
import pandas as pd
from prefect import flow, get_run_logger

from tasks.plots import gap_against_time
from tasks.registry import client_for
from tasks.request_run import log_figures
from tasks.settings import Settings
from uib.benchmark import BenchmarkConfig, run_benchmark


def log_results(results: pd.DataFrame, config: BenchmarkConfig, out: Path) -> str:
    """One parent run per benchmark, one nested run per (method, seed); tables and plot."""
    with mlflow.start_run(run_name=f"benchmark {config.dataset}/{config.scenario}") as parent:
        mlflow.log_params({k: v for k, v in config.model_dump().items() if k != "method_configs"})
        for row in results.to_dict("records"):
            with mlflow.start_run(run_name=f"{row['method']} seed {row['seed']}", nested=True):
                mlflow.set_tags({"method": row["method"], "seed": row["seed"]})
                mlflow.log_metrics(
                    {
                        k: float(v)
                        for k, v in row.items()
                        if k not in ("method", "seed") and isinstance(v, float) and math.isfinite(v)
                    }
                )
        mlflow.log_artifact(str(out / "results.csv"))
        mlflow.log_artifact(str(out / "results.md"))
        log_figures(
            {
                "avg_gap_vs_time_ratio": gap_against_time(
                    results, f"{config.dataset} / {config.scenario}"
                )
            }
        )
        return parent.info.run_id


@flow(name="benchmark", log_prints=True)
def benchmark_flow(config: dict, out: str = "runs/benchmark", settings: dict | None = None) -> dict:
    """Run the benchmark protocol of EVALUATION.md and log it to the configured MLflow store."""
    settings = Settings(**(settings or {}))
    config = BenchmarkConfig(**{**config, "progress": False})
    results = run_benchmark(config, out)
    client_for(settings)
    run_id = log_results(results, config, Path(out))
    get_run_logger().info("benchmark logged to MLflow run %s", run_id)
    return {"run_id": run_id, "rows": len(results), "out": out}
