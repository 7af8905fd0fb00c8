"""Baselines tuned as UIB was: the grid search picks by its rule, and the registry's defaults are
what the recorded tuning picked."""

import json
from pathlib import Path

import pandas as pd
import pytest

from uib import methods
from uib.benchmark import BenchmarkConfig
from uib.tuning import (
    TUNED_ON,
    TUNING_GRIDS,
    TuningConfig,
    grid_points,
    outward_neighbours,
    run_tuning,
)

RESULTS = Path(__file__).parents[2] / "docs" / "results"
RECORDED = RESULTS / "tuning-digits" / "best.json"


def finetune_on_one_run(grids: dict, grow_rounds: int) -> TuningConfig:
    """finetune's `grids` on digits patch-bias, seed 0: one original and one retrain."""
    return TuningConfig(
        methods=["finetune"],
        grids=grids,
        scenarios=["patch-bias"],
        seeds=[0],
        grow_rounds=grow_rounds,
        progress=False,
    )


def test_a_tuning_run_keeps_the_configuration_with_the_lowest_mean_avg_gap(tmp_path):
    grids = {"finetune": {"lr": [1e-4, 3e-3], "epochs": [1, 3]}}
    config = finetune_on_one_run(grids, grow_rounds=0)
    best = run_tuning(config, tmp_path)
    table = pd.read_csv(tmp_path / "tuning.csv")
    assert len(table) == len(grid_points("finetune", grids)) == 4
    assert table["avg_gap"].nunique() > 1
    winner = table.loc[table["avg_gap"].idxmin()]
    assert best.loc[0, "config"] == winner["config"]
    stored = json.loads((tmp_path / "best.json").read_text())
    assert stored["best"]["finetune"] == json.loads(winner["config"])


def test_a_grid_grows_one_ladder_step_beyond_each_edge_its_winner_sits_on():
    grid = grid_points("finetune", {"finetune": {"lr": [1e-4, 3e-3], "epochs": [1, 5]}})
    assert outward_neighbours({"lr": 3e-3, "epochs": 5}, grid) == [
        {"lr": 3e-3, "epochs": 10},
        {"lr": 1e-2, "epochs": 5},
        {"lr": 1e-2, "epochs": 10},
    ]
    assert outward_neighbours({"lr": 1e-4, "epochs": 5}, grid) == [
        {"lr": 1e-4, "epochs": 10},
        {"lr": 3e-5, "epochs": 5},
        {"lr": 3e-5, "epochs": 10},
    ]
    assert outward_neighbours({"lr": 1e-4, "epochs": 1}, grid) == [{"lr": 3e-5, "epochs": 1}]
    retrain_epochs = {"epochs": 10}  # no more passes over S_r than retraining makes
    assert outward_neighbours({"lr": 3e-3, "epochs": 5}, grid, retrain_epochs) == [
        {"lr": 1e-2, "epochs": 5}
    ]
    inside = grid_points("finetune", {"finetune": {"lr": [1e-4, 3e-4, 1e-3], "epochs": [1, 2, 5]}})
    assert outward_neighbours({"lr": 3e-4, "epochs": 2}, inside) == []
    ssd = grid_points("ssd", {"ssd": {"selection": [1.0, 50.0], "dampening": [10.0]}})
    assert outward_neighbours({"selection": 50.0, "dampening": 10.0}, ssd) == [
        {"selection": 50.0, "dampening": 3.0},
        {"selection": 50.0, "dampening": 30.0},
        {"selection": 100.0, "dampening": 10.0},
        {"selection": 100.0, "dampening": 3.0},
        {"selection": 100.0, "dampening": 30.0},
    ]


def test_a_tuning_run_grows_its_grid_and_a_resumed_run_keeps_every_point_it_finds(tmp_path):
    grids = {"finetune": {"lr": [1e-3], "epochs": [1]}}
    config = finetune_on_one_run(grids, grow_rounds=1)
    run_tuning(config, tmp_path)
    table = pd.read_csv(tmp_path / "tuning.csv")
    grown = [json.loads(c) for c in table.loc[table["round"] == 1, "config"]]
    point = {"epochs": 1, "lr": 1e-3}
    assert grown == outward_neighbours(point, [point])
    assert len(grown) == 5
    winner = table.loc[table["avg_gap"].idxmin()]
    stored = json.loads((tmp_path / "best.json").read_text())
    assert stored["best"]["finetune"] == json.loads(winner["config"])
    assert stored["open_edge"] == (["finetune"] if winner["round"] == 1 else [])

    table.loc[0, "avg_gap"] = -1.0  # only a kept row can carry this into the resumed file
    table.to_csv(tmp_path / "tuning.csv", index=False)
    best = run_tuning(config.model_copy(update={"resume": True, "grow_rounds": 0}), tmp_path)
    resumed = pd.read_csv(tmp_path / "tuning.csv")
    pd.testing.assert_frame_equal(resumed, table)
    assert json.loads(best.loc[0, "config"]) == {"epochs": 1, "lr": 1e-3}
    assert best.loc[0, "mean_avg_gap"] == -1.0


def test_a_resumed_run_refuses_the_rows_of_another_data_set_by_name(tmp_path):
    recorded = pd.read_csv(RESULTS / "tuning-mnist" / "tuning.csv").head(3)
    recorded.to_csv(tmp_path / "tuning.csv", index=False)
    config = TuningConfig(methods=["finetune"], resume=True, progress=False)
    with pytest.raises(ValueError, match=r"tuned \['mnist'\], this run tunes 'digits'"):
        run_tuning(config, tmp_path)
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "tuning.csv"), recorded)
    recorded.drop(columns="seed").to_csv(tmp_path / "tuning.csv", index=False)
    with pytest.raises(ValueError, match=r"has no \['seed'\] column"):
        run_tuning(config, tmp_path)
    (tmp_path / "tuning.csv").write_text("")
    with pytest.raises(ValueError, match="is no tuning.csv"):
        run_tuning(config, tmp_path)


def test_the_registry_defaults_are_the_recorded_tuning_winners():
    recorded = json.loads(RECORDED.read_text())
    assert set(recorded["best"]) == set(TUNING_GRIDS)
    for name, fields in recorded["best"].items():
        defaults = methods.get(name).config_cls().model_dump()
        assert {k: defaults[k] for k in fields} == fields, name


def test_each_data_set_tuned_on_holds_its_recorded_winners():
    for name, winners in TUNED_ON.items():
        recorded = json.loads((RESULTS / f"tuning-{name}" / "best.json").read_text())
        assert recorded["dataset"] == name
        assert winners == recorded["best"], name


def test_a_benchmark_runs_a_baseline_with_its_data_sets_tuned_fields_under_the_set_ones(
    monkeypatch,
):
    monkeypatch.setitem(TUNED_ON, "colour", {"scrub": {"lr": 1e-4, "epochs": 5}})
    overridden = BenchmarkConfig(methods=["scrub"], method_configs={"scrub": {"epochs": 2}})
    assert overridden.config_of("scrub", "colour") == {"lr": 1e-4, "epochs": 2}
    assert overridden.config_of("scrub", "digits") == {"epochs": 2}
    assert BenchmarkConfig(methods=["scrub"]).config_of("finetune", "colour") == {}
    assert BenchmarkConfig(methods=["scrub"], tuned=False).config_of("scrub", "colour") == {}


def test_a_method_without_a_grid_or_a_grid_value_its_config_refuses_is_named(tmp_path):
    with pytest.raises(ValueError, match="no tuning grid for 'uib'"):
        run_tuning(TuningConfig(methods=["uib"], progress=False), tmp_path)
    bad = {"finetune": {"lr": [-1.0]}}
    with pytest.raises(ValueError, match="lr"):
        run_tuning(TuningConfig(methods=["finetune"], grids=bad, progress=False), tmp_path)
    assert not (tmp_path / "tuning.csv").exists()


def test_tune_refuses_seeds_that_are_no_whole_numbers_by_name(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    result = CliRunner().invoke(app, ["tune", "--seeds", "0,a", "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "--seeds '0,a': expected comma-separated whole numbers" in result.output
    assert not (tmp_path / "tuning.csv").exists()
