"""MNIST's IDX gzip files: the four files of a directory, each checked down to its header."""

from __future__ import annotations

import gzip
import hashlib
import zlib
from pathlib import Path

import numpy as np

from uib.samples import DataError

NUM_CLASSES = 10  # the IDX sources are digit sets: labels 0..9

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

Split = tuple[np.ndarray, np.ndarray]  # images float32 (N, H, W) in [0, 1], labels int64 (N,)


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
