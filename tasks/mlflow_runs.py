"""MLflow runs a killed process left open: closed by the next run of the same request.

A run's process writes the run's end when the `with mlflow.start_run()` block exits, which a
SIGKILL never lets it do; the run then shows `RUNNING` for good. Every run of a request starts
under the request's lock, so any run of that request still `RUNNING` then belongs to a process
that is gone: it is marked `KILLED`, with a tag saying who closed it.
"""

from __future__ import annotations

from mlflow import MlflowClient

from tasks.registry import client_for
from tasks.settings import Settings

CLOSED_BY = "uib.closed_by"


def close_orphaned_runs(
    settings: Settings, request_id: str, why: str = "", status: str = "KILLED"
) -> list[str]:
    """Mark the request's runs left `RUNNING` as `status`; their ids. Call with its lock held.

    `why` is the `uib.closed_by` tag: by default, the next run of the request found them (the
    process that opened them died). A try of `register-candidate` that failed while MLflow
    itself failed leaves its run `RUNNING` too (ending it is one more request MLflow did not
    answer); the next try closes it `FAILED`, saying so."""
    client: MlflowClient = client_for(settings)
    experiment = client.get_experiment_by_name(settings.experiment)
    if experiment is None:
        return []
    found = {}
    for query in (
        f"attributes.run_name = '{request_id}' and attributes.status = 'RUNNING'",
        f"tags.request_id = '{request_id}' and attributes.status = 'RUNNING'",
    ):
        for run in client.search_runs([experiment.experiment_id], query):
            found[run.info.run_id] = run
    for run_id in found:
        client.set_tag(
            run_id, CLOSED_BY, why or f"the next run of request {request_id}: its own died"
        )
        client.set_terminated(run_id, status=status)
    return sorted(found)
