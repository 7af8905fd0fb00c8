"""The end of a request's run: erase and audit, and finishing a run that was killed late.

`erase_and_audit` runs whatever the gates said. `finish` completes a request whose approved
candidate a killed run registered: it moves the alias (unless something else moved it since)
and erases, or only updates the audit record when the erasure already happened.
"""

from __future__ import annotations

from flows.attempts import Attempt
from flows.outcome import Outcome, review_links
from tasks.data_versioning import DataRepo, DataVersion, read_staged
from tasks.erasure import audit_path, erase_request, read_audit, update_audit
from tasks.predicates import select_samples
from tasks.registry import champion, client_for, gate_report_of, log_audit, promote
from tasks.requests import DeletionRequest, RequestLedger, RequestState
from tasks.review_page import selection_text
from tasks.settings import Settings


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
    the ledger names the request's (and its batch members') samples by salted hash only."""
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
    )
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
    tags, parent = version.tags, version.tags["parent_model_version"]
    current = champion(client, settings)
    if current is not None and str(current.version) == parent:
        promote(client, settings, str(version.version))
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
            model_outcome=RequestState.APPROVED.value,
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
            RequestState.APPROVED,
        )
    return Outcome(
        request_id=request.request_id,
        state=RequestState.APPROVED,
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


def forget_ids_of(
    request: DeletionRequest, settings: Settings, repo: DataRepo, before: DataVersion
) -> list[str]:
    """The request's forget ids for a rerun's erasure: named by the request, or staged by the
    first run (a run killed inside the erasure has purged the manifest that selected them)."""
    if request.sample_ids is not None:
        return list(request.sample_ids)
    staged = settings.stage_dir(request.request_id) / "forget.npz"
    if staged.exists():
        return [str(i) for i in read_staged(staged).ids]
    manifest = repo.load_manifest(before.git_rev)
    return [str(i) for i in select_samples(manifest, None, request.where)]
