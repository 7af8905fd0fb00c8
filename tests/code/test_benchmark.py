"""The benchmark entry point writes the CSV and the Markdown table the issue names."""

import math

import pandas as pd
from typer.testing import CliRunner

from flows.cli import app
from uib.benchmark import COLUMNS


def test_benchmark_cli_writes_results_with_retrain_and_uib_rows(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            "digits",
            "--scenario",
            "patch-bias",
            "--methods",
            "uib,finetune",
            "--seeds",
            "1",
            "--epochs",
            "5",
            "--set",
            "finetune.epochs=1",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "results.csv")
    assert list(table.columns) == COLUMNS
    assert set(table.method) == {"original", "retrain", "uib", "finetune"}
    for method in ("retrain", "uib"):
        row = table[table.method == method].iloc[0]
        for col in (
            "UA",
            "RA",
            "TA",
            "test_f1",
            "mia_efficacy",
            "bias_asr",
            "time_s",
            "time_ratio",
            "avg_gap",
        ):
            assert math.isfinite(row[col]), (method, col)
        for col in ("UA", "RA", "TA", "test_f1", "mia_efficacy", "bias_asr"):
            assert 0.0 <= row[col] <= 1.0
    assert table[table.method == "retrain"].avg_gap.iloc[0] == 0.0
    assert table.corrupt_acc.isna().all()
    summary = (tmp_path / "results.md").read_text()
    assert "| uib |" in summary
    assert "Model: mlp." in summary
    assert "Configured (all else the registry's defaults): {'finetune': {'epochs': '1'}}" in summary


def test_the_noise_floor_is_a_second_retrain_from_another_init(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            "digits",
            "--scenario",
            "class",
            "--methods",
            "retrain",
            "--seeds",
            "1",
            "--epochs",
            "5",
            "--noise-floor",
            "--arch",
            "cnn",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Model: cnn." in (tmp_path / "results.md").read_text()  # digits' own default: mlp
    table = pd.read_csv(tmp_path / "results.csv").set_index("method")
    assert list(table.index) == ["original", "retrain", "retrain-reseeded"]
    reseeded = table.loc["retrain-reseeded"]
    assert reseeded.avg_gap > 0 and math.isfinite(reseeded.time_ratio)
    assert reseeded.UA > 0.9  # a retrain never saw the class either


def test_all_names_every_registered_method():
    from flows.cli_library import method_names
    from uib import methods

    assert method_names("all") == methods.available() and "uib+salun" in method_names("all")
    assert method_names("uib, retrain") == ["uib", "retrain"]


def test_set_none_clears_a_field_that_may_be_none():
    from flows.cli_library import method_overrides
    from uib import methods

    configs = method_overrides(["uib.stop_at_gap=None", "uib.reset_signal=none"])
    config = methods.get("uib").config_cls.model_validate(configs["uib"])
    assert config.stop_at_gap is None and config.reset_signal is None
    defaults = methods.get("uib").config_cls()
    assert defaults.stop_at_gap is not None and defaults.reset_signal is not None


def test_benchmark_cli_names_an_unknown_method(tmp_path):
    result = CliRunner().invoke(app, ["benchmark", "--methods", "uib,nope", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "nope" in result.output


def test_benchmark_cli_takes_seeds_and_method_settings(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            "digits",
            "--methods",
            "uib",
            "--seeds",
            "1",
            "--first-seed",
            "3",
            "--epochs",
            "3",
            "--set",
            "uib.retain_sample=200",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    assert set(pd.read_csv(tmp_path / "results.csv").seed) == {3}
    report = CliRunner().invoke(app, ["report", str(tmp_path), "--figures", str(tmp_path)])
    assert report.exit_code == 0 and "seeds [3]" in report.output
    assert (tmp_path / f"gap-vs-time-{tmp_path.name}.png").stat().st_size > 0
    for bad, named in (
        (["--set", "uib.retain_samples=5"], "retain_samples"),
        (["--set", "uib=5"], "METHOD.FIELD=VALUE"),
        (["--set", "scrub.alpha=1"], "scrub"),
        (["--arch", "vgg16"], "vgg16"),
    ):
        refused = CliRunner().invoke(
            app, ["benchmark", "--methods", "uib", *bad, "--out", str(tmp_path / "bad")]
        )
        assert refused.exit_code == 2 and named in refused.output, refused.output


def test_gradient_micro_benchmark_reports_every_path_and_chunk_size():
    from uib.microbench import gradient_speed

    table = gradient_speed(rows=8, chunk_sizes=(2, 4), repeats=1, device="cpu")
    assert table.method.tolist() == [
        "autograd loop",
        *["torch.func vmap"] * 2,
        *["factored (layer hooks)"] * 2,
    ]
    assert table.chunk_size.tolist() == [1, 2, 4, 2, 4]
    assert (table.ms_per_sample > 0).all() and table.speedup.iloc[0] == 1.0


def test_cost_scaling_covers_every_forget_fraction_and_retain_sample():
    from uib.microbench import cost_scaling

    table = cost_scaling(
        "digits", forget_fractions=(0.05,), retain_samples=(100, 400), device="cpu"
    )
    small, large = sorted(table.n_forget.unique())
    assert table[table.n_forget == small].retain_sample.tolist() == [1000]
    assert table[table.n_forget == large].retain_sample.tolist() == [100, 400]
    fractions = sorted(table.forget_fraction.unique())
    assert abs(fractions[0] - 0.05) < 0.01 and abs(fractions[1] - 0.10) < 0.01
    assert (table.time_ratio > 0).all() and table.avg_gap.notna().all()
    assert {"curvature_s", "eta_search_s", "passes"} <= set(table.columns)


def test_memory_scaling_measures_every_retain_size_and_chunk():
    from uib.microbench import memory_scaling

    table = memory_scaling(
        "digits", retain_sizes=(200, 1000), chunk_sizes=(8, 64), device="cpu", repeats=2
    )
    assert table[["n_retain", "chunk_size"]].values.tolist() == [
        [200, 8],
        [1000, 8],
        [200, 64],
        [1000, 64],
    ]
    assert (table.peak_mb >= 0).all() and (table.max_mb >= table.peak_mb).all()


def test_benchmark_cli_refuses_counts_that_are_no_numbers_or_no_count_scenario(tmp_path):
    for args, named in (
        (["--scenario", "random", "--counts", "1,x"], "--counts"),
        (["--scenario", "patch-bias", "--counts", "3"], "counts"),
    ):
        refused = CliRunner().invoke(app, ["benchmark", *args, "--out", str(tmp_path)])
        assert refused.exit_code == 2 and named in refused.output, refused.output
        assert not (tmp_path / "results.csv").exists()


def test_counts_unlearn_every_size_from_one_original_and_report_against_it(tmp_path):
    result = CliRunner().invoke(
        app,
        [
            "benchmark",
            "--dataset",
            "digits",
            "--scenario",
            "random",
            "--counts",
            "1,10",
            "--methods",
            "uib",
            "--seeds",
            "1",
            "--epochs",
            "3",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "results.csv")
    assert sorted(table.forget_size.unique()) == [1, 10]
    originals = table[table.method == "original"]
    assert len(originals) == 2 and originals.TA.nunique() == 1  # one original for both sizes
    report = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert report.exit_code == 0 and "Against the original of each seed" in report.output
    assert "| 10 | uib |" in report.output
