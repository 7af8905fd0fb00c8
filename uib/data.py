"""Data sets: scikit-learn's 8×8 digits, MNIST from its IDX gzip files, or any IDX directory.

Every sample gets a stable id (`digits-train-00012`) from its position in its source split, and a
row in the manifest; scenarios change the data and the manifest, never the ids.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from uib.samples import DataError, Samples

NUM_CLASSES = 10
SPLITS = ("train", "test")
MNIST_DIR_ENV = "UIB_MNIST_DIR"

MANIFEST_COLUMNS = {
    "sample_id": "str",
    "split": "str",
    "label": "int64",
    "original_label": "int64",
    "source": "str",
    "corruption": "str",
    "patched": "bool",
}

IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

# The shared 24,000-sample training subset first, then the official full-size file.
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": (
        "c78651b59434abca47ceeb4122b408ce",
        "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ),
    "train-labels-idx1-ubyte.gz": (
        "23f42a78278f1d1ae799d81112715b98",
        "d53e105ee54ea40749a09fcbcd1e9432",
    ),
    "t10k-images-idx3-ubyte.gz": ("9fb629c4189551a2d022fa330f9573f3",),
    "t10k-labels-idx1-ubyte.gz": ("ec29112dd5afa0611ce80d1b7f02629c",),
}

IDX_IMAGES_MAGIC = 2051
IDX_LABELS_MAGIC = 2049


@dataclass(frozen=True)
class Dataset:
    """A train and a test split plus the manifest: one row per sample of both splits."""

    name: str
    train: Samples
    test: Samples
    manifest: pd.DataFrame
    num_classes: int = NUM_CLASSES

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.train.x.shape[1:])

    def with_train(self, train: Samples, manifest: pd.DataFrame) -> Dataset:
        return dataclasses.replace(self, train=train, manifest=manifest)


Split = tuple[np.ndarray, np.ndarray]  # images float32 (N, H, W) in [0, 1], labels int64 (N,)
Loader = Callable[[str, Path | None], dict[str, Split]]


def _digits(arg: str, data_dir: Path | None) -> dict[str, Split]:
    """scikit-learn's digits, split 75/25 stratified with a fixed seed that no scenario touches."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if arg:
        raise DataError(f"dataset: 'digits' takes no argument, got 'digits:{arg}'")
    bunch = load_digits()
    x = (bunch.images / 16.0).astype(np.float32)
    y = bunch.target.astype(np.int64)
    parts = train_test_split(np.arange(len(y)), test_size=0.25, stratify=y, random_state=0)
    rows = dict(zip(SPLITS, map(np.sort, parts), strict=True))
    return {split: (x[r], y[r]) for split, r in rows.items()}


def _mnist(arg: str, data_dir: Path | None) -> dict[str, Split]:
    if arg:
        raise DataError(f"dataset: 'mnist' takes no argument, got 'mnist:{arg}' (use 'idx:{arg}')")
    where = data_dir or os.environ.get(MNIST_DIR_ENV)
    if not where:
        raise DataError(
            f"dataset 'mnist': no data directory; pass data_dir or set {MNIST_DIR_ENV} to a "
            f"directory holding {', '.join(f for pair in IDX_FILES.values() for f in pair)}"
        )
    return read_idx_dir(Path(where), MNIST_MD5)


def _idx(arg: str, data_dir: Path | None) -> dict[str, Split]:
    if not arg:
        raise DataError("dataset: 'idx:' needs a directory, e.g. 'idx:/data/fashion-mnist'")
    return read_idx_dir(Path(arg), None)


LOADERS: dict[str, Loader] = {"digits": _digits, "mnist": _mnist, "idx": _idx}


def available() -> list[str]:
    return ["digits", "mnist", "idx:<dir>"]


def read_idx_dir(directory: Path, md5s: dict[str, tuple[str, ...]] | None) -> dict[str, Split]:
    """The train and test splits of the four IDX gzip files in `directory`.

    `md5s` maps a file name to the checksums accepted for it; None skips the check.
    """
    splits = {}
    for split, (image_name, label_name) in IDX_FILES.items():
        image_path, label_path = directory / image_name, directory / label_name
        known = md5s or {}
        images = read_idx(image_path, IDX_IMAGES_MAGIC, known.get(image_name))
        labels = read_idx(label_path, IDX_LABELS_MAGIC, known.get(label_name))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{image_path}, {label_path}: expected 3-d images and 1-d labels")
        if len(images) != len(labels):
            raise DataError(
                f"{image_path} holds {len(images)} images but {label_path} {len(labels)} labels"
            )
        if len(labels) and labels.max() >= NUM_CLASSES:
            raise DataError(
                f"{label_path}: labels must be in [0, {NUM_CLASSES}), got {labels.max()}"
            )
        splits[split] = (images.astype(np.float32) / 255.0, labels.astype(np.int64))
    if splits["train"][0].shape[1:] != splits["test"][0].shape[1:]:
        raise DataError(
            f"{directory}: train images are {splits['train'][0].shape[1:]}, "
            f"test images {splits['test'][0].shape[1:]}"
        )
    return splits


def read_idx(path: Path, magic: int, md5s: tuple[str, ...] | None = None) -> np.ndarray:
    """The uint8 array of one gzipped IDX file, its shape read from the header.

    Any defect (missing, unknown md5, not gzip, wrong magic, too short or too long) is a
    `DataError` naming `path`.
    """
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror or err})") from err
    if md5s is not None:
        digest = hashlib.md5(raw).hexdigest()
        if digest not in md5s:
            raise DataError(f"{path}: md5 {digest} is none of the known {', '.join(md5s)}")
    try:
        data = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: not a complete gzip file ({err})") from err
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path}: truncated, {len(data)} bytes is shorter than the IDX header")
    found = int.from_bytes(data[:4], "big")
    if found != magic:
        raise DataError(f"{path}: IDX magic number {found}, expected {magic}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape))
    if len(data) - header != expected:
        raise DataError(
            f"{path}: header announces {shape} = {expected} bytes of data, file holds "
            f"{len(data) - header}"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(shape)


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
            "source": np.full(n, "clean", dtype=object),
            "corruption": np.full(n, "none", dtype=object),
            "patched": np.zeros(n, dtype=bool),
        }
    )
    return frame.astype(MANIFEST_COLUMNS)


def load_dataset(name: str = "digits", data_dir: str | Path | None = None) -> Dataset:
    """`digits`, `mnist` (from `data_dir` or $UIB_MNIST_DIR, checksummed) or `idx:<dir>`."""
    short, _, arg = name.partition(":")
    if short not in LOADERS:
        raise DataError(f"dataset: unknown {name!r}; known: {', '.join(available())}")
    splits = LOADERS[short](arg, Path(data_dir) if data_dir else None)
    samples, frames = {}, []
    for split, (x, y) in splits.items():
        ids = make_ids(short, split, len(y))
        samples[split] = Samples(x[:, None], y, ids)
        frames.append(make_manifest(ids, split, y))
    manifest = pd.concat(frames, ignore_index=True)
    return Dataset(name, samples["train"], samples["test"], manifest, NUM_CLASSES)
