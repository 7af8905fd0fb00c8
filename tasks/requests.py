"""Deletion requests and the durable ledger that processes each request id at most once."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tasks.data_versioning import DataRepo
from uib.data import Dataset
from uib.scenarios import select_forget

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
            raise ValueError("request_id must be 1–128 letters, digits, '.', '_' or '-', "
                             f"starting with a letter or digit; got {value!r}")
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


class RequestState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    APPROVED = "approved"
    REJECTED = "rejected"
    FAILED = "failed"


class RequestRecord(BaseModel):
    request_id: str
    state: RequestState
    request: DeletionRequest
    flow_run_id: str | None = None
    model_version: str | None = None
    message: str = ""
    updated_at: datetime

    @property
    def is_open(self) -> bool:
        """Approved requests are done; every other state may be run (again)."""
        return self.state != RequestState.APPROVED


SCHEMA = """
CREATE TABLE IF NOT EXISTS requests (
    request_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    request_json TEXT NOT NULL,
    flow_run_id TEXT,
    model_version TEXT,
    message TEXT NOT NULL DEFAULT '',
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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")
        db.row_factory = sqlite3.Row
        return db

    def submit(self, request: DeletionRequest) -> tuple[RequestRecord, bool]:
        """(record, created): `created` is False when the id was already in the ledger."""
        with closing(self._connect()) as db, db:
            row = db.execute("SELECT * FROM requests WHERE request_id = ?", (request.request_id,)).fetchone()
            if row is not None:
                existing = self._record(row)
                if existing.request.model_dump(exclude={"requested_at"}) != request.model_dump(exclude={"requested_at"}):
                    raise ValueError(f"request_id {request.request_id!r} is already in the ledger "
                                     "with other content; use a new request_id")
                return existing, False
            db.execute(
                "INSERT INTO requests (request_id, state, request_json, updated_at) VALUES (?, ?, ?, ?)",
                (request.request_id, RequestState.PENDING, request.model_dump_json(), now()),
            )
        return self.get(request.request_id), True

    def get(self, request_id: str) -> RequestRecord:
        with closing(self._connect()) as db:
            row = db.execute("SELECT * FROM requests WHERE request_id = ?", (request_id,)).fetchone()
        if row is None:
            raise KeyError(f"request_id {request_id!r} is not in the ledger")
        return self._record(row)

    def update(self, request_id: str, state: RequestState, message: str | None = None,
               flow_run_id: str | None = None, model_version: str | None = None) -> RequestRecord:
        self.get(request_id)
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE requests SET state = ?, message = COALESCE(?, message), "
                "flow_run_id = COALESCE(?, flow_run_id), model_version = COALESCE(?, model_version), "
                "updated_at = ? WHERE request_id = ?",
                (state, message, flow_run_id, model_version, now(), request_id),
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
            request_id=row["request_id"], state=row["state"],
            request=DeletionRequest.model_validate(json.loads(row["request_json"])),
            flow_run_id=row["flow_run_id"], model_version=row["model_version"],
            message=row["message"], updated_at=row["updated_at"],
        )


def now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class Resolved:
    dataset: Dataset
    scenario: object
    forget_ids: list[str]
    data_rev: str


@task(name="resolve-request", cache_policy=NO_CACHE)
def resolve_request(request: DeletionRequest, repo_root: str | Path) -> Resolved:
    """The request's training-sample ids, read from the data version it applies to.

    A rerun of a request whose data commit exists reads the version before that commit.
    """
    repo = DataRepo(repo_root)
    done = repo.find_request(request.request_id)
    rev = f"{done}~1" if done else repo.current().git_rev
    dataset, scenario = repo.load(rev)
    if request.sample_ids is not None:
        ids = select_forget(dataset.manifest, ids=request.sample_ids)
    else:
        ids = select_forget(dataset.manifest, where=request.where)
    return Resolved(dataset, scenario, [str(i) for i in ids], repo.version(rev).git_rev)


def split_manifests(resolved: Resolved):
    manifest = resolved.dataset.manifest
    forget = manifest["sample_id"].isin(resolved.forget_ids)
    return manifest, manifest[~forget], manifest[forget]
