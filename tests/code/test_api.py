"""`uib.unlearn`'s contract: the registry, the report, and clear errors for bad input."""

import numpy as np
import pydantic
import pytest
import torch

import uib
from uib import methods
from uib.models import build_model
from uib.samples import DataError, Samples

EXPECTED = {
    "retrain",
    "finetune",
    "neggrad",
    "neggrad+",
    "influence",
    "random-label",
    "scrub",
    "salun",
    "ssd",
    "l1-sparse",
    "uib",
    "uib+neggrad",
    "uib+scrub",
    "uib+salun",
}


def toy(n=200, seed=0):
    rng = np.random.default_rng(seed)
    ids = np.array([f"s-{i:04d}" for i in range(n)])
    return Samples(rng.random((n, 1, 8, 8), dtype=np.float32), rng.integers(0, 10, n), ids)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("mlp", (1, 8, 8), 10)


def test_registry_lists_every_baseline_and_uib_variant():
    assert set(methods.available()) >= EXPECTED
    for name in methods.available():
        assert methods.get(name).summary, f"{name} has no one-line summary"


def test_report_has_every_loss_term_param_shift_and_phase_times(model):
    retain, forget = toy().split_off([f"s-{i:04d}" for i in range(20)])
    new, report = uib.unlearn(
        model, forget, retain, "uib", {"eta": 0.01, "passes": 1}, progress=False
    )
    assert {"retain_ce", "kl_prior"} <= set(report.losses)
    assert set(report.param_shift) == {k for k, _ in model.named_parameters()}
    assert max(report.param_shift.values()) > 0
    assert {"curvature", "prior", "optimise"} <= set(report.phase_seconds)
    assert report.n_forget == 20 and report.n_retain == 180 and report.time_s > 0
    before = [p.detach().clone() for p in model.parameters()]
    uib.unlearn(model, forget, retain, "finetune", progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)), (
        "input model changed"
    )


def test_the_report_says_in_one_line_how_the_forget_set_was_treated(model):
    retain, forget = toy().split_off([f"s-{i:04d}" for i in range(20)])
    _, report = uib.unlearn(
        model, forget, retain, "uib", {"eta": 0.01, "passes": 1}, progress=False
    )
    assert report.decision() == "IF step η = 0.01; 1 pass", report.notes
    _, report = uib.unlearn(model, forget, retain, "finetune", progress=False)
    assert report.decision() == ""
    held = report.model_copy(
        update={
            "notes": {
                "regime": {"kind": "systematic"},
                "label_agreement": {"forget": 0.62, "held_out": 0.96, "rows": 250},
                "eta": 4e-05,
                "forget_hold": 10.0,
                "passes_run": 6,
            }
        }
    )
    assert held.decision() == (
        "systematic forget set; 62% of its rows look like their label to their nearest "
        "retained rows (96% of held-out rows); IF step η = 4e-05; the forget set held where "
        "the step left it; 6 passes"
    )


def test_every_method_runs_with_denormals_flushed_on_cpu(model):
    """Retrain and every method alike (so `time_ratio` stays fair); the caller's setting back."""
    from uib.device import denormals_flushed
    from uib.methods.base import REGISTRY, MethodConfig, register

    seen = []

    def probe(m, ctx, config):
        seen.append(denormals_flushed())
        return m

    register("denormal-probe", MethodConfig)(probe)
    try:
        data = toy(40)
        uib.unlearn(
            model,
            data.take(np.arange(4)),
            data.take(np.arange(4, 40)),
            "denormal-probe",
            device="cpu",
            progress=False,
        )
    finally:
        del REGISTRY["denormal-probe"]
    assert seen == [True]
    assert not denormals_flushed()


def test_unknown_method_is_named(model):
    retain, forget = toy().split_off(["s-0001"])
    with pytest.raises(ValueError, match="unknown unlearning method 'forget-it'.*uib"):
        uib.unlearn(model, forget, retain, "forget-it")


def test_unknown_config_key_is_named(model):
    retain, forget = toy().split_off(["s-0001"])
    with pytest.raises(pydantic.ValidationError, match="etta"):
        uib.unlearn(model, forget, retain, "uib", {"etta": 0.1})


def test_empty_forget_set(model):
    data = toy()
    with pytest.raises(DataError, match="forget set is empty"):
        uib.unlearn(model, data.take(np.zeros(len(data), bool)), data, "uib")


def test_forget_set_that_is_the_whole_training_set(model):
    data = toy()
    retain, forget = data.split_off(data.ids)
    with pytest.raises(DataError, match="whole training set"):
        uib.unlearn(model, forget, retain, "uib")


def test_ids_not_in_the_data_are_named():
    with pytest.raises(DataError, match="s-9999"):
        toy().split_off(["s-0001", "s-9999"])


def test_labels_out_of_range_are_named(model):
    data = toy()
    y = data.y.copy()
    y[5] = 10
    retain, forget = Samples(data.x, y, data.ids).split_off(["s-0005"])
    with pytest.raises(
        DataError, match=r"forget: labels out of range \[0, 10\) at samples \['s-0005'\]"
    ):
        uib.unlearn(model, forget, retain, "uib")


def test_nan_in_inputs_is_named(model):
    data = toy()
    x = data.x.copy()
    x[7, 0, 3, 3] = np.nan
    retain, forget = Samples(x, data.y, data.ids).split_off(["s-0001"])
    with pytest.raises(DataError, match=r"retain: non-finite values .* \['s-0007'\]"):
        uib.unlearn(model, forget, retain, "uib")


def test_overlapping_forget_and_retain_is_refused(model):
    data = toy()
    with pytest.raises(DataError, match="in both forget and retain"):
        uib.unlearn(model, data.take(np.arange(3)), data, "uib")


def test_wrong_image_shape_is_named(model):
    rng = np.random.default_rng(0)
    other = Samples(
        rng.random((10, 1, 28, 28), dtype=np.float32),
        rng.integers(0, 10, 10),
        np.array([f"m-{i}" for i in range(10)]),
    )
    with pytest.raises(DataError, match="forget: images of shape"):
        uib.unlearn(model, other, toy(), "uib")


def test_only_a_method_that_reads_no_forget_sample_runs_on_an_empty_forget_set(digits):
    """Once a request's forget samples are erased, `retrain` can still run; UIB cannot."""
    import numpy as np

    from uib.models import build_model
    from uib.samples import DataError
    from uib.train import TrainConfig

    model = build_model("mlp", digits.image_shape, digits.num_classes)
    nothing = digits.train.take(np.arange(0))
    _, report = uib.unlearn(
        model, nothing, digits.train, "retrain", train_config=TrainConfig(epochs=1), progress=False
    )
    assert report.n_forget == 0 and report.n_retain == len(digits.train)
    with pytest.raises(DataError, match="forget set is empty"):
        uib.unlearn(model, nothing, digits.train, "uib", progress=False)
