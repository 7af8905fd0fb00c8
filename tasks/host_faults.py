"""Faults of the host, not of the request: a full disk, a DVC remote this user may not write.

Another try cannot fix either (a disk does not empty itself in the 14 s of the retries' backoff,
nor does a folder change its owner), and neither is the request's fault: the run fails at once
and says in one line what to fix, and the request is sent again once it is fixed.

A full disk surfaces in many shapes, none of them naming the disk: an `OSError` with errno
ENOSPC or EDQUOT (Python's own writes, DVC's copies into its cache and remote), SQLite's
"database or disk is full" (the ledger, MLflow's store, DVC's state database), git's "Out of
diskspace" in a failed command's stderr — each often wrapped (a `StorageError`, a task's
exception) or raised while an undo was handling the first. `disk_full` looks through the whole
chain of causes for any of them.
"""

from __future__ import annotations

import errno
import sqlite3
from collections.abc import Iterator
from pathlib import Path

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
_DISK_FULL_TEXT = (
    "no space left on device",  # strerror(ENOSPC), as wrapped errors and tools repeat it
    "database or disk is full",  # SQLITE_FULL
    "out of diskspace",  # git
    "disk quota exceeded",  # strerror(EDQUOT)
)


class RemoteNotWritable(PermissionError):
    """The DVC remote refuses this user's writes (its permissions, or a read-only mount); nothing
    was committed. A `PermissionError`, so `tasks.retrying` fails it at once."""


def causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception it was raised from or while handling, each once."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [current.__cause__, current.__context__]


def disk_full(error: BaseException) -> BaseException | None:
    """The exception in `error`'s chain that says a disk is full, or None."""
    for cause in causes(error):
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return cause
        if getattr(cause, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
            return cause
        if any(text in str(cause).lower() for text in _DISK_FULL_TEXT):
            return cause
    return None


def not_writable(error: BaseException) -> OSError | None:
    """The `PermissionError` (EACCES, EPERM) or read-only file system (EROFS) in the chain."""
    for cause in causes(error):
        if isinstance(cause, PermissionError) or (
            isinstance(cause, OSError) and cause.errno == errno.EROFS
        ):
            return cause
    return None


def host_fault(error: BaseException, home: str | Path) -> str | None:
    """One line naming a fault of the host behind `error` and what to do, or None.

    A full disk is named by the folder the failed write was under: the file's folder when the
    error names a file outside the state folder `home` (a remote or a store elsewhere), else
    `home` itself.
    """
    remote = next((c for c in causes(error) if isinstance(c, RemoteNotWritable)), None)
    if remote is not None:
        return str(remote)
    full = disk_full(error)
    if full is None:
        return None
    home = Path(home)
    where = home
    filename = getattr(full, "filename", None)
    if isinstance(filename, str) and not Path(filename).is_relative_to(home):
        where = Path(filename).parent
    detail = f"{full.strerror}: {filename}" if isinstance(full, OSError) and filename else full
    return f"the disk under {where} is full ({detail}): free space there and send the request again"
