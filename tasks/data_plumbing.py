"""The plumbing of the data repository: git and DVC processes, commit trailers, readers.

`DataRepo` (tasks.data_repo) is built on these; nothing here changes a data version by itself.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict

from tasks.quiet import quiet_logger
from tasks.shards import storable
from uib.data import Dataset
from uib.samples import DataError

DATA_DIR = "data"
REMOTE_NAME = "storage"
TRAILERS = ("Data-Md5", "N-Train", "N-Test", "Request-Id")
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


def quiet_dvc():
    """Silence DVC's 'now run git add' hints; warnings and errors still show."""
    return quiet_logger("dvc", logging.WARNING)


@contextmanager
def dvc_repo(root: Path) -> Iterator:
    """An in-process `dvc.repo.Repo`, closed on exit."""
    from dvc.repo import Repo

    with quiet_dvc(), Repo(str(root)) as repo:
        yield repo


def git(root: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(root), *args], capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"git {' '.join(args)} failed in {root}: {done.stderr.strip()}")
    return done.stdout


def configure_local(root: Path) -> None:
    """Per-clone settings: commit identity and a DVC site cache inside `.dvc/tmp`.

    With the site cache inside the repository, DVC's indexes of this data (hashes and paths)
    stay out of the machine-wide `/var/tmp/dvc`, and the erasure check covers every file DVC
    writes. The file is written before DVC opens the clone; only `dvc init` itself leaves an
    empty state folder there.
    """
    for key, value in _GIT_IDENTITY.items():
        git(root, "config", key, value)
    git(root, "config", "commit.gpgsign", "false")
    site_cache = root / ".dvc" / "tmp" / "site-cache"
    (root / ".dvc" / "config.local").write_text(f'[core]\n    site_cache_dir = "{site_cache}"\n')


def parse_trailers(body: str) -> dict[str, str]:
    trailers = {}
    for line in body.strip().splitlines():
        key, sep, value = line.partition(": ")
        if sep and key in TRAILERS:
            trailers[key] = value.strip()
    return trailers


def message_of(body: str) -> str:
    lines = [ln for ln in body.strip().splitlines() if ln.partition(": ")[0] not in TRAILERS]
    return "\n".join(lines).strip()


class Reader:
    def read(self, relpath: str) -> bytes:
        raise NotImplementedError

    def shards(self, split: str) -> list[str]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> Reader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class WorkspaceReader(Reader):
    def __init__(self, data: Path):
        self.data = data

    def read(self, relpath: str) -> bytes:
        return (self.data / relpath).read_bytes()

    def shards(self, split: str) -> list[str]:
        return [f"{split}/{p.name}" for p in sorted((self.data / split).glob("shard-*.npz"))]


class RevReader(Reader):
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


def check_dataset(dataset: Dataset) -> None:
    """Refuse data that could not be read back as written, naming the field at fault."""
    dataset.train.check(dataset.num_classes, "train")
    dataset.test.check(dataset.num_classes, "test")
    for name, samples in (("train", dataset.train), ("test", dataset.test)):
        if samples.x.dtype != np.float32:
            raise DataError(f"{name}.x: must be float32, got {samples.x.dtype}")
    if "sample_id" not in dataset.manifest.columns or "split" not in dataset.manifest.columns:
        raise DataError("manifest: needs the columns sample_id and split")
    for column in dataset.manifest.columns:
        if not isinstance(column, str) or not storable(dataset.manifest[column]):
            raise DataError(
                f"manifest: column {column!r} of dtype {dataset.manifest[column].dtype} cannot "
                "be stored; use bools, integers, floats, text or datetime64"
            )
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
