"""Ids an approved request erased already: a request naming them again is done, not bad input.

A person sends a deletion request by the web form and again by e-mail, or a request overlaps
one approved before: its ids are no longer in the data because they were erased, which is not
the same as never having been there. Every entrance (`tasks.intake`), the batch planner
(`tasks.batching`) and the flow's resolution (`tasks.intake.resolve_request`) tell the two apart
here, by salted hash (`tasks.redaction`), for ids the current data version does not hold:

- erased by an approved request: set apart (`Selection.already_erased`); a request all of
  whose ids are erased is acknowledged (`acknowledge`): approved, with a message naming the
  requests that erased them, no data or model version, an audit record of its own, its ids
  hashed in the ledger; a request only some of whose ids are erased forgets the rest, and its
  audit record and outcome name the erased part and by whom;
- in neither: refused naming them, as before (`sample_ids: forget set: N ids not in …`);
  but at an entrance, ids a run is erasing right now (`being_erased`: its data version without
  them is committed, it is not approved yet) are let in: the request waits for that run and is
  acknowledged once it is approved (the web form and the e-mail a minute apart).

The source of truth is the audit records (`<home>/audit/<request_id>.json`), read with the
ledger. A record is written once a request's bytes are gone (whole, never half), is never
deleted, and lists what the request itself erased (`forgotten_id_hashes`): the resolved ids of
a predicate request and of a batch too, which no ledger row names (a `where` row holds no ids, a
batch member's row what it asked for), and never the ids a request only named again (those are
`already_erased_id_hashes`), so the index names who erased an id, not who asked twice. The
ledger says whether that request is approved: it marks a request approved only at the very end
of its run, after the record; a held, rejected or withdrawn request's data is erased, but its
model never replaced the champion, so naming its ids again stays refused as before. (A record
whose request the ledger does not hold counts when its own outcome is approved.) The ledger
also names the batch member that asked for an id, so a requester hears of a request they know.
Hashes depend on the salt: with another salt nothing matches, and the ids are refused again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import pandas as pd
from pydantic import BaseModel

from tasks.data_plumbing import git, parse_trailers
from tasks.erasure import (
    AuditRecord,
    already_erased_part,
    audit_path,
    read_audit,
    write_audit,
)
from tasks.predicates import select_samples
from tasks.redaction import hash_id, hash_ids
from tasks.requests import (
    PARKED,
    DeletionRequest,
    RequestLedger,
    RequestRecord,
    RequestState,
)
from tasks.review_page import selection_text
from tasks.settings import Settings
from uib.samples import DataError

log = logging.getLogger(__name__)
# the states a request is acknowledged from outside a run: it has run to no end yet
OPEN = (RequestState.PENDING, RequestState.REJECTED, RequestState.FAILED)


class ErasedIds:
    """Which approved requests erased an id, by its salted hash; read once, when first asked."""

    def __init__(
        self, audit_dir: str | Path, ledger: RequestLedger | None, salt: Callable[[], str]
    ):
        self.audit_dir, self.ledger, self._salt = Path(audit_dir), ledger, salt
        self._erasers: dict[str, set[str]] | None = None

    @classmethod
    def of(cls, settings: Settings, ledger: RequestLedger | None = None) -> ErasedIds:
        if ledger is None and settings.ledger_path.exists():
            ledger = RequestLedger(settings.ledger_path, salt=settings.salt)
        return cls(settings.audit_dir, ledger, settings.salt)

    def erased_by(self, sample_ids: Iterable[str], exclude: str | None = None) -> dict[str, list]:
        """{id: the approved requests that erased it} for those of `sample_ids` erased, but by
        `exclude` (the request asking)."""
        ids = [str(i) for i in sample_ids]
        erasers = self._index() if ids else {}
        if not erasers:
            return {}
        salt, found = self._salt(), {}
        for sample_id in ids:
            names = sorted(erasers.get(hash_id(sample_id, salt), set()) - {exclude})
            if names:
                found[sample_id] = names
        return found

    def being_erased(self, repo, sample_ids: Iterable[str]) -> set[str]:
        """Those of `sample_ids` (not in the current data) a request not approved yet removed:
        in the data commits newer than the newest approved request's, but a parked request's
        (held, rejected on review, withdrawn: a review decides). Runs are serialized, so that
        is the run in progress (or one a crash cut short). Its ids are read from the versions
        before and after its commit, or, once its erasure purged the one before, by hash from
        its audit record."""
        ids = {str(i) for i in sample_ids}
        if not ids or self.ledger is None:
            return set()
        states = {r.request_id: r.state for r in self.ledger.list()}
        found: set[str] = set()
        for rev in repo.history():
            body = git(repo.root, "log", "-1", "--format=%B", rev)
            rid = parse_trailers(body).get("Request-Id")
            if rid is None or states.get(rid) in (None, RequestState.APPROVED):
                break  # the first version, or the newest approved request's: the rest are done
            if states[rid] in PARKED:
                continue
            audit = read_audit(self.audit_dir, rid)
            if audit is not None:
                hashes, salt = set(audit.forgotten_id_hashes), self._salt()
                found |= {i for i in ids if hash_id(i, salt) in hashes}
                continue
            try:
                before = repo.load_manifest(f"{rev}~1")["sample_id"].astype(str)
                after = repo.load_manifest(rev)["sample_id"].astype(str)
            except Exception as error:  # purged by an erasure cut short: its ids stay unknown
                log.warning("data version %s~1 unreadable: %s", rev[:10], error)
                continue
            found |= ids & (set(before) - set(after))
        return found

    def _index(self) -> dict[str, set[str]]:
        if self._erasers is None:
            self._erasers = self._read() if self.audit_dir.is_dir() else {}
        return self._erasers

    def _read(self) -> dict[str, set[str]]:
        records = {r.request_id: r for r in self.ledger.list()} if self.ledger else {}
        members: dict[str, list[RequestRecord]] = {}
        for record in records.values():
            if record.batch_id and record.batch_id != record.request_id:
                members.setdefault(record.batch_id, []).append(record)
        index: dict[str, set[str]] = {}
        for path in sorted(self.audit_dir.glob("*.json")):
            try:
                audit = AuditRecord.model_validate_json(path.read_text())
            except (OSError, ValueError) as error:  # its ids are refused as unknown, as before
                log.warning("audit record %s unreadable, skipped: %s", path, error)
                continue
            record = records.get(audit.request_id)
            state = record.state.value if record is not None else audit.model_outcome
            if state != RequestState.APPROVED.value:
                continue
            asked = {  # the batch members that named ids, by the ids' hashes
                m.request_id: set(self._hashes(m)) for m in members.get(audit.request_id, [])
            }
            for hashed in audit.forgotten_id_hashes:
                askers = [m for m, hashes in asked.items() if hashed in hashes]
                index.setdefault(hashed, set()).update(askers or [audit.request_id])
        return index

    def _hashes(self, record: RequestRecord) -> list[str]:
        ids = record.request.sample_ids or []
        return ids if record.ids_hashed else hash_ids(ids, self._salt())


@dataclass(frozen=True)
class Selection:
    """What a request selects on a data version: the ids to forget, and apart from them those
    approved requests erased already ({id: by whom}; raw ids, never stored)."""

    forget_ids: list[str]
    already_erased: dict[str, list[str]] = field(default_factory=dict)

    @property
    def all_erased(self) -> bool:
        return not self.forget_ids and bool(self.already_erased)


def select_unerased(
    manifest: pd.DataFrame,
    request: DeletionRequest,
    erased: ErasedIds | None,
    split: str = "train",
) -> Selection:
    """`select_samples`, with the named ids `split` does not hold but an approved request
    erased set apart. An id in neither is refused as before, named; so is a predicate that
    matches nothing (only named ids are looked up)."""
    if erased is None or request.sample_ids is None:
        ids = select_samples(manifest, request.sample_ids, request.where, split)
        return Selection([str(i) for i in ids])
    present = set(manifest.loc[manifest["split"] == split, "sample_id"].to_numpy(dtype=str))
    missing = [i for i in request.sample_ids if i not in present]
    already = erased.erased_by(missing, exclude=request.request_id) if missing else {}
    rest = [i for i in request.sample_ids if i not in already]
    if not rest:
        return Selection([], already)
    return Selection([str(i) for i in select_samples(manifest, rest, None, split)], already)


class Acknowledgement(BaseModel):
    """The outcome of a request every id of which was erased already, as the ledger keeps it
    and the CLI prints it: approved, with no data or model version."""

    kind: Literal["already-erased"] = "already-erased"
    request_id: str
    state: RequestState = RequestState.APPROVED
    already_erased_by: list[str]
    n_already_erased: int
    n_forgotten: int = 0
    model_version: str | None = None
    audit_path: str
    message: str
    duplicate: bool = False

    @classmethod
    def of(cls, record: RequestRecord) -> Acknowledgement | None:
        """The acknowledgement an approved record keeps as its outcome, else None."""
        outcome = record.outcome or {}
        return cls.model_validate(outcome) if outcome.get("kind") == "already-erased" else None


def acknowledgement_record(
    request: DeletionRequest, already_erased: Mapping[str, Sequence[str]], salt: str
) -> AuditRecord:
    """The audit record of an acknowledged request: none of its samples newly forgotten, no
    data or model version, who had erased them and their hashes."""
    if not already_erased:
        raise DataError("already_erased: an acknowledgement names the ids erased already")
    by, hashes = already_erased_part(already_erased, salt)
    return AuditRecord(
        request_id=request.request_id,
        selection=selection_text(request),
        n_forgotten=0,
        model_outcome=RequestState.APPROVED.value,
        data_version_before=None,
        data_version_after=None,
        model_version_before=None,
        model_version_after=None,
        requested_at=request.requested_at,
        completed_at=datetime.now(UTC),
        notes=[f"Every sample it names was erased already, by {', '.join(by)}."],
        gate_results={},
        unrecoverable_revs=[],
        purged_object_count=0,
        purged_objects=[],
        already_erased_by=by,
        already_erased_id_hashes=hashes,
        forgotten_id_hashes=[],
    ).summarised()


def acknowledge(
    request: DeletionRequest,
    settings: Settings,
    ledger: RequestLedger,
    already_erased: Mapping[str, Sequence[str]],
) -> Acknowledgement:
    """Record a request (in the ledger already) every id of which approved requests erased
    ({id: by whom}, from `select_unerased`): its audit record first, then its ids hashed and
    the request approved in the ledger. A crash in between is finished from the record."""
    earlier = read_audit(settings.audit_dir, request.request_id)
    if earlier is not None and not earlier.acknowledges:
        raise DataError(f"request_id: {request.request_id} erased samples of its own already")
    if earlier is None:
        earlier = acknowledgement_record(request, already_erased, settings.salt())
        write_audit(settings.audit_dir, earlier)
    return finish_acknowledgement(settings, ledger, earlier)


def finish_acknowledgement(
    settings: Settings, ledger: RequestLedger, record: AuditRecord
) -> Acknowledgement:
    """The ledger's part of an acknowledgement, from its audit record (idempotent)."""
    rid, by = record.request_id, ", ".join(record.already_erased_by)
    ledger.redact_ids(rid)
    n = len(record.already_erased_id_hashes)
    acknowledgement = Acknowledgement(
        request_id=rid,
        already_erased_by=record.already_erased_by,
        n_already_erased=n,
        audit_path=str(audit_path(settings.audit_dir, rid)),
        message=f"approved: {'its sample was' if n == 1 else f'all {n} of its samples were'} "
        f"erased already, by {by}; no data or model version was needed",
    )
    ledger.update(
        rid,
        RequestState.APPROVED,
        acknowledgement.message,
        outcome=acknowledgement.model_dump(mode="json"),
    )
    return acknowledgement


def acknowledge_open(
    request: DeletionRequest,
    settings: Settings,
    ledger: RequestLedger,
    already_erased: Mapping[str, Sequence[str]],
) -> Acknowledgement | None:
    """`acknowledge`, outside a run (the CLI by event, the inbox, the scheduled flow), under
    the request's lock; None when the ledger holds it in a state a run would not take up
    (approved, running, held, withdrawn, reviewed). `RequestBusy` when a run holds it."""
    with ledger.exclusive(request.request_id):
        record = ledger.get(request.request_id)
        if record.state not in OPEN or record.reviews:
            return None
        return acknowledge(request, settings, ledger, already_erased)


def already_erased_of(
    request: DeletionRequest, forget_ids: Iterable[str], settings: Settings
) -> dict[str, list[str]]:
    """{id: who erased it} for the ids the request names beyond its forget set (`forget_ids`):
    those approved requests had erased before it, for its audit record."""
    rest = sorted(set(request.sample_ids or []) - {str(i) for i in forget_ids})
    return ErasedIds.of(settings).erased_by(rest, exclude=request.request_id) if rest else {}
