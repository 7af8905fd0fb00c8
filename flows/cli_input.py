"""The arguments of `uib request delete` made into a request's fields: `--where` clauses and
`--ids-file`. A `BadArgument` names the option; `flows.cli` reports it as bad input (exit 2)."""

from __future__ import annotations

from pathlib import Path


class BadArgument(ValueError):
    def __init__(self, option: str, message: str):
        super().__init__(message)
        self.option = option


def parse_where(items: list[str]) -> list:
    """`--where` values as the request's clauses, every one of which must hold: `ATTR=VALUE`,
    `ATTR!=VALUE`, `ATTR<V` (`<=`, `>`, `>=`) or `ATTR in (A, B)` (`tasks.predicates` has the
    grammar). The same attribute twice means both at once (`source=a` and `source=b` match
    nothing). Whether a value fits its column is decided on the manifest, when the request is
    checked against the current data version."""
    from tasks.predicates import Clause

    clauses = []
    for item in items:
        try:
            clauses.append(Clause.parse(item))
        except ValueError as error:  # a pydantic.ValidationError is one
            problems = getattr(error, "errors", None)  # a ValidationError: the clause's fields
            message = f"{item!r}: " + "; ".join(e["msg"] for e in problems()) if problems else error
            raise BadArgument("--where", str(message)) from None
    return clauses


def read_ids_file(path: Path) -> list[str]:
    """`--ids-file`: one sample id per line, blank lines ignored, spaces around an id dropped;
    an id the request would refuse is refused here, naming the file and the line."""
    from tasks.requests import sample_id_problem

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise BadArgument("--ids-file", f"cannot read {path}: {error}") from None
    ids: list[str] = []
    first_line: dict[str, int] = {}
    # split on newlines only: str.splitlines and str.strip would quietly eat control characters
    for number, line in enumerate(text.split("\n"), 1):
        value = line.strip(" \t\r")
        if not value:
            continue
        problem = sample_id_problem(value)
        if problem is None and value in first_line:
            problem = f"repeats line {first_line[value]}"
        if problem:
            raise BadArgument("--ids-file", f"{path}, line {number}: {value!r} {problem}")
        first_line[value] = number
        ids.append(value)
    if not ids:
        raise BadArgument("--ids-file", f"{path} names no sample id")
    return ids
