"""Is the data shift of a deletion request the one that was asked for? Checked with GX Core 1.x.

`validate_shift` runs one GX checkpoint (`tasks.gx_checkpoint`) whose validation definitions
(their expectations in `tasks.shift_expectations`) cover every frame involved:

    original, retain, forget   the manifests, against the original's own schema (below)
    retain                     no id also in the forget set; retain + forget = original
    requested                  every requested id is in the forget set
    shift                      one row: forget fraction, KL(retain labels || original labels)
    classes                    one row per class: no class vanishes from the retain set
    attributes                 one row per (attribute, value): share before and after

The schema is the original manifest's own (`tasks.manifest_schema`): its columns and types,
missing values only where it has them, numbers and dates within its ranges, and the value
shares of its categorical columns, which the `attributes` frame compares.

The measures GX has no expectation for (KL, per-class and per-attribute shares) are computed
here with pandas into small frames, and their bounds are expectations over those frames, so
every check of a request lands in the one checkpoint result.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from tasks.gx_checkpoint import Check, checks_from, gx_frame, result_json, run_checkpoint
from tasks.manifest_schema import ManifestColumn, manifest_columns
from tasks.redaction import redacted_report
from tasks.shift_expectations import shift_suites
from uib.samples import DataError

__all__ = [
    "Check",
    "ShiftPolicy",
    "ValidationReport",
    "manifest_columns",
    "validate_shift",
    "validate_shift_task",
]

ID_COLUMNS = ("sample_id", "split", "label")


class ShiftPolicy(BaseModel):
    """How much a deletion request may move the training data before the run is stopped."""

    model_config = ConfigDict(extra="forbid")

    max_forget_fraction: float = Field(0.3, gt=0, le=1)
    label_kl_tolerance: float = Field(0.5, ge=0)
    attribute_tolerance: float = Field(
        0.25,
        ge=0,
        le=1,
        description="largest change of any attribute value's share of the training rows",
    )
    allow_class_removal: bool = False


class ValidationReport(BaseModel):
    success: bool
    checks: list[Check]
    label_kl: float
    forget_fraction: float
    class_proportions_before: dict[int, float]
    class_proportions_after: dict[int, float]
    attribute_proportions_before: dict[str, float]
    attribute_proportions_after: dict[str, float]
    gx_result: dict

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.success]

    def to_markdown(self) -> str:
        """Failed checks first, then the checks that decide a request (the shift policy, the
        ids), then the schema checks of each manifest, which a sound pipeline always passes."""
        verdict = "passed" if self.success else f"refused ({len(self.failed)} failed)"
        lines = [
            f"**Data shift validation {verdict}** — forget fraction {self.forget_fraction:.3f}, "
            f"label KL {self.label_kl:.4f}",
            "",
            "| check | result | observed | threshold |",
            "| --- | --- | --- | --- |",
        ]
        ordered = sorted(self.checks, key=lambda c: (c.success, is_schema_check(c)))
        schema_passed = sum(c.success and is_schema_check(c) for c in self.checks)
        for c in ordered:
            if c.success and is_schema_check(c) and c is ordered[-schema_passed]:
                lines.append(f"| *schema and types of each manifest ({schema_passed})* | | | |")
            mark = "pass" if c.success else "**FAIL**"
            lines.append(f"| {c.name} | {mark} | {_cell(c.observed)} | {_cell(c.threshold)} |")
        return "\n".join(lines) + "\n"


def is_schema_check(check: Check) -> bool:
    """A check of one manifest's own schema (`retain: label type`), not of the request."""
    frame, sep, _ = check.name.partition(": ")
    return bool(sep) and frame in ("original", "retain", "forget")


def _cell(value: Any) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|")[:120]


# --------------------------------------------------------------------------- measures


def _train(manifest: pd.DataFrame) -> pd.DataFrame:
    return manifest[manifest["split"] == "train"]


def _shares(values: pd.Series, keys: Iterable) -> dict:
    counts = values.value_counts()
    total = max(int(counts.sum()), 1)
    return {k: float(counts.get(k, 0)) / total for k in keys}


def label_kl(retain_labels: pd.Series, original_labels: pd.Series) -> float:
    """KL(p_retain || p_original) in nats over the classes of the original training rows.

    This direction stays finite when a class vanishes (the retain set is a subset of the
    original), so vanishing is judged by its own check rather than by an infinite number.
    """
    if len(retain_labels) == 0:
        return float("inf")
    classes = sorted(original_labels.unique())
    p = np.array(list(_shares(retain_labels, classes).values()))
    q = np.array(list(_shares(original_labels, classes).values()))
    nz = p > 0
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def _as_keys(column: pd.Series) -> pd.Series:
    """A categorical column's values as the text of their keys; a missing value as one more."""
    return column.astype(object).where(column.notna(), "<missing>").astype(str)


def _attribute_frame(
    original: pd.DataFrame, retain: pd.DataFrame, columns: list[ManifestColumn]
) -> pd.DataFrame:
    rows = []
    for attr in (c.name for c in columns if c.categorical and c.name in retain.columns):
        values = sorted(_as_keys(original[attr]).unique())
        before = _shares(_as_keys(original[attr]), values)
        after = _shares(_as_keys(retain[attr]), values)
        for v in values:
            rows.append((f"{attr}={v}", before[v], after[v], abs(after[v] - before[v])))
    frame = pd.DataFrame(rows, columns=["key", "share_before", "share_after", "shift"])
    frame = frame.astype(
        {"key": object, "share_before": float, "share_after": float, "shift": float}
    )
    return frame.set_index("key", drop=False).rename_axis(None)


# --------------------------------------------------------------------------- entry points


def validate_shift(
    original_manifest: pd.DataFrame,
    retain_manifest: pd.DataFrame,
    forget_manifest: pd.DataFrame,
    requested_ids: Iterable[str],
    policy: ShiftPolicy | None = None,
    num_classes: int | None = None,
) -> ValidationReport:
    """Validate the split of `original_manifest` into retain and forget for a request.

    Manifests hold one row per sample: the core columns `sample_id, split, label,
    original_label` and any attribute columns (built-in data: `source, corruption,
    patched`). The retain manifest may include test rows, the forget manifest must hold
    training rows only. Distributions are compared over training rows. `num_classes`
    defaults to the largest label of the original manifest plus one.
    """
    policy = policy or ShiftPolicy()
    for name, frame in (
        ("original_manifest", original_manifest),
        ("retain_manifest", retain_manifest),
        ("forget_manifest", forget_manifest),
    ):
        missing = [c for c in ID_COLUMNS if c not in frame.columns]
        if missing:
            raise DataError(f"{name}: missing columns {missing}")
    requested = pd.Series(sorted({str(i) for i in requested_ids}), dtype=object)
    if requested.empty:
        raise DataError("requested_ids: no sample ids given")
    if num_classes is None:
        num_classes = int(original_manifest["label"].max()) + 1

    original, retain, forget = (
        gx_frame(frame, "sample_id")
        for frame in (original_manifest, retain_manifest, forget_manifest)
    )
    columns = manifest_columns(original)
    orig_train, retain_train = _train(original), _train(retain)
    forget_fraction = len(forget) / max(len(orig_train), 1)
    kl = label_kl(retain_train["label"], orig_train["label"])
    classes = list(range(num_classes))
    before = _shares(orig_train["label"], classes)
    after = _shares(retain_train["label"], classes)
    counts_after = retain_train["label"].value_counts()
    class_frame = pd.DataFrame(
        {
            "label": classes,
            "share_before": [before[c] for c in classes],
            "share_after": [after[c] for c in classes],
            "count_before": [int((orig_train["label"] == c).sum()) for c in classes],
            "count_after": [int(counts_after.get(c, 0)) for c in classes],
        }
    )
    present = class_frame[class_frame["count_before"] > 0]
    attributes = _attribute_frame(orig_train, retain_train, columns)
    summary = pd.DataFrame(
        {"forget_fraction": [forget_fraction], "label_kl": [kl], "n_forget": [len(forget)]}
    )

    frames = {
        "original": original,
        "retain": retain,
        "forget": forget,
        "requested": gx_frame(pd.DataFrame({"sample_id": requested}), "sample_id"),
        "shift": summary,
        "classes": gx_frame(present, "label"),
        "attributes": attributes,
    }
    suites = shift_suites(policy, columns, num_classes, forget, len(original))
    result = run_checkpoint(frames, suites, name="deletion_request_shift")
    return ValidationReport(
        success=bool(result.success),
        checks=checks_from(result),
        label_kl=kl,
        forget_fraction=forget_fraction,
        class_proportions_before=before,
        class_proportions_after=after,
        attribute_proportions_before=dict(
            zip(attributes["key"], attributes["share_before"], strict=True)
        ),
        attribute_proportions_after=dict(
            zip(attributes["key"], attributes["share_after"], strict=True)
        ),
        gx_result=result_json(result),
    )


@task(name="validate-shift")
def validate_shift_task(
    original_manifest: pd.DataFrame,
    retain_manifest: pd.DataFrame,
    forget_manifest: pd.DataFrame,
    requested_ids: Iterable[str],
    policy: ShiftPolicy | None = None,
    num_classes: int | None = None,
    request_id: str | None = None,
    salt: str | None = None,
) -> ValidationReport:
    """`validate_shift`, plus the report table as a Prefect Markdown artifact; with `salt`, the
    report names the requested and forgotten ids by salted hash before anything keeps it."""
    from prefect.artifacts import create_markdown_artifact

    requested_ids = [str(i) for i in requested_ids]
    report = validate_shift(
        original_manifest, retain_manifest, forget_manifest, requested_ids, policy, num_classes
    )
    if salt is not None:
        report = redacted_report(report, [*requested_ids, *forget_manifest["sample_id"]], salt)
    key = None
    if request_id:
        key = "shift-" + re.sub(r"[^a-z0-9-]", "-", request_id.lower())
    create_markdown_artifact(
        markdown=report.to_markdown(), key=key, description="Data shift validation (GX)"
    )
    return report
