"""Data sources a team brings: `arrays:FILE` (an `.npz` or a Parquet table of images or
feature rows); `folder:DIR` is in test_sources.py.

Arrays load with their class names, image shapes and attribute dtypes, and bad input is refused
by name.
"""

import numpy as np
import pandas as pd
import pytest
from test_sources import EXPECTED_DTYPES

from uib.data import load_dataset
from uib.samples import DataError
from uib.sources.arrays import write_parquet


def npz_arrays(n=40, classes=4, shape=(3, 5, 5), seed=0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x": rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        "y": np.arange(n) % classes,
        "sample_id": np.array([f"row-{k}" for k in range(n)]),
        "split": np.where(np.arange(n) % 4 == 3, "test", "train"),
        "device": np.array([f"scanner-{k % 2}" for k in range(n)]),
        "consent_withdrawn": np.arange(n) % 7 == 0,
        "collected_at": np.datetime64("2024-01-01") + np.arange(n).astype("timedelta64[D]"),
        "score": rng.random(n),
    }


def test_npz_images_load_with_class_names_and_attribute_dtypes(tmp_path):
    arrays = npz_arrays()
    path = tmp_path / "data.npz"
    np.savez(path, **arrays, class_names=np.array(["a", "b", "c", "d"]))
    ds = load_dataset(f"arrays:{path}")
    assert ds.class_names == ("a", "b", "c", "d") and ds.num_classes == 4
    assert ds.train.x.shape == (30, 3, 5, 5) and ds.test.x.shape == (10, 3, 5, 5)
    train = arrays["split"] == "train"
    np.testing.assert_array_equal(ds.train.x, arrays["x"][train] / np.float32(255))
    np.testing.assert_array_equal(ds.test.ids, arrays["sample_id"][~train])
    dtypes = {c: str(t) for c, t in ds.manifest.dtypes.items()}
    assert dtypes == {
        **{c: EXPECTED_DTYPES[c] for c in ("sample_id", "split", "label", "original_label")},
        "device": "str",
        "consent_withdrawn": "bool",
        "collected_at": "datetime64[ns]",
        "score": "float64",
    }
    rows = ds.manifest.set_index("sample_id")
    assert rows.loc["row-3", "collected_at"] == pd.Timestamp("2024-01-04")


def test_tabular_npz_and_parquet_give_n_by_f_features(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 7)).astype(np.float32)  # negative features are fine
    y, ids = np.arange(30) % 3, np.array([f"p{k}" for k in range(30)])
    split = np.where(np.arange(30) < 24, "train", "test")
    np.savez(tmp_path / "t.npz", x=x, y=y, sample_id=ids, split=split)
    write_parquet(tmp_path / "t.parquet", x, y, ids, split, class_names=["lo", "mid", "hi"])
    for name in ("t.npz", "t.parquet"):
        ds = load_dataset(f"arrays:{tmp_path / name}")
        assert ds.image_shape == (7,) and ds.num_classes == 3
        np.testing.assert_array_equal(ds.train.x, x[:24])
    assert ds.class_names == ("lo", "mid", "hi")


def test_parquet_images_keep_their_shape_and_attributes(tmp_path):
    arrays = npz_arrays(shape=(1, 4, 6))
    attributes = pd.DataFrame({k: arrays[k] for k in ("device", "consent_withdrawn", "score")})
    path = write_parquet(
        tmp_path / "d.parquet",
        arrays["x"].astype(np.float32) / 255,
        arrays["y"],
        arrays["sample_id"],
        arrays["split"],
        attributes,
    )
    ds = load_dataset(f"arrays:{path}")
    assert ds.image_shape == (1, 4, 6) and ds.class_names == ("0", "1", "2", "3")
    np.testing.assert_allclose(ds.train.x[0], arrays["x"][0] / 255, rtol=1e-6)
    assert str(ds.manifest["consent_withdrawn"].dtype) == "bool"


def _with(**changes):
    def edit(arrays):
        for name, value in changes.items():
            if callable(value):
                arrays[name] = value(arrays[name])
            elif value is None:
                del arrays[name]
            else:
                arrays[name] = value
        return arrays

    return edit


def _at(index, value):
    def edit(array):
        array = array.astype(type(value)) if isinstance(value, float) else array.copy()
        array[index] = value
        return array

    return edit


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (_with(sample_id=_at(5, "row-4")), r"sample_id used twice: \['row-4'\]"),
        (_with(y=_at(2, float("nan"))), r"missing labels at samples \['row-2'\]"),
        (_with(y=_at(6, 1.5)), r"non-integer labels \[1.5\] at samples \['row-6'\]"),
        (_with(y=_at(9, 4)), r"labels out of range \[0, 4\) at samples \['row-9'\]"),
        (_with(split=_at(1, "valid")), r"unknown split values \['valid'\] \(at \['row-1'\]\)"),
        (_with(split=lambda s: np.full(len(s), "train")), r"split 'test' holds no samples"),
        (_with(y=None), r"missing arrays \['y'\]"),
        (_with(score=np.zeros(3)), r"score must be 1-d of length 40"),
        (_with(x=lambda x: x / 100.0), r"image values must be uint8 or in \[0, 1\]"),
    ],
    ids=["duplicate-id", "missing-label", "fractional-label", "label-range", "unknown-split",
         "no-test", "no-y", "short-attribute", "x-range"],
)  # fmt: skip
def test_bad_arrays_are_refused_by_name(tmp_path, edit, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **edit(npz_arrays()), class_names=np.array(list("abcd")))
    with pytest.raises(DataError, match=message):
        load_dataset(f"arrays:{path}")
