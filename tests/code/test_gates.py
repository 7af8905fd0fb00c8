"""The gates of EVALUATION.md: each names its value, threshold and shortfall."""

from tasks.evaluation import apply_gates
from tasks.settings import GateConfig
from uib.metrics import Metrics


def metrics(**overrides) -> Metrics:
    base = {"UA": 0.02, "RA": 0.99, "TA": 0.95, "test_f1": 0.95, "forget_acc": 0.98,
            "mia_efficacy": 0.1, "mia_test_level": 0.5, "bias_asr": 0.9, "bias_corr": 0.9,
            "per_class_acc": [0.95] * 10}
    return Metrics(**{**base, **overrides})


def test_a_good_patch_bias_candidate_passes_every_gate():
    after = metrics(TA=0.945, RA=0.985, forget_acc=0.01, UA=0.99, bias_asr=0.0)
    report = apply_gates(metrics(), after, GateConfig(), patch_bias_request=True, sane=True)
    assert report.passed, report.message()
    assert [g.name for g in report.gates] == ["test_accuracy_retained", "retain_accuracy_retained",
                                              "forget_like_unseen", "bias_asr", "sanity"]


def test_failed_gates_are_named_with_their_shortfall():
    after = metrics(TA=0.92, RA=0.985, forget_acc=0.99, mia_efficacy=0.1, mia_test_level=0.6)
    report = apply_gates(metrics(), after, GateConfig(), patch_bias_request=False, sane=True)
    assert not report.passed
    failed = {g.name: g for g in report.failed}
    assert set(failed) == {"test_accuracy_retained", "forget_like_unseen", "mia_efficacy"}
    assert abs(failed["test_accuracy_retained"].shortfall - 0.02) < 1e-9
    assert abs(failed["mia_efficacy"].threshold - 0.3) < 1e-9
    assert "test_accuracy_retained 0.9200 vs 0.9400" in report.message()


def test_nan_metrics_and_broken_models_never_pass():
    after = metrics(TA=float("nan"), forget_acc=0.0)
    report = apply_gates(metrics(), after, GateConfig(), False, sane=False)
    assert {g.name for g in report.failed} >= {"test_accuracy_retained", "sanity"}


def test_thresholds_come_from_configuration():
    after = metrics(TA=0.90, forget_acc=0.0, bias_asr=0.05)
    strict = apply_gates(metrics(), after, GateConfig(), True, True)
    lenient = apply_gates(metrics(), after, GateConfig(max_ta_drop_pp=6.0), True, True)
    assert not strict.passed and lenient.passed


def test_the_report_names_each_gate_with_its_shortfall():
    after = metrics(TA=0.90, forget_acc=0.0, bias_asr=0.25)
    report = apply_gates(metrics(), after, GateConfig(), True, True).model_dump(mode="json")
    by_name = {g["name"]: g for g in report["gates"]}
    assert by_name["bias_asr"] == {**by_name["bias_asr"], "value": 0.25, "threshold": 0.1,
                                   "passed": False}
    assert abs(by_name["bias_asr"]["shortfall"] - 0.15) < 1e-9
    assert by_name["sanity"]["shortfall"] == 0.0


def test_a_missing_bias_probe_fails_the_bias_gate():
    after = metrics(bias_asr=None, forget_acc=0.0)
    report = apply_gates(metrics(), after, GateConfig(), True, True)
    assert [g.name for g in report.failed] == ["bias_asr"]
