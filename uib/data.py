"""Data sets by name: `load_dataset("digits")`, `"mnist"`, `"idx:DIR"`, `"folder:DIR"`,
`"arrays:FILE"` (the registry: `uib.sources`).

Every sample has a stable id and a row in the manifest; scenarios change the data and the
manifest, never the ids. The names other modules import from here stay importable from here.
"""

from __future__ import annotations

from pathlib import Path

from uib.dataset import (
    CLEAN_ATTRIBUTES,
    CORE_COLUMNS,
    MANIFEST_COLUMNS,
    SPLITS,
    Dataset,
    SourceData,
    assemble,
    default_class_names,
)
from uib.sources import available, read_source
from uib.sources.builtin import MNIST_DIR_ENV, make_ids, make_manifest
from uib.sources.idx import (
    IDX_FILES,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    MNIST_MD5,
    NUM_CLASSES,
    read_idx,
    read_idx_dir,
)

__all__ = [
    "CLEAN_ATTRIBUTES",
    "CORE_COLUMNS",
    "IDX_FILES",
    "IDX_IMAGES_MAGIC",
    "IDX_LABELS_MAGIC",
    "MANIFEST_COLUMNS",
    "MNIST_DIR_ENV",
    "MNIST_MD5",
    "NUM_CLASSES",
    "SPLITS",
    "Dataset",
    "SourceData",
    "available",
    "default_class_names",
    "load_dataset",
    "make_ids",
    "make_manifest",
    "read_idx",
    "read_idx_dir",
]


def load_dataset(name: str = "digits", data_dir: str | Path | None = None) -> Dataset:
    """The data set `name` names (see `available()`); `data_dir` is where `mnist` looks."""
    return assemble(name, read_source(name, Path(data_dir) if data_dir else None))
