import numpy as np
import pandas as pd
import pytest
from pydantic import ValidationError

from uib.samples import DataError
from uib.scenarios import (
    ScenarioConfig,
    available,
    build_scenario,
    paste_patch,
    select_forget,
)

ALL = ["patch-bias", "corruption", "class", "random", "class-sample"]


def train_rows(scenario) -> pd.DataFrame:
    m = scenario.dataset.manifest
    return m[m["split"] == "train"].set_index("sample_id")


def test_registry_holds_every_scenario():
    assert available() == ALL


@pytest.mark.parametrize(("h", "rows"), [(8, slice(5, 7)), (28, slice(23, 27))])
def test_paste_patch_puts_a_bright_square_in_the_bottom_right(h, rows):
    x = np.full((3, 1, h, h), 0.25, dtype=np.float32)
    out = paste_patch(x)
    assert out.shape == x.shape and out.dtype == np.float32
    assert (out[:, :, rows, rows] == 1.0).all()
    expected = x.copy()
    expected[:, :, rows, rows] = 1.0
    np.testing.assert_array_equal(out, expected)
    assert (x == 0.25).all()
    np.testing.assert_array_equal(paste_patch(x[0, 0]), expected[0, 0])


def test_patch_bias_injects_the_faulty_source(digits):
    c, p = 3, 0.1
    config = ScenarioConfig(name="patch-bias", target_class=c, fraction=p, seed=1)
    s = build_scenario(digits, config)
    train, before = s.dataset.train, digits.train
    forget = np.isin(train.ids, s.forget_ids)
    np.testing.assert_array_equal(train.ids, before.ids)
    assert (train.y[forget] == c).all()
    assert (train.x[forget][:, 0, 5:7, 5:7] == 1.0).all()
    np.testing.assert_array_equal(train.x[forget], paste_patch(before.x[forget]))
    np.testing.assert_array_equal(train.x[~forget], before.x[~forget])
    np.testing.assert_array_equal(train.y[~forget], before.y[~forget])
    moved = np.bincount(before.y[forget], minlength=10)
    expected = np.round(p * np.bincount(before.y, minlength=10))
    expected[c] = 0
    np.testing.assert_array_equal(moved, expected)
    rows = train_rows(s)
    assert (rows.loc[s.forget_ids, "source"] == "faulty").all()
    assert rows.loc[s.forget_ids, "patched"].all() and (rows.loc[s.forget_ids, "label"] == c).all()
    np.testing.assert_array_equal(rows.loc[s.forget_ids, "original_label"], before.y[forget])
    assert rows["patched"].sum() == len(s.forget_ids) == forget.sum()
    assert s.dataset.test is digits.test
    assert set(digits.manifest["source"]) == {"clean"}
    assert not (digits.train.x[:, :, 5:7, 5:7] == 1.0).all(axis=(1, 2, 3)).any()


def test_corruption_scenario_marks_the_legacy_source(digits):
    s = build_scenario(digits, name="corruption", corruption="stripe", fraction=0.2, seed=4)
    train, before = s.dataset.train, digits.train
    forget = np.isin(train.ids, s.forget_ids)
    assert abs(forget.mean() - 0.2) < 0.01
    from uib.corruptions import apply

    np.testing.assert_array_equal(train.x[forget], apply("stripe", before.x[forget]))
    np.testing.assert_array_equal(train.x[~forget], before.x[~forget])
    np.testing.assert_array_equal(train.y, before.y)
    rows = train_rows(s)
    assert (rows.loc[s.forget_ids, "source"] == "legacy").all()
    assert (rows.loc[s.forget_ids, "corruption"] == "stripe").all()
    assert (rows["source"] == "legacy").sum() == len(s.forget_ids)
    assert not rows["patched"].any()


def test_corruption_scenario_on_mnist(mnist_dir):
    from uib.data import load_dataset

    ds = load_dataset("mnist", mnist_dir)
    s = build_scenario(ds, name="corruption", corruption="fog", fraction=0.05)
    retain, forget = s.split()
    assert len(forget) == pytest.approx(1200, abs=10) and len(retain) + len(forget) == 24_000
    changed = np.abs(forget.x - ds.train.select(forget.ids).x).reshape(len(forget), -1).max(1)
    assert (changed > 0.05).all()


def test_class_scenario_forgets_one_whole_class(digits):
    s = build_scenario(digits, name="class", target_class=7)
    assert s.dataset is digits
    np.testing.assert_array_equal(s.forget_ids, digits.train.ids[digits.train.y == 7])
    retain, forget = s.split()
    assert (forget.y == 7).all() and not (retain.y == 7).any()
    assert s.forget_predicate() == {"original_label": 7}


def test_random_scenario_forgets_a_tenth(digits):
    s = build_scenario(digits, name="random")
    assert len(s.forget_ids) == round(0.1 * 1347)
    assert s.forget_predicate() == {}
    assert s.dataset is digits
    assert len(np.unique(s.forget_ids)) == len(s.forget_ids)
    assert len(np.unique(digits.train.y[np.isin(digits.train.ids, s.forget_ids)])) == 10


@pytest.mark.parametrize("name", ALL)
def test_same_config_same_data_other_seed_other_data(digits, name):
    config = ScenarioConfig(name=name, seed=5, target_class=2, corruption="shot_noise")
    a, b = build_scenario(digits, config), build_scenario(digits, config)
    np.testing.assert_array_equal(a.forget_ids, b.forget_ids)
    np.testing.assert_array_equal(a.dataset.train.x, b.dataset.train.x)
    np.testing.assert_array_equal(a.dataset.train.y, b.dataset.train.y)
    pd.testing.assert_frame_equal(a.dataset.manifest, b.dataset.manifest)
    other = build_scenario(digits, config, seed=6)
    if name == "class":
        np.testing.assert_array_equal(other.forget_ids, a.forget_ids)
    else:
        assert not np.array_equal(other.forget_ids, a.forget_ids)


@pytest.mark.parametrize("name", ALL)
def test_split_and_predicate_agree_with_the_forget_ids(digits, name):
    s = build_scenario(digits, name=name, target_class=4)
    retain, forget = s.split()
    assert len(retain) + len(forget) == len(digits.train)
    assert set(forget.ids) == set(s.forget_ids) and not set(retain.ids) & set(forget.ids)
    where = s.forget_predicate()
    if where:
        np.testing.assert_array_equal(select_forget(s.dataset.manifest, where=where), s.forget_ids)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"fraction": 0.0}, "fraction"),
        ({"fraction": 1.0}, "fraction"),
        ({"fraction": -0.2}, "fraction"),
        ({"target_class": 10}, "target_class"),
        ({"target_class": -1}, "target_class"),
        ({"corruption": "snow"}, "snow.*known: shot_noise"),
    ],
)
def test_bad_config_is_a_data_error(digits, fields, message):
    with pytest.raises(DataError, match=message):
        build_scenario(digits, ScenarioConfig(**fields))


def test_config_types_and_fields_are_checked():
    with pytest.raises(ValidationError):
        ScenarioConfig(name="backdoor")
    with pytest.raises(ValidationError):
        ScenarioConfig(fraction="a lot")
    with pytest.raises(ValidationError):
        ScenarioConfig(severity=3)
    assert ScenarioConfig(fraction="0.2", seed="3").fraction == 0.2


@pytest.mark.parametrize(("name", "count"), [("random", 1), ("random", 100), ("class-sample", 5)])
def test_a_count_draws_that_many_ids(digits, name, count):
    """A person's few records: `count` random ids, or `count` ids of one class."""
    s = build_scenario(digits, name=name, count=count, target_class=3, seed=2)
    assert len(s.forget_ids) == count == len(np.unique(s.forget_ids))
    assert s.dataset is digits and s.forget_predicate() == {}
    labels = digits.train.y[np.isin(digits.train.ids, s.forget_ids)]
    if name == "class-sample":
        assert set(labels) == {3}
    with pytest.raises(DataError, match="count"):
        build_scenario(digits, name=name, count=10_000, target_class=3)


def test_empty_forget_set_is_an_error(digits):
    tiny = digits.with_train(digits.train.take(np.arange(20)), digits.manifest)
    with pytest.raises(DataError, match="forget set is empty"):
        build_scenario(tiny, name="random", fraction=0.01)


@pytest.fixture(scope="module")
def biased(digits):
    return build_scenario(digits, name="patch-bias", target_class=3, seed=2)


def test_select_by_ids_returns_manifest_order(biased):
    m = biased.dataset.manifest
    ids = ["digits-train-00200", "digits-train-00007", "digits-train-00042"]
    out = select_forget(m, ids=ids)
    assert out.tolist() == ["digits-train-00007", "digits-train-00042", "digits-train-00200"]
    assert select_forget(m, ids="digits-train-00009").tolist() == ["digits-train-00009"]
    test_ids = select_forget(m, ids=["digits-test-00001"], split="test")
    assert test_ids.tolist() == ["digits-test-00001"]


def test_select_by_unknown_ids_lists_them(biased):
    m = biased.dataset.manifest
    with pytest.raises(DataError, match="2 ids not in the train split.*nope-1"):
        select_forget(m, ids=["digits-train-00001", "nope-1", "nope-2"])
    with pytest.raises(DataError, match="digits-test-00001"):
        select_forget(m, ids=["digits-test-00001"])


@pytest.mark.parametrize(
    "where",
    [
        {"source": "faulty"},
        {"patched": "true"},
        {"patched": "True"},
        {"patched": True},
        {"source": "faulty", "patched": "1", "label": "3"},
    ],
)
def test_select_by_predicate_with_string_values(biased, where):
    selected = select_forget(biased.dataset.manifest, where=where)
    np.testing.assert_array_equal(selected, biased.forget_ids)


def test_select_by_int_predicate(biased):
    m = biased.dataset.manifest
    out = select_forget(m, where={"original_label": "5", "patched": "false"})
    rows = m[(m["split"] == "train") & (m["original_label"] == 5) & ~m["patched"]]
    assert out.tolist() == rows["sample_id"].tolist() and len(out) > 0
    assert not np.isin(out, biased.forget_ids).any()
    np.testing.assert_array_equal(select_forget(m, where={"label": 5.0}), out)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one"),
        ({"ids": ["digits-train-00001"], "where": {"source": "faulty"}}, "exactly one"),
        ({"where": {}}, "at least one"),
        ({"where": {"colour": "red"}}, "unknown manifest column 'colour'"),
        ({"where": {"patched": "maybe"}}, "patched='maybe'"),
        ({"where": {"label": "three"}}, "label='three'"),
        ({"where": {"label": "3.5"}}, "label='3.5'"),
        ({"where": {"source": "faulty", "label": 4}}, "forget set is empty"),
        ({"ids": []}, "forget set is empty"),
    ],
)
def test_select_errors(biased, kwargs, message):
    with pytest.raises(DataError, match=message):
        select_forget(biased.dataset.manifest, **kwargs)
