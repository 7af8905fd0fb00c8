"""Data versioning as Prefect tasks: the dataset's first version, and a request's removal.

The repository itself is `tasks.data_repo.DataRepo` (reading, commits), written beside the
checked-out version and switched atomically by `tasks.data_switch`; its DVC objects are checked
and deleted by `tasks.dvc_objects`; the shard format is `tasks.shards`. The names other modules
import from here stay importable from here.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from prefect import task

from tasks.data_plumbing import DATA_DIR, REMOTE_NAME, DataVersion, StorageError
from tasks.data_repo import FORMAT_VERSION, SHARD_SIZE, DataRepo
from tasks.retrying import NETWORK_RETRIES
from tasks.shards import as_id_array, decode_shard, encode_shard, read_staged, write_npz
from uib.data import Dataset
from uib.samples import DataError
from uib.scenarios import ScenarioConfig

__all__ = [
    "DATA_DIR",
    "FORMAT_VERSION",
    "REMOTE_NAME",
    "SHARD_SIZE",
    "DataRepo",
    "DataVersion",
    "StorageError",
    "as_id_array",
    "decode_shard",
    "encode_shard",
    "read_staged",
    "version_dataset",
    "version_forget_set",
    "write_npz",
]


@task(name="version-dataset", **NETWORK_RETRIES)
def version_dataset(
    repo_root: str | Path,
    remote_url: str,
    dataset: Dataset,
    scenario_config: ScenarioConfig | None,
    message: str = "Dataset version",
    endpoint_url: str | None = None,
) -> dict:
    """Make `dataset` the current data version, creating the data repository if needed."""
    root = Path(repo_root)
    repo = (
        DataRepo(root)
        if (root / ".dvc").is_dir()
        else DataRepo.init(root, remote_url, endpoint_url=endpoint_url)
    )
    return repo.write_dataset(dataset, scenario_config, message).model_dump()


@task(name="version-forget-set", **NETWORK_RETRIES)
def version_forget_set(
    repo_root: str | Path, request_id: str, ids: Iterable[str], stage_dir: str | Path
) -> dict:
    """Remove a request's samples as a new data version; stage them in `stage_dir/forget.npz`.

    Returns `{"request_id", "before", "after", "staged", "n_forget"}` with both versions as
    dicts. A rerun for a request that already has its commit at HEAD returns that commit
    (re-staging the forget set from the version before it when the staged file is gone), so
    a rerun after a crash makes one data commit, not two. A failed push to the DVC remote is
    retried with backoff; bad input is not.
    """
    repo = DataRepo(repo_root)
    repo.repair()  # a switch a killed run left half-done: finished or undone, never left
    wanted = as_id_array(ids)
    done = repo.find_request(request_id)
    if done is not None:
        if done != repo.current().git_rev:
            raise DataError(
                f"request_id: {request_id} was versioned at {done[:10]}, which is no longer the "
                "current data version"
            )
        before, after = repo.version(f"{done}~1"), repo.version(done)
        staged = Path(stage_dir) / "forget.npz"
        if not staged.exists():
            previous, _ = repo.load(before.git_rev)
            staged.parent.mkdir(parents=True, exist_ok=True)
            forget = previous.train.select(wanted)
            write_npz(staged, {"x": forget.x, "y": forget.y, "ids": forget.ids})
    else:
        before = repo.current()
        message = f"Remove {wanted.size} samples for deletion request {request_id}"
        after, staged = repo.remove_samples(wanted, message, stage_dir, request_id=request_id)
    return {
        "request_id": request_id,
        "before": before.model_dump(),
        "after": after.model_dump(),
        "staged": str(staged),
        "n_forget": int(wanted.size),
    }
