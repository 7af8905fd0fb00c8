"""Attribute tables a team brings along its data: a CSV or Parquet file, one row per sample.

Parquet keeps the dtypes it stores. CSV has no dtypes, so one rule types its columns: pandas'
reading (integers → int64, decimals → float64, True/False → bool, the rest text), then a text
column whose every non-empty value is an ISO 8601 date or date-time (`2024-03-01`,
`2024-03-01T12:30:00`, `2024-03-01 12:30:00+01:00`) becomes datetime64[ns]. Key columns
(ids, paths) always stay text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from uib.samples import DataError

ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?)?(Z|[+-]\d{2}:?\d{2})?")


def read_table(path: Path, text_columns: tuple[str, ...]) -> pd.DataFrame:
    """The rows of the `.csv` or `.parquet` file `path`, attribute columns typed as above.

    A file that cannot be read or parsed is a `DataError` naming it.
    """
    try:
        if path.suffix == ".parquet":
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(
                path,
                dtype=dict.fromkeys(text_columns, "str"),
                keep_default_na=False,
                na_values=[""],
            )
            table = _parse_iso_dates(table, path, text_columns)
    except (OSError, ValueError, pd.errors.ParserError) as err:
        raise DataError(f"{path}: cannot read the table ({err})") from err
    for column in text_columns:
        if column in table.columns:
            table[column] = table[column].astype("str")
    return table


def _parse_iso_dates(table: pd.DataFrame, path: Path, skip: tuple[str, ...]) -> pd.DataFrame:
    for column in table.columns:
        values = table[column]
        if column in skip or not pd.api.types.is_string_dtype(values):
            continue
        present = values.dropna().astype(str)
        if present.empty or not present.map(lambda v: bool(ISO_DATE.fullmatch(v))).all():
            continue
        try:
            parsed = pd.to_datetime(values, format="ISO8601")
        except (ValueError, TypeError) as err:
            raise DataError(
                f"{path}: column {column!r} holds ISO dates that do not parse as one kind "
                f"(mixed time zones?): {err}"
            ) from err
        tz = getattr(parsed.dtype, "tz", None)
        table[column] = parsed.astype(f"datetime64[ns, {tz}]" if tz else "datetime64[ns]")
    return table
