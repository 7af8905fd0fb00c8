"""What a deletion request selects: its attribute predicate, and the ids it names, on a manifest.

The one home of the predicate rule. A request's `where` is a list of clauses `ATTR=VALUE`, every
one of which must hold (AND). The same attribute twice means both must hold, so
`source=nowhere AND source=faulty` matches nothing and is refused as matching nothing; a
mapping `{"source": "faulty"}`, the form requests were stored in before, reads as one clause
per key. Clauses are kept sorted and without repeats, so the same predicate written in
another order is the same request (the ledger compares requests by content).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, RootModel, field_validator, model_validator

from uib.samples import DataError
from uib.scenarios import select_forget

MAX_ATTRIBUTE, MAX_VALUE = 128, 1024
# C0, DEL and C1 (Unicode's `Cc`), and the bidirectional embeddings, overrides and isolates that
# make a terminal or a log show something other than what is stored
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def control_characters(text: str, allowed: str = "") -> list[str]:
    """The control characters in `text`, but for those in `allowed`, as sorted `repr`s."""
    return sorted({repr(ch) for ch in CONTROL.findall(text) if ch not in allowed})


class Clause(BaseModel):
    """One `attribute = value` condition on the manifest."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str = Field(min_length=1, max_length=MAX_ATTRIBUTE)
    value: str = Field(max_length=MAX_VALUE)

    @field_validator("attribute", "value", mode="before")
    @classmethod
    def _stripped(cls, text: object) -> object:
        return text.strip() if isinstance(text, str) else text

    @field_validator("attribute", "value")
    @classmethod
    def _printable(cls, text: str) -> str:
        if bad := control_characters(text):
            raise ValueError(f"holds control characters {', '.join(bad)}")
        return text

    @classmethod
    def parse(cls, text: str) -> Clause:
        """`"source=faulty"` → Clause; a ValueError says what is wrong with `text`."""
        attribute, sep, value = text.partition("=")
        if not sep or not attribute.strip():
            raise ValueError(f"expected ATTR=VALUE, got {text!r}")
        return cls(attribute=attribute, value=value)

    def __str__(self) -> str:
        return f"{self.attribute}={self.value}"


class Predicate(RootModel[list[Clause]]):
    """Clauses that must all hold. JSON: a list of `{"attribute": …, "value": …}` objects or of
    `"ATTR=VALUE"` strings, or (the older form) a mapping of attribute to value."""

    @model_validator(mode="before")
    @classmethod
    def _clauses(cls, data: object) -> object:
        if isinstance(data, dict):
            wrong = {k: type(v).__name__ for k, v in data.items() if not isinstance(v, str)}
            if wrong:
                raise ValueError(f"values must be strings; got {wrong}")
            return [{"attribute": k, "value": v} for k, v in data.items()]
        if isinstance(data, list | tuple):
            return [Clause.parse(c) if isinstance(c, str) else c for c in data]
        return data

    @field_validator("root")
    @classmethod
    def _canonical(cls, clauses: list[Clause]) -> list[Clause]:
        if not clauses:
            raise ValueError("where is empty: name at least one attribute")
        return sorted(set(clauses), key=lambda c: (c.attribute, c.value))

    def __iter__(self) -> Iterator[Clause]:  # type: ignore[override]
        return iter(self.root)

    def __len__(self) -> int:
        return len(self.root)

    def __str__(self) -> str:
        return " AND ".join(map(str, self.root))

    def layers(self) -> list[dict[str, str]]:
        """The clauses as mappings that name each attribute once; every layer must hold."""
        by_attribute: dict[str, list[str]] = {}
        for clause in self.root:
            by_attribute.setdefault(clause.attribute, []).append(clause.value)
        depth = max(len(values) for values in by_attribute.values())
        return [
            {a: values[min(i, len(values) - 1)] for a, values in by_attribute.items()}
            for i in range(depth)
        ]


def select_samples(
    manifest: pd.DataFrame,
    sample_ids: Iterable[str] | None = None,
    where: Predicate | None = None,
    split: str = "train",
) -> np.ndarray:
    """The ids of `split` a request names, in manifest order; a DataError names the field.

    Unknown ids, unknown attributes, values that do not fit the column and an empty
    selection are refused (uib's `select_forget` decides each clause).
    """
    if (sample_ids is None) == (where is None):
        raise DataError("give exactly one of sample_ids or where")
    if sample_ids is not None:
        try:
            return select_forget(manifest, ids=sample_ids, split=split)
        except DataError as error:
            raise DataError(f"sample_ids: {error}") from None
    chosen: np.ndarray | None = None
    for layer in where.layers():
        try:
            ids = select_forget(manifest, where=layer, split=split)
        except DataError as error:
            if not str(error).startswith("forget set is empty"):
                raise DataError(f"where: {error}") from None
            ids = np.array([], dtype=str)
        chosen = ids if chosen is None else chosen[np.isin(chosen, ids)]
    if not chosen.size:
        raise DataError(f"where: forget set is empty: no {split} sample matches {where}")
    return chosen
