"""A data-deletion request as every producer sends it (CLI, event, S3 inbox), read strictly."""

from __future__ import annotations

import re
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    field_validator,
    model_validator,
)

from tasks.predicates import Predicate, control_characters

REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MAX_SAMPLE_ID, MAX_SAMPLE_IDS, MAX_REASON = 256, 1_000_000, 2000
CLOCK_SKEW = timedelta(minutes=5)


def sample_id_problem(value: str) -> str | None:
    """What is wrong with one sample id, or None: the rule for the model and `--ids-file`."""
    if not value.strip():
        return "is blank"
    if len(value) > MAX_SAMPLE_ID:
        return f"is {len(value)} characters long; at most {MAX_SAMPLE_ID}"
    if bad := control_characters(value):
        return f"holds control characters {', '.join(bad)}"
    return None


def checked_request_id(value: str) -> str:
    if not REQUEST_ID.fullmatch(value):
        raise ValueError(
            "request_id must be 1–128 letters, digits, '.', '_' or '-', "
            f"starting with a letter or digit; got {value!r}"
        )
    return value


class DeletionRequest(BaseModel):
    """A data-deletion request: samples named by id, or by an attribute predicate.

    Strict where a loose reading would change what is erased: the id is given (never invented
    here), booleans are JSON booleans (`"yes"` is refused), unknown fields are refused.
    `requested_at` is the sender's claim, kept as information; the ledger stamps its own
    receipt time and orders the queue by that.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    sample_ids: list[str] | None = Field(None, max_length=MAX_SAMPLE_IDS)
    where: Predicate | None = Field(
        None, description="clauses (ATTR=V, ATTR!=V, ATTR<V, ATTR in (A, B), …), all of which hold"
    )
    reason: str = Field("", max_length=MAX_REASON)
    requested_at: AwareDatetime = Field(default_factory=lambda: datetime.now(UTC))
    allow_class_removal: StrictBool = False

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str) -> str:
        return checked_request_id(value)

    @field_validator("sample_ids")
    @classmethod
    def _sample_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("sample_ids is empty: name at least one sample")
            bad = [(i, p) for i, v in enumerate(value) if (p := sample_id_problem(v))]
            if bad:
                where = "; ".join(f"position {i} {p}" for i, p in bad[:5])
                raise ValueError(
                    f"{len(bad)} bad {'entry' if len(bad) == 1 else 'entries'}: {where}"
                )
            if len(set(value)) != len(value):
                repeated = [v for v, n in Counter(value).items() if n > 1]
                raise ValueError(f"sample_ids names a sample more than once: {repeated[:5]}")
        return value

    @field_validator("reason")
    @classmethod
    def _reason(cls, value: str) -> str:
        if bad := control_characters(value, allowed="\n\t"):
            raise ValueError(f"holds control characters {', '.join(bad)}")
        return value

    @field_validator("requested_at")
    @classmethod
    def _not_in_the_future(cls, value: datetime) -> datetime:
        if value > datetime.now(UTC) + CLOCK_SKEW:
            raise ValueError(f"{value.isoformat()} is in the future")
        return value

    @model_validator(mode="after")
    def _one_selector(self) -> DeletionRequest:
        if (self.sample_ids is None) == (self.where is None):
            raise ValueError("give exactly one of sample_ids or where")
        return self


class RequestRef(BaseModel):
    """A request passed by reference: the one the ledger holds under `request_id`.

    What the pipeline's own producers (the CLI, the scheduled flow, a review's retry) give the
    `unlearn` flow and put in a `uib.deletion.requested` event, so that Prefect stores no sample
    id as a flow-run parameter or an event payload: the ids stay in the ledger, which replaces
    them by salted hashes once they are erased.
    """

    model_config = ConfigDict(extra="forbid")

    request_id: str
    in_ledger: Literal[True] = True

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str) -> str:
        return checked_request_id(value)

    @staticmethod
    def given(payload: Any) -> bool:
        """Whether a flow's `request` parameter is a reference rather than a whole request."""
        return isinstance(payload, dict) and "in_ledger" in payload
