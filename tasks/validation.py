"""Is the data shift of a deletion request the one that was asked for? Checked with GX Core 1.x.

`validate_shift` hands GX an ephemeral context with one pandas data source and one checkpoint
whose validation definitions cover every frame involved:

    original, retain, forget   the manifests: schema, types, nulls, unique ids, label range
    retain                     no id also in the forget set; retain + forget = original
    requested                  every requested id is in the forget set
    shift                      one row: forget fraction, KL(retain labels || original labels)
    classes                    one row per class: no class vanishes from the retain set
    attributes                 one row per (attribute, value): share before and after

The measures GX has no expectation for (KL, per-class and per-attribute shares) are computed
here with pandas into small frames, and their bounds are expectations over those frames, so
every check of a request lands in the one checkpoint result.
"""

from __future__ import annotations

import pickle
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, ConfigDict, Field

from uib.samples import DataError

ID_COLUMNS = ("sample_id", "split", "label")
REQUIRED_COLUMNS = {
    "sample_id": ["str"],
    "split": ["str"],
    "label": ["int64", "int32", "int16", "int8", "uint8"],
    "original_label": ["int64", "int32", "int16", "int8", "uint8"],
    "source": ["str"],
    "corruption": ["str"],
    "patched": ["bool"],
}
ATTRIBUTES = ("source", "corruption", "patched")


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


class Check(BaseModel):
    name: str
    success: bool
    observed: Any = None
    threshold: Any = None


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


def _attribute_frame(original: pd.DataFrame, retain: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for attr in ATTRIBUTES:
        if attr not in original.columns or attr not in retain.columns:
            continue
        values = sorted(original[attr].astype(str).unique())
        before = _shares(original[attr].astype(str), values)
        after = _shares(retain[attr].astype(str), values)
        for v in values:
            rows.append((f"{attr}={v}", before[v], after[v], abs(after[v] - before[v])))
    frame = pd.DataFrame(rows, columns=["key", "share_before", "share_after", "shift"])
    return frame.set_index("key", drop=False).rename_axis(None)


def _as_gx_frame(frame: pd.DataFrame, index: str | None) -> pd.DataFrame:
    """A copy GX can type-check: string columns as Python `str` objects, `index` as the index.

    GX 1.x compares a pandas column's dtype by name and does not know pandas 3's `str`
    dtype; given an object column it checks the Python type of every value instead. The index
    is what GX reports as the position of a failing row, so it is set to the id.
    """
    out = frame.copy()
    for col in out.columns:
        if pd.api.types.is_string_dtype(out[col].dtype) and out[col].dtype != object:
            out[col] = out[col].astype(object)
    if index is not None:
        out.index = pd.Index(out[index].astype(object), name=None)
    return out


# --------------------------------------------------------------------------- GX


def _manifest_expectations(gxe, frame: str, num_classes: int, splits: list[str]) -> list:
    def meta(what: str, threshold: Any = None) -> dict:
        return {"check": f"{frame}: {what}", "threshold": threshold}

    exps = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=list(REQUIRED_COLUMNS),
            exact_match=False,
            meta=meta("required columns", sorted(REQUIRED_COLUMNS)),
        ),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id", meta=meta("sample_id unique")),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=splits, meta=meta("split values", splits)
        ),
    ]
    for col, types in REQUIRED_COLUMNS.items():
        exps.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=col, type_list=types, meta=meta(f"{col} type", types)
            )
        )
        exps.append(gxe.ExpectColumnValuesToNotBeNull(column=col, meta=meta(f"{col} not null")))
    for col in ("label", "original_label"):
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=0,
                max_value=num_classes - 1,
                meta=meta(f"{col} in [0, {num_classes})", [0, num_classes - 1]),
            )
        )
    return exps


def _run_checkpoint(frames: dict[str, pd.DataFrame], suites: dict[str, list]):
    """Run one GX checkpoint with a validation definition per frame; return its result."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        progress_bars=ProgressBarsConfig(globally=False),
    )
    context = gx.get_context(mode="ephemeral", project_config=config)
    source = context.data_sources.add_pandas("deletion_request")
    definitions = []
    with tempfile.TemporaryDirectory(prefix="uib-gx-") as tmp:
        for name, frame in frames.items():
            path = Path(tmp) / f"{name}.pkl"
            with path.open("wb") as f:
                pickle.dump(frame, f, protocol=pickle.HIGHEST_PROTOCOL)
            batch = source.add_pickle_asset(name, filepath_or_buffer=path)
            suite = context.suites.add(gx.ExpectationSuite(name=f"{name}_suite"))
            for expectation in suites[name]:
                suite.add_expectation(expectation)
            definitions.append(
                context.validation_definitions.add(
                    gx.ValidationDefinition(
                        name=name,
                        data=batch.add_batch_definition_whole_dataframe("whole"),
                        suite=suite,
                    )
                )
            )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name="deletion_request_shift",
                validation_definitions=definitions,
                actions=[],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10},
            )
        )
        return checkpoint.run()


def _row_key(index: Any) -> Any:
    """The id of a failing row as GX reports it (`{"sample_id": "x"}` -> `"x"`)."""
    if isinstance(index, dict):
        for key in ("sample_id", "label", "key"):
            if key in index:
                return index[key]
    return index


def _checks_from(result) -> list[Check]:
    from great_expectations.util import convert_to_json_serializable

    checks = []
    for run in result.run_results.values():
        for r in run.results:
            meta = r.expectation_config.meta or {}
            res = r.result or {}
            if r.exception_info.get("raised_exception") or any(
                isinstance(v, dict) and v.get("raised_exception") for v in r.exception_info.values()
            ):
                observed: Any = "could not be evaluated (column missing or wrong type)"
            elif "observed_value" in res:
                observed = res["observed_value"]
            else:
                observed = {
                    "unexpected": res.get("unexpected_count", 0),
                    "examples": [
                        _row_key(i) for i in res.get("partial_unexpected_index_list", [])[:5]
                    ],
                }
            checks.append(
                Check(
                    name=meta.get("check", r.expectation_config.type),
                    success=bool(r.success),
                    observed=convert_to_json_serializable(observed),
                    threshold=meta.get("threshold"),
                )
            )
    return checks


def _result_json(result) -> dict:
    return {
        "name": result.name,
        "success": bool(result.success),
        "run_id": result.run_id.to_json_dict(),
        "validation_results": [run.to_json_dict() for run in result.run_results.values()],
    }


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

    Manifests hold one row per sample (`sample_id, split, label, original_label, source,
    corruption, patched`); the retain manifest may include test rows, the forget manifest
    must hold training rows only. Distributions are compared over training rows.
    `num_classes` defaults to the largest label of the original manifest plus one.
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

    orig_train, retain_train = _train(original_manifest), _train(retain_manifest)
    forget_fraction = len(forget_manifest) / max(len(orig_train), 1)
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
    attributes = _attribute_frame(orig_train, retain_train)
    summary = pd.DataFrame(
        {"forget_fraction": [forget_fraction], "label_kl": [kl], "n_forget": [len(forget_manifest)]}
    )

    frames = {
        "original": _as_gx_frame(original_manifest, "sample_id"),
        "retain": _as_gx_frame(retain_manifest, "sample_id"),
        "forget": _as_gx_frame(forget_manifest, "sample_id"),
        "requested": _as_gx_frame(pd.DataFrame({"sample_id": requested}), "sample_id"),
        "shift": summary,
        "classes": _as_gx_frame(present, "label"),
        "attributes": attributes,
    }
    suites = _suites(policy, num_classes, forget_manifest, len(original_manifest))
    result = _run_checkpoint(frames, suites)
    return ValidationReport(
        success=bool(result.success),
        checks=_checks_from(result),
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
        gx_result=_result_json(result),
    )


def _suites(
    policy: ShiftPolicy, num_classes: int, forget: pd.DataFrame, n_original: int
) -> dict[str, list]:
    import great_expectations.expectations as gxe

    forget_ids = sorted(forget["sample_id"].astype(str).unique())
    min_count = 0 if policy.allow_class_removal else 1
    return {
        "original": _manifest_expectations(gxe, "original", num_classes, ["train", "test"]),
        "retain": [
            *_manifest_expectations(gxe, "retain", num_classes, ["train", "test"]),
            gxe.ExpectColumnValuesToNotBeInSet(
                column="sample_id",
                value_set=forget_ids,
                meta={"check": "no id in both retain and forget", "threshold": 0},
            ),
            gxe.ExpectTableRowCountToEqual(
                value=n_original - len(forget),
                meta={
                    "check": "retain rows = original rows - forget rows",
                    "threshold": n_original - len(forget),
                },
            ),
        ],
        "forget": _manifest_expectations(gxe, "forget", num_classes, ["train"]),
        "requested": [
            gxe.ExpectColumnValuesToBeInSet(
                column="sample_id",
                value_set=forget_ids,
                meta={"check": "every requested id in the forget set", "threshold": 0},
            )
        ],
        "shift": [
            gxe.ExpectColumnMaxToBeBetween(
                column="forget_fraction",
                max_value=policy.max_forget_fraction,
                meta={"check": "forget fraction", "threshold": policy.max_forget_fraction},
            ),
            gxe.ExpectColumnMaxToBeBetween(
                column="label_kl",
                max_value=policy.label_kl_tolerance,
                meta={
                    "check": "label KL(retain || original)",
                    "threshold": policy.label_kl_tolerance,
                },
            ),
        ],
        "classes": [
            gxe.ExpectColumnValuesToBeBetween(
                column="count_after",
                min_value=min_count,
                meta={
                    "check": "no class removed from retain"
                    + (" (removal allowed by policy)" if policy.allow_class_removal else ""),
                    "threshold": min_count,
                },
            )
        ],
        "attributes": [
            gxe.ExpectColumnValuesToBeBetween(
                column="shift",
                max_value=policy.attribute_tolerance,
                meta={"check": "attribute share shift", "threshold": policy.attribute_tolerance},
            )
        ],
    }


@task(name="validate-shift")
def validate_shift_task(
    original_manifest: pd.DataFrame,
    retain_manifest: pd.DataFrame,
    forget_manifest: pd.DataFrame,
    requested_ids: Iterable[str],
    policy: ShiftPolicy | None = None,
    num_classes: int | None = None,
    request_id: str | None = None,
) -> ValidationReport:
    """`validate_shift`, plus the report table as a Prefect Markdown artifact."""
    from prefect.artifacts import create_markdown_artifact

    report = validate_shift(
        original_manifest, retain_manifest, forget_manifest, requested_ids, policy, num_classes
    )
    key = None
    if request_id:
        key = "shift-" + re.sub(r"[^a-z0-9-]", "-", request_id.lower())
    create_markdown_artifact(
        markdown=report.to_markdown(), key=key, description="Data shift validation (GX)"
    )
    return report
