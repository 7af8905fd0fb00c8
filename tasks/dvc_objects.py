"""A data repository's DVC objects in its cache and on its remote: which the remote holds, and
deleting them by id (what `tasks.erasure` purges)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from tasks.data_plumbing import StorageError, dvc_repo

if TYPE_CHECKING:
    from tasks.data_repo import DataRepo


def holds(odb, oid: str) -> bool:
    """Whether the object store `odb` holds `oid`: no only when it answers "not found".

    DVC's own `exists` answers no to any error (fsspec's `isfile` swallows them), so a remote
    that was unreachable or answering 500 read as empty: the erasure skipped deleting the
    forgotten objects it could not see, found none "left", and recorded them purged while they
    stayed on the remote; the check before it blamed the current version's objects as "not on
    the remote". Any other error is a `StorageError`, which `tasks.retrying` retries.
    """
    try:
        return odb.fs.info(odb.oid_to_path(oid))["type"] == "file"
    except FileNotFoundError:
        return False
    except Exception as error:
        raise StorageError(
            f"the DVC remote could not be read ({type(error).__name__}: {error})"
        ) from error


def missing_on_remote(data_repo: DataRepo, oids: Iterable[str]) -> list[str]:
    """The objects the remote does not hold; a StorageError when it cannot be read."""
    with dvc_repo(data_repo.root) as repo:
        remote = repo.cloud.get_remote_odb(None, "status")
        return [oid for oid in sorted(set(oids)) if not holds(remote, oid)]


def delete_objects(data_repo: DataRepo, oids: Iterable[str]) -> tuple[int, int]:
    """Delete objects by id from the local cache and the remote: (from cache, from remote).

    Ids that are already gone are skipped, so a rerun deletes nothing more.
    """
    deleted_cache = deleted_remote = 0
    with data_repo.writer_lock(), dvc_repo(data_repo.root) as repo:
        cache, remote = repo.cache.local, repo.cloud.get_remote_odb(None, "erase")
        for oid in sorted(set(oids)):
            if cache.exists(oid):
                cache.delete(oid)
                deleted_cache += 1
            if holds(remote, oid):
                try:
                    remote.delete(oid)
                except Exception as error:
                    raise StorageError(f"the DVC remote did not delete {oid}: {error}") from error
                deleted_remote += 1
        left = [oid for oid in oids if cache.exists(oid) or holds(remote, oid)]
    if left:
        raise RuntimeError(f"objects still stored after deletion: {left[:5]}")
    return deleted_cache, deleted_remote
