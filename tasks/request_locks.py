"""The ledger's OS file locks: one per request (a run of it at a time) and one for the pipeline
(the data version and the champion move one request at a time). Under `<home>/locks/`."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_HELD: set[Path] = set()


class RequestBusy(RuntimeError):
    """Another run is working on the same request right now."""


class RequestLocks:
    """The locks beside a ledger at `self.path` (mixed into `tasks.requests.RequestLedger`)."""

    path: Path

    @contextmanager
    def exclusive(self, request_id: str) -> Iterator[None]:
        """Held while a run works on `request_id`; a concurrent run of it is refused.

        An OS file lock rather than a ledger state: the OS drops it when the process dies, so
        a crashed run never blocks its own rerun (`owner_gone` probes it for the others).
        """
        path = self._lock_path(request_id)
        with open(path, "w") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RequestBusy(
                    f"request {request_id!r} is being processed by another run"
                ) from None
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _lock_path(self, request_id: str) -> Path:
        path = self.path.parent / "locks" / f"{request_id}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def lock_held(self, request_id: str) -> bool:
        """Whether a live run holds `request_id`'s lock now (a probe; nothing is kept)."""
        with open(self._lock_path(request_id), "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(handle, fcntl.LOCK_UN)
            return False

    @contextmanager
    def serialized(self) -> Iterator[None]:
        """Held while a run changes the data repository and the registry; other runs wait.

        Event-triggered and scheduled runs may start together; the data version and the
        champion move one request at a time. Re-entrant within a process, so the scheduled
        flow can hold it around the `unlearn` subflow of its batch.
        """
        path = (self.path.parent / "locks" / "pipeline.lock").resolve()
        if path in _HELD:
            yield
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            _HELD.add(path)
            try:
                yield
            finally:
                _HELD.discard(path)
                fcntl.flock(handle, fcntl.LOCK_UN)
