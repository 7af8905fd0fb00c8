"""The `Dataset`: both splits, the manifest and the class names, assembled from what a source read.

The manifest has one row per sample, train rows then test rows, each split in sample order. Its
core columns (`CORE_COLUMNS`) are the same for every source; after them come the source's own
attribute columns (`source`, `site`, `collected_at`, ...) with their real dtypes. The built-in
sources carry the clean attributes `source`, `corruption` and `patched` that scenarios mark.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pandas as pd

from uib.samples import DataError, Samples

SPLITS = ("train", "test")
CORE_COLUMNS = {"sample_id": "str", "split": "str", "label": "int64", "original_label": "int64"}
# The attributes scenarios mark, with the value of a sample no scenario touched.
CLEAN_ATTRIBUTES = {"source": "clean", "corruption": "none", "patched": False}
CLEAN_DTYPES = {"source": "str", "corruption": "str", "patched": "bool"}
MANIFEST_COLUMNS = {**CORE_COLUMNS, **CLEAN_DTYPES}  # the built-in sources' manifest


def default_class_names(num_classes: int) -> tuple[str, ...]:
    return tuple(str(k) for k in range(num_classes))


@dataclass(frozen=True)
class Dataset:
    """A train and a test split plus the manifest: one row per sample of both splits.

    `class_names[k]` names class index k; empty means the default names "0".."K-1".
    """

    name: str
    train: Samples
    test: Samples
    manifest: pd.DataFrame
    num_classes: int = 10
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.class_names) or default_class_names(self.num_classes)
        if len(names) != self.num_classes:
            raise DataError(
                f"class_names: {len(names)} names for {self.num_classes} classes: {list(names)}"
            )
        object.__setattr__(self, "class_names", names)

    @property
    def image_shape(self) -> tuple[int, ...]:
        """(C, H, W) of images, or (F,) of tabular features."""
        return tuple(int(d) for d in self.train.x.shape[1:])

    def with_train(self, train: Samples, manifest: pd.DataFrame) -> Dataset:
        return dataclasses.replace(self, train=train, manifest=manifest)


@dataclass(frozen=True)
class SourceData:
    """What a data source read, before `assemble` checks it and builds the manifest.

    `attributes`: the source's own manifest columns, one row per sample, train rows then test
    rows in sample order (None: no attribute). `class_names` fixes the number of classes; without
    names, `num_classes` does; without either, the largest label plus one.
    """

    train: Samples
    test: Samples
    attributes: pd.DataFrame | None = None
    class_names: tuple[str, ...] | None = None
    num_classes: int | None = None


def clean_attributes(n: int) -> pd.DataFrame:
    """The clean attribute columns of `n` samples that no scenario has touched."""
    return pd.DataFrame(
        {column: np.full(n, value) for column, value in CLEAN_ATTRIBUTES.items()}
    ).astype(CLEAN_DTYPES)


def is_text(column: pd.Series) -> bool:
    """A str column, or an object column whose values are all text or missing."""
    if isinstance(column.dtype, pd.CategoricalDtype):
        return False
    if pd.api.types.is_string_dtype(column.dtype) and column.dtype != object:
        return True
    return (
        column.dtype == object
        and column.map(lambda v: isinstance(v, str) or v is None or v != v).all()
    )


def normalise_dtypes(frame: pd.DataFrame, where: str) -> pd.DataFrame:
    """Attribute columns in the dtypes a data version stores: datetimes as datetime64[ns]
    (time zone kept), text as str; integers, floats and bools as they are. Any other kind of
    column (mixed objects, lists, categories) is a `DataError` naming it."""
    out = {}
    for column in frame.columns:
        values = frame[column]
        if pd.api.types.is_datetime64_any_dtype(values):
            tz = getattr(values.dtype, "tz", None)
            out[column] = values.astype(f"datetime64[ns, {tz}]" if tz else "datetime64[ns]")
        elif pd.api.types.is_bool_dtype(values) or pd.api.types.is_numeric_dtype(values):
            out[column] = values
        elif is_text(values):
            out[column] = values.astype("str")
        else:
            raise DataError(
                f"{where}: column {column!r} has values of dtype {values.dtype} that are neither "
                "text, numbers, booleans nor dates"
            )
    return pd.DataFrame(out, index=frame.index)


def _num_classes(data: SourceData, labels: np.ndarray) -> int:
    if data.class_names is not None:
        return len(data.class_names)
    if data.num_classes is not None:
        return data.num_classes
    return int(labels.max()) + 1 if len(labels) else 0


def assemble(name: str, data: SourceData) -> Dataset:
    """The `Dataset` of `data`, once both splits, the labels and the ids are known to be sound.

    Refused with a `DataError` naming the fault: an empty split, train and test shapes that
    differ, labels out of range, a sample id used twice (within or across splits), an
    attribute table of the wrong length or one that reuses a core column name.
    """
    splits = {"train": data.train, "test": data.test}
    for split, samples in splits.items():
        if not len(samples):
            raise DataError(f"{name}: split {split!r} holds no samples; need train and test")
    if data.train.x.shape[1:] != data.test.x.shape[1:]:
        raise DataError(
            f"{name}: train samples have shape {data.train.x.shape[1:]}, "
            f"test samples {data.test.x.shape[1:]}"
        )
    labels = np.concatenate([data.train.y, data.test.y])
    num_classes = _num_classes(data, labels)
    ids = np.concatenate([data.train.ids, data.test.ids]).astype(str)
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{name}: sample_id used twice: {unique[counts > 1][:5].tolist()}")
    for split, samples in splits.items():
        samples.check(num_classes, f"{name} {split}")

    core = pd.DataFrame(
        {
            "sample_id": ids,
            "split": np.repeat(list(splits), [len(s) for s in splits.values()]),
            "label": labels,
            "original_label": labels,
        }
    ).astype(CORE_COLUMNS)
    manifest = core
    if data.attributes is not None and len(data.attributes.columns):
        attributes = data.attributes.reset_index(drop=True)
        if len(attributes) != len(core):
            raise DataError(f"{name}: {len(attributes)} attribute rows for {len(core)} samples")
        clash = [c for c in attributes.columns if c in CORE_COLUMNS]
        if clash:
            raise DataError(
                f"{name}: attribute columns {clash} are core manifest columns, set by the source"
            )
        manifest = pd.concat([core, normalise_dtypes(attributes, name)], axis=1)
    return Dataset(name, data.train, data.test, manifest, num_classes, data.class_names or ())
