"""The one in-memory form of labelled data that every part of `uib` passes around."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(ValueError):
    """Bad data or a bad request about data; the message names the field, file or ids at fault."""


@dataclass(frozen=True)
class Samples:
    """Inputs, labels and stable ids, aligned by position.

    `x` is float32: images (N, C, H, W) with values in [0, 1], or tabular features (N, F);
    `y` is int64 of shape (N,); `ids` holds one string `sample_id` per row.
    """

    x: np.ndarray
    y: np.ndarray
    ids: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        if self.x.ndim not in (2, 4):
            raise DataError(
                f"x must have shape (N, C, H, W) (images) or (N, F) (features), got {self.x.shape}"
            )
        if len(self.y) != n or len(self.ids) != n:
            raise DataError(f"x, y and ids differ in length: {n}, {len(self.y)}, {len(self.ids)}")

    def __len__(self) -> int:
        return len(self.y)

    def take(self, index: np.ndarray) -> Samples:
        """Rows at `index` (positions or a boolean mask), as a new `Samples`."""
        return Samples(self.x[index], self.y[index], self.ids[index])

    def select(self, ids) -> Samples:
        """Rows whose id is in `ids`, in this object's order; unknown ids are a `DataError`."""
        wanted = np.asarray(list(ids), dtype=str)
        mask = np.isin(self.ids, wanted)
        missing = np.setdiff1d(wanted, self.ids[mask])
        if missing.size:
            raise DataError(
                f"{missing.size} sample ids not in the data, e.g. {missing[:5].tolist()}"
            )
        return self.take(mask)

    def drop(self, ids) -> Samples:
        """Rows whose id is not in `ids`."""
        return self.take(~np.isin(self.ids, np.asarray(list(ids), dtype=str)))

    def split_off(self, ids) -> tuple[Samples, Samples]:
        """(rows not in `ids`, rows in `ids`): the retain and forget sets of a request."""
        forget = self.select(ids)
        return self.drop(forget.ids), forget

    def check(self, num_classes: int, name: str = "samples") -> None:
        """Raise a `DataError` naming `name` for NaN/Inf pixels, labels out of range, or duplicate ids."""
        # One float64 sum (no temporary the size of x: the check must not cost what the data
        # does); a NaN or Inf anywhere makes it non-finite, and only then are rows inspected.
        if not np.isfinite(self.x.sum(dtype=np.float64)):
            bad = self.ids[~np.isfinite(self.x.reshape(len(self.x), -1)).all(axis=1)]
            raise DataError(
                f"{name}: non-finite values (NaN or Inf) in x of samples {bad[:5].tolist()}"
            )
        out = (self.y < 0) | (self.y >= num_classes)
        if out.any():
            raise DataError(
                f"{name}: labels out of range [0, {num_classes}) at samples {self.ids[out][:5].tolist()}: "
                f"{self.y[out][:5].tolist()}"
            )
        uniq, counts = np.unique(self.ids, return_counts=True)
        if (counts > 1).any():
            raise DataError(f"{name}: duplicate sample ids {uniq[counts > 1][:5].tolist()}")


def split_validation(test: Samples, fraction: float = 0.5) -> tuple[Samples, Samples]:
    """(validation, test): every class's rows dealt alternately, so both halves are stratified.

    UIB chooses its IF step on the validation half; metrics use the other half, so the choice
    never sees the numbers it is judged by. Deterministic: no seed involved.
    """
    if not 0 < fraction < 1:
        raise DataError(f"validation fraction must be in (0, 1), got {fraction}")
    is_val = np.zeros(len(test), dtype=bool)
    for label in np.unique(test.y):
        rows = np.nonzero(test.y == label)[0]
        take = np.floor(np.arange(1, len(rows) + 1) * fraction) - np.floor(
            np.arange(len(rows)) * fraction
        )
        is_val[rows[take.astype(bool)]] = True
    return test.take(is_val), test.take(~is_val)
