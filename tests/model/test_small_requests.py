"""The everyday erasure: a person's few records, on the pipeline's own data (digits / patch-bias).

Retrain barely moves for a handful of scattered samples; UIB must recognise that regime from
the data and not rewrite the model for them, while a faulty source's slice, a legacy
corruption and a whole class stay systematic.
"""

import numpy as np
import pytest
import torch
from test_unlearning import SEEDS, trained_original
from unlearning_runs import retrain_and_uib

import uib
from uib.metrics import evaluate
from uib.train import predict_logits

SMALL_REQUESTS = [("random", 1), ("random", 2), ("random", 10), ("class-sample", 5)]


@pytest.fixture(scope="module", params=SEEDS)
def pipeline_original(request, digits):
    """The patch-bias digits original of one seed, and its held-out splits."""
    scenario, _, _, validation, test, recipe, original = trained_original(
        digits, "patch-bias", request.param
    )
    return request.param, scenario.dataset, validation, test, recipe, original


@pytest.mark.parametrize(("kind", "count"), SMALL_REQUESTS)
def test_a_few_records_are_forgotten_as_retrain_forgets_them(pipeline_original, kind, count):
    seed, dataset, validation, test, recipe, original = pipeline_original
    manifest = dataset.manifest[
        (dataset.manifest["split"] == "train") & (dataset.manifest["source"] != "faulty")
    ]
    if kind == "class-sample":
        manifest = manifest[manifest["label"] == 3]
    rng = np.random.default_rng(seed)
    ids = rng.choice(manifest["sample_id"].to_numpy(dtype=str), size=count, replace=False)
    retain, forget = dataset.train.split_off(ids)
    before = evaluate(original, retain, forget, test)
    runs = retrain_and_uib(original, forget, retain, recipe, validation, seed)
    models = {method: model for method, (model, _) in runs.items()}
    notes = runs["uib"][1].notes
    assert notes["regime"]["kind"] == "scattered", notes["regime"]
    after = evaluate(models["uib"], retain, forget, test)
    assert after.TA >= before.TA - 0.003, (
        seed,
        kind,
        count,
        before.TA,
        after.TA,
        notes["eta_rule"],
    )
    assert after.RA >= before.RA - 0.003, (
        seed,
        kind,
        count,
        before.RA,
        after.RA,
        notes["eta_rule"],
    )
    predicted = {
        m: predict_logits(model, forget.x).argmax(1).numpy() for m, model in models.items()
    }
    agreement = float(np.mean(predicted["uib"] == predicted["retrain"]))
    assert agreement >= 0.8, (seed, kind, count, agreement, notes["eta_rule"])


@pytest.mark.parametrize("scenario_name", ["corruption", "class"])
def test_a_source_or_class_slice_stays_systematic(digits, scenario_name):
    for seed in SEEDS:
        _, retain, forget, validation, _, recipe, original = trained_original(
            digits, scenario_name, seed
        )
        _, report = uib.unlearn(
            original, forget, retain, "influence", validation=validation, seed=seed, progress=False
        )
        assert report.notes["regime"]["kind"] == "systematic", (seed, report.notes["regime"])
        assert report.notes["eta"] > 0


def test_a_remembered_scattered_set_gets_a_short_step_that_flips_nothing(digits):
    """Where the forgotten samples rank significantly low among held-out losses, UIB steps
    until they rank like held-out samples, within `max_flips` of the probe rows."""
    _, retain, forget, validation, test, recipe, original = trained_original(digits, "random")
    config = {"rank_test_level": 0.5}
    model, report = uib.unlearn(
        original, forget, retain, "uib", config, validation=validation, progress=False
    )
    search = report.notes["eta_search"]
    assert report.notes["regime"]["kind"] == "scattered"
    assert search[0]["rank"] < 0.5 and report.notes["eta"] > 0, report.notes["eta_rule"]
    chosen = next(t for t in search[1:] if t["eta"] == report.notes["eta"])
    assert chosen["flipped"] <= 0.002 and chosen["rank"] > search[0]["rank"]
    before = evaluate(original, retain, forget, test)
    after = evaluate(model, retain, forget, test)
    assert after.forget_loss_rank > before.forget_loss_rank
    assert after.TA >= before.TA - 0.003 and after.RA >= before.RA - 0.003
    assert torch.isfinite(torch.cat([p.flatten() for p in model.parameters()])).all()
