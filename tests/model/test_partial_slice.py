"""Part of a systematic source (digits / patch-bias): `source=faulty, original_label=L`.

The rest of the faulty source stays in the retain set and still teaches the patch, so retrain
keeps the pattern; UIB must see those siblings in the retain set (no retrained model informs
it), treat the slice as scattered among them, pass the pipeline's gates and land near retrain.
A small faulty source forgotten whole has no siblings and stays systematic.
"""

import numpy as np
import pytest
import torch
from test_unlearning import trained_original
from unlearning_runs import retrain_and_uib

import uib
from tasks.evaluation import evaluate_candidate
from tasks.settings import GateConfig
from uib.metrics import evaluate
from uib.models import build_model
from uib.scenarios import select_forget
from uib.train import predict_logits, train_model

SEED = 0


@pytest.fixture(scope="module")
def patch_bias(digits):
    scenario, _, _, validation, test, recipe, original = trained_original(
        digits, "patch-bias", SEED
    )
    return scenario, validation, test, recipe, original


def faulty_ids(manifest, labels):
    return np.concatenate(
        [
            select_forget(manifest, where={"source": "faulty", "original_label": label})
            for label in labels
        ]
    )


@pytest.mark.parametrize("labels", [[1], [1, 2]])
def test_a_partial_faulty_slice_is_scattered_among_its_siblings(patch_bias, labels):
    scenario, validation, test, recipe, original = patch_bias
    data = scenario.dataset
    retain, forget = data.train.split_off(faulty_ids(data.manifest, labels))
    runs = retrain_and_uib(original, forget, retain, recipe, validation, SEED)
    models = {method: model for method, (model, _) in runs.items()}
    regime = runs["uib"][1].notes["regime"]
    assert regime["kind"] == "scattered", regime
    assert regime["siblings"] >= len(forget) and "siblings" in regime["reason"], regime
    # not the whole patched source: the flow's patch_bias flag is off
    gates = evaluate_candidate.fn(
        original, models["uib"], retain, forget, test, scenario.config, GateConfig(), False
    )
    assert [g.name for g in gates.gates if not g.passed] == [], gates.gates
    ours, theirs = (
        evaluate(models[m], retain, forget, test, scenario.config) for m in ("uib", "retrain")
    )
    assert abs(ours.RA - theirs.RA) <= 0.01 and abs(ours.TA - theirs.TA) <= 0.02, (ours, theirs)
    assert ours.UA <= theirs.UA + 0.1, (ours, theirs)  # no over-forgetting
    predicted = {
        m: predict_logits(model, forget.x).argmax(1).numpy() for m, model in models.items()
    }
    assert np.mean(predicted["uib"] == predicted["retrain"]) >= 0.75, predicted


def test_a_small_faulty_source_forgotten_whole_stays_systematic(patch_bias, digits):
    """No siblings: the original learned the patch from digit 1's 14 faulty samples alone."""
    scenario, validation, test, recipe, _ = patch_bias
    data = scenario.dataset
    ids = faulty_ids(data.manifest, [1])
    others = np.setdiff1d(select_forget(data.manifest, where={"source": "faulty"}), ids)
    train = data.train.drop(others)
    torch.manual_seed(SEED)
    original = build_model("mlp", digits.image_shape, digits.num_classes)
    train_model(original, train, recipe, progress=False)
    retain, forget = train.split_off(ids)
    _, report = uib.unlearn(
        original, forget, retain, "influence", validation=validation, seed=SEED, progress=False
    )
    regime = report.notes["regime"]
    assert regime["kind"] == "systematic", regime
    assert regime["siblings"] < len(forget), regime
    assert report.notes["eta"] > 0, report.notes["eta_rule"]
