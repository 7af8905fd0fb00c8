"""The benchmark entry point writes the CSV and the Markdown table the issue names."""

import math

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app
from uib.benchmark import COLUMNS


def test_benchmark_cli_writes_results_with_retrain_and_uib_rows(tmp_path):
    result = CliRunner().invoke(app, [
        "benchmark", "--dataset", "digits", "--scenario", "patch-bias", "--methods", "uib,finetune",
        "--seeds", "1", "--epochs", "5", "--out", str(tmp_path),
    ])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == COLUMNS
    assert set(table.method) == {"original", "retrain", "uib", "finetune"}
    for method in ("retrain", "uib"):
        row = table[table.method == method].iloc[0]
        for col in ("UA", "RA", "TA", "test_f1", "mia_efficacy", "bias_asr", "time_s", "time_ratio", "avg_gap"):
            assert math.isfinite(row[col]), (method, col)
        for col in ("UA", "RA", "TA", "test_f1", "mia_efficacy", "bias_asr"):
            assert 0.0 <= row[col] <= 1.0
    assert table[table.method == "retrain"].avg_gap.iloc[0] == 0.0
    assert table.corrupt_acc.isna().all()
    assert "| uib |" in (tmp_path / "results.md").read_text()


def test_benchmark_cli_names_an_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--methods", "uib,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output
