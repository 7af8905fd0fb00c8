"""Erase forgotten samples' bytes from DVC storage once a request's model step is done; audit.

The erasure never waits for a model gate or a reviewer (the right to erasure asks for it without
undue delay): the `unlearn` flow erases as soon as the steps that read the forget set are done,
and writes the audit record then. The record is updated afterwards with the model outcome
(approved, held for review) and with every later review action (`update_audit`).

`remove_samples` made a new data version without the samples, but the objects of the older
version (the shards that held them, the old manifest) stay in the local DVC cache and on the
remote, and `dvc gc` keeps them because older commits still name them. Here exactly those
objects go: every object the version before the request names and neither the version after
nor the current HEAD names. The older `.dir` listings stay (they hold file names and hashes,
no sample bytes), so the history still reads, but every commit whose listing names a purged
object can no longer be checked out in full; the record lists those commits.

Deletion is a file removal (local cache, remote), not an overwrite of the disk blocks.
Copies in other clones' DVC caches are outside the reach of this repository.

A request naming samples an approved request erased already gets a record too: those ids'
hashes under `already_erased_id_hashes`, the requests that erased them under
`already_erased_by`, never under `forgotten_id_hashes` (which `tasks.erased_ids` reads as what
a request itself erased). One that erased nothing else (`acknowledges`) has no data version.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from prefect import task
from pydantic import BaseModel, Field

from tasks.data_versioning import DataRepo, DataVersion, StorageError, as_id_array
from tasks.dvc_objects import delete_objects, missing_on_remote
from tasks.faults import fault_point
from tasks.private_state import private_dir, private_file, write_private
from tasks.redaction import HASH_SCHEME, hash_id
from tasks.requests import Review
from tasks.retrying import NETWORK_RETRIES
from uib.samples import DataError

UNRECOVERABLE_NOTE = (
    "Data versions at the listed unrecoverable_revs can no longer be checked out in full: "
    "their listings (file names and hashes only) remain, the purged objects do not."
)
SCOPE_NOTE = (
    "Purged from this data repository's DVC cache and its remote; copies in other clones' "
    "caches are not covered."
)


class ErasureRecord(BaseModel):
    before: DataVersion
    after: DataVersion
    purged_objects: list[str] = Field(description="md5 of every object erased for this request")
    deleted_from_cache: int
    deleted_from_remote: int
    unrecoverable_revs: list[str]
    forgotten_id_hashes: list[str]
    staged_file_deleted: bool


class AuditSummary(BaseModel):
    """The record in a few lines, first in its file: the outcome, what went, the versions, the
    gates, the erasure, the last review. The facts behind each line follow it."""

    outcome: str = Field(description="approved, held, rejected or withdrawn; `erased` before")
    forgotten: str = Field(description="how many samples, and how the request selected them")
    model_versions: str
    data_versions: str
    gates: str
    erased: str
    last_review: str | None = None


class AuditRecord(BaseModel):
    """A request's audit record. The summary comes first and the salted hashes last, so the file
    opens on what happened rather than on a hundred hashes."""

    request_id: str
    summary: AuditSummary | None = Field(None, description="None in records written before it")
    selection: str | None = Field(None, description="`where …` or `N ids`; never the ids")
    n_forgotten: int
    model_outcome: str | None = Field(
        None, description="approved, held (for review), rejected or withdrawn; None: not yet"
    )
    data_version_before: DataVersion | None = Field(
        description="None when every id was erased already: the request made no data version"
    )
    data_version_after: DataVersion | None
    model_version_before: str | None
    model_version_after: str | None
    requested_at: datetime
    completed_at: datetime
    reviews: list[Review] = Field(default_factory=list, description="review actions, oldest first")
    notes: list[str]
    gate_results: dict[str, Any]
    unrecoverable_revs: list[str]
    purged_object_count: int
    purged_objects: list[str]
    already_erased_by: list[str] = Field(
        default_factory=list, description="the approved requests that had erased some of its ids"
    )
    already_erased_id_hashes: list[str] = Field(
        default_factory=list, description="those ids, by salted hash; not in forgotten_id_hashes"
    )
    hash_scheme: str = HASH_SCHEME
    forgotten_id_hashes: list[str]

    @property
    def acknowledges(self) -> bool:
        """The request erased nothing itself: every id it names was erased already."""
        return not self.forgotten_id_hashes and bool(self.already_erased_by)

    def summarised(self) -> AuditRecord:
        """The record with its summary made from its facts (call after every change)."""
        gates = self.gate_results.get("gates") or []
        failed = [g.get("name", "?") for g in gates if not g.get("passed", True)]
        if not gates:
            gate_line = "not judged"
        elif failed:
            gate_line = "failed: " + ", ".join(failed)
        else:
            gate_line = f"all {len(gates)} passed"
        unrecoverable = len(self.unrecoverable_revs)
        erased = (
            f"{self.purged_object_count} objects purged from the DVC cache and remote; "
            f"{unrecoverable} data version{'' if unrecoverable == 1 else 's'} can no longer be "
            "checked out in full"
        )
        last = self.reviews[-1] if self.reviews else None
        before, after = self.data_version_before, self.data_version_after
        erasers = ", ".join(self.already_erased_by)
        already = (
            f"; {len(self.already_erased_id_hashes)} already erased by {erasers}" if erasers else ""
        )
        if self.acknowledges:
            erased = f"nothing newly erased: every sample was erased by {erasers}"
        summary = AuditSummary(
            outcome=self.model_outcome or "erased; model outcome not yet recorded",
            forgotten=f"{self.n_forgotten} sample{'' if self.n_forgotten == 1 else 's'}"
            + (f" ({self.selection})" if self.selection else "")
            + already,
            model_versions=f"{self.model_version_before or '—'} → {self.model_version_after or '—'}",
            data_versions=f"{before.git_rev[:10]} → {after.git_rev[:10]}"
            if before and after
            else "none made: nothing was left to remove",
            gates=gate_line,
            erased=erased,
            last_review=f"{last.action} by {last.by}: {last.reason}" if last else None,
        )
        return self.model_copy(update={"summary": summary})

    def to_json(self) -> str:
        return self.summarised().model_dump_json(indent=2)


def _check_versions(repo: DataRepo, before: DataVersion, after: DataVersion) -> None:
    head = repo.current()
    if before.git_rev == after.git_rev or not repo.is_ancestor(before.git_rev, after.git_rev):
        raise DataError(
            f"before: {before.git_rev[:10]} is not an earlier data version than after "
            f"{after.git_rev[:10]}"
        )
    if not repo.is_ancestor(after.git_rev, head.git_rev):
        raise DataError(f"after: {after.git_rev[:10]} is not in the history of the current version")
    for name, version in (("before", before), ("after", after)):
        if repo.dir_md5(version.git_rev) != version.dvc_md5:
            raise DataError(
                f"{name}: dvc_md5 {version.dvc_md5} is not what {version.git_rev[:10]} holds"
            )


def erase_forgotten(
    repo: DataRepo,
    before: DataVersion,
    after: DataVersion,
    forget_ids: Iterable[str],
    salt: str,
    staged_path: str | Path | None = None,
) -> ErasureRecord:
    """Delete the objects only `before` held from the cache and the remote; delete the staging.

    Refuses, deleting nothing, when the versions are not an earlier/later pair of this
    repository or `after` or the current version still lists a forgotten id (`DataError`), or
    when an object of the current version is missing from the remote (`StorageError`: the
    purge must never leave the current data without a remote copy). Running it again for the same request deletes
    nothing more and returns the same lists.
    """
    wanted = as_id_array(forget_ids, "forget_ids")
    hashes = sorted(hash_id(i, salt) for i in wanted)
    _check_versions(repo, before, after)
    head = repo.current().git_rev
    for name, rev in {"after": after.git_rev, "current": head}.items():
        if name == "current" and rev == after.git_rev:
            continue
        still = np.intersect1d(wanted, repo.load_manifest(rev)["sample_id"].to_numpy(dtype=str))
        if still.size:
            raise DataError(
                f"forget_ids: {still.size} of them are still in the {name} data version "
                f"{rev[:10]}, e.g. {still[:5].tolist()}"
            )

    head_listing = repo.dir_listing("HEAD")
    keep = set(repo.dir_listing(after.git_rev).values()) | set(head_listing.values())
    purge = sorted(set(repo.dir_listing(before.git_rev).values()) - keep)

    missing = missing_on_remote(repo, [*head_listing.values(), repo.dir_md5("HEAD")])
    if missing:
        raise StorageError(
            f"repo: {len(missing)} objects of the current data version are not on the remote "
            f"(e.g. {missing[:3]}); push before erasing"
        )
    deleted_cache, deleted_remote = delete_objects(repo, purge)
    fault_point("erasing")

    purged = set(purge)
    unrecoverable = [
        rev for rev in repo.history() if purged & set(_listing_or_empty(repo, rev).values())
    ]
    staged_deleted = False
    if staged_path is not None and Path(staged_path).exists():
        Path(staged_path).unlink()
        staged_deleted = True
    return ErasureRecord(
        before=before,
        after=after,
        purged_objects=purge,
        deleted_from_cache=deleted_cache,
        deleted_from_remote=deleted_remote,
        unrecoverable_revs=unrecoverable,
        forgotten_id_hashes=hashes,
        staged_file_deleted=staged_deleted,
    )


def _listing_or_empty(repo: DataRepo, rev: str) -> dict[str, str]:
    try:
        return repo.dir_listing(rev)
    except DataError:
        return {}


def build_audit_record(
    request_id: str,
    erasure: ErasureRecord,
    model_version_before: str | None,
    model_version_after: str | None,
    gate_results: dict[str, Any],
    requested_at: datetime,
    completed_at: datetime | None = None,
    model_outcome: str | None = None,
    selection: str | None = None,
    already_erased: tuple[list[str], list[str]] = ([], []),
) -> AuditRecord:
    """The audit record of a completed request: hashes, versions, gates, times, what was purged.

    `selection` says how the request chose its samples (`where source=faulty`, `2 ids`); the
    ids themselves appear only as salted hashes. `already_erased`: (the requests that had
    erased some of its ids, those ids' hashes).
    """
    if not request_id.strip():
        raise DataError("request_id: must not be empty")
    return AuditRecord(
        request_id=request_id,
        forgotten_id_hashes=erasure.forgotten_id_hashes,
        n_forgotten=len(erasure.forgotten_id_hashes),
        data_version_before=erasure.before,
        data_version_after=erasure.after,
        model_version_before=model_version_before,
        model_version_after=model_version_after,
        gate_results=gate_results,
        requested_at=requested_at,
        completed_at=completed_at or datetime.now(UTC),
        purged_object_count=len(erasure.purged_objects),
        purged_objects=erasure.purged_objects,
        unrecoverable_revs=erasure.unrecoverable_revs,
        notes=[UNRECOVERABLE_NOTE, SCOPE_NOTE] if erasure.unrecoverable_revs else [SCOPE_NOTE],
        model_outcome=model_outcome,
        selection=selection,
        already_erased_by=already_erased[0],
        already_erased_id_hashes=already_erased[1],
    ).summarised()


def already_erased_part(
    already_erased: Mapping[str, Sequence[str]] | None, salt: str
) -> tuple[list[str], list[str]]:
    """{sample id: the approved requests that erased it} → (those requests, the ids' hashes)."""
    already = already_erased or {}
    by = sorted({r for erasers in already.values() for r in erasers})
    return by, sorted(hash_id(i, salt) for i in already)


def write_audit(audit_dir: str | Path, record: AuditRecord) -> Path:
    """Write `audit_dir/<request_id>.json` whole (600): a killed writer leaves the old or the
    new record, never half."""
    private_dir(audit_dir)
    path = audit_path(audit_dir, record.request_id)
    partial = path.with_name(path.name + ".tmp")
    write_private(partial, record.to_json() + "\n")
    os.replace(partial, path)
    return path


def audit_path(audit_dir: str | Path, request_id: str) -> Path:
    """Where a request's audit record lives; it exists once the request's data is erased."""
    return Path(audit_dir) / f"{re.sub(r'[^A-Za-z0-9._-]', '_', request_id)}.json"


def read_audit(audit_dir: str | Path, request_id: str) -> AuditRecord | None:
    path = audit_path(audit_dir, request_id)
    return AuditRecord.model_validate_json(path.read_text()) if path.exists() else None


def update_audit(
    audit_dir: str | Path,
    request_id: str,
    model_outcome: str | None = None,
    model_version_after: str | None = None,
    gate_results: dict[str, Any] | None = None,
    review: Review | None = None,
) -> AuditRecord:
    """The model outcome and review actions after the erasure; the erasure facts never change."""
    record = read_audit(audit_dir, request_id)
    if record is None:
        raise DataError(f"request_id: {request_id} has no audit record (its data is not erased)")
    changes: dict[str, Any] = {"reviews": record.reviews + ([review] if review else [])}
    for name, value in (
        ("model_outcome", model_outcome),
        ("model_version_after", model_version_after),
        ("gate_results", gate_results),
    ):
        if value is not None:
            changes[name] = value
    record = record.model_copy(update=changes)
    path = audit_path(audit_dir, request_id)
    path.write_text(record.to_json() + "\n")
    private_file(path)
    return record


@task(name="erase-forgotten", **NETWORK_RETRIES)
def erase_request(
    repo_root: str | Path,
    request_id: str,
    before: DataVersion | dict,
    after: DataVersion | dict,
    forget_ids: Iterable[str],
    salt: str,
    audit_dir: str | Path,
    requested_at: datetime,
    staged_path: str | Path | None = None,
    model_version_before: str | None = None,
    model_version_after: str | None = None,
    gate_results: dict[str, Any] | None = None,
    model_outcome: str | None = None,
    selection: str | None = None,
    already_erased: Mapping[str, Sequence[str]] | None = None,
) -> dict:
    """Erase a request's forgotten bytes and write `audit_dir/<request_id>.json`.

    Called whatever the gates said: a held request's data is erased all the same.
    `already_erased`: {sample id: the approved requests that erased it} for the ids it names
    that were gone before it (`tasks.erased_ids`); the record names them by hash.
    """
    erasure = erase_forgotten(
        DataRepo(repo_root),
        DataVersion.model_validate(before),
        DataVersion.model_validate(after),
        forget_ids,
        salt,
        None,  # the staged forget set goes once the record is written: a rerun reads its ids
    )
    record = build_audit_record(
        request_id,
        erasure,
        model_version_before,
        model_version_after,
        gate_results or {},
        requested_at,
        model_outcome=model_outcome,
        selection=selection,
        already_erased=already_erased_part(already_erased, salt),
    )
    if (earlier := read_audit(audit_dir, request_id)) is not None:  # a rerun keeps the reviews
        record = record.model_copy(update={"reviews": earlier.reviews}).summarised()
    path = write_audit(audit_dir, record)
    if staged_path is not None:
        Path(staged_path).unlink(missing_ok=True)
    return {"audit_path": str(path), **record.summarised().model_dump(mode="json")}
