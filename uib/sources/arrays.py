"""`arrays:PATH`: a whole data set in one `.npz` or one Parquet file.

`.npz` (read with allow_pickle=False, so text arrays must be NumPy unicode, not objects):

    x            images (N, C, H, W) or (N, H, W) (one channel), or tabular features (N, F)
    y            integer labels (N,)
    sample_id    text ids (N,), unique over both splits
    split        "train" or "test" (N,)
    class_names  optional text (K,): class k's name; K is then the number of classes
    any other    a 1-d array of length N: an attribute column of the manifest, its dtype kept
                 (bool, integers, floats, text, datetime64)

`.parquet`: one row per sample with the columns `x` (a list of numbers: the sample's values,
flattened in C order), `y`, `sample_id`, `split` and any attribute columns. The file's schema
metadata may hold `uib.x_shape` (JSON, e.g. `[3, 32, 32]`: each row's x is reshaped to it;
without it x is tabular, (N, F)) and `uib.class_names` (JSON list of names). `write_parquet`
writes this layout.

Images (x of 3 or 4 dimensions) are uint8 (divided by 255) or floats in [0, 1]; features are
any finite numbers. Without class names the number of classes is the largest label plus one.
Rows keep their file order within each split.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd

from uib.dataset import SPLITS, SourceData
from uib.samples import DataError, Samples
from uib.sources.registry import source

REQUIRED = ("x", "y", "sample_id", "split")
SHAPE_KEY, NAMES_KEY = b"uib.x_shape", b"uib.class_names"


@source(
    "arrays",
    "arrays:<file.npz|file.parquet>",
    "x, y, sample_id, split and attribute arrays in one .npz or Parquet file",
    "an .npz or .parquet file",
)
def read_arrays(arg: str, data_dir: Path | None) -> SourceData:
    path = Path(arg)
    if not path.is_file():
        raise DataError(f"arrays {path}: no such file")
    if path.suffix == ".npz":
        columns, names = _read_npz(path)
    elif path.suffix == ".parquet":
        columns, names = _read_parquet(path)
    else:
        raise DataError(f"arrays {path}: expected an .npz or a .parquet file")
    return to_source_data(path, columns, names)


def _read_npz(path: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {name: npz[name] for name in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise DataError(f"arrays {path}: cannot read ({err})") from err
    names = arrays.pop("class_names", None)
    if names is not None and names.ndim != 1:
        raise DataError(f"arrays {path}: class_names must be 1-d, got shape {names.shape}")
    return arrays, None if names is None else tuple(str(n) for n in names)


def _read_parquet(path: Path) -> tuple[dict[str, np.ndarray], tuple[str, ...] | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException) as err:
        raise DataError(f"arrays {path}: cannot read ({err})") from err
    meta = table.schema.metadata or {}
    try:
        shape = json.loads(meta[SHAPE_KEY]) if SHAPE_KEY in meta else None
        names = json.loads(meta[NAMES_KEY]) if NAMES_KEY in meta else None
    except json.JSONDecodeError as err:
        raise DataError(f"arrays {path}: metadata uib.* is not JSON ({err})") from err
    frame = table.to_pandas()
    if "x" not in frame.columns:
        raise DataError(f"arrays {path}: no column 'x' (each row's values, as a list)")
    columns = {c: frame[c].to_numpy() for c in frame.columns if c != "x"}
    columns["x"] = _stack_rows(path, frame, shape)
    return columns, None if names is None else tuple(str(n) for n in names)


def _stack_rows(path: Path, frame: pd.DataFrame, shape: list[int] | None) -> np.ndarray:
    """The list column `x` as one array (N, *shape), or (N, F) without a shape."""
    ids = frame["sample_id"].astype(str).to_numpy() if "sample_id" in frame else None
    rows = frame["x"].to_numpy()
    bad = [k for k, row in enumerate(rows) if row is None]
    lengths = {len(row) for row in rows if row is not None}
    if bad or len(lengths) > 1:
        where = [ids[k] if ids is not None else k for k in bad[:5]]
        raise DataError(
            f"arrays {path}: column x needs one list of one length per row; "
            f"empty at {where}, lengths {sorted(lengths)[:5]}"
        )
    x = np.stack([np.asarray(row) for row in rows]) if len(rows) else np.zeros((0, 0))
    if shape is None:
        return x
    if int(np.prod(shape)) != x.shape[1]:
        raise DataError(
            f"arrays {path}: uib.x_shape {shape} holds {int(np.prod(shape))} values, "
            f"rows of x hold {x.shape[1]}"
        )
    return x.reshape(len(x), *shape)


def to_source_data(
    path: Path, columns: dict[str, np.ndarray], class_names: tuple[str, ...] | None
) -> SourceData:
    """The samples of `columns` (x, y, sample_id, split and attributes), train then test."""
    missing = [name for name in REQUIRED if name not in columns]
    if missing:
        raise DataError(f"arrays {path}: missing arrays {missing}; need {list(REQUIRED)}")
    n = len(columns["x"])
    for name, values in columns.items():
        if name != "x" and (values.ndim != 1 or len(values) != n):
            raise DataError(
                f"arrays {path}: {name} must be 1-d of length {n} (one value per sample), "
                f"got shape {values.shape}"
            )
    ids = columns["sample_id"].astype(str)
    x = _inputs(path, columns["x"], ids)
    y = _labels(path, columns["y"], ids)
    split = columns["split"].astype(str)
    unknown = sorted(str(v) for v in set(split) - set(SPLITS))
    if unknown:
        at = ids[~np.isin(split, SPLITS)][:5].tolist()
        raise DataError(
            f"arrays {path}: unknown split values {unknown[:5]} (at {at}); "
            "the splits are train and test"
        )
    order = np.concatenate([np.flatnonzero(split == s) for s in SPLITS])
    attributes = pd.DataFrame(
        {name: values[order] for name, values in columns.items() if name not in REQUIRED}
    )
    samples = {s: Samples(x[split == s], y[split == s], ids[split == s]) for s in SPLITS}
    return SourceData(samples["train"], samples["test"], attributes, class_names)


def _inputs(path: Path, x: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """float32 x: images (N, C, H, W) in [0, 1] or features (N, F)."""
    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"arrays {path}: x must hold numbers, got dtype {x.dtype}")
    if x.ndim == 2:
        return x.astype(np.float32)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise DataError(
            f"arrays {path}: x must be (N, C, H, W), (N, H, W) or (N, F), got {x.shape}"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    flat = x.reshape(len(x), -1)
    outside = ~((flat >= 0) & (flat <= 1)).all(axis=1)
    if outside.any():
        raise DataError(
            f"arrays {path}: image values must be uint8 or in [0, 1]; samples "
            f"{ids[outside][:5].tolist()} are not"
        )
    return x.astype(np.float32)


def _labels(path: Path, y: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """int64 labels; missing (NaN) or non-integer labels are refused, naming their samples."""
    if np.issubdtype(y.dtype, np.integer):
        return y.astype(np.int64)
    if not np.issubdtype(y.dtype, np.floating):
        try:
            y = y.astype(np.float64)  # an object column of numbers and Nones
        except (TypeError, ValueError):
            raise DataError(f"arrays {path}: y must hold integer labels, got {y.dtype}") from None
    missing = np.isnan(y)
    if missing.any():
        raise DataError(f"arrays {path}: missing labels at samples {ids[missing][:5].tolist()}")
    fractional = y != np.round(y)
    if fractional.any():
        raise DataError(
            f"arrays {path}: non-integer labels {y[fractional][:5].tolist()} at samples "
            f"{ids[fractional][:5].tolist()}"
        )
    return y.astype(np.int64)


def write_parquet(
    path: Path,
    x: np.ndarray,
    y: np.ndarray,
    sample_id: np.ndarray,
    split: np.ndarray,
    attributes: pd.DataFrame | None = None,
    class_names: list[str] | None = None,
) -> Path:
    """Write the Parquet layout above; x of more than two dimensions records its shape."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    frame = pd.DataFrame(
        {"x": list(x.reshape(len(x), -1)), "y": y, "sample_id": sample_id, "split": split}
    )
    if attributes is not None:
        frame = pd.concat([frame, attributes.reset_index(drop=True)], axis=1)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    meta = dict(table.schema.metadata or {})
    if x.ndim > 2:
        meta[SHAPE_KEY] = json.dumps(list(x.shape[1:])).encode()
    if class_names is not None:
        meta[NAMES_KEY] = json.dumps(list(class_names)).encode()
    pq.write_table(table.replace_schema_metadata(meta), path)
    return path
