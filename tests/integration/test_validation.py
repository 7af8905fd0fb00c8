"""Shift validation through a real Great Expectations checkpoint (each run costs ~1 s)."""

import numpy as np
import pandas as pd
import pytest

from tasks.validation import ShiftPolicy, validate_shift

pytestmark = pytest.mark.integration


def split(manifest, ids):
    """(retain, forget) manifests of a request for `ids`."""
    drop = manifest["sample_id"].isin(ids)
    return manifest[~drop], manifest[drop]


def failed(report) -> set[str]:
    return {c.name for c in report.failed}


def test_a_patch_bias_request_passes_with_every_check_in_one_gx_result(patch_bias):
    manifest, ids = patch_bias.dataset.manifest, patch_bias.forget_ids
    retain, forget = split(manifest, ids)

    report = validate_shift(manifest, retain, forget, ids)

    assert report.success, report.to_markdown()
    names = {c.name for c in report.checks}
    for expected in (
        "forget fraction",
        "label KL(retain || original)",
        "no id in both retain and forget",
        "every requested id in the forget set",
        "no class removed from retain",
        "attribute share shift",
        "forget: sample_id unique",
        "retain: label in [0, 10)",
    ):
        assert expected in names
    gx_checks = sum(len(v["results"]) for v in report.gx_result["validation_results"])
    assert gx_checks == len(report.checks) and report.gx_result["success"]
    assert report.forget_fraction == pytest.approx(len(ids) / len(patch_bias.dataset.train))
    assert report.attribute_proportions_after["source=faulty"] == 0.0
    assert report.attribute_proportions_before["source=faulty"] > 0.0


def test_removing_a_whole_class_is_refused_unless_allowed(patch_bias):
    manifest = patch_bias.dataset.manifest
    ids = manifest.loc[(manifest["split"] == "train") & (manifest["label"] == 3), "sample_id"]
    retain, forget = split(manifest, ids)

    refused = validate_shift(manifest, retain, forget, ids)
    assert not refused.success and failed(refused) == {"no class removed from retain"}
    (check,) = refused.failed
    assert check.observed["examples"] == [3] and refused.class_proportions_after[3] == 0.0

    allowed = validate_shift(manifest, retain, forget, ids, ShiftPolicy(allow_class_removal=True))
    assert allowed.success


def test_a_too_large_forget_fraction_is_refused(patch_bias):
    manifest = patch_bias.dataset.manifest
    train_ids = manifest.loc[manifest["split"] == "train", "sample_id"].to_numpy()
    ids = np.random.default_rng(0).choice(train_ids, int(0.4 * len(train_ids)), replace=False)
    retain, forget = split(manifest, ids)

    report = validate_shift(manifest, retain, forget, ids, ShiftPolicy(attribute_tolerance=1.0))

    assert failed(report) == {"forget fraction"}
    (check,) = report.failed
    assert check.observed == pytest.approx(0.4, abs=0.01) and check.threshold == 0.3


def test_overlap_missing_ids_and_a_broken_schema_are_caught(patch_bias):
    manifest, ids = patch_bias.dataset.manifest, patch_bias.forget_ids
    leaked = ids[0]
    retain = manifest[~manifest["sample_id"].isin(ids[1:])]  # one forgotten row stays in retain
    forget = split(manifest, ids)[1].drop(columns=["patched"])

    report = validate_shift(manifest, retain, forget, [*ids, "never-seen"])

    assert not report.success
    assert {
        "no id in both retain and forget",
        "retain rows = original rows - forget rows",
        "every requested id in the forget set",
        "forget: required columns",
    } <= failed(report)
    by_name = {c.name: c for c in report.checks}
    assert by_name["no id in both retain and forget"].observed["examples"] == [leaked]
    assert by_name["every requested id in the forget set"].observed["examples"] == ["never-seen"]


# --------------------------------------------------------------------------- a team's own data


@pytest.fixture(scope="module")
def team_manifest() -> pd.DataFrame:
    """A manifest as a team's own data source writes it: the core columns, and attributes of
    every kind. 240 rows, 200 of them training; every site holds every label alike, and 50%
    of the training rows are site `a`, 30% `b`, 10% each `c` and `d`."""
    i = np.arange(240)
    label = i % 4
    sites = np.array(["a"] * 5 + ["b"] * 3 + ["c", "d"])
    return pd.DataFrame(
        {
            "sample_id": [f"team-{k:04d}" for k in i],
            "split": np.where(i < 200, "train", "test"),
            "label": label,
            "original_label": label,
            "site": sites[(i // 4) % 10],
            "device": np.array(["x1", "x2"])[(i // 40) % 2],
            "visits": 1 + (i // 4) % 3,  # an int of few values: categorical
            "age": 18 + i % 60,  # an int of many values: a measure
            "score": (i % 97) / 97,
            "consent_withdrawn": i % 10 == 3,
            "collected_at": (pd.Timestamp("2023-01-01") + pd.to_timedelta(i, unit="D")).astype(
                "datetime64[ns]"
            ),
        }
    )


def by_name(report) -> dict:
    return {c.name: c for c in report.checks}


def test_the_suite_is_built_from_the_manifests_own_columns(team_manifest):
    manifest = team_manifest
    train = manifest["split"] == "train"
    ids = manifest.loc[train & manifest["consent_withdrawn"], "sample_id"]
    retain, forget = split(manifest, ids)

    report = validate_shift(manifest, retain, forget, ids)

    assert report.success, report.to_markdown()
    checks = by_name(report)
    for frame in ("retain", "forget"):
        for column in manifest.columns:
            assert checks[f"{frame}: {column} type"].success
            assert f"{frame}: {column} not null" in checks
        for column in ("age", "score", "visits", "collected_at"):
            assert f"{frame}: {column} within the original's range" in checks
    # a datetime column passes through GX as a datetime, its range in ISO form
    assert checks["retain: collected_at type"].observed == "datetime64"
    assert checks["retain: collected_at within the original's range"].threshold == [
        "2023-01-01T00:00:00",
        "2023-08-28T00:00:00",
    ]
    assert checks["retain: required columns"].threshold == sorted(manifest.columns)
    assert checks["original: required columns"].threshold == sorted(
        ["sample_id", "split", "label", "original_label"]
    )
    # shares of every categorical column, none of a measure or a date
    shared = {key.partition("=")[0] for key in report.attribute_proportions_before}
    assert shared == {"site", "device", "visits", "consent_withdrawn"}
    assert report.attribute_proportions_before["consent_withdrawn=True"] == pytest.approx(0.1)
    assert report.attribute_proportions_after["consent_withdrawn=True"] == 0.0
    assert report.attribute_proportions_before["site=b"] == pytest.approx(0.3)


def test_a_request_that_moves_a_share_beyond_tolerance_fails_the_share_check(team_manifest):
    """Emptying site `b` (30% of the training rows) moves its share by 0.3: past the default
    tolerance of 0.25, while every other share moves by less."""
    manifest = team_manifest
    ids = manifest.loc[(manifest["split"] == "train") & (manifest["site"] == "b"), "sample_id"]
    retain, forget = split(manifest, ids)

    report = validate_shift(manifest, retain, forget, ids, ShiftPolicy(max_forget_fraction=0.5))

    assert failed(report) == {"attribute share shift"}
    (check,) = report.failed
    assert check.observed["examples"] == ["site=b"] and check.threshold == 0.25
    assert report.attribute_proportions_after["site=b"] == 0.0


def test_a_value_outside_the_originals_range_fails_its_columns_check(team_manifest):
    manifest = team_manifest
    ids = manifest.loc[[3, 13], "sample_id"]
    retain, forget = split(manifest, ids)
    retain = retain.copy()
    retain.loc[0, "age"] = 200
    retain.loc[1, "collected_at"] = pd.Timestamp("1999-12-31")
    retain.loc[2, "score"] = -1.0

    report = validate_shift(manifest, retain, forget, ids)

    assert failed(report) == {
        "retain: age within the original's range",
        "retain: collected_at within the original's range",
        "retain: score within the original's range",
    }
    checks = by_name(report)
    assert checks["retain: age within the original's range"].observed["examples"] == ["team-0000"]
    assert checks["retain: age within the original's range"].threshold == [18, 77]
    assert checks["retain: collected_at within the original's range"].observed["examples"] == [
        "team-0001"
    ]
