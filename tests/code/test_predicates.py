"""The predicate rule (`tasks.predicates`): the clause grammar and its text round trip, typed
matching on every kind of manifest column, refusals that name the column and the value, and
the forms requests were stored in before operators existed."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pydantic
import pytest

from tasks.predicates import Clause, Predicate, select_samples
from tasks.requests import DeletionRequest, RequestLedger
from uib.samples import DataError


@pytest.fixture(scope="module")
def manifest() -> pd.DataFrame:
    """Eight rows of a team's own data: text, int, float, bool and datetime attributes."""
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(8)],
            "split": ["train"] * 7 + ["test"],
            "label": [0, 1, 0, 1, 0, 1, 0, 1],
            "original_label": [0, 1, 0, 1, 0, 1, 0, 1],
            "site": ["a", "b", "c", "a", None, "b", "c", "a"],
            "age": [10, 20, 30, 40, 50, 60, 70, 80],
            "score": [0.1, np.nan, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
            "consent_withdrawn": [True, False, False, True, False, False, True, True],
            "collected_at": pd.to_datetime(
                [
                    "2023-06-01",
                    "2023-12-31 23:00",
                    "2024-01-01",
                    "2024-05-05",
                    None,
                    "2024-02-01",
                    "2022-01-01",
                    "2024-01-01",
                ],
                format="ISO8601",
            ).astype("datetime64[ns]"),
        }
    )


def chosen(manifest: pd.DataFrame, *clauses: str) -> list[str]:
    return select_samples(manifest, where=Predicate.model_validate(list(clauses))).tolist()


TEXTS = [
    "source=faulty",
    "site!=b",
    "age<30",
    "age<=30",
    "score>0.5",
    "score>=0.5",
    "collected_at<2024-01-01",
    "collected_at>=2024-01-01T09:30",
    "site in (a, c)",
    "source=a=b",  # the first operator splits; the rest is the value
    "note=<5",
    "note!==x",
]


@pytest.mark.parametrize("text", TEXTS)
def test_a_clause_reads_back_from_its_text(text):
    clause = Clause.parse(text)
    assert Clause.parse(str(clause)) == clause
    assert str(clause) == text


def test_a_predicate_reads_back_from_its_text_and_its_order_does_not_matter():
    predicate = Predicate.model_validate(["site in (c, a, c)", "age<30", "source=faulty"])
    assert str(predicate) == "age<30 AND site in (a, c) AND source=faulty"
    assert Predicate.parse(str(predicate)) == predicate
    again = Predicate.model_validate(["source=faulty", " site  in (a,c) ", "age < 30"])
    assert again == predicate
    # a list of one value is the `=` clause
    assert Clause.parse("site in (a)") == Clause.parse("site=a")
    assert Clause.parse("site IN (b, a)").value == ("a", "b")


@pytest.mark.parametrize(
    ("clauses", "expected"),
    [
        (["site=a"], ["s0", "s3"]),
        (["site!=a"], ["s1", "s2", "s5", "s6"]),  # a missing site matches no clause
        (["site in (b, c)"], ["s1", "s2", "s5", "s6"]),
        (["age<30"], ["s0", "s1"]),
        (["age>=30", "age<=50"], ["s2", "s3", "s4"]),
        (["age in (10, 70)"], ["s0", "s6"]),
        (["age=20.0"], ["s1"]),  # an integral number, as stored requests wrote it
        (["score>0.5"], ["s5", "s6"]),
        (["score!=0.3"], ["s0", "s3", "s4", "s5", "s6"]),
        (["consent_withdrawn=true"], ["s0", "s3", "s6"]),
        (["consent_withdrawn=False"], ["s1", "s2", "s4", "s5"]),
        (["collected_at<2024-01-01"], ["s0", "s1", "s6"]),
        (["collected_at>=2024-01-01T00:00", "collected_at<2024-03-01"], ["s2", "s5"]),
        (["collected_at in (2024-01-01, 2022-01-01)"], ["s2", "s6"]),
        (["consent_withdrawn=true", "age>20"], ["s3", "s6"]),
    ],
)
def test_each_operator_matches_by_the_columns_type(manifest, clauses, expected):
    assert chosen(manifest, *clauses) == expected


@pytest.mark.parametrize(
    ("clause", "named"),
    [
        ("colour=red", "unknown manifest column 'colour'"),
        ("age<abc", "age<'abc' does not fit the column's type int64 (not a number)"),
        ("age=2.5", "age='2.5' does not fit the column's type int64 (not an integer)"),
        ("score>nan", "score>'nan' does not fit the column's type float64"),
        ("collected_at<yesterday", "collected_at<'yesterday' does not fit"),
        ("collected_at<2024-01-01T00:00+01:00", "has a time zone"),
        ("site<b", "site<'b' does not fit the column's type str ('<' compares numbers"),
        ("consent_withdrawn=yes", "consent_withdrawn='yes' does not fit the column's type bool"),
        ("consent_withdrawn>true", "'>' compares numbers and dates"),
        ("age in (10, x)", "age in (10, x): 'x' does not fit the column's type int64"),
        ("site=nowhere", "forget set is empty: no train sample matches site=nowhere"),
    ],
)
def test_an_unknown_column_a_mistyped_value_and_an_empty_selection_are_refused(
    manifest, clause, named
):
    with pytest.raises(DataError, match="^where: forget set") as refused:
        chosen(manifest, clause)
    assert named in str(refused.value)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("site", "expected ATTR=VALUE"),
        ("=a", "expected ATTR=VALUE"),
        ("site in (a, b", "expected ATTR=VALUE"),
        ("site in ()", "a value is empty"),
        ("site in (a,,b)", "a value is empty"),
        ("a!b=c", "holds !"),
        ("dept=R AND D", "'AND' between spaces joins clauses"),
        ("site=a\x1b[2J", "control characters"),
    ],
)
def test_a_malformed_clause_is_refused_by_its_text(text, named):
    with pytest.raises(ValueError, match=named):
        Clause.parse(text)


def test_an_operator_and_its_value_must_fit_each_other():
    with pytest.raises(pydantic.ValidationError, match="'in' takes a list of values"):
        Clause(attribute="site", op="in", value="a")
    with pytest.raises(pydantic.ValidationError, match="'<' takes one value"):
        Clause(attribute="age", op="<", value=["1", "2"])
    with pytest.raises(pydantic.ValidationError, match="starts with '='"):
        Clause(attribute="age", op="<", value="=5")  # it would read back as `<=`
    with pytest.raises(pydantic.ValidationError, match="value"):
        Clause(attribute="age", op="<", value=30)  # values are strings, typed by the column


def test_the_forms_stored_before_operators_load_as_the_same_request():
    """A ledger row of an older version holds `{"attribute", "value"}` objects or a mapping;
    both are `=` clauses, equal to the request written anew, and an `=` clause serialises
    exactly as it did, so stored content and the ids derived from it do not change."""
    old_objects = [
        {"attribute": "source", "value": "faulty"},
        {"attribute": "original_label", "value": "3"},
    ]
    old_mapping = {"source": "faulty", "original_label": "3"}
    written = DeletionRequest(request_id="r", where=["source=faulty", "original_label=3"])
    for stored in (old_objects, old_mapping):
        request = DeletionRequest(request_id="r", where=stored)
        assert request.where == written.where
        assert request.model_dump(exclude={"requested_at"}) == written.model_dump(
            exclude={"requested_at"}
        )
    assert json.loads(written.where.model_dump_json()) == sorted(
        old_objects, key=lambda c: c["attribute"]
    )


def test_a_request_with_every_operator_round_trips_json_and_the_ledger(tmp_path):
    clauses = ["age>=18", "site in (b, a)", "collected_at<2024-01-01", "consent_withdrawn=true"]
    request = DeletionRequest(request_id="r-1", where=clauses, reason="consent withdrawn")
    body = request.model_dump_json()
    assert '{"attribute":"site","op":"in","value":["a","b"]}' in body
    assert '{"attribute":"consent_withdrawn","value":"true"}' in body
    assert DeletionRequest.model_validate_json(body) == request
    assert DeletionRequest.model_validate(json.loads(body)) == request
    ledger = RequestLedger(tmp_path / "requests.db")
    ledger.submit(request)
    assert ledger.get("r-1").request == request
    _, created = ledger.submit(
        DeletionRequest(request_id="r-1", where=list(reversed(clauses)), reason=request.reason)
    )
    assert not created  # the same content, written in another order
    with pytest.raises(ValueError, match="other content"):
        ledger.submit(DeletionRequest(request_id="r-1", where=["age>18"], reason=request.reason))


def test_a_request_with_clauses_survives_prefects_walk_of_task_parameters():
    """Prefect reads every pydantic parameter of a task with `dict(model)`; a predicate whose
    iteration yielded its clauses broke each run once clauses had three fields."""
    from prefect.utilities.collections import visit_collection

    from tasks.requests import DeletionRequest

    request = DeletionRequest(request_id="r", where=["source=faulty", "age<30"])
    assert visit_collection(request, lambda x: x, return_data=True) == request
