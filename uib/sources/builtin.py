"""The built-in sources: scikit-learn's 8×8 digits, MNIST from its IDX gzip files, any IDX directory.

Every sample gets a stable id (`digits-train-00012`) from its position in its source split, and
the clean attributes `source`, `corruption`, `patched` that scenarios mark. Ids, order and
manifest are fixed: the shipped data version (`data.dvc`) depends on them byte for byte.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from uib.dataset import MANIFEST_COLUMNS, SPLITS, SourceData, clean_attributes
from uib.samples import DataError, Samples
from uib.sources.idx import IDX_FILES, MNIST_MD5, NUM_CLASSES, Split, read_idx_dir
from uib.sources.registry import source

MNIST_DIR_ENV = "UIB_MNIST_DIR"


def make_ids(short: str, split: str, n: int) -> np.ndarray:
    return np.array([f"{short}-{split}-{i:05d}" for i in range(n)], dtype=str)


def make_manifest(ids: np.ndarray, split: str, labels: np.ndarray) -> pd.DataFrame:
    """Manifest rows of clean samples; dtypes as in `MANIFEST_COLUMNS`."""
    n = len(ids)
    frame = pd.DataFrame(
        {
            "sample_id": ids,
            "split": np.full(n, split, dtype=object),
            "label": labels,
            "original_label": labels,
        }
    )
    return pd.concat([frame, clean_attributes(n)], axis=1).astype(MANIFEST_COLUMNS)


def _source_data(short: str, splits: dict[str, Split]) -> SourceData:
    """Grey images (N, H, W) as (N, 1, H, W) samples with positional ids, clean attributes."""
    samples = {
        split: Samples(x[:, None], y, make_ids(short, split, len(y)))
        for split, (x, y) in splits.items()
    }
    n = sum(len(s) for s in samples.values())
    return SourceData(
        samples["train"], samples["test"], clean_attributes(n), num_classes=NUM_CLASSES
    )


@source("digits", "digits", "scikit-learn's 8×8 digits, 1,347 train / 450 test")
def read_digits(arg: str, data_dir: Path | None) -> SourceData:
    """scikit-learn's digits, split 75/25 stratified with a fixed seed that no scenario touches."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    parts = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    rows = dict(zip(SPLITS, map(np.sort, parts), strict=True))
    return _source_data("digits", {split: (x[r], y[r]) for split, r in rows.items()})


@source("mnist", "mnist", f"MNIST's IDX files from data_dir or ${MNIST_DIR_ENV}, checksummed")
def read_mnist(arg: str, data_dir: Path | None) -> SourceData:
    where = data_dir or os.environ.get(MNIST_DIR_ENV)
    if not where:
        raise DataError(
            f"dataset 'mnist': no data directory; pass data_dir or set {MNIST_DIR_ENV} to a "
            f"directory holding {', '.join(f for pair in IDX_FILES.values() for f in pair)}"
        )
    return _source_data("mnist", read_idx_dir(Path(where), MNIST_MD5))


@source("idx", "idx:<dir>", "the four IDX gzip files of a directory, unchecksummed", "a directory")
def read_idx_source(arg: str, data_dir: Path | None) -> SourceData:
    return _source_data("idx", read_idx_dir(Path(arg), None))
