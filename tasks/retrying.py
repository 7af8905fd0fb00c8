"""Retries with backoff for the steps that talk to another service, and only for faults that
another try can fix.

The DVC push, MLflow registration, the erasure of remote objects and the inbox reads run as
Prefect tasks with `NETWORK_RETRIES`: three more tries after 2, 4 and 8 s (±50 % jitter;
`UIB_RETRY_BACKOFF_S` sets the first delay, e.g. 0.5 for 0.5, 1 and 2 s). A
refusal of the input itself (`DataError`, a `ValueError`, MLflow's "bad parameter") fails at
once: trying it again would only repeat the answer. When the tries run out the exception
reaches the flow, which records the request `failed` with the reason; a failed request is run
again when it is sent again. When the reason is a store that stayed away (the MLflow server, the
DVC remote), `unreachable_store` names it in one line and the flow raises `StoreUnreachable`.
"""

from __future__ import annotations

import os
import re
from typing import Annotated

from prefect.tasks import exponential_backoff

from tasks.data_plumbing import StorageError
from tasks.host_faults import causes, disk_full

RETRIES = 3
BACKOFF_ENV = "UIB_RETRY_BACKOFF_S"


def backoff_factor_s(environ=os.environ) -> float:
    """The first retry's delay (then doubled): `UIB_RETRY_BACKOFF_S`, its default and bounds
    those of `Settings.retry_backoff_s` (the one home of the setting, which also makes the CLI
    refuse a bad value by name, exit 2, before anything loads this).

    Read from the environment when this module loads: a task's retries are fixed when it is
    defined."""
    from pydantic import TypeAdapter, ValidationError

    from tasks.settings import Settings

    field = Settings.model_fields["retry_backoff_s"]
    raw = environ.get(BACKOFF_ENV)
    if raw is None:
        return field.default
    try:
        return TypeAdapter(Annotated[float, *field.metadata]).validate_python(raw)
    except ValidationError as error:
        raise ValueError(f"{BACKOFF_ENV}: {error.errors()[0]['msg']}, got {raw!r}") from None


BACKOFF_FACTOR_S = backoff_factor_s()
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

    if disk_full(error) is not None:  # a full disk stays full (`tasks.host_faults`)
        return False
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


class StoreUnreachable(RuntimeError):
    """A store the run needs (the MLflow server, the DVC remote) did not answer through the
    retries; its message names the store. The request is recorded `failed` with that message
    and runs again, as it is, when it is sent again."""


_SYMPTOMS = (  # the first that matches, most telling first
    (r"connection refused", "is unreachable (connection refused)"),
    (
        r"could not connect|failed to establish|name or service not known",
        "is unreachable (no connection)",
    ),
    (
        r"too many (\d{3}) error responses|error code (\d{3})|error occurred \((\d{3})\)",
        "answered HTTP {}",
    ),
    (r"internal server error|bad gateway|service unavailable", "answered HTTP {}"),
    (
        r"remotedisconnected|connection aborted|connection reset|connectionclosed",
        "closed the connection",
    ),
    (r"timed out|timeout", "did not answer in time"),
)
_STATUS_NAMES = {"internal server error": "500", "bad gateway": "502", "service unavailable": "503"}


def unreachable_store(error: BaseException, settings) -> str | None:
    """One line naming the store behind `error` when it is a store's outage, else None.

    The libraries' own messages bury the service in a chain of retries (`API request to
    http://…/api/2.0/mlflow/experiments/get-by-name failed with exception
    HTTPConnectionPool(…): Max retries exceeded … (Caused by NewConnectionError(…))`, or
    `dvc push to the remote failed, nothing committed: [Errno 121] Internal Server Error`).
    `settings` are the run's `tasks.settings.Settings`.
    """
    from mlflow.exceptions import MlflowException

    chain = list(causes(error))
    if not any(is_transient(c) for c in chain):
        return None
    text = " ".join(f"{type(c).__name__}: {c}" for c in chain)
    if any(isinstance(c, MlflowException) for c in chain):
        store = f"the MLflow server at {settings.tracking_uri}"
        if "/mlflow-artifacts/" in text:
            store += " (storing or reading artifacts)"
    elif any(isinstance(c, StorageError) for c in chain):
        store = f"the DVC remote {dvc_remote(settings)}"
    else:
        return None
    return f"{store} {symptom(text)}; send the request again to retry it"


def symptom(text: str) -> str:
    """What the store did, in a few words, from the text of an error's chain."""
    for pattern, words in _SYMPTOMS:
        found = re.search(pattern, text, re.IGNORECASE)
        if found:
            detail = next((g for g in found.groups() if g), found.group(0)).lower()
            return words.format(_STATUS_NAMES.get(detail, detail))
    first = text.splitlines()[0] if text else ""
    return f"failed ({first[:300]})"


def dvc_remote(settings) -> str:
    """The data repository's default remote as configured (`url`, and `endpointurl` for S3)."""
    try:
        from dvc.config import Config

        config = Config(dvc_dir=str(settings.data_repo / ".dvc"))
        remote = config["remote"][config["core"]["remote"]]
    except Exception:  # no repository, no remote: what the settings say
        return settings.remote_url
    endpoint = remote.get("endpointurl")
    return f"{remote['url']} at {endpoint}" if endpoint else str(remote["url"])


NETWORK_RETRIES = {
    "retries": RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=BACKOFF_FACTOR_S),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_when_transient,
}
