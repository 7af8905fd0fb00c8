"""The shard format of a data version: deterministic uncompressed `.npz` files and the manifest.

Each shard is an uncompressed `.npz` (`x` float32, or `x_u8` when `x == x_u8 / 255` holds
bit-for-bit, plus `y` int64 and `ids`) written with fixed zip metadata, so the same samples
always give the same bytes and the same DVC object. Shards are stored uncompressed so that a
search of the raw object bytes for a sample's image is a real test of its absence.
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from uib.dataset import is_text
from uib.samples import DataError, Samples

_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed `.npz` whose bytes depend only on the arrays (no timestamps)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def _decode_u8(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(255)


def encode_shard(samples: Samples) -> dict[str, np.ndarray]:
    """The arrays of one shard; `x` as uint8 only when decoding gives back the same float32 bits."""
    x = np.ascontiguousarray(samples.x, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {}
    q = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    if np.array_equal(_decode_u8(q).view(np.uint32), x.view(np.uint32)):
        arrays["x_u8"] = q
    else:
        arrays["x"] = x
    arrays["y"] = np.asarray(samples.y, dtype=np.int64)
    arrays["ids"] = np.asarray(samples.ids, dtype=str)
    return arrays


def decode_shard(data: bytes | Path) -> Samples:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source, allow_pickle=False) as npz:
        x = _decode_u8(npz["x_u8"]) if "x_u8" in npz.files else npz["x"]
        return Samples(x, npz["y"], npz["ids"])


def read_staged(path: Path) -> Samples:
    """The forget set that `remove_samples` staged for a run."""
    return decode_shard(Path(path))


def concat_samples(parts: list[Samples], image_shape: tuple[int, ...]) -> Samples:
    if not parts:
        return Samples(
            np.zeros((0, *image_shape), np.float32), np.zeros(0, np.int64), np.zeros(0, str)
        )
    return Samples(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.ids for p in parts]),
    )


def manifest_dtypes(manifest: pd.DataFrame) -> dict[str, str]:
    """{column: dtype name} as `dataset.json` records it, for `read_manifest` to restore."""
    return {str(c): str(t) for c, t in manifest.dtypes.items()}


def write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    manifest.to_csv(path, index=False, lineterminator="\n")


def read_manifest(data: bytes, dtypes: dict[str, str]) -> pd.DataFrame:
    """The manifest CSV in the dtypes it was written with. CSV cannot carry datetimes, so
    those columns are read as text and parsed (ISO 8601, as `to_csv` writes them) back into
    their recorded dtype, time zone and resolution included."""
    dates = {c: t for c, t in dtypes.items() if t.startswith("datetime64")}
    others = {c: t for c, t in dtypes.items() if c not in dates}
    frame = pd.read_csv(
        io.BytesIO(data),
        dtype={**others, **dict.fromkeys(dates, "str")},
        keep_default_na=False,
        na_values=[""],
    )
    for column, dtype in dates.items():
        zoned = "," in dtype  # datetime64[ns, Europe/Berlin]: offsets may differ row to row
        parsed = pd.to_datetime(frame[column], format="ISO8601", utc=zoned)
        frame[column] = parsed.astype(dtype)
    return frame


def storable(column: pd.Series) -> bool:
    """Whether `read_manifest` gives `column` back as written: bools, numbers, text, datetimes."""
    dtype = column.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        return True
    if pd.api.types.is_numeric_dtype(dtype):
        return not pd.api.types.is_complex_dtype(dtype)
    return is_text(column)


def json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def as_id_array(ids: Iterable[str], field: str = "ids") -> np.ndarray:
    """Sorted unique ids as a str array; none at all is a `DataError` naming `field`."""
    array = np.unique(np.asarray([str(i) for i in ids], dtype=str))
    if array.size == 0:
        raise DataError(f"{field}: no sample ids given")
    return array
