"""What a deletion request selects: its attribute predicate, and the ids it names, on a manifest.

The one home of the predicate rule. A request's `where` is a list of clauses, every one of
which must hold (AND). One clause, as `--where` takes it and `str(Clause)` writes it:

    ATTR=VALUE   ATTR!=VALUE               equal, not equal
    ATTR<V  ATTR<=V  ATTR>V  ATTR>=V       order: number and date columns only
    ATTR in (A, B, ...)                    any of the values

The operator is the first `!=`, `<=`, `>=`, `=`, `<` or `>` of the text, so an attribute name
holds none of `= < > ! ( ) ,`; VALUE is the rest, spaces around it dropped. The values of an
`in` list hold no `,`, `(` or `)`; no name or value holds ` AND `, which joins the clauses of
`str(Predicate)` (`Predicate.parse` reads that text back). A value is typed by its manifest
column when the request is applied (`select_samples`): int and float columns take numbers,
bool columns `true` or `false`, datetime columns ISO dates (`2024-01-01`, `2024-01-01T09:30`),
text columns any text (but no order). A row whose value is missing matches no clause.

The same attribute twice means both must hold, so `source=nowhere AND source=faulty` matches
nothing and is refused as matching nothing. A mapping `{"source": "faulty"}`, the form requests
were stored in before, reads as one `=` clause per key. Clauses are kept sorted and without
repeats, and `in` lists sorted and without repeats (one value is `=`), so the same predicate
written in another order is the same request (the ledger compares requests by content). An
`=` clause is stored as `{"attribute": …, "value": …}`, as before operators existed, so stored
requests and the ids derived from their content do not change.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import datetime
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    field_validator,
    model_serializer,
    model_validator,
)

from uib.samples import DataError
from uib.scenarios import select_forget

MAX_ATTRIBUTE, MAX_VALUE, MAX_IN_VALUES = 128, 1024, 1000
# C0, DEL and C1 (Unicode's `Cc`), and the bidirectional embeddings, overrides and isolates that
# make a terminal or a log show something other than what is stored
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

Operator = Literal["=", "!=", "<", "<=", ">", ">=", "in"]
ORDER = ("<", "<=", ">", ">=")
AND = " AND "
NOT_IN_NAMES, NOT_IN_LISTED = "=<>!(),", ",()"
OPERATOR = re.compile(r"!=|<=|>=|=|<|>")  # at one place the longer operator wins
IN_CLAUSE = re.compile(r"(?P<attribute>[^=<>!(),]+?)\s+in\s*\((?P<values>[^()]*)\)", re.I)
GRAMMAR = "ATTR=VALUE, ATTR!=VALUE, ATTR<VALUE (or <=, >, >=) or ATTR in (A, B, ...)"

ColumnKind = Literal["bool", "integer", "float", "datetime", "text", "other"]
OBJECT_KINDS: dict[str, ColumnKind] = {
    "boolean": "bool",
    "integer": "integer",
    "floating": "float",
    "mixed-integer-float": "float",
    "datetime": "datetime",
    "datetime64": "datetime",
}


def control_characters(text: str, allowed: str = "") -> list[str]:
    """The control characters in `text`, but for those in `allowed`, as sorted `repr`s."""
    return sorted({repr(ch) for ch in CONTROL.findall(text) if ch not in allowed})


class Clause(BaseModel):
    """One condition on a manifest column: `attribute op value`, or `attribute in (values)`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    attribute: str = Field(min_length=1, max_length=MAX_ATTRIBUTE)
    op: Operator = "="
    value: str | tuple[str, ...] = Field(description="a tuple for `in`, a string otherwise")

    @model_validator(mode="before")
    @classmethod
    def _canonical(cls, data: object) -> object:
        """Spaces around names and values dropped; an `in` list sorted, once each value."""
        if not isinstance(data, dict):
            return data
        data = {k: v.strip() if isinstance(v, str) else v for k, v in data.items()}
        listed = data.get("value")
        if data.get("op") == "in" and isinstance(listed, list | tuple):
            if all(isinstance(v, str) for v in listed):
                listed = [v.strip() for v in listed]
                if all(listed):  # an empty one is refused below, never dropped
                    listed = sorted(set(listed))
            if len(listed) == 1 and listed[0]:
                return {**data, "op": "=", "value": listed[0]}
            data["value"] = tuple(listed)
        return data

    @field_validator("attribute")
    @classmethod
    def _name(cls, name: str) -> str:
        if bad := control_characters(name):
            raise ValueError(f"holds control characters {', '.join(bad)}")
        if reserved := sorted(set(name) & set(NOT_IN_NAMES)):
            raise ValueError(f"attribute {name!r} holds {' '.join(reserved)}: not in a name")
        return name

    @field_validator("value")
    @classmethod
    def _values(cls, value: str | tuple[str, ...]) -> str | tuple[str, ...]:
        for text in (value,) if isinstance(value, str) else value:
            if bad := control_characters(text):
                raise ValueError(f"holds control characters {', '.join(bad)}")
            if len(text) > MAX_VALUE:
                raise ValueError(f"a value is {len(text)} characters long; at most {MAX_VALUE}")
        return value

    @model_validator(mode="after")
    def _fits_operator(self) -> Clause:
        listed = isinstance(self.value, tuple)
        if (self.op == "in") != listed:
            raise ValueError(
                f"{self.op!r} takes {'a list of values' if not listed else 'one value'}"
            )
        values = self.value if listed else (self.value,)
        if listed and (bad := [v for v in values if not v or set(v) & set(NOT_IN_LISTED)]):
            raise ValueError(f"in (...): a value is empty or holds , ( or ): {bad[:3]}")
        if listed and not 2 <= len(values) <= MAX_IN_VALUES:  # one is `=` by now
            raise ValueError(f"in (...) takes 1 to {MAX_IN_VALUES} values, got {len(values)}")
        if any(AND in text for text in (self.attribute, *values)):
            raise ValueError(f"{AND.strip()!r} between spaces joins clauses: not in a clause")
        if self.op in ("<", ">") and self.value.startswith("="):
            raise ValueError(f"a value after {self.op!r} starts with '='")
        return self

    @model_serializer(mode="wrap")
    def _equality_as_before(self, handler):
        """`=` is stored without its op: a stored request reads, and hashes, as it did."""
        data = handler(self)
        if self.op == "=":
            data.pop("op", None)
        return data

    @classmethod
    def parse(cls, text: str) -> Clause:
        """`"source=faulty"`, `"age>=18"`, `"site in (a, b)"` → Clause; a ValueError says
        what is wrong with `text`."""
        if listed := IN_CLAUSE.fullmatch(text.strip()):
            return cls(attribute=listed["attribute"], op="in", value=listed["values"].split(","))
        found = OPERATOR.search(text)
        if found is None or not text[: found.start()].strip():
            raise ValueError(f"expected {GRAMMAR}; got {text!r}")
        return cls(attribute=text[: found.start()], op=found.group(), value=text[found.end() :])

    @property
    def values(self) -> tuple[str, ...]:
        return self.value if isinstance(self.value, tuple) else (self.value,)

    def __str__(self) -> str:
        if self.op == "in":
            return f"{self.attribute} in ({', '.join(self.value)})"
        return f"{self.attribute}{self.op}{self.value}"


class Predicate(RootModel[list[Clause]]):
    """Clauses that must all hold. JSON: a list of clause objects (`{"attribute": …, "op": …,
    "value": …}`, `op` left out for `=`) or of clause strings (`"age<30"`), or (the older
    form) a mapping of attribute to value."""

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
        return sorted(set(clauses), key=lambda c: (c.attribute, c.op, "\n".join(c.values)))

    @classmethod
    def parse(cls, text: str) -> Predicate:
        """The predicate `str(predicate)` wrote: clauses joined by ` AND `."""
        return cls.model_validate(text.split(AND))

    # No `__iter__` over the clauses: pydantic's iterates (field, value) pairs, and Prefect's
    # parameter walk reads a model by `dict(model)`.
    @property
    def clauses(self) -> list[Clause]:
        return self.root

    def __len__(self) -> int:
        return len(self.root)

    def __str__(self) -> str:
        return AND.join(map(str, self.root))


# --------------------------------------------------------------------------- on a manifest


def column_kind(column: pd.Series) -> ColumnKind:
    """What a manifest column holds, as the predicate rule and the shift validation read it;
    an object column (a CSV's booleans with blanks) by the values it holds."""
    api, dtype = pd.api.types, column.dtype
    if api.is_bool_dtype(dtype):
        return "bool"
    if api.is_integer_dtype(dtype):
        return "integer"
    if api.is_float_dtype(dtype):
        return "float"
    if api.is_datetime64_any_dtype(dtype):
        return "datetime"
    if api.is_object_dtype(dtype):
        return OBJECT_KINDS.get(api.infer_dtype(column, skipna=True), "text")
    if api.is_string_dtype(dtype) or isinstance(dtype, pd.CategoricalDtype):
        return "text"
    return "other"


def typed_value(column: pd.Series, op: str, text: str) -> object:
    """`text` in the type of `column`; a ValueError says why it does not fit."""
    kind = column_kind(column)
    if op in ORDER and kind not in ("integer", "float", "datetime"):
        raise ValueError(f"{op!r} compares numbers and dates; the column holds {kind} values")
    if kind == "bool":
        if text.lower() not in ("true", "false"):
            raise ValueError("not true or false")
        return text.lower() == "true"
    if kind == "integer":
        try:
            return int(text)
        except ValueError:  # "3.0" as well, the rule requests were stored under
            if not (number := _number(text)).is_integer():
                raise ValueError("not an integer") from None
            return int(number)
    if kind == "float":
        return _number(text)
    if kind == "datetime":
        return _timestamp(column, text)
    if kind == "text":
        return text
    raise ValueError("where does not select on this type of column")


def _number(text: str) -> float:
    try:
        number = float(text)
    except ValueError:
        raise ValueError("not a number") from None
    if not np.isfinite(number):
        raise ValueError("not a finite number")
    return number


def _timestamp(column: pd.Series, text: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(datetime.fromisoformat(text))
    except ValueError:
        raise ValueError(
            "not an ISO date or date and time (2024-01-31, 2024-01-31T09:30)"
        ) from None
    zone = getattr(column.dtype, "tz", None)
    if zone is None and stamp.tz is not None:
        raise ValueError("has a time zone; the column's dates have none")
    return stamp.tz_localize(zone) if zone is not None and stamp.tz is None else stamp


def clause_matches(rows: pd.DataFrame, clause: Clause) -> np.ndarray:
    """Which of `rows` hold `clause`, as a boolean array; a DataError names the column and
    the value that does not fit it."""
    if clause.attribute not in rows.columns:
        raise DataError(
            f"where: forget set: unknown manifest column {clause.attribute!r}; "
            f"known: {', '.join(map(str, rows.columns))}"
        )
    column = rows[clause.attribute]
    typed = []
    for text in clause.values:
        try:
            typed.append(typed_value(column, clause.op, text))
        except ValueError as error:
            which = (
                f"{clause}: {text!r}"
                if clause.op == "in"
                else f"{clause.attribute}{clause.op}{text!r}"
            )
            raise DataError(
                f"where: forget set: {which} does not fit the column's type {column.dtype} "
                f"({error})"
            ) from None
    compare = {
        "in": lambda: column.isin(typed),
        "=": lambda: column == typed[0],
        "!=": lambda: column != typed[0],
        "<": lambda: column < typed[0],
        "<=": lambda: column <= typed[0],
        ">": lambda: column > typed[0],
        ">=": lambda: column >= typed[0],
    }[clause.op]
    try:
        matches = compare()
    except TypeError as error:  # an object column of values that do not compare (mixed zones)
        raise DataError(f"where: forget set: {clause} cannot be compared: {error}") from None
    return (matches & column.notna()).to_numpy(dtype=bool, na_value=False)


def select_samples(
    manifest: pd.DataFrame,
    sample_ids: Iterable[str] | None = None,
    where: Predicate | None = None,
    split: str = "train",
) -> np.ndarray:
    """The ids of `split` a request names, in manifest order; a DataError names the field.

    Unknown ids, unknown attributes, values that do not fit the column and an empty
    selection are refused (uib's `select_forget` decides ids).
    """
    if (sample_ids is None) == (where is None):
        raise DataError("give exactly one of sample_ids or where")
    if sample_ids is not None:
        try:
            return select_forget(manifest, ids=sample_ids, split=split)
        except DataError as error:
            raise DataError(f"sample_ids: {error}") from None
    rows = manifest[manifest["split"] == split]
    chosen = np.ones(len(rows), dtype=bool)
    for clause in where.clauses:
        chosen &= clause_matches(rows, clause)
    selected = rows["sample_id"].to_numpy(dtype=str)[chosen]
    if not selected.size:
        raise DataError(f"where: forget set is empty: no {split} sample matches {where}")
    return selected
