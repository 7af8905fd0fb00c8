"""The end of a request's run: erase and audit, and finishing a run that was killed late.

`erase_and_audit` runs whatever the gates said. `finish` completes a request whose approved
candidate a killed run registered: it moves the alias (unless something else moved it since)
and erases, or only updates the audit record when the erasure already happened.
`interrupted_hold` / `finish_held` do the same for a run killed in or after the erasure of a
request every candidate of which failed a gate: it ends held, as that run would have.
"""

from __future__ import annotations

import contextlib
import json

from flows.attempts import Attempt
from flows.outcome import Outcome, review_links
from tasks.data_versioning import DataRepo, DataVersion, read_staged
from tasks.erased_ids import already_erased_of
from tasks.erasure import audit_path, erase_request, read_audit, update_audit
from tasks.predicates import select_samples
from tasks.registry import champion, client_for, gate_report_of, log_audit, promote
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.review_page import selection_text
from tasks.settings import Settings

ERASING = "erasing.json"


def erase_and_audit(
    request: DeletionRequest,
    settings: Settings,
    before: DataVersion,
    after: DataVersion,
    forget_ids: list[str],
    parent: str,
    final: Attempt,
    state: RequestState,
) -> str:
    """Erase the forget set and write the audit record, whatever the gates said; from then on
    the ledger names the request's (and its batch members') samples by salted hash only.

    The verdict is written beside the staged forget set first (`erasing.json`, gone with it):
    a run killed inside the erasure has purged the data version its request was resolved on,
    so a rerun cannot resolve it again; it finishes from this instead."""
    marker = settings.stage_dir(request.request_id) / ERASING
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(
        json.dumps({"model_outcome": state.value, "model_version": final.model_version})
    )
    audit = erase_request(
        settings.data_repo,
        request.request_id,
        before,
        after,
        forget_ids,
        settings.salt(),
        settings.audit_dir,
        request.requested_at,
        staged_path=settings.stage_dir(request.request_id) / "forget.npz",
        model_version_before=parent,
        model_version_after=final.model_version,
        gate_results=final.gates.model_dump(mode="json"),
        model_outcome=state.value,
        selection=selection_text(request),
        already_erased=already_erased_of(request, forget_ids, settings),
    )
    marker.unlink()  # the audit record holds the verdict now
    with contextlib.suppress(OSError):
        marker.parent.rmdir()
    hash_erased_ids(settings, request.request_id)
    log_audit(settings, final.run_id, audit["audit_path"])
    return audit["audit_path"]


def hash_erased_ids(settings: Settings, request_id: str) -> None:
    """The request's forget set is erased (its audit record exists): the ledger keeps its ids,
    and its batch members', as salted hashes only. Called again by every later run of it, so a
    crash between the record and the ledger leaves nothing raw."""
    RequestLedger(settings.ledger_path, salt=settings.salt).redact_ids(request_id)


def finish(request: DeletionRequest, settings: Settings, version) -> Outcome:
    """A run crashed after the candidate was approved: promote it if nothing else moved the
    champion since, and erase unless the audit record shows it done."""
    client = client_for(settings)
    current = champion(client, settings)
    if current is not None and str(current.version) == version.tags["parent_model_version"]:
        promote(client, settings, str(version.version))
    return complete(request, settings, version, RequestState.APPROVED)


def complete(request: DeletionRequest, settings: Settings, version, state: RequestState) -> Outcome:
    """Erase unless the audit record shows it done (then record `state` in it), and the
    outcome of `version`, the candidate a killed run concluded `state` with."""
    tags, parent = version.tags, version.tags["parent_model_version"]
    repo = DataRepo(settings.data_repo)
    before = repo.version(tags["data_version_before"])
    after = repo.version(tags["data_version_after"])
    gates = gate_report_of(version)
    final = Attempt(
        method=tags.get("method", ""),
        model_version=str(version.version),
        run_id=version.run_id,
        gates=gates,
    )
    if read_audit(settings.audit_dir, request.request_id) is not None:  # erased already
        update_audit(
            settings.audit_dir,
            request.request_id,
            model_outcome=state.value,
            model_version_after=final.model_version,
            gate_results=gates.model_dump(mode="json"),
        )
        hash_erased_ids(settings, request.request_id)
        path = str(audit_path(settings.audit_dir, request.request_id))
        log_audit(settings, version.run_id, path)
    else:
        path = erase_and_audit(
            request,
            settings,
            before,
            after,
            forget_ids_of(request, settings, repo, before),
            parent,
            final,
            state,
        )
    return Outcome(
        request_id=request.request_id,
        state=state,
        model_version=str(version.version),
        parent_model_version=parent,
        gates=gates,
        data_version_before=before,
        data_version_after=after,
        audit_path=path,
        method=final.method,
        fallback_for=tags.get("fallback_for"),
        **review_links(settings, str(version.version), int(tags.get("n_forget") or 0) or None),
    )


def interrupted_hold(settings: Settings, request_id: str) -> str | None:
    """The rejected version a killed run had concluded `held` with, once its erasure began
    (the audit record, or the erasure's verdict file), else None."""
    audit = read_audit(settings.audit_dir, request_id)
    if audit is not None:
        held = audit.model_outcome == RequestState.HELD.value
        return audit.model_version_after if held else None
    marker = settings.stage_dir(request_id) / ERASING
    if marker.exists():
        verdict = json.loads(marker.read_text())
        if verdict["model_outcome"] == RequestState.HELD.value:
            return verdict["model_version"]
    return None


def finish_held(request: DeletionRequest, settings: Settings, model_version: str) -> Outcome:
    """Complete the erasure of a request held by a killed run and hold it again: the outcome
    (raised by the caller as GatesFailed) of the version the run rejected."""
    version = client_for(settings).get_model_version(settings.model_name, model_version)
    return complete(request, settings, version, RequestState.HELD)


def forget_ids_of(
    request: DeletionRequest, settings: Settings, repo: DataRepo, before: DataVersion
) -> list[str]:
    """The request's forget ids for a rerun's erasure: staged by the first run (a run killed
    inside the erasure has purged the manifest that selected them; of the ids a request
    names, those erased already are not staged), or named by the request."""
    staged = settings.stage_dir(request.request_id) / "forget.npz"
    if staged.exists():
        return [str(i) for i in read_staged(staged).ids]
    if request.sample_ids is not None:
        return list(request.sample_ids)
    manifest = repo.load_manifest(before.git_rev)
    return [str(i) for i in select_samples(manifest, None, request.where)]
