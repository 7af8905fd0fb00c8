"""Deletion requests and the durable ledger that processes each request id at most once."""

from __future__ import annotations

import fcntl
import json
import re
import sqlite3
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.data_versioning import DataRepo
from uib.data import Dataset
from uib.scenarios import ScenarioConfig, select_forget

REQUEST_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DeletionRequest(BaseModel):
    """A data-deletion request: samples named by id, or by an attribute predicate."""

    model_config = ConfigDict(extra="forbid")

    request_id: str = Field(default_factory=lambda: f"req-{uuid.uuid4().hex[:12]}")
    sample_ids: list[str] | None = None
    where: dict[str, str] | None = None
    reason: str = ""
    requested_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    allow_class_removal: bool = False

    @field_validator("request_id")
    @classmethod
    def _request_id(cls, value: str) -> str:
        if not REQUEST_ID.match(value):
            raise ValueError(
                "request_id must be 1–128 letters, digits, '.', '_' or '-', "
                f"starting with a letter or digit; got {value!r}"
            )
        return value

    @field_validator("sample_ids")
    @classmethod
    def _sample_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is not None:
            if not value:
                raise ValueError("sample_ids is empty: name at least one sample")
            blank = [i for i, v in enumerate(value) if not v.strip()]
            if blank:
                raise ValueError(f"sample_ids has blank entries at positions {blank[:5]}")
            if len(set(value)) != len(value):
                raise ValueError("sample_ids names a sample more than once")
        return value

    @model_validator(mode="after")
    def _one_selector(self) -> DeletionRequest:
        if (self.sample_ids is None) == (self.where is None):
            raise ValueError("give exactly one of sample_ids or where")
        if self.where is not None and not self.where:
            raise ValueError("where is empty: name at least one attribute")
        return self


class RequestBusy(RuntimeError):
    """Another run is working on the same request right now."""


class RequestState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    APPROVED = "approved"
    REJECTED = "rejected"
    FAILED = "failed"
    HELD = "held"
    WITHDRAWN = "withdrawn"


# A request in one of these states may leave its data commit ahead of the champion without
# blocking anyone: its forget set is erased (held, rejected on review) or no longer wanted
# (withdrawn), and every later retain set already excludes its samples.
PARKED = frozenset({RequestState.HELD, RequestState.REJECTED, RequestState.WITHDRAWN})


class Review(BaseModel):
    """One reviewer's action on a request: who, why, when; kept in the ledger and the audit."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["approve", "reject", "retry", "withdraw"]
    by: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)
    at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    model_version: str | None = Field(None, description="the candidate the action was about")

    @field_validator("by", "reason")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be blank")
        return value.strip()

    def line(self) -> str:
        return f"{self.action} by {self.by} ({self.at:%Y-%m-%d %H:%M}Z): {self.reason}"


class RequestRecord(BaseModel):
    request_id: str
    state: RequestState
    request: DeletionRequest
    flow_run_id: str | None = None
    model_version: str | None = None
    message: str = ""
    outcome: dict | None = None
    batch_id: str | None = None
    reviews: list[Review] = Field(default_factory=list, description="oldest first")
    updated_at: datetime

    @property
    def is_open(self) -> bool:
        """Approved and withdrawn requests are done; every other state may be run (again)."""
        return self.state not in (RequestState.APPROVED, RequestState.WITHDRAWN)


_HELD: set[Path] = set()

SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request_json TEXT NOT NULL,
    flow_run_id TEXT,
    model_version TEXT,
    message TEXT NOT NULL DEFAULT '',
    outcome_json TEXT,
    batch_id TEXT,
    reviews_json TEXT,
    updated_at TEXT NOT NULL
)
"""


class RequestLedger:
    """Requests in a small SQLite table under the state folder.

    `submit` records a request once: the same id again with the same content is acknowledged
    and returns the existing record; the same id with other content is refused.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with closing(self._connect()) as db, db:
            db.execute(SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(requests)")}
            # a ledger written before they were kept
            for column in ("outcome_json", "batch_id", "reviews_json"):
                if column not in columns:
                    db.execute(f"ALTER TABLE requests ADD COLUMN {column} TEXT")

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")
        db.row_factory = sqlite3.Row
        return db

    def submit(self, request: DeletionRequest) -> tuple[RequestRecord, bool]:
        """(record, created): `created` is False when the id was already in the ledger."""
        with closing(self._connect()) as db, db:
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ?", (request.request_id,)
            ).fetchone()
            if row is not None:
                existing = self._record(row)
                when = {"requested_at"}
                if existing.request.model_dump(exclude=when) != request.model_dump(exclude=when):
                    raise ValueError(
                        f"request_id {request.request_id!r} is already in the ledger "
                        "with other content; use a new request_id"
                    )
                return existing, False
            db.execute(
                "INSERT INTO requests (request_id, state, request_json, updated_at) "
                "VALUES (?, ?, ?, ?)",
                (request.request_id, RequestState.PENDING, request.model_dump_json(), now()),
            )
        return self.get(request.request_id), True

    @contextmanager
    def exclusive(self, request_id: str) -> Iterator[None]:
        """Held while a run works on `request_id`; a concurrent run of it is refused.

        An OS file lock rather than a ledger state: the OS drops it when the process dies, so
        a crashed run never blocks its own rerun.
        """
        path = self.path.parent / "locks" / f"{request_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RequestBusy(
                    f"request {request_id!r} is being processed by another run"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    @contextmanager
    def serialized(self) -> Iterator[None]:
        """Held while a run changes the data repository and the registry; other runs wait.

        Event-triggered and scheduled runs may start together; the data version and the
        champion move one request at a time. Re-entrant within a process, so the scheduled
        flow can hold it around the `unlearn` subflow of its batch.
        """
        path = (self.path.parent / "locks" / "pipeline.lock").resolve()
        if path in _HELD:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            _HELD.add(path)
            try:
                yield
            finally:
                _HELD.discard(path)
                fcntl.flock(handle, fcntl.LOCK_UN)

    def get(self, request_id: str) -> RequestRecord:
        with closing(self._connect()) as db:
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ?", (request_id,)
            ).fetchone()
        if row is None:
            raise KeyError(f"request_id {request_id!r} is not in the ledger")
        return self._record(row)

    def update(
        self,
        request_id: str,
        state: RequestState,
        message: str | None = None,
        flow_run_id: str | None = None,
        model_version: str | None = None,
        outcome: dict | None = None,
        batch_id: str | None = None,
    ) -> RequestRecord:
        """Set the state; every other field given replaces the stored one."""
        self.get(request_id)
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE requests SET state = ?, message = COALESCE(?, message), "
                "flow_run_id = COALESCE(?, flow_run_id), "
                "model_version = COALESCE(?, model_version), "
                "outcome_json = COALESCE(?, outcome_json), batch_id = COALESCE(?, batch_id), "
                "updated_at = ? WHERE request_id = ?",
                (
                    state,
                    message,
                    flow_run_id,
                    model_version,
                    None if outcome is None else json.dumps(outcome),
                    batch_id,
                    now(),
                    request_id,
                ),
            )
        return self.get(request_id)

    def review(
        self, request_id: str, review: Review, state: RequestState, message: str
    ) -> RequestRecord:
        """Append a reviewer's action to the request's reviews and set its state."""
        reviews = [*self.get(request_id).reviews, review]
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE requests SET state = ?, message = ?, reviews_json = ?, updated_at = ? "
                "WHERE request_id = ?",
                (
                    state,
                    message,
                    json.dumps([r.model_dump(mode="json") for r in reviews]),
                    now(),
                    request_id,
                ),
            )
        return self.get(request_id)

    def list(self, state: RequestState | None = None) -> list[RequestRecord]:
        query, args = "SELECT * FROM requests", ()
        if state is not None:
            query, args = query + " WHERE state = ?", (state,)
        with closing(self._connect()) as db:
            rows = db.execute(query + " ORDER BY updated_at", args).fetchall()
        return [self._record(r) for r in rows]

    @staticmethod
    def _record(row: sqlite3.Row) -> RequestRecord:
        return RequestRecord(
            request_id=row["request_id"],
            state=row["state"],
            request=DeletionRequest.model_validate(json.loads(row["request_json"])),
            flow_run_id=row["flow_run_id"],
            model_version=row["model_version"],
            message=row["message"],
            updated_at=row["updated_at"],
            outcome=json.loads(row["outcome_json"]) if row["outcome_json"] else None,
            batch_id=row["batch_id"],
            reviews=json.loads(row["reviews_json"]) if row["reviews_json"] else [],
        )


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Resolved:
    """A request resolved on the data version it applies to."""

    dataset: Dataset
    scenario: ScenarioConfig | None
    forget_ids: list[str]
    data_rev: str

    def manifests(self) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
        """(original, retain, forget): the manifests the new version would have, and its slice."""
        manifest = self.dataset.manifest
        forget = manifest["sample_id"].isin(self.forget_ids)
        return manifest, manifest[~forget], manifest[forget]

    def removes_bias_slice(self) -> bool:
        """A patch-bias request: it takes every patched training sample of a patch-bias dataset.

        Only then must the shortcut vanish; part of the slice is an ordinary request.
        """
        if self.scenario is None or self.scenario.name != "patch-bias":
            return False
        manifest = self.dataset.manifest
        patched = manifest.loc[
            (manifest["split"] == "train") & manifest["patched"].astype(bool), "sample_id"
        ]
        return bool(len(patched)) and set(patched.astype(str)) <= set(self.forget_ids)


@task(name="resolve-request", cache_policy=NO_CACHE)
def resolve_request(request: DeletionRequest, repo_root: str | Path) -> Resolved:
    """The request's training-sample ids, read from the data version it applies to.

    A rerun of a request whose data commit exists reads the version before that commit.
    """
    repo = DataRepo(repo_root)
    done = repo.find_request(request.request_id)
    rev = f"{done}~1" if done else None
    dataset, scenario = repo.load(rev)
    if request.sample_ids is not None:
        ids = select_forget(dataset.manifest, ids=request.sample_ids)
    else:
        ids = select_forget(dataset.manifest, where=request.where)
    return Resolved(dataset, scenario, [str(i) for i in ids], repo.version(rev or "HEAD").git_rev)
