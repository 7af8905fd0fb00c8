"""The gates of EVALUATION.md: each names its value, threshold, shortfall and uncertainty."""

import numpy as np

from tasks.gate_report import GateReport
from tasks.gate_stats import loss_rank_test
from tasks.gates import Evidence, apply_gates
from tasks.settings import GateConfig
from uib.metrics import Metrics


def metrics(**overrides) -> Metrics:
    base = {
        "UA": 0.02,
        "RA": 0.99,
        "TA": 0.95,
        "test_f1": 0.95,
        "forget_acc": 0.98,
        "mia_efficacy": 0.1,
        "mia_test_level": 0.5,
        "bias_asr": 0.9,
        "bias_corr": 0.9,
        "per_class_acc": [0.95] * 10,
    }
    return Metrics(**{**base, **overrides})


def test_a_good_patch_bias_candidate_passes_every_gate():
    after = metrics(TA=0.945, RA=0.985, forget_acc=0.01, UA=0.99, bias_asr=0.0)
    report = apply_gates(metrics(), after, GateConfig(), patch_bias_request=True, sane=True)
    assert report.passed, report.message()
    assert [g.name for g in report.gates] == [
        "test_accuracy_retained",
        "retain_accuracy_retained",
        "forget_like_unseen",
        "bias_asr",
        "sanity",
    ]


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
    assert by_name["bias_asr"] == {
        **by_name["bias_asr"],
        "value": 0.25,
        "threshold": 0.1,
        "passed": False,
    }
    assert abs(by_name["bias_asr"]["shortfall"] - 0.15) < 1e-9
    assert by_name["sanity"]["shortfall"] == 0.0


def test_a_missing_bias_probe_fails_the_bias_gate():
    after = metrics(bias_asr=None, forget_acc=0.0)
    report = apply_gates(metrics(), after, GateConfig(), True, True)
    assert [g.name for g in report.failed] == ["bias_asr"]


# --- statistics and uncertainty at every forget-set size ------------------------------------


def correct(n: int, accuracy: float) -> np.ndarray:
    return np.arange(n) < round(accuracy * n)


def evidence(
    before: Metrics,
    after: Metrics,
    n_forget: int,
    *,
    forget_y=None,
    forget_pred=None,
    forget_loss=None,
    removes_class=False,
    forget_neighbour_y=None,
    n_test=200,
    n_retain=1000,
) -> Evidence:
    """Per-row facts consistent with the metrics: accuracies as leading runs of correct rows."""
    rng = np.random.default_rng(0)
    forget_y = np.full(n_forget, 3) if forget_y is None else np.asarray(forget_y)
    if forget_pred is None:
        forget_pred = np.where(correct(n_forget, after.forget_acc), forget_y, (forget_y + 1) % 10)
    test_y = np.arange(n_test) % 10
    return Evidence(
        forget_y=forget_y,
        forget_pred=np.asarray(forget_pred),
        forget_loss=rng.exponential(size=n_forget) if forget_loss is None else forget_loss,
        test_y=test_y,
        test_loss=rng.exponential(size=n_test),
        test_correct=(correct(n_test, before.TA), correct(n_test, after.TA)),
        retain_correct=(correct(n_retain, before.RA), correct(n_retain, after.RA)),
        removes_class=removes_class,
        sanity_n=n_test,
        forget_neighbour_y=forget_neighbour_y,
    )


def gated(after: Metrics, n_forget: int, patch_bias=False, before=None, config=None, **kw):
    before = before or metrics()
    report = apply_gates(
        before,
        after,
        config or GateConfig(),
        patch_bias,
        True,
        evidence(before, after, n_forget, **kw),
    )
    return report, {g.name: g for g in report.gates}


def test_two_forgotten_samples_cannot_decide_accuracy_or_mia_and_say_who_judged():
    """2 samples: forget accuracy is 0, 0.5 or 1; the old point rule failed 1.0 vs 0.9674."""
    after = metrics(TA=0.9474, forget_acc=1.0, UA=0.0, mia_efficacy=0.0)
    report, gates = gated(after, 2)
    for name in ("forget_like_unseen", "mia_efficacy"):
        g = gates[name]
        assert g.passed and not g.decidable and g.n == 2, g
        assert (
            g.judged_by == "not decidable at this size (n = 2); judged by forget_loss_like_unseen"
        )
    assert gates["forget_loss_like_unseen"].decidable  # the loss test decides from n = 1
    assert report.passed, report.message()
    _, patch = gated(after, 2, patch_bias=True)
    assert patch["forget_like_unseen"].judged_by.endswith(
        "judged by bias_asr and forget_loss_like_unseen"
    )


def test_many_forgotten_samples_remembered_fail_forget_like_unseen():
    after = metrics(TA=0.90, forget_acc=1.0, UA=0.0)
    report, gates = gated(after, 200, config=GateConfig(max_ta_drop_pp=10))
    g = gates["forget_like_unseen"]
    assert not g.passed and g.decidable and g.interval[0] > g.threshold, g
    assert abs(g.threshold - 0.92) < 1e-9 and abs(g.shortfall - 0.08) < 1e-9
    assert "forget_like_unseen 1.0000 vs 0.9200" in report.message()


def test_a_significant_excess_fails_and_a_chance_one_passes():
    """One-sided: fail only when the lower bound of forget accuracy exceeds TA + margin."""
    _, chance = gated(metrics(TA=0.90, forget_acc=0.94), 200, config=GateConfig(max_ta_drop_pp=10))
    g = chance["forget_like_unseen"]
    assert g.value > g.threshold and g.passed and g.decidable and g.interval[0] <= g.threshold


def test_mia_fails_only_when_its_upper_bound_is_below_the_threshold():
    after = metrics(forget_acc=0.0, mia_efficacy=0.05, mia_test_level=0.6)
    _, few = gated(after, 5)
    _, many = gated(after, 400)
    assert few["mia_efficacy"].passed and not few["mia_efficacy"].decidable
    assert not many["mia_efficacy"].passed and many["mia_efficacy"].interval[1] < 0.3


def test_forgotten_losses_below_every_unseen_one_fail_the_loss_test_even_at_two():
    after = metrics(forget_acc=1.0)
    _, gates = gated(after, 2, forget_y=[3, 7], forget_loss=np.array([1e-9, 1e-9]))
    g = gates["forget_loss_like_unseen"]
    assert not g.passed and g.decidable and g.p_value < 0.05 and g.value == 0.0, g
    _, unseen = gated(after, 2, forget_y=[3, 7], forget_loss=np.array([5.0, 5.0]))
    assert unseen["forget_loss_like_unseen"].passed


def test_the_loss_test_holds_its_level_when_forgotten_rows_are_unseen():
    """Forgotten and test rows drawn alike (classes differing in difficulty): p < 0.05 in ≈ 5 %.

    The level holds over the draw of both sets, as a permutation test's does; against one
    fixed test set it varies with how typical that set is (tests/model checks digits' own).
    """
    rng = np.random.default_rng(3)
    test_y = np.arange(300) % 10
    fails = []
    for rep in range(300):
        test_loss = rng.exponential(size=300) * (1 + test_y)
        forget_y = rng.integers(0, 10, 20)
        forget_loss = rng.exponential(size=20) * (1 + forget_y)
        result = loss_rank_test(forget_loss, forget_y, test_loss, test_y, 0.05, draws=999, seed=rep)
        fails.append(result.p_value < 0.05)
    assert 0.02 <= np.mean(fails) <= 0.08


def test_a_slice_collapsing_onto_one_class_fails_no_redirect():
    after = metrics(forget_acc=0.05)
    collapsed = np.where(np.arange(100) < 5, 3, 8)
    report, gates = gated(after, 100, forget_pred=collapsed)
    g = gates["no_redirect"]
    assert not g.passed and g.value == 0.95 and g.interval[0] > 0.5 and "class 8" in g.statistic
    assert "no_redirect 0.9500 vs 0.5000" in report.message()


def test_no_redirect_passes_a_spread_slice_and_a_correct_one_and_skips_class_removal():
    # patch-bias: labels are the faulty class 0; the candidate reads the true digits 1–9
    spread = gated(
        metrics(forget_acc=0.0),
        117,
        patch_bias=True,
        forget_y=np.zeros(117, int),
        forget_pred=np.arange(117) % 9 + 1,
    )[1]["no_redirect"]
    assert spread.passed and abs(spread.value - 13 / 117) < 1e-9
    kept = gated(metrics(forget_acc=1.0), 4)[1]["no_redirect"]  # a few ids, predicted right
    assert kept.passed and kept.value == 0.0
    tiny = gated(metrics(forget_acc=0.0), 3)[1]["no_redirect"]  # 3 of 3 on one class
    assert tiny.value == 1.0 and tiny.passed and not tiny.decidable
    whole_class = gated(metrics(forget_acc=0.0), 100, removes_class=True)[1]
    assert "no_redirect" not in whole_class


def test_a_wrongly_labelled_slice_read_as_what_its_neighbours_are_is_not_a_redirect():
    """Part of a faulty source (patched 6s labelled 0): read as 6 again, as retrain reads them.
    The same collapse onto a class their neighbours do not carry still fails."""
    labels, sixes = np.zeros(40, int), np.full(40, 6)
    read_back = gated(
        metrics(forget_acc=0.0), 40, forget_y=labels, forget_pred=sixes, forget_neighbour_y=sixes
    )[1]["no_redirect"]
    assert read_back.passed and read_back.value == 0.0
    assert "nearest retained rows" in read_back.statistic
    moved = gated(
        metrics(forget_acc=0.0),
        40,
        forget_y=labels,
        forget_pred=np.full(40, 4),
        forget_neighbour_y=sixes,
    )[1]["no_redirect"]
    assert not moved.passed and moved.value == 1.0 and "class 4" in moved.statistic
    unsupported = gated(metrics(forget_acc=0.0), 40, forget_y=labels, forget_pred=sixes)[1]
    assert not unsupported["no_redirect"].passed  # without neighbours: the label alone


def test_retained_gates_decide_on_the_point_value_and_report_a_paired_interval():
    after = metrics(TA=0.92, RA=0.985)
    report, gates = gated(after, 50)
    ta = gates["test_accuracy_retained"]
    assert not ta.passed and ta.n == 200 and ta.decidable
    assert "after − before -0.0300" in ta.statistic and "6 discordant rows" in ta.statistic
    low, high = ta.interval
    assert low < ta.value < high and high < 0.95  # 6 lost, none gained: before − after > 0
    assert "test_accuracy_retained 0.9200 vs 0.9400" in report.message()


def test_every_interval_contains_its_value():
    cases = [
        gated(metrics(TA=0.945, RA=0.985, forget_acc=0.01, bias_asr=0.0), 120, True),
        gated(metrics(TA=0.93, forget_acc=0.6, mia_efficacy=0.4), 2),
        gated(metrics(TA=0.93, forget_acc=0.97, mia_efficacy=0.2), 500),
    ]
    for report, _ in cases:
        for g in report.gates:
            if g.interval is not None:
                assert g.interval[0] - 1e-9 <= g.value <= g.interval[1] + 1e-9, g


def test_the_markdown_table_shows_statistics_intervals_and_undecidable_gates():
    report, _ = gated(metrics(TA=0.9474, forget_acc=1.0, UA=0.0, mia_efficacy=0.0), 2)
    text = report.to_markdown()
    lines = text.splitlines()
    assert lines[0] == "" and lines[1].startswith("| gate | statistic | n | value | interval")
    row = next(line for line in lines if line.startswith("| forget_like_unseen |"))
    assert "| 2 | 1.0000 | [0.2236, 1.0000] | 0.9674 |" in row
    assert "accuracy on the 2 forgotten samples" in row
    assert row.endswith(
        "| pass — not decidable at this size (n = 2); judged by forget_loss_like_unseen |"
    )
    failed = gated(metrics(TA=0.92), 50)[0].to_markdown()
    assert "**FAIL** (short by 0.0200)" in failed


def test_reports_written_before_these_fields_still_load():
    after = metrics(forget_acc=0.0, bias_asr=0.0)
    old = apply_gates(metrics(), after, GateConfig(), True, True).model_dump(mode="json")
    old.pop("confidence")
    for g in old["gates"]:
        for key in ("statistic", "n", "interval", "decidable", "judged_by", "p_value"):
            g.pop(key)
    loaded = GateReport.model_validate(old)
    assert loaded.passed and loaded.gates[0].decidable and loaded.gates[0].interval is None
    assert "| test_accuracy_retained |" in loaded.to_markdown()
    roundtrip = gated(metrics(), 2)[0]
    assert GateReport.model_validate(roundtrip.model_dump(mode="json")) == roundtrip
