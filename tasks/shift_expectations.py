"""The GX expectations `tasks.validation.validate_shift` checks a deletion request's frames
against: each manifest's schema, the ids, and the shift policy's bounds."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from tasks.gx_checkpoint import described
from tasks.manifest_schema import CORE_COLUMNS, ManifestColumn, shown

if TYPE_CHECKING:
    from tasks.validation import ShiftPolicy

LABEL_COLUMNS = ("label", "original_label")


def manifest_expectations(
    gxe, frame: str, columns: list[ManifestColumn], num_classes: int, splits: list[str]
) -> list:
    """A manifest's schema: the original needs the core columns, retain and forget all the
    original's; every column its type, no missing value where the original has none, and
    a number or date within the original's range."""
    required = list(CORE_COLUMNS) if frame == "original" else [c.name for c in columns]

    def meta(what: str, threshold: Any = None) -> dict:
        return described(f"{frame}: {what}", threshold)

    exps = [
        gxe.ExpectTableColumnsToMatchSet(
            column_set=required, exact_match=False, meta=meta("required columns", sorted(required))
        ),
        gxe.ExpectColumnValuesToBeUnique(column="sample_id", meta=meta("sample_id unique")),
        gxe.ExpectColumnValuesToBeInSet(
            column="split", value_set=splits, meta=meta("split values", splits)
        ),
    ]
    for col in columns:
        types = list(col.types)
        exps.append(
            gxe.ExpectColumnValuesToBeInTypeList(
                column=col.name, type_list=types, meta=meta(f"{col.name} type", types)
            )
        )
        if col.not_null:
            exps.append(
                gxe.ExpectColumnValuesToNotBeNull(
                    column=col.name, meta=meta(f"{col.name} not null")
                )
            )
        if col.bounds is not None and frame != "original":  # its own range: nothing to check
            low, high = col.bounds
            exps.append(
                gxe.ExpectColumnValuesToBeBetween(
                    column=col.name,
                    min_value=low,
                    max_value=high,
                    meta=meta(f"{col.name} within the original's range", [shown(low), shown(high)]),
                )
            )
    for col in LABEL_COLUMNS:
        exps.append(
            gxe.ExpectColumnValuesToBeBetween(
                column=col,
                min_value=0,
                max_value=num_classes - 1,
                meta=meta(f"{col} in [0, {num_classes})", [0, num_classes - 1]),
            )
        )
    return exps


def shift_suites(
    policy: ShiftPolicy,
    columns: list[ManifestColumn],
    num_classes: int,
    forget: pd.DataFrame,
    n_original: int,
) -> dict[str, list]:
    import great_expectations.expectations as gxe

    forget_ids = sorted(forget["sample_id"].astype(str).unique())
    min_count = 0 if policy.allow_class_removal else 1
    n_retain = n_original - len(forget)
    return {
        "original": manifest_expectations(gxe, "original", columns, num_classes, ["train", "test"]),
        "retain": [
            *manifest_expectations(gxe, "retain", columns, num_classes, ["train", "test"]),
            gxe.ExpectColumnValuesToNotBeInSet(
                column="sample_id",
                value_set=forget_ids,
                meta=described("no id in both retain and forget", 0),
            ),
            gxe.ExpectTableRowCountToEqual(
                value=n_retain,
                meta=described("retain rows = original rows - forget rows", n_retain),
            ),
        ],
        "forget": manifest_expectations(gxe, "forget", columns, num_classes, ["train"]),
        "requested": [
            gxe.ExpectColumnValuesToBeInSet(
                column="sample_id",
                value_set=forget_ids,
                meta=described("every requested id in the forget set", 0),
            )
        ],
        "shift": [
            gxe.ExpectColumnMaxToBeBetween(
                column="forget_fraction",
                max_value=policy.max_forget_fraction,
                meta=described("forget fraction", policy.max_forget_fraction),
            ),
            gxe.ExpectColumnMaxToBeBetween(
                column="label_kl",
                max_value=policy.label_kl_tolerance,
                meta=described("label KL(retain || original)", policy.label_kl_tolerance),
            ),
        ],
        "classes": [
            gxe.ExpectColumnValuesToBeBetween(
                column="count_after",
                min_value=min_count,
                meta=described(
                    "no class removed from retain"
                    + (" (removal allowed by policy)" if policy.allow_class_removal else ""),
                    min_count,
                ),
            )
        ],
        "attributes": [
            gxe.ExpectColumnValuesToBeBetween(
                column="shift",
                max_value=policy.attribute_tolerance,
                meta=described("attribute share shift", policy.attribute_tolerance),
            )
        ],
    }
