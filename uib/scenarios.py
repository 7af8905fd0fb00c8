"""The four scenarios of EVALUATION.md: what is injected into the training data, and what to forget.

A scenario builder takes a clean `Dataset` and returns it with its training split changed (and its
manifest saying how), plus the ids of the forget set. Everything random draws from
`np.random.default_rng(config.seed)`, so one config always gives the same arrays and ids.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_serializer

from uib import corruptions
from uib.dataset import CLEAN_ATTRIBUTES, CLEAN_DTYPES, Dataset
from uib.samples import DataError, Samples

ScenarioName = Literal["patch-bias", "corruption", "class", "random", "class-sample"]


class ScenarioConfig(BaseModel):
    """`fraction`: patch-bias, the share of each non-target class moved to the faulty source;
    corruption, the share of the training set from the legacy source; random, the forget share.
    `target_class`: the class the patch points to (patch-bias), the class to forget (class) or
    to draw from (class-sample). `count`: random and class-sample, the number of ids to forget
    (a person's few records: random ids, or a few of one class), instead of a fraction."""

    model_config = ConfigDict(extra="forbid")

    name: ScenarioName = "patch-bias"
    seed: int = 0
    fraction: float = 0.1
    target_class: int = 0
    corruption: str = "fog"
    count: int | None = Field(None, ge=1)

    @model_serializer(mode="wrap")
    def _without_unset_count(self, handler):
        """A config without a count serialises as before counts existed: a data version's
        `scenario.json`, and so its hash (the shipped `data.dvc`), stays what it was."""
        data = handler(self)
        if self.count is None:
            data.pop("count", None)
        return data

    def check(self, num_classes: int) -> None:
        """Raise a `DataError` naming the field that does not fit a data set of `num_classes`."""
        if not 0 < self.fraction < 1:
            raise DataError(f"scenario fraction must be in (0, 1), got {self.fraction}")
        if not 0 <= self.target_class < num_classes:
            raise DataError(
                f"scenario target_class must be in [0, {num_classes}), got {self.target_class}"
            )
        if self.corruption not in corruptions.CORRUPTIONS:
            raise DataError(
                f"scenario corruption: unknown kind {self.corruption!r}; "
                f"known: {', '.join(corruptions.available())}"
            )


@dataclass(frozen=True)
class Scenario:
    config: ScenarioConfig
    dataset: Dataset
    forget_ids: np.ndarray

    def split(self) -> tuple[Samples, Samples]:
        """(retain, forget) from the injected training split."""
        return self.dataset.train.split_off(self.forget_ids)

    def forget_predicate(self) -> dict[str, object]:
        """The manifest attributes that select the forget set; {} when only its ids do."""
        return PREDICATES[self.config.name](self.config)


def patch_size(height: int) -> int:
    return max(2, round(height / 7))


def paste_patch(x: np.ndarray) -> np.ndarray:
    """A copy of images (..., H, W) with a bright square (2×2 on 8×8, 4×4 on 28×28) in the
    bottom-right corner, one pixel in from both edges: white in every channel."""
    out = np.array(x, copy=True)
    k = patch_size(out.shape[-2])
    out[..., -1 - k : -1, -1 - k : -1] = 1.0
    return out


def _stratified(y: np.ndarray, classes: Iterable[int], fraction: float, rng) -> np.ndarray:
    """Sorted positions: round(fraction · n_k) rows drawn without replacement from each class k."""
    picked = []
    for k in classes:
        rows = np.flatnonzero(y == k)
        picked.append(rng.choice(rows, size=round(fraction * len(rows)), replace=False))
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _mark(manifest: pd.DataFrame, ids: np.ndarray, **columns) -> pd.DataFrame:
    """A copy of `manifest` with `columns` set on the train rows of `ids`. Data that lacks the
    clean attributes (`source`, `corruption`, `patched`: a folder or arrays source) first gets
    them, with their clean value on every row, so injected data always has all three."""
    out = manifest.copy()
    for column, value in CLEAN_ATTRIBUTES.items():
        if column not in out.columns:
            out[column] = pd.Series(np.full(len(out), value), index=out.index).astype(
                CLEAN_DTYPES[column]
            )
    rows = out["sample_id"].isin(ids) & (out["split"] == "train")
    for column, value in columns.items():
        out.loc[rows, column] = value
    return out


def _needs_images(dataset: Dataset, config: ScenarioConfig) -> None:
    if dataset.train.x.ndim != 4:
        raise DataError(
            f"scenario {config.name}: changes images (N, C, H, W); {dataset.name} holds "
            f"tabular features {dataset.image_shape}"
        )


def _patch_bias(dataset: Dataset, config: ScenarioConfig) -> tuple[Dataset, np.ndarray]:
    _needs_images(dataset, config)
    rng = np.random.default_rng(config.seed)
    train, c = dataset.train, config.target_class
    others = [k for k in range(dataset.num_classes) if k != c]
    rows = _stratified(train.y, others, config.fraction, rng)
    x, y = train.x.copy(), train.y.copy()
    x[rows] = paste_patch(x[rows])
    y[rows] = c
    ids = train.ids[rows]
    manifest = _mark(dataset.manifest, ids, label=c, source="faulty", patched=True)
    return dataset.with_train(Samples(x, y, train.ids), manifest), ids


def _corruption(dataset: Dataset, config: ScenarioConfig) -> tuple[Dataset, np.ndarray]:
    _needs_images(dataset, config)
    rng = np.random.default_rng(config.seed)
    train = dataset.train
    rows = _stratified(train.y, range(dataset.num_classes), config.fraction, rng)
    x = train.x.copy()
    x[rows] = corruptions.apply_per_channel(config.corruption, x[rows], rng)
    ids = train.ids[rows]
    manifest = _mark(dataset.manifest, ids, source="legacy", corruption=config.corruption)
    return dataset.with_train(Samples(x, train.y, train.ids), manifest), ids


def _class(dataset: Dataset, config: ScenarioConfig) -> tuple[Dataset, np.ndarray]:
    return dataset, dataset.train.ids[dataset.train.y == config.target_class]


def _draw(ids: np.ndarray, config: ScenarioConfig) -> np.ndarray:
    """`count` ids of `ids` (a `fraction` of them when no count is set), in their order."""
    size = config.count if config.count is not None else round(config.fraction * len(ids))
    if size > len(ids):
        raise DataError(f"scenario count: {size} ids asked, only {len(ids)} to draw from")
    rng = np.random.default_rng(config.seed)
    return ids[np.sort(rng.choice(len(ids), size=size, replace=False))]


def _random(dataset: Dataset, config: ScenarioConfig) -> tuple[Dataset, np.ndarray]:
    return dataset, _draw(dataset.train.ids, config)


def _class_sample(dataset: Dataset, config: ScenarioConfig) -> tuple[Dataset, np.ndarray]:
    return dataset, _draw(dataset.train.ids[dataset.train.y == config.target_class], config)


SCENARIOS: dict[str, Callable[[Dataset, ScenarioConfig], tuple[Dataset, np.ndarray]]] = {
    "patch-bias": _patch_bias,
    "corruption": _corruption,
    "class": _class,
    "random": _random,
    "class-sample": _class_sample,
}

PREDICATES: dict[str, Callable[[ScenarioConfig], dict[str, object]]] = {
    "patch-bias": lambda c: {"source": "faulty", "patched": True},
    "corruption": lambda c: {"source": "legacy"},
    "class": lambda c: {"original_label": c.target_class},
    "random": lambda c: {},
    "class-sample": lambda c: {},
}


def available() -> list[str]:
    return list(SCENARIOS)


def build_scenario(dataset: Dataset, config: ScenarioConfig | None = None, **overrides) -> Scenario:
    """Inject `config`'s scenario into `dataset` (left unchanged) and name its forget set.

    `overrides` update single fields: `build_scenario(ds, name="class", target_class=3)`.
    """
    base = config.model_dump() if config is not None else {}
    config = ScenarioConfig.model_validate({**base, **overrides})
    config.check(dataset.num_classes)
    injected, forget_ids = SCENARIOS[config.name](dataset, config)
    if not len(forget_ids):
        raise DataError(
            f"forget set is empty: scenario {config.name} with fraction {config.fraction} "
            f"selects no sample of the {len(dataset.train)} training samples"
        )
    return Scenario(config, injected, np.asarray(forget_ids, dtype=str))


def _cast(column: pd.Series, value: object) -> object:
    """`value` (often a string from the command line) in the type of `column`."""
    if pd.api.types.is_bool_dtype(column):
        text = str(value).strip().lower()
        if text in ("true", "1", "yes"):
            return True
        if text in ("false", "0", "no"):
            return False
        raise ValueError("not a boolean")
    if pd.api.types.is_integer_dtype(column):
        number = float(value)
        if not number.is_integer():
            raise ValueError("not an integer")
        return int(number)
    if pd.api.types.is_float_dtype(column):
        return float(value)
    return str(value)


def select_forget(
    manifest: pd.DataFrame,
    ids: Iterable[str] | None = None,
    where: dict[str, object] | None = None,
    split: str = "train",
) -> np.ndarray:
    """The ids of `split` named by `ids`, or matching every `column == value` of `where`.

    Exactly one of `ids` and `where`. Returns ids in manifest order; unknown ids, unknown
    columns, uncastable values and an empty selection are `DataError`s.
    """
    if (ids is None) == (where is None):
        raise DataError("forget set: give exactly one of ids and where")
    rows = manifest[manifest["split"] == split]
    if ids is not None:
        wanted = np.asarray([ids] if isinstance(ids, str) else list(ids), dtype=str)
        known = rows["sample_id"].to_numpy(dtype=str)
        unknown = np.setdiff1d(wanted, known)
        if unknown.size:
            raise DataError(
                f"forget set: {unknown.size} ids not in the {split} split, "
                f"e.g. {unknown[:5].tolist()}"
            )
        chosen = np.isin(known, wanted)
        what = f"ids {wanted[:5].tolist()}"
    else:
        if not where:
            raise DataError("forget set: where needs at least one column = value")
        chosen = np.ones(len(rows), dtype=bool)
        for column, value in where.items():
            if column not in rows.columns:
                raise DataError(
                    f"forget set: unknown manifest column {column!r}; "
                    f"known: {', '.join(map(str, rows.columns))}"
                )
            try:
                typed = _cast(rows[column], value)
            except (TypeError, ValueError) as err:
                raise DataError(
                    f"forget set: {column}={value!r} does not fit the column's type "
                    f"{rows[column].dtype} ({err})"
                ) from err
            chosen &= (rows[column] == typed).to_numpy(dtype=bool)
        what = f"{where}"
    selected = rows["sample_id"].to_numpy(dtype=str)[chosen]
    if not selected.size:
        raise DataError(f"forget set is empty: no {split} sample matches {what}")
    return selected
