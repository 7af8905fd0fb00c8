"""Shift validation through a real Great Expectations checkpoint (each run costs ~1 s)."""

import numpy as np
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
