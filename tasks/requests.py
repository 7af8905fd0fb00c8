"""Deletion requests and the durable ledger that processes each request id at most once.

Once a request's forget set is erased, the ledger names its samples by salted hash only
(`redact_ids`): a request sent again is then compared by the hashes of its ids, so it is still
acknowledged as the same request (or refused as other content under a reused id). The file is
private (600) and deleted rows' bytes are overwritten (`secure_delete`), so no raw id of an
erased request stays in a free page of it.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from contextlib import closing
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
)

# the request itself lives in its own module; these names stay importable from here
from tasks.deletion_request import (
    CLOCK_SKEW,
    MAX_REASON,
    MAX_SAMPLE_ID,
    MAX_SAMPLE_IDS,
    REQUEST_ID,
    DeletionRequest,
    RequestRef,
    sample_id_problem,
)
from tasks.ownership import Owner, owner_gone
from tasks.private_state import private_dir, private_file
from tasks.redaction import HASH_SCHEME, hash_ids
from tasks.request_locks import RequestBusy, RequestLocks

__all__ = [
    "CLOCK_SKEW",
    "MAX_REASON",
    "MAX_SAMPLE_ID",
    "MAX_SAMPLE_IDS",
    "PARKED",
    "REQUEST_ID",
    "DeletionRequest",
    "RequestBusy",
    "RequestLedger",
    "RequestRecord",
    "RequestRef",
    "RequestState",
    "Review",
    "check_same_content",
    "sample_id_problem",
]


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
    received_at: datetime = Field(description="when the ledger first recorded it: queue order")
    updated_at: datetime
    owner: Owner | None = Field(None, description="the process that last set it running")
    heartbeat_at: datetime | None = Field(None, description="the owner's last sign of life")
    ids_hashed: bool = Field(
        False, description="its forget set is erased: its sample_ids, if any, are salted hashes"
    )

    @property
    def run_key(self) -> str:
        """The request whose run works on this one: its batch's, for a batch member."""
        return (
            self.batch_id
            if self.batch_id and self.batch_id != self.request_id
            else (self.request_id)
        )

    @property
    def is_open(self) -> bool:
        """Approved and withdrawn requests are done; every other state may be run (again)."""
        return self.state not in (RequestState.APPROVED, RequestState.WITHDRAWN)


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
    updated_at TEXT NOT NULL,
    received_at TEXT,
    owner_json TEXT,
    heartbeat_at TEXT,
    ids_hashed TEXT
)
"""


class RequestLedger(RequestLocks):
    """Requests in a small SQLite table under the state folder.

    `submit` records a request once: the same id again with the same content is acknowledged
    and returns the existing record; the same id with other content is refused. The ledger
    stamps the time it first records a request (`received_at`); the queue is ordered by that,
    never by the sender's `requested_at`.

    `salt` (e.g. `settings.salt`, called only when needed) hashes the ids of erased requests
    and of a request compared with one.
    """

    def __init__(self, path: str | Path, salt: Callable[[], str] | None = None):
        self.path = Path(path)
        self._salt = salt
        private_dir(self.path.parent)  # the state folder
        with closing(self._connect()) as db, db:
            db.execute(SCHEMA)
            columns = {row["name"] for row in db.execute("PRAGMA table_info(requests)")}
            # a ledger written before they were kept
            for column in (
                "outcome_json",
                "batch_id",
                "reviews_json",
                "received_at",
                "owner_json",
                "heartbeat_at",
                "ids_hashed",
            ):
                if column not in columns:
                    db.execute(f"ALTER TABLE requests ADD COLUMN {column} TEXT")
        private_file(self.path)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=30, isolation_level="IMMEDIATE")
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA secure_delete = ON")  # a replaced row's bytes are zeroed, not left
        return db

    def submit(self, request: DeletionRequest) -> tuple[RequestRecord, bool]:
        """(record, created): `created` is False when the id was already in the ledger.

        The look-up and the insert are one write transaction: two senders of one id at once
        used to both miss it, and the second insert failed with SQLite's IntegrityError
        instead of being acknowledged (same content) or refused by name (other content)."""
        with closing(self._connect()) as db, db:
            db.execute("BEGIN IMMEDIATE")  # sqlite3 would begin only at the INSERT
            row = db.execute(
                "SELECT * FROM requests WHERE request_id = ?", (request.request_id,)
            ).fetchone()
            if row is not None:
                existing = self._record(row)
                self.check_same_content(existing, request)
                return existing, False
            stamp = now()
            db.execute(
                "INSERT INTO requests (request_id, state, request_json, updated_at, received_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (request.request_id, RequestState.PENDING, request.model_dump_json(), stamp, stamp),
            )
        return self.get(request.request_id), True

    def check_same_content(self, existing: RequestRecord, sent: DeletionRequest) -> None:
        """`check_same_content` against a recorded request, by the hashes of `sent`'s ids when
        the ledger keeps only those (the request's forget set is erased)."""
        if not existing.ids_hashed or existing.request.sample_ids is None:
            return check_same_content(existing.request, sent)
        if self._salt is None:
            raise RuntimeError(
                f"request {existing.request_id!r} names its samples by salted hash: open the "
                "ledger with the salt to compare a request with it"
            )
        check_same_content(existing.request, sent, self._salt())

    def redact_ids(self, request_id: str) -> list[str]:
        """Replace the sample ids of `request_id` and of its batch's members by their salted
        hashes (once its forget set is erased); the request ids whose rows changed."""
        if self._salt is None:
            raise RuntimeError("the ledger was opened without the salt: it cannot hash ids")
        changed = []
        with closing(self._connect()) as db, db:
            rows = db.execute(
                "SELECT * FROM requests WHERE (request_id = ? OR batch_id = ?) "
                "AND ids_hashed IS NULL",
                (request_id, request_id),
            ).fetchall()
            for row in rows:
                request = DeletionRequest.model_validate_json(row["request_json"])
                if request.sample_ids is not None:
                    hashed = hash_ids(request.sample_ids, self._salt())
                    request = request.model_copy(update={"sample_ids": hashed})
                db.execute(
                    "UPDATE requests SET request_json = ?, ids_hashed = ? WHERE request_id = ?",
                    (request.model_dump_json(), HASH_SCHEME, row["request_id"]),
                )
                changed.append(row["request_id"])
        return changed

    def find(self, request_id: str) -> RequestRecord | None:
        try:
            return self.get(request_id)
        except KeyError:
            return None

    def owner_gone(self, record: RequestRecord) -> str | None:
        """Why a `running` request's run is gone (killed, its machine lost), or None while it
        may still be working or the request is not running (`tasks.ownership`)."""
        if record.state != RequestState.RUNNING:
            return None
        run = record if record.run_key == record.request_id else self.find(record.run_key)
        run = run or record
        return owner_gone(run.owner, run.heartbeat_at, self.lock_held(record.run_key))

    def beat(self, request_id: str) -> None:
        """The owner's heartbeat: it is still working on `request_id`."""
        with closing(self._connect()) as db, db:
            db.execute(
                "UPDATE requests SET heartbeat_at = ? WHERE request_id = ? AND state = ?",
                (now(), request_id, RequestState.RUNNING),
            )

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
        """Set the state; every other field given replaces the stored one. Setting `running`
        records this process as the owner, with a first heartbeat."""
        self.get(request_id)
        with closing(self._connect()) as db, db:
            if state == RequestState.RUNNING:
                db.execute(
                    "UPDATE requests SET owner_json = ?, heartbeat_at = ? WHERE request_id = ?",
                    (Owner.this_process().model_dump_json(), now(), request_id),
                )
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
            # a row recorded before receipt was stamped: the sender's time is all there is
            received_at=row["received_at"] or json.loads(row["request_json"])["requested_at"],
            owner=Owner.model_validate_json(row["owner_json"]) if row["owner_json"] else None,
            heartbeat_at=row["heartbeat_at"],
            ids_hashed=bool(row["ids_hashed"]),
        )


def now() -> str:
    return datetime.now(UTC).isoformat()


def check_same_content(
    stored: DeletionRequest, sent: DeletionRequest, salt: str | None = None
) -> None:
    """A ValueError when `sent` reuses `stored`'s id with other content (the time aside).

    `salt`: `stored` names its samples by salted hash, so `sent`'s ids are hashed to compare.
    """
    if salt is not None and sent.sample_ids is not None:
        sent = sent.model_copy(update={"sample_ids": hash_ids(sent.sample_ids, salt)})
    when = {"requested_at"}
    if stored.model_dump(exclude=when) != sent.model_dump(exclude=when):
        raise ValueError(
            f"request_id: {sent.request_id!r} is already in the ledger with other content; "
            "use a new request_id"
        )
