"""The schema a deletion request's manifests are held to, read from the original manifest.

Not a fixed list: the core columns `sample_id, split, label, original_label` with their
kinds, then every other column of the original with the GX type names of its kind, whether it
may hold missing values (only where the original does), its range (numbers and dates) and
whether it is categorical, so that its value shares are compared before and after a request:

    bool                      always
    text                      at most MAX_TEXT_CATEGORIES values (more: an identifier, a path)
    integer                   at most MAX_INTEGER_CATEGORIES values (more: a measure, an age)
    float, datetime, other    never (numbers and dates get a range instead)

counted over the original's training rows. `tasks.shift_expectations` turns it into expectations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from tasks.predicates import ColumnKind, column_kind

CORE_COLUMNS: dict[str, ColumnKind] = {
    "sample_id": "text",
    "split": "text",
    "label": "integer",
    "original_label": "integer",
}
MAX_INTEGER_CATEGORIES, MAX_TEXT_CATEGORIES = 20, 1000
# GX type names by kind; an object column's are the Python types of its values
GX_TYPES: dict[str, list[str]] = {
    "text": ["str"],
    "integer": ["int64", "int32", "int16", "int8", "uint64", "uint32", "uint16", "uint8"],
    "float": ["float64", "float32", "float16"],
    "bool": ["bool"],
    "datetime": [f"datetime64[{unit}]" for unit in ("ns", "us", "ms", "s")],
}


@dataclass(frozen=True)
class ManifestColumn:
    """What one column of the original manifest asks of every manifest of a request."""

    name: str
    types: tuple[str, ...]  # GX type names
    not_null: bool
    bounds: tuple[Any, Any] | None  # a number or date attribute's range in the original
    categorical: bool


def manifest_columns(original: pd.DataFrame) -> list[ManifestColumn]:
    """The schema a request's manifests are held to, read from `original` (a `gx_frame`):
    the core columns first, then the original's other columns in its order."""
    train = original[original["split"] == "train"]
    columns = []
    for name in [*CORE_COLUMNS, *(c for c in original.columns if c not in CORE_COLUMNS)]:
        core = CORE_COLUMNS.get(name)
        if name not in original.columns:  # the original's `required columns` check fails
            columns.append(ManifestColumn(name, tuple(GX_TYPES[core]), True, None, False))
            continue
        column = original[name]
        kind = core or column_kind(column)
        distinct = train[name].nunique()
        categorical = not core and (
            kind == "bool"
            or (kind == "text" and distinct <= MAX_TEXT_CATEGORIES)
            or (kind == "integer" and distinct <= MAX_INTEGER_CATEGORIES)
        )
        measured = not core and kind in ("integer", "float", "datetime") and column.notna().any()
        columns.append(
            ManifestColumn(
                name=name,
                types=_gx_types(column, kind, bool(core)),
                not_null=bool(core) or not column.isna().any(),
                bounds=(_plain(column.min()), _plain(column.max())) if measured else None,
                categorical=categorical,
            )
        )
    return columns


def _gx_types(column: pd.Series, kind: ColumnKind, core: bool) -> tuple[str, ...]:
    """An attribute held as Python objects (text, a CSV's booleans with blanks) is checked
    by the types of the values the original holds; any other column by its dtype's kind."""
    if column.dtype == object and not core:
        return tuple(sorted({type(v).__name__ for v in column.dropna()}) or GX_TYPES["text"])
    return tuple(GX_TYPES.get(kind) or [str(column.dtype)])


def _plain(value: Any) -> Any:
    """A bound as GX takes it: a Python number or datetime (whole microseconds, outward)."""
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime() if value.nanosecond == 0 else value.ceil("us").to_pydatetime()
    return value.item() if isinstance(value, np.generic) else value


def shown(value: Any) -> Any:
    """A bound as a report shows it: a date in ISO form."""
    return value.isoformat() if hasattr(value, "isoformat") else value
