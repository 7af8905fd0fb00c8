"""What must hold before a request changes anything: the data repository matches the champion
(or is ahead of it only by parked requests), the champion answers the data, and the shift the
request makes validates."""

from __future__ import annotations

from flows.outcome import ChampionUnfit, RequestRefused
from tasks.data_versioning import DataRepo
from tasks.intake import Resolved
from tasks.requests import PARKED, DeletionRequest, RequestLedger
from tasks.settings import Settings
from tasks.validation import ValidationReport, validate_shift_task


def check_data_matches_champion(
    repo: DataRepo, champion_version, request_id: str, ledger: RequestLedger
) -> None:
    """Refuse unless the data is the champion's, or ahead of it only by parked requests' commits.

    A parked request (held, rejected on review, withdrawn) has its samples out of the current
    version already, so a new request proceeds on top of it: its retain set excludes them and
    its parent is the champion. A commit the ledger does not account for refuses loudly.
    """
    trained_on = champion_version.tags.get("data_version_after") or champion_version.tags.get(
        "data_git_rev"
    )
    head = repo.current()
    if trained_on in (None, head.git_rev):
        return
    history = repo.history()
    if trained_on not in history:
        raise RequestRefused(
            f"the champion, version {champion_version.version}, was built on data version "
            f"{trained_on[:10]}, which is not in the history of the data repository: restore "
            "the repository or point the alias at a version built on its data"
        )
    ahead = history[: history.index(trained_on)]
    known = {request_id} | {r.request_id for r in ledger.list() if r.state in PARKED}
    accounted = {repo.find_request(rid) for rid in known} - {None}
    unknown = [rev for rev in ahead if rev not in accounted]
    if unknown:
        rev = repo.version(unknown[-1])
        raise RequestRefused(
            f"the current data version {head.git_rev[:10]} is ahead of the champion, version "
            f"{champion_version.version}, built on {trained_on[:10]}, by {len(unknown)} data "
            f"version(s) the ledger does not hold as held, rejected or withdrawn, first "
            f"{rev.git_rev[:10]} ({rev.message!r}): finish that request (run it again) or "
            "review it (`uib requests`, `uib request …`) first"
        )


def check_champion_answers(model, dataset, version: str) -> None:
    """Refuse to start from a champion that cannot answer the data: a NaN-poisoned model, or one
    of another input shape or class count. Unchecked, its request would be versioned and erased,
    then every candidate fail its gates or crash on the scores. Not the request's fault, so it
    stays retryable (`failed`) rather than rejected."""
    from tasks.adoption import AdoptionError, check_answers

    try:
        check_answers(model, dataset)
    except AdoptionError as error:
        raise ChampionUnfit(
            f"the champion, version {version}, cannot be unlearned from: {error}; nothing was "
            "changed: make a sound version champion and send the request again"
        ) from None


def validate(request: DeletionRequest, resolved: Resolved, settings: Settings) -> ValidationReport:
    original, retain, forget = resolved.manifests()
    policy = settings.shift.model_copy(update={"allow_class_removal": request.allow_class_removal})
    erased = resolved.already_erased  # named, but gone before it: not in its forget set
    report = validate_shift_task(
        original,
        retain,
        forget,
        [i for i in request.sample_ids or resolved.forget_ids if i not in erased],
        policy,
        resolved.dataset.num_classes,
        request.request_id,
        settings.salt(),  # the report and its GX result name the ids by salted hash only
    )
    if not report.success:
        raise RequestRefused(
            "shift validation failed: "
            + "; ".join(
                f"{c.name} (observed {c.observed}, threshold {c.threshold})" for c in report.failed
            )
        )
    return report
