"""What a request's run trained on and what it removed, as MLflow datasets (the run's Datasets
panel): the retain set and the forget set, each named by its DVC data version.

Only metadata is logged — a name, a digest, the source and a profile (row and class counts),
never a row or an id: the forget set is erased, and its ids must not leak through the tracking
store. The retain set's digest is the DVC directory hash of the data version it was read from.
The forget set's digest is built from the salted id hashes the audit record holds, so it
matches the record without revealing the ids: the ids of a data set are easy to guess
(`digits-train-00042`), and a digest of the plain ids of a small request could be found by
trying every pair.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from typing import Any

import mlflow
from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source import DatasetSource

from tasks.data_versioning import DataVersion
from tasks.erasure import hash_id, read_audit
from tasks.settings import Settings
from uib.samples import Samples

RETAIN_CONTEXT, FORGET_CONTEXT = "training", "removed"


class DvcDataVersionSource(DatasetSource):
    """A commit of the DVC data repository: the git revision and the directory hash of `data/`.

    Loading is `git checkout <rev> && dvc pull` in that repository (a version whose shards held
    a forgotten sample can no longer be checked out in full: see the audit record).
    """

    def __init__(self, repo: str, git_rev: str, dvc_md5: str, remote: str | None = None):
        self.repo, self.git_rev, self.dvc_md5, self.remote = repo, git_rev, dvc_md5, remote

    @staticmethod
    def _get_source_type() -> str:
        return "dvc"

    def load(self) -> Any:
        raise NotImplementedError(
            f"check the data version out with `git -C {self.repo} checkout {self.git_rev}` "
            "and `dvc pull`"
        )

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> DvcDataVersionSource:
        raise NotImplementedError("a DVC data version is named, not resolved from a string")

    def to_dict(self) -> dict[str, Any]:
        return {
            "uri": f"dvc+git://{self.repo}@{self.git_rev}#data",
            "git_rev": self.git_rev,
            "dvc_md5": self.dvc_md5,
            "remote": self.remote,
        }

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> DvcDataVersionSource:
        repo = source_dict["uri"].removeprefix("dvc+git://").rsplit("@", 1)[0]
        return cls(repo, source_dict["git_rev"], source_dict["dvc_md5"], source_dict.get("remote"))


class SampleSet(Dataset):
    """A set of training samples as metadata only: source, digest and a profile of counts."""

    def __init__(
        self, source: DvcDataVersionSource, name: str, digest: str, profile: dict[str, Any]
    ):
        self._profile = profile
        super().__init__(source=source, name=name, digest=digest)

    def _compute_digest(self) -> str:
        raise NotImplementedError("a SampleSet is always given its digest")

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    @property
    def schema(self) -> None:
        return None

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile)}


def forget_digest(id_hashes: Iterable[str]) -> str:
    """A digest of the forget set from its salted id hashes (order-free), 16 hex characters."""
    return hashlib.sha256("\n".join(sorted(id_hashes)).encode()).hexdigest()[:16]


def forget_id_hashes(settings: Settings, request_id: str, forget: Samples | None) -> list[str]:
    """The forget set's salted id hashes: from its ids, or, once erased, from the audit record."""
    if forget is not None:
        salt = settings.salt()
        return [hash_id(str(i), salt) for i in forget.ids]
    audit = read_audit(settings.audit_dir, request_id)
    return audit.forgotten_id_hashes if audit is not None else []


def class_counts(labels: Iterable[int]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[str(int(label))] = counts.get(str(int(label)), 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: int(kv[0])))


def request_datasets(
    data_repo: str,
    remote: str | None,
    before: DataVersion,
    after: DataVersion,
    retain_labels: Iterable[int],
    n_forget: int,
    forget_id_hashes: Iterable[str],
    selection: str,
) -> dict[str, SampleSet]:
    """The retain set (read from `after`) and the forget set (which only `before` held)."""
    retain_counts = class_counts(retain_labels)

    def source(version: DataVersion) -> DvcDataVersionSource:
        return DvcDataVersionSource(data_repo, version.git_rev, version.dvc_md5, remote)

    def shown(version: DataVersion) -> str:
        """The source again, in the profile: MLflow's UI shows no source of a custom type."""
        return f"DVC data version {version.git_rev[:10]} ({version.dvc_md5[:10]}) of {data_repo}"

    return {
        RETAIN_CONTEXT: SampleSet(
            source(after),
            name="retain",
            digest=after.dvc_md5.removesuffix(".dir")[:16],
            profile={
                "num_rows": sum(retain_counts.values()),
                "source": shown(after),
                "per_class": retain_counts,
            },
        ),
        FORGET_CONTEXT: SampleSet(
            source(before),
            name="forget",
            digest=forget_digest(forget_id_hashes),
            profile={
                "num_rows": n_forget,
                "selection": selection,
                "source": shown(before) + ", the version before the request (purged since)",
            },
        ),
    }


def log_request_datasets(datasets: dict[str, SampleSet]) -> None:
    """Each set as an input of the active run, its role as the input's context."""
    for context, dataset in datasets.items():
        mlflow.log_input(dataset, context=context)
