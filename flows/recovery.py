"""Taking over what a killed run left: its `running` request, its open MLflow runs, a half-made
data version. Nothing here waits for a person.

* `take_over` runs at the start of every `unlearn` run, with the request's lock held: any run of
  the request still `RUNNING` in MLflow is closed as `KILLED`, and the data repository is
  repaired (a switch to a new version a crash cut short is finished or undone).
* `recover_orphans` runs at the start of every scheduled run: each `running` request whose
  owner is gone (`RequestLedger.owner_gone`) is run again, by itself, before any new batch.
  The stages are idempotent per request (the data commit carries the request id, each model
  version its attempt hash, the erasure skips what is gone), so the rerun finishes it once.
* The CLI sends such a request again (`flows.cli_submit.submit_by_event`), as it does a failed one.
"""

from __future__ import annotations

from tasks.data_versioning import DataRepo
from tasks.mlflow_runs import close_orphaned_runs
from tasks.requests import RequestLedger, RequestRecord, RequestRef, RequestState
from tasks.settings import Settings


def take_over(record: RequestRecord, settings: Settings, ledger: RequestLedger, logger) -> None:
    """Clean up after an earlier run of this request that died; call with its lock held."""
    rid = record.request_id
    if record.state == RequestState.RUNNING:
        who = record.owner.describe() if record.owner else "an earlier run"
        logger.warning("request %s was left running by %s, which is gone: taking it over", rid, who)
    closed = close_orphaned_runs(settings, rid)
    if closed:
        logger.warning("request %s: closed MLflow runs left RUNNING as KILLED: %s", rid, closed)
    if (settings.data_repo / ".dvc").is_dir():
        repaired = DataRepo(settings.data_repo).repair()
        if repaired:
            logger.warning("request %s: data repository repaired: %s", rid, repaired)


def recover_orphans(settings: Settings, ledger: RequestLedger, logger) -> list[str]:
    """Run again every `running` request whose owner is gone; the ids it ran. A batch is run
    as the batch (its members then take its outcome from `reconcile_members`)."""
    from flows.unlearn import unlearn_flow

    recovered = []
    for record in ledger.list(RequestState.RUNNING):
        if record.run_key != record.request_id:
            continue  # a batch member: its batch's row decides
        why = ledger.owner_gone(record)
        if why is None:
            continue
        logger.warning("request %s is running but %s: running it again", record.request_id, why)
        try:
            unlearn_flow(
                RequestRef(request_id=record.request_id).model_dump(), settings.overrides()
            )
        except Exception as error:  # recorded in the ledger by the run itself
            logger.warning("request %s: the rerun ended with %s", record.request_id, error)
        recovered.append(record.request_id)
    return recovered
