"""The dataset as a DVC-versioned directory of shards inside a git repository of its own.

Layout of `data/` (one DVC directory output, `data.dvc`):

    data/dataset.json            name, num_classes, image shape, shard size, manifest dtypes
    data/scenario.json           the ScenarioConfig that built the data (or null)
    data/manifest.csv            one row per train and test sample
    data/train/shard-00000.npz   at most `shard_size` samples each, in dataset order
    data/test/shard-00000.npz

Each shard is an uncompressed `.npz` (`x` float32, or `x_u8` when `x == x_u8 / 255` holds
bit-for-bit, plus `y` int64 and `ids`) written with fixed zip metadata, so the same samples
always give the same bytes and the same DVC object. Removing samples rewrites only the shards
that hold them; every other shard keeps its object, and the objects that only the older version
names are exactly what erasure has to purge. Shards are stored uncompressed so that a search
of the raw object bytes for a sample's image is a real test of its absence.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import task
from pydantic import BaseModel, ConfigDict

from tasks.quiet import quiet_logger
from uib.data import Dataset
from uib.samples import DataError, Samples
from uib.scenarios import ScenarioConfig

DATA_DIR = "data"
SHARD_SIZE = 256
FORMAT_VERSION = 1
REMOTE_NAME = "storage"
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_TRAILERS = ("Data-Md5", "N-Train", "N-Test", "Request-Id")
_GIT_IDENTITY = {"user.name": "uib pipeline", "user.email": "uib-pipeline@localhost"}


class StorageError(RuntimeError):
    """The DVC remote could not be read or written; no data version was changed."""


class DataVersion(BaseModel):
    """One committed state of `data/`: a commit of the data repo and its DVC directory hash."""

    model_config = ConfigDict(frozen=True)

    git_rev: str
    dvc_md5: str
    n_train: int
    n_test: int
    message: str


# --------------------------------------------------------------------------- shard format


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Write an uncompressed `.npz` whose bytes depend only on the arrays (no timestamps)."""
    tmp = path.with_name(path.name + ".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as zf:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_EPOCH)
            info.create_system = 3
            info.external_attr = 0o644 << 16
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
            zf.writestr(info, buffer.getvalue())
    os.replace(tmp, path)


def _decode_u8(q: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) / np.float32(255)


def encode_shard(samples: Samples) -> dict[str, np.ndarray]:
    """The arrays of one shard; `x` as uint8 only when decoding gives back the same float32 bits."""
    x = np.ascontiguousarray(samples.x, dtype=np.float32)
    arrays: dict[str, np.ndarray] = {}
    q = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    if np.array_equal(_decode_u8(q).view(np.uint32), x.view(np.uint32)):
        arrays["x_u8"] = q
    else:
        arrays["x"] = x
    arrays["y"] = np.asarray(samples.y, dtype=np.int64)
    arrays["ids"] = np.asarray(samples.ids, dtype=str)
    return arrays


def decode_shard(data: bytes | Path) -> Samples:
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with np.load(source, allow_pickle=False) as npz:
        x = _decode_u8(npz["x_u8"]) if "x_u8" in npz.files else npz["x"]
        return Samples(x, npz["y"], npz["ids"])


def read_staged(path: Path) -> Samples:
    """The forget set that `remove_samples` staged for a run."""
    return decode_shard(Path(path))


def _concat(parts: list[Samples], image_shape: tuple[int, ...]) -> Samples:
    if not parts:
        return Samples(
            np.zeros((0, *image_shape), np.float32), np.zeros(0, np.int64), np.zeros(0, str)
        )
    return Samples(
        np.concatenate([p.x for p in parts]),
        np.concatenate([p.y for p in parts]),
        np.concatenate([p.ids for p in parts]),
    )


def _write_manifest(manifest: pd.DataFrame, path: Path) -> None:
    manifest.to_csv(path, index=False, lineterminator="\n")


def _read_manifest(data: bytes, dtypes: dict[str, str]) -> pd.DataFrame:
    return pd.read_csv(io.BytesIO(data), dtype=dtypes, keep_default_na=False, na_values=[""])


def _json_bytes(obj) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()


def as_id_array(ids: Iterable[str], field: str = "ids") -> np.ndarray:
    """Sorted unique ids as a str array; none at all is a `DataError` naming `field`."""
    array = np.unique(np.asarray([str(i) for i in ids], dtype=str))
    if array.size == 0:
        raise DataError(f"{field}: no sample ids given")
    return array


# --------------------------------------------------------------------------- processes


def _quiet_dvc():
    """Silence DVC's 'now run git add' hints; warnings and errors still show."""
    return quiet_logger("dvc", logging.WARNING)


@contextmanager
def _dvc_repo(root: Path) -> Iterator:
    """An in-process `dvc.repo.Repo`, closed on exit."""
    from dvc.repo import Repo

    with _quiet_dvc(), Repo(str(root)) as repo:
        yield repo


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout


def _configure_local(root: Path) -> None:
    """Per-clone settings: commit identity and a DVC site cache inside `.dvc/tmp`.

    With the site cache inside the repository, DVC's indexes of this data (hashes and paths)
    stay out of the machine-wide `/var/tmp/dvc`, and the erasure check covers every file DVC
    writes. The file is written before DVC opens the clone; only `dvc init` itself leaves an
    empty state folder there.
    """
    for key, value in _GIT_IDENTITY.items():
        _git(root, "config", key, value)
    _git(root, "config", "commit.gpgsign", "false")
    site_cache = root / ".dvc" / "tmp" / "site-cache"
    (root / ".dvc" / "config.local").write_text(f'[core]\n    site_cache_dir = "{site_cache}"\n')


def _parse_trailers(body: str) -> dict[str, str]:
    trailers = {}
    for line in body.strip().splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in _TRAILERS:
            trailers[key] = value.strip()
    return trailers


def _message_of(body: str) -> str:
    lines = [ln for ln in body.strip().splitlines() if ln.partition(": ")[0] not in _TRAILERS]
    return "\n".join(lines).strip()


# --------------------------------------------------------------------------- the repository


class DataRepo:
    """A git + DVC repository that holds one dataset under `data/`, one commit per version.

    The pipeline keeps it in its state folder (e.g. `.uib/data-repo`), apart from the user's
    own checkout, so versioning data never commits to the user's repository. Every method that
    changes data checks its input first and, when a step fails half-way, restores `data/` and
    `data.dvc` to the last commit: a stored version is never left half-written.
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
        _git(root, "init", "-q", "-b", "main")
        with _quiet_dvc():
            Repo.init(str(root)).close()
        with _dvc_repo(root) as repo, repo.config.edit() as conf:
            remote = {"url": remote_url}
            if endpoint_url and remote_url.startswith("s3://"):
                remote["endpointurl"] = endpoint_url
            conf["remote"][REMOTE_NAME] = remote
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
        _configure_local(root)
        _git(root, "add", ".dvc/config", ".dvc/.gitignore", ".dvcignore")
        _git(root, "commit", "-q", "-m", "Initialise the data repository")
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
        _configure_local(root)
        repo = cls(root)
        if pull:
            repo.pull()
        return repo

    def pull(self) -> None:
        with _dvc_repo(self.root) as repo:
            repo.pull()

    # ----------------------------------------------------------------- versions

    def has_data(self) -> bool:
        return bool(_git(self.root, "log", "-1", "--format=%H", "--", "data.dvc").strip())

    def version(self, rev: str = "HEAD") -> DataVersion:
        """The data version committed at `rev`."""
        full = self._rev_parse(rev)
        try:
            dvc_md5 = self.dir_md5(full)
        except RuntimeError:
            raise DataError(f"rev: {rev} holds no data version (no data.dvc)") from None
        body = _git(self.root, "log", "-1", "--format=%B", full)
        trailers = _parse_trailers(body)
        if "N-Train" in trailers and "N-Test" in trailers:
            n_train, n_test = int(trailers["N-Train"]), int(trailers["N-Test"])
        else:
            manifest = self.load_manifest(full)
            n_train = int((manifest["split"] == "train").sum())
            n_test = int((manifest["split"] == "test").sum())
        return DataVersion(
            git_rev=full, dvc_md5=dvc_md5, n_train=n_train, n_test=n_test, message=_message_of(body)
        )

    def current(self) -> DataVersion:
        if not self.has_data():
            raise DataError(f"repo: {self.root} holds no data version yet (call write_dataset)")
        return self.version("HEAD")

    def history(self) -> list[str]:
        """Commits that changed `data.dvc`, newest first."""
        return _git(self.root, "log", "--format=%H", "--", "data.dvc").split()

    def find_request(self, request_id: str) -> str | None:
        """The commit that removed samples for `request_id`, if there is one."""
        for rev in self.history():
            body = _git(self.root, "log", "-1", "--format=%B", rev)
            if _parse_trailers(body).get("Request-Id") == request_id:
                return rev
        return None

    def dir_md5(self, rev: str) -> str:
        """The `.dir` object id that `data.dvc` names at `rev` (e.g. `"3f…9a.dir"`)."""
        from dvc.utils.serialize import parse_yaml

        text = _git(self.root, "show", f"{rev}:data.dvc")
        return str(parse_yaml(text, "data.dvc")["outs"][0]["md5"])

    def dir_listing(self, rev: str) -> dict[str, str]:
        """`{relative path: md5}` of every file in `data/` at `rev`, from DVC's `.dir` object."""
        oid = self.dir_md5(rev)
        with _dvc_repo(self.root) as repo:
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

    # ----------------------------------------------------------------- objects

    def missing_on_remote(self, oids: Iterable[str]) -> list[str]:
        with _dvc_repo(self.root) as repo:
            remote = repo.cloud.get_remote_odb(None, "status")
            return [oid for oid in sorted(set(oids)) if not remote.exists(oid)]

    def delete_objects(self, oids: Iterable[str]) -> tuple[int, int]:
        """Delete objects by id from the local cache and the remote: (from cache, from remote).

        Ids that are already gone are skipped, so a rerun deletes nothing more.
        """
        deleted_cache = deleted_remote = 0
        with self._exclusive(), _dvc_repo(self.root) as repo:
            cache, remote = repo.cache.local, repo.cloud.get_remote_odb(None, "erase")
            for oid in sorted(set(oids)):
                if cache.exists(oid):
                    cache.delete(oid)
                    deleted_cache += 1
                if remote.exists(oid):
                    remote.delete(oid)
                    deleted_remote += 1
            left = [oid for oid in oids if cache.exists(oid) or remote.exists(oid)]
        if left:
            raise RuntimeError(f"objects still stored after deletion: {left[:5]}")
        return deleted_cache, deleted_remote

    def _rev_parse(self, rev: str) -> str:
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
            manifest = _read_manifest(reader.read("manifest.csv"), meta["manifest_dtypes"])
            image_shape = tuple(meta["image_shape"])
            splits = {
                split: _concat(
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
        )
        config = None if scenario is None else ScenarioConfig.model_validate(scenario)
        return dataset, config

    def load_manifest(self, rev: str | None = None) -> pd.DataFrame:
        with self._reader(rev) as reader:
            meta = json.loads(reader.read("dataset.json"))
            return _read_manifest(reader.read("manifest.csv"), meta["manifest_dtypes"])

    def _reader(self, rev: str | None) -> _Reader:
        if rev is None and (self.root / DATA_DIR / "dataset.json").exists():
            return _WorkspaceReader(self.root / DATA_DIR)
        if not self.has_data():
            raise DataError(f"repo: {self.root} holds no data version yet (call write_dataset)")
        return _RevReader(self.root, self._rev_parse(rev or "HEAD"))

    # ----------------------------------------------------------------- writing

    def write_dataset(
        self, dataset: Dataset, scenario_config: ScenarioConfig | None, message: str
    ) -> DataVersion:
        """Commit `dataset` as the new data version and push its objects to the remote.

        Writing the data that is already the current version commits nothing and returns the
        current version, so a rerun is free.
        """
        _check_dataset(dataset)
        staging = self.root / ".data.tmp"
        with self._exclusive():
            shutil.rmtree(staging, ignore_errors=True)
            try:
                self._write_tree(staging, dataset, scenario_config)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            with self._restoring_on_failure():
                shutil.rmtree(self.root / DATA_DIR, ignore_errors=True)
                os.rename(staging, self.root / DATA_DIR)
                n_train, n_test = len(dataset.train), len(dataset.test)
                return self._commit(message, n_train, n_test, request_id=None)

    def _write_tree(
        self, out: Path, dataset: Dataset, scenario_config: ScenarioConfig | None
    ) -> None:
        out.mkdir(parents=True)
        manifest = dataset.manifest.reset_index(drop=True)
        meta = {
            "format": FORMAT_VERSION,
            "name": dataset.name,
            "num_classes": int(dataset.num_classes),
            "image_shape": [int(d) for d in dataset.train.x.shape[1:]],
            "shard_size": self.shard_size,
            "manifest_dtypes": {str(c): str(t) for c, t in manifest.dtypes.items()},
        }
        config = None if scenario_config is None else scenario_config.model_dump(mode="json")
        (out / "dataset.json").write_bytes(_json_bytes(meta))
        (out / "scenario.json").write_bytes(_json_bytes(config))
        _write_manifest(manifest, out / "manifest.csv")
        for split, samples in (("train", dataset.train), ("test", dataset.test)):
            (out / split).mkdir()
            for k, start in enumerate(range(0, len(samples), self.shard_size)):
                part = samples.take(np.arange(start, min(start + self.shard_size, len(samples))))
                write_npz(out / split / f"shard-{k:05d}.npz", encode_shard(part))

    def remove_samples(
        self,
        ids: Iterable[str],
        message: str,
        stage_dir: str | Path,
        request_id: str | None = None,
    ) -> tuple[DataVersion, Path]:
        """Commit a new version without the training samples `ids`; stage them for the run.

        Only shards that hold a removed sample are rewritten. The removed samples are first
        written to `stage_dir/forget.npz` (read it with `read_staged`). Unknown ids, test ids,
        or a working copy that differs from the last commit are a `DataError`, and then nothing
        is written. `request_id` is recorded as a `Request-Id:` trailer of the commit.
        """
        wanted = as_id_array(ids)
        with self._exclusive():
            return self._remove_samples(wanted, message, Path(stage_dir), request_id)

    def _remove_samples(
        self, wanted: np.ndarray, message: str, stage_dir: Path, request_id: str | None
    ) -> tuple[DataVersion, Path]:
        self.current()
        data = self.root / DATA_DIR
        meta = json.loads((data / "dataset.json").read_text())
        manifest = _read_manifest((data / "manifest.csv").read_bytes(), meta["manifest_dtypes"])
        rows = manifest[manifest["sample_id"].isin(wanted)]
        unknown = np.setdiff1d(wanted, rows["sample_id"].to_numpy(dtype=str))
        if unknown.size:
            raise DataError(
                f"ids: {unknown.size} sample ids not in the current data version, "
                f"e.g. {unknown[:5].tolist()}"
            )
        not_train = rows.loc[rows["split"] != "train", "sample_id"].to_numpy(dtype=str)
        if not_train.size:
            raise DataError(
                f"ids: {not_train.size} ids are not training samples (only training samples can "
                f"be removed), e.g. {not_train[:5].tolist()}"
            )
        self._assert_clean()

        touched: dict[Path, Samples] = {}
        for path in sorted((data / "train").glob("shard-*.npz")):
            shard = decode_shard(path)
            if np.isin(shard.ids, wanted).any():
                touched[path] = shard
        forget = _concat(
            [s.select(wanted[np.isin(wanted, s.ids)]) for s in touched.values()],
            tuple(meta["image_shape"]),
        )

        stage_dir.mkdir(parents=True, exist_ok=True)
        staged = stage_dir / "forget.npz"
        write_npz(staged, {"x": forget.x, "y": forget.y, "ids": forget.ids})
        try:
            with self._restoring_on_failure():
                for path, shard in touched.items():
                    kept = shard.drop(wanted)
                    if len(kept):
                        write_npz(path, encode_shard(kept))
                    else:
                        path.unlink()
                remaining = manifest[~manifest["sample_id"].isin(wanted)].reset_index(drop=True)
                _write_manifest(remaining, data / "manifest.csv")
                n_train = int((remaining["split"] == "train").sum())
                n_test = int((remaining["split"] == "test").sum())
                version = self._commit(message, n_train, n_test, request_id=request_id)
        except BaseException:
            staged.unlink(missing_ok=True)
            raise
        return version, staged

    # ----------------------------------------------------------------- commit plumbing

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One writer at a time per data repository (two runs of a flow on one machine)."""
        lock = self.root / ".dvc" / "tmp" / "uib-writer.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("w") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _commit(
        self, message: str, n_train: int, n_test: int, request_id: str | None
    ) -> DataVersion:
        if not message.strip():
            raise DataError("message: a data version needs a commit message")
        with _dvc_repo(self.root) as repo:
            repo.add(str(self.root / DATA_DIR))
        md5 = self._workspace_md5()
        if self.has_data() and md5 == self.dir_md5("HEAD"):
            return self.current()
        try:
            with _dvc_repo(self.root) as repo:
                repo.push()
        except Exception as exc:
            raise StorageError(f"dvc push to the remote failed, nothing committed: {exc}") from exc
        trailers = {"Data-Md5": md5, "N-Train": n_train, "N-Test": n_test}
        if request_id:
            trailers["Request-Id"] = request_id
        body = message.strip() + "\n\n" + "\n".join(f"{k}: {v}" for k, v in trailers.items())
        _git(self.root, "add", "data.dvc", ".gitignore")
        _git(self.root, "commit", "-q", "-m", body)
        return self.current()

    def _workspace_md5(self) -> str:
        from dvc.utils.serialize import parse_yaml

        text = (self.root / "data.dvc").read_text()
        return str(parse_yaml(text, "data.dvc")["outs"][0]["md5"])

    def _assert_clean(self) -> None:
        with _dvc_repo(self.root) as repo:
            changed = repo.status(targets=[str(self.root / "data.dvc")])
        if changed:
            raise DataError(
                f"repo: the working copy of data/ in {self.root} differs from the last commit "
                f"({changed}); run `dvc checkout --force` there first"
            )

    @contextmanager
    def _restoring_on_failure(self) -> Iterator[None]:
        head = self._rev_parse("HEAD")
        had_data = self.has_data()
        try:
            yield
        except BaseException:
            self._restore(head, had_data)
            raise

    def _restore(self, head: str, had_data: bool) -> None:
        """Put `data/`, `data.dvc` and HEAD back as they were at `head`."""
        _git(self.root, "reset", "-q", "--hard", head)
        if had_data:
            with _dvc_repo(self.root) as repo:
                repo.checkout(force=True)
        else:
            shutil.rmtree(self.root / DATA_DIR, ignore_errors=True)
            (self.root / "data.dvc").unlink(missing_ok=True)


class _Reader:
    def read(self, relpath: str) -> bytes:
        raise NotImplementedError

    def shards(self, split: str) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _WorkspaceReader(_Reader):
    def __init__(self, data: Path):
        self.data = data

    def read(self, relpath: str) -> bytes:
        return (self.data / relpath).read_bytes()

    def shards(self, split: str) -> list[str]:
        return [f"{split}/{p.name}" for p in sorted((self.data / split).glob("shard-*.npz"))]


class _RevReader(_Reader):
    """Reads `data/` as committed at `rev` through DVC's file system (cache, then remote)."""

    def __init__(self, root: Path, rev: str):
        from dvc.api import DVCFileSystem

        self.rev = rev
        self.fs = DVCFileSystem(str(root), rev=rev)

    def read(self, relpath: str) -> bytes:
        try:
            return self.fs.read_bytes(f"{DATA_DIR}/{relpath}")
        except Exception as exc:
            raise DataError(
                f"rev: {relpath} of data version {self.rev[:10]} cannot be read "
                f"(erased or never pushed): {exc}"
            ) from exc

    def shards(self, split: str) -> list[str]:
        try:
            found = self.fs.ls(f"{DATA_DIR}/{split}", detail=False)
        except FileNotFoundError:
            return []
        names = sorted(Path(p).name for p in found if re.fullmatch(r"shard-\d+\.npz", Path(p).name))
        return [f"{split}/{n}" for n in names]

    def close(self) -> None:
        self.fs.close()


def _check_dataset(dataset: Dataset) -> None:
    """Refuse data that could not be read back as written, naming the field at fault."""
    dataset.train.check(dataset.num_classes, "train")
    dataset.test.check(dataset.num_classes, "test")
    for name, samples in (("train", dataset.train), ("test", dataset.test)):
        if samples.x.dtype != np.float32:
            raise DataError(f"{name}.x: must be float32, got {samples.x.dtype}")
    if "sample_id" not in dataset.manifest.columns or "split" not in dataset.manifest.columns:
        raise DataError("manifest: needs the columns sample_id and split")
    for split, samples in (("train", dataset.train), ("test", dataset.test)):
        listed = dataset.manifest.loc[dataset.manifest["split"] == split, "sample_id"]
        missing = np.setdiff1d(samples.ids.astype(str), listed.to_numpy(dtype=str))
        extra = np.setdiff1d(listed.to_numpy(dtype=str), samples.ids.astype(str))
        if missing.size or extra.size:
            raise DataError(
                f"manifest: its {split} rows and the {split} samples differ: "
                f"{missing.size} samples without a row (e.g. {missing[:3].tolist()}), "
                f"{extra.size} rows without a sample (e.g. {extra[:3].tolist()})"
            )


# --------------------------------------------------------------------------- Prefect tasks


@task(name="version-dataset")
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


@task(name="version-forget-set")
def version_forget_set(
    repo_root: str | Path, request_id: str, ids: Iterable[str], stage_dir: str | Path
) -> dict:
    """Remove a request's samples as a new data version; stage them in `stage_dir/forget.npz`.

    Returns `{"request_id", "before", "after", "staged", "n_forget"}` with both versions as
    dicts. A rerun for a request that already has its commit at HEAD returns that commit
    (re-staging the forget set from the version before it when the staged file is gone).
    """
    repo = DataRepo(repo_root)
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
