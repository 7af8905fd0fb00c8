"""Request intake: what every entrance (the CLI, locally or by event, and the S3 inbox) checks
before a request is recorded, and resolving a request on the data version it applies to.

Bad input is refused here, before the ledger, the data or the registry changes: a request that
cannot apply as written (an unknown id or attribute, a value that does not fit its column, a
predicate that matches nothing, a reused request id with other content) is a `RequestInvalid`,
which the CLI reports with exit code 2 in both of its modes and the inbox files under
`rejected/`. What a well-formed request then meets (the shift policy, the gates) is decided by
the `unlearn` flow, which records the outcome.

An id the data no longer holds because an approved request erased it is no unknown id: it is
set apart (`tasks.erased_ids`), and a request all of whose ids are erased is acknowledged as
done (`Intake.already_erased`) rather than refused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from tasks.data_versioning import DataRepo
from tasks.erased_ids import ErasedIds, select_unerased
from tasks.requests import (
    DeletionRequest,
    RequestLedger,
    RequestRecord,
    RequestState,
)
from uib.data import Dataset
from uib.samples import DataError
from uib.scenarios import ScenarioConfig

# a recorded request in one of these states, never reviewed, is resolved and run again
RERUNNABLE = (RequestState.PENDING, RequestState.REJECTED, RequestState.FAILED)


class RequestInvalid(ValueError):
    """The request cannot apply as written; the message names the field."""


class Intake:
    """Checks requests against the ledger and the data repository, reading each data version's
    manifest once (the inbox checks many requests in one pass)."""

    def __init__(
        self, repo: DataRepo, ledger: RequestLedger | None, erased: ErasedIds | None = None
    ):
        """`ledger` None: there is none yet (checking a request creates no file). `erased`:
        the ids approved requests erased; None: every id the data lacks is unknown."""
        self.repo, self.ledger, self.erased = repo, ledger, erased
        self._manifests: dict[str | None, pd.DataFrame] = {}
        self._erased: dict[str, dict[str, list[str]]] = {}

    def manifest(self, rev: str | None = None) -> pd.DataFrame:
        if rev not in self._manifests:
            self._manifests[rev] = self.repo.load_manifest(rev)
        return self._manifests[rev]

    def check(self, request: DeletionRequest) -> RequestRecord | None:
        """The ledger's record of the request (None when new), once the request is known to
        apply; a RequestInvalid says why not. A recorded request that will not run again
        (approved, running, held, withdrawn, or reviewed) is only compared by content."""
        existing = self.ledger.find(request.request_id) if self.ledger else None
        if existing is not None:
            try:
                self.ledger.check_same_content(existing, request)  # by hash once erased
            except ValueError as error:
                raise RequestInvalid(str(error)) from None
            if existing.state not in RERUNNABLE or existing.reviews:
                return existing
        rev = None
        if existing is not None and (done := self.repo.find_request(request.request_id)):
            rev = f"{done}~1"  # a crashed run committed its data version: read the one before
        try:
            selection = select_unerased(self.manifest(rev), request, self.erased)
        except DataError as error:
            if rev is None and self._being_erased(request):
                return existing  # a run erases its ids now: it waits for it (`tasks.erased_ids`)
            raise RequestInvalid(str(error)) from None
        if selection.all_erased:
            self._erased[request.request_id] = selection.already_erased
        return existing

    def _being_erased(self, request: DeletionRequest) -> bool:
        """Whether a run not approved yet is erasing every id of `request` that the data lacks
        and no approved request erased."""
        if request.sample_ids is None or self.erased is None:
            return False
        train = self.manifest()
        present = set(train.loc[train["split"] == "train", "sample_id"].astype(str))
        missing = [i for i in request.sample_ids if i not in present]
        rest = set(missing) - set(self.erased.erased_by(missing, exclude=request.request_id))
        return bool(rest) and rest <= self.erased.being_erased(self.repo, rest)

    def already_erased(self, request: DeletionRequest) -> dict[str, list[str]]:
        """After `check`: {id: the approved requests that erased it} when they erased every id
        the request names (it is acknowledged, not run), else {}."""
        return self._erased.get(request.request_id, {})


@dataclass(frozen=True)
class Resolved:
    """A request resolved on the data version it applies to."""

    dataset: Dataset
    scenario: ScenarioConfig | None
    forget_ids: list[str]
    data_rev: str
    already_erased: dict[str, list[str]] = field(default_factory=dict)  # {id: who erased it}

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
def resolve_request(
    request: DeletionRequest, repo_root: str | Path, erased: ErasedIds | None = None
) -> Resolved:
    """The request's training-sample ids, read from the data version it applies to; those an
    approved request erased (`erased`) apart. No `forget_ids`: every one was erased already.

    A rerun of a request whose data commit exists reads the version before that commit.
    """
    repo = DataRepo(repo_root)
    done = repo.find_request(request.request_id)
    rev = f"{done}~1" if done else None
    dataset, scenario = repo.load(rev)
    selection = select_unerased(dataset.manifest, request, erased)
    return Resolved(
        dataset,
        scenario,
        selection.forget_ids,
        repo.version(rev or "HEAD").git_rev,
        selection.already_erased,
    )
