"""Retries with backoff for the steps that talk to another service, and only for faults that
another try can fix.

The DVC push, MLflow registration, the erasure of remote objects and the inbox reads run as
Prefect tasks with `NETWORK_RETRIES`: three more tries after 2, 4 and 8 s (±50 % jitter). A
refusal of the input itself (`DataError`, a `ValueError`, MLflow's "bad parameter") fails at
once: trying it again would only repeat the answer. When the tries run out the exception
reaches the flow, which records the request `failed` with the reason; a failed request is run
again when it is sent again.
"""

from __future__ import annotations

from prefect.tasks import exponential_backoff

from tasks.data_plumbing import StorageError

RETRIES = 3
BACKOFF_FACTOR_S = 2.0
_TRANSIENT_MLFLOW_CODES = {
    "INTERNAL_ERROR",
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "DEADLINE_EXCEEDED",
    "ABORTED",
}


def is_transient(error: BaseException) -> bool:
    """Whether another try may succeed: an unreachable or failing service, not bad input."""
    from mlflow.exceptions import MlflowException

    if isinstance(error, StorageError | ConnectionError | TimeoutError):
        return True
    if isinstance(error, MlflowException):
        return error.error_code in _TRANSIENT_MLFLOW_CODES or "Max retries" in str(error)
    if isinstance(error, ValueError | TypeError | KeyError | PermissionError):
        return False  # DataError is a ValueError: the input's fault, the same next time
    if isinstance(error, OSError):  # a lost connection, a busy disk; not a missing file
        return not isinstance(error, FileNotFoundError | NotADirectoryError | IsADirectoryError)
    try:
        import botocore.exceptions as boto
        import requests
    except ImportError:  # pragma: no cover - both come with the pipeline's dependencies
        return False
    if isinstance(error, boto.EndpointConnectionError | boto.ConnectionClosedError):
        return True
    if isinstance(error, boto.ClientError):
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return status >= 500 or status == 429
    return isinstance(error, requests.ConnectionError | requests.Timeout)


def retry_when_transient(task, task_run, state) -> bool:
    """Prefect's `retry_condition_fn`: retry only when `is_transient` says another try helps."""
    try:
        state.result()
    except BaseException as error:  # the task's exception, re-raised by `result()`
        return is_transient(error)
    return False


NETWORK_RETRIES = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR_S),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_when_transient,
}
