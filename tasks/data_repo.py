"""The dataset as a DVC-versioned directory of shards inside a git repository of its own.

Layout of `data/` (one DVC directory output, `data.dvc`):

    data/dataset.json            name, num_classes, image shape ([C, H, W] or [F]), shard size,
                                 manifest dtypes, class names (only when not "0".."K-1")
    data/scenario.json           the ScenarioConfig that built the data (or null)
    data/manifest.csv            one row per train and test sample
    data/train/shard-00000.npz   at most `shard_size` samples each, in dataset order
    data/test/shard-00000.npz

Shards are deterministic (`tasks.shards`). Removing samples rewrites only the shards that hold
them; every other shard keeps its object, and the objects that only the older version names are
exactly what erasure has to purge. A new version is written beside the old one and switched in
atomically (`tasks.data_switch`): a crash leaves the old version checked out, or the new one
committed, and the next write or run repairs the work tree by itself.
"""

from __future__ import annotations

import fcntl
import json
import subprocess
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from tasks import data_switch, data_writes
from tasks.data_plumbing import (
    DATA_DIR,
    REMOTE_NAME,
    DataVersion,
    Reader,
    RevReader,
    StorageError,
    WorkspaceReader,
    check_dataset,
    configure_local,
    dvc_repo,
    git,
    message_of,
    parse_trailers,
    quiet_dvc,
)
from tasks.data_writes import FORMAT_VERSION
from tasks.shards import (
    as_id_array,
    concat_samples,
    decode_shard,
    read_manifest,
)
from uib.data import Dataset
from uib.samples import DataError
from uib.scenarios import ScenarioConfig

SHARD_SIZE = 256


__all__ = ["DataRepo", "DataVersion", "StorageError", "SHARD_SIZE", "FORMAT_VERSION"]


class DataRepo:
    """A git + DVC repository that holds one dataset under `data/`, one commit per version.

    The pipeline keeps it in its state folder (e.g. `.uib/data-repo`), apart from the user's
    own checkout, so versioning data never commits to the user's repository. Every method that
    changes data checks its input first and writes the new version beside the old one; a
    failure or a crash part-way leaves the last commit checked out (`tasks.data_switch`).
    """

    def __init__(self, root: str | Path, shard_size: int = SHARD_SIZE):
        self.root = Path(root).resolve()
        if not (self.root / ".git").exists() or not (self.root / ".dvc").is_dir():
            raise DataError(
                f"repo: {self.root} is not a git + DVC data repository "
                "(create it with DataRepo.init)"
            )
        if shard_size < 1:
            raise DataError(f"shard_size: must be >= 1, got {shard_size}")
        self.shard_size = shard_size

    # ----------------------------------------------------------------- set-up

    @classmethod
    def init(
        cls,
        root: str | Path,
        remote_url: str,
        endpoint_url: str | None = None,
        shard_size: int = SHARD_SIZE,
    ) -> DataRepo:
        """`git init`, `dvc init`, and `remote_url` as the default DVC remote.

        `remote_url` is a folder (made absolute) or any URL DVC knows (`s3://bucket/prefix`
        with `endpoint_url` for MinIO and the like; credentials come from the environment,
        never from the committed config).
        """
        from dvc.repo import Repo

        root = Path(root).resolve()
        if root.exists() and any(root.iterdir()):
            raise DataError(
                f"root: {root} is not empty; the data repository needs a folder of its own "
                "(open an existing one with DataRepo(root))"
            )
        if "://" not in remote_url:
            remote_url = str(Path(remote_url).resolve())
        root.mkdir(parents=True, exist_ok=True)
        git(root, "init", "-q", "-b", "main")
        with quiet_dvc():
            Repo.init(str(root)).close()
        with dvc_repo(root) as repo, repo.config.edit() as conf:
            remote = {"url": remote_url}
            if endpoint_url and remote_url.startswith("s3://"):
                remote["endpointurl"] = endpoint_url
            conf["remote"][REMOTE_NAME] = remote
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
        configure_local(root)
        git(root, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
        git(root, "commit", "-q", "-m", "Initialise the data repository")
        return cls(root, shard_size)

    @classmethod
    def clone(cls, source: str | Path, root: str | Path, pull: bool = True) -> DataRepo:
        """`git clone` a data repository and, by default, `dvc pull` its data from the remote."""
        root = Path(root).resolve()
        done = subprocess.run(
            ["git", "clone", "-q", str(source), str(root)], capture_output=True, text=True
        )
        if done.returncode != 0:
            raise DataError(f"source: cannot clone {source}: {done.stderr.strip()}")
        configure_local(root)
        repo = cls(root)
        if pull:
            repo.pull()
        return repo

    def pull(self) -> None:
        with dvc_repo(self.root) as repo:
            repo.pull()

    # ----------------------------------------------------------------- versions

    def has_data(self) -> bool:
        return bool(git(self.root, "log", "-1", "--format=%H", "--", "data.dvc").strip())

    def version(self, rev: str = "HEAD") -> DataVersion:
        """The data version committed at `rev`."""
        full = self.rev_parse(rev)
        try:
            dvc_md5 = self.dir_md5(full)
        except RuntimeError:
            raise DataError(f"rev: {rev} holds no data version (no data.dvc)") from None
        body = git(self.root, "log", "-1", "--format=%B", full)
        trailers = parse_trailers(body)
        if "N-Train" in trailers and "N-Test" in trailers:
            n_train, n_test = int(trailers["N-Train"]), int(trailers["N-Test"])
        else:
            manifest = self.load_manifest(full)
            n_train = int((manifest["split"] == "train").sum())
            n_test = int((manifest["split"] == "test").sum())
        return DataVersion(
            git_rev=full, dvc_md5=dvc_md5, n_train=n_train, n_test=n_test, message=message_of(body)
        )

    def current(self) -> DataVersion:
        if not self.has_data():
            raise DataError(f"repo: {self.root} holds no data version yet (call write_dataset)")
        return self.version("HEAD")

    def history(self) -> list[str]:
        """Commits that changed `data.dvc`, newest first."""
        return git(self.root, "log", "--format=%H", "--", "data.dvc").split()

    def find_request(self, request_id: str) -> str | None:
        """The commit that removed samples for `request_id`, if there is one."""
        for rev in self.history():
            body = git(self.root, "log", "-1", "--format=%B", rev)
            if parse_trailers(body).get("Request-Id") == request_id:
                return rev
        return None

    def dir_md5(self, rev: str) -> str:
        """The `.dir` object id that `data.dvc` names at `rev` (e.g. `"3f…9a.dir"`)."""
        from dvc.utils.serialize import parse_yaml

        text = git(self.root, "show", f"{rev}:data.dvc")
        return str(parse_yaml(text, "data.dvc")["outs"][0]["md5"])

    def dir_listing(self, rev: str) -> dict[str, str]:
        """`{relative path: md5}` of every file in `data/` at `rev`, from DVC's `.dir` object."""
        oid = self.dir_md5(rev)
        with dvc_repo(self.root) as repo:
            odbs = [repo.cache.local, repo.cloud.get_remote_odb(None, "ls")]
            for odb in odbs:
                path = odb.oid_to_path(oid)
                if odb.fs.exists(path):
                    with odb.fs.open(path, "rb") as f:
                        entries = json.load(f)
                    return {e["relpath"]: e["md5"] for e in entries}
        raise DataError(f"rev: the listing {oid} of {rev} is in neither the cache nor the remote")

    def is_ancestor(self, older: str, newer: str) -> bool:
        """Whether commit `older` is in the history of `newer` (or is `newer`)."""
        done = subprocess.run(
            ["git", "-C", str(self.root), "merge-base", "--is-ancestor", older, newer],
            capture_output=True,
        )
        return done.returncode == 0

    def rev_parse(self, rev: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(self.root), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise DataError(f"rev: {rev!r} is not a commit of the data repository {self.root}")
        return done.stdout.strip()

    # ----------------------------------------------------------------- reading

    def load(self, rev: str | None = None) -> tuple[Dataset, ScenarioConfig | None]:
        """The dataset and scenario config of `rev` (default: the checked-out version).

        An older `rev` is read through DVC's file system at that commit (local cache first, then
        the remote) without touching the working copy.
        """
        with self._reader(rev) as reader:
            meta = json.loads(reader.read("dataset.json"))
            if meta.get("format") != FORMAT_VERSION:
                raise DataError(f"dataset.json: unknown format {meta.get('format')!r}")
            scenario = json.loads(reader.read("scenario.json"))
            manifest = read_manifest(reader.read("manifest.csv"), meta["manifest_dtypes"])
            image_shape = tuple(meta["image_shape"])
            splits = {
                split: concat_samples(
                    [decode_shard(reader.read(p)) for p in reader.shards(split)], image_shape
                )
                for split in ("train", "test")
            }
        dataset = Dataset(
            name=meta["name"],
            train=splits["train"],
            test=splits["test"],
            manifest=manifest,
            num_classes=meta["num_classes"],
            class_names=tuple(meta.get("class_names", ())),  # older versions: default names
        )
        config = None if scenario is None else ScenarioConfig.model_validate(scenario)
        return dataset, config

    def load_manifest(self, rev: str | None = None) -> pd.DataFrame:
        with self._reader(rev) as reader:
            meta = json.loads(reader.read("dataset.json"))
            return read_manifest(reader.read("manifest.csv"), meta["manifest_dtypes"])

    def _reader(self, rev: str | None) -> Reader:
        in_order = data_switch.read_journal(self.root) is None  # not mid-switch, or crashed
        if rev is None and in_order and (self.root / DATA_DIR / "dataset.json").exists():
            return WorkspaceReader(self.root / DATA_DIR)
        if not self.has_data():
            raise DataError(f"repo: {self.root} holds no data version yet (call write_dataset)")
        return RevReader(self.root, self.rev_parse(rev or "HEAD"))

    # ----------------------------------------------------------------- writing

    def repair(self) -> str | None:
        """Finish or undo a switch a crash cut short; what was done, or None (`data_switch`)."""
        with self.writer_lock():
            return data_switch.repair(self)

    def write_dataset(
        self, dataset: Dataset, scenario_config: ScenarioConfig | None, message: str
    ) -> DataVersion:
        """Commit `dataset` as the new data version and push its objects to the remote.

        Writing the data that is already the current version commits nothing and returns the
        current version, so a rerun is free.
        """
        check_dataset(dataset)
        with self.writer_lock():
            data_switch.repair(self)
            return data_switch.publish(
                self,
                lambda out: data_writes.write_tree(out, dataset, scenario_config, self.shard_size),
                message,
                len(dataset.train),
                len(dataset.test),
                request_id=None,
            )

    def remove_samples(
        self,
        ids: Iterable[str],
        message: str,
        stage_dir: str | Path,
        request_id: str | None = None,
    ) -> tuple[DataVersion, Path]:
        """Commit a new version without the training samples `ids`; stage them for the run.

        Only shards that hold a removed sample are rewritten. The removed samples are first
        written to `stage_dir/forget.npz` (read it with `read_staged`). Unknown ids or test ids
        are a `DataError`, and then nothing is written. A work tree left half-switched by a
        crash is repaired first. `request_id` is recorded as a `Request-Id:` trailer.
        """
        wanted = as_id_array(ids)
        with self.writer_lock():
            data_switch.repair(self)
            return data_writes.remove_samples(self, wanted, message, Path(stage_dir), request_id)

    # ----------------------------------------------------------------- commit plumbing

    @contextmanager
    def writer_lock(self) -> Iterator[None]:
        """One writer at a time per data repository (two runs of a flow on one machine)."""
        lock = self.root / ".dvc" / "tmp" / "uib-writer.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def commit_workspace(
        self, message: str, n_train: int, n_test: int, request_id: str | None
    ) -> DataVersion:
        """`dvc add data`, push, and commit `data.dvc` (nothing when `data/` is HEAD's already).

        The push comes before the commit: a committed version always has its objects on the
        remote. A failed push is a `StorageError` (`tasks.retrying` retries it).
        """
        if not message.strip():
            raise DataError("message: a data version needs a commit message")
        with dvc_repo(self.root) as repo:
            repo.add(str(self.root / DATA_DIR))
        md5 = self._workspace_md5()
        if self.has_data() and md5 == self.dir_md5("HEAD"):
            return self.current()
        data_switch.push_objects(self.root)
        trailers = {"Data-Md5": md5, "N-Train": n_train, "N-Test": n_test}
        if request_id:
            trailers["Request-Id"] = request_id
        body = message.strip() + "\n\n" + "\n".join(f"{k}: {v}" for k, v in trailers.items())
        git(self.root, "add", "data.dvc", ".gitignore")
        git(self.root, "commit", "-q", "-m", body)
        return self.current()

    def _workspace_md5(self) -> str:
        from dvc.utils.serialize import parse_yaml

        text = (self.root / "data.dvc").read_text()
        return str(parse_yaml(text, "data.dvc")["outs"][0]["md5"])
