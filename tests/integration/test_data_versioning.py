"""The DVC data repository, with real git and DVC: determinism, round trips, removal."""

import hashlib
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tasks.data_versioning import DataRepo, StorageError, read_staged, version_forget_set
from uib.samples import DataError, Samples

pytestmark = pytest.mark.integration


def file_hashes(root: Path) -> dict[str, str]:
    """md5 of every file under `root` but DVC's own bookkeeping (locks, state) in `.dvc/tmp`."""
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and ".dvc/tmp" not in p.relative_to(root).as_posix()
    }


def head(repo: DataRepo) -> str:
    return subprocess.run(
        ["git", "-C", str(repo.root), "rev-parse", "HEAD"], capture_output=True, text=True
    ).stdout.strip()


def assert_same_samples(got: Samples, want: Samples) -> None:
    assert got.x.dtype == np.float32 and got.x.shape == want.x.shape
    assert np.array_equal(got.x.view(np.uint32), np.asarray(want.x, np.float32).view(np.uint32))
    assert got.y.dtype == np.int64 and np.array_equal(got.y, want.y)
    assert np.array_equal(got.ids.astype(str), want.ids.astype(str))


def test_same_dataset_gives_same_dvc_hash_in_two_fresh_repos(tmp_path, patch_bias, data_repo):
    repo, version = data_repo
    other = DataRepo.init(tmp_path / "other", str(tmp_path / "other-remote"))
    again = other.write_dataset(patch_bias.dataset, patch_bias.config, "same data, another repo")
    assert again.dvc_md5 == version.dvc_md5
    assert (other.root / "data.dvc").read_text() == (repo.root / "data.dvc").read_text()
    assert (version.n_train, version.n_test) == (
        len(patch_bias.dataset.train),
        len(patch_bias.dataset.test),
    )
    # shards hold at most shard_size samples; writing the same data again commits nothing
    assert all(n <= repo.shard_size for n in _shard_sizes(repo.root / "data" / "train"))
    assert repo.write_dataset(patch_bias.dataset, patch_bias.config, "rerun") == version


def _shard_sizes(folder: Path) -> list[int]:
    return [len(read_staged(p)) for p in sorted(folder.glob("shard-*.npz"))]


def test_load_round_trips_bit_for_bit(data_repo, patch_bias):
    repo, version = data_repo
    want = patch_bias.dataset
    for rev in (None, version.git_rev):  # the working copy, and the commit through DVC's fs
        got, config = repo.load(rev)
        assert config == patch_bias.config
        assert (got.name, got.num_classes) == (want.name, want.num_classes)
        assert_same_samples(got.train, want.train)
        assert_same_samples(got.test, want.test)
        pd.testing.assert_frame_equal(got.manifest, want.manifest.reset_index(drop=True))


def test_default_class_names_are_not_written_and_read_back_as_default(data_repo):
    """Versions written before class names existed hold none; they load as "0".."K-1", and
    data with those names still writes the same dataset.json (the shipped hash)."""
    repo, _ = data_repo
    meta = (repo.root / "data" / "dataset.json").read_text()
    assert "class_names" not in meta
    got, _ = repo.load()
    assert got.class_names == tuple(str(k) for k in range(10))


def test_remove_rewrites_only_the_shards_that_held_the_samples(data_repo, patch_bias, tmp_path):
    repo, before = data_repo
    train = patch_bias.dataset.train
    ids = [*train.ids[[0, 5, 17]], *train.ids[[2 * 256 + 3, 2 * 256 + 4]]]  # shards 0 and 2
    data = repo.root / "data"
    hashes_before = file_hashes(data)

    after, staged = repo.remove_samples(
        ids, "Remove 5 samples for request req-42", tmp_path / "stage", request_id="req-42"
    )

    hashes_after = file_hashes(data)
    changed = {k for k in hashes_before if hashes_after.get(k) != hashes_before[k]}
    assert changed == {"train/shard-00000.npz", "train/shard-00002.npz", "manifest.csv"}
    assert set(hashes_after) == set(hashes_before)
    assert "req-42" in after.message and repo.find_request("req-42") == after.git_rev
    assert (after.n_train, after.n_test) == (before.n_train - 5, before.n_test)
    assert repo.current() == after and after.dvc_md5 != before.dvc_md5

    assert_same_samples(read_staged(staged), train.select(ids))
    now, _ = repo.load()
    assert_same_samples(now.train, train.drop(ids))
    assert not now.manifest["sample_id"].isin(ids).any()
    assert len(now.manifest) == len(patch_bias.dataset.manifest) - 5
    old, _ = repo.load(before.git_rev)  # the older version is intact until erasure
    assert_same_samples(old.train, train)


def test_bad_ids_change_nothing(data_repo, patch_bias, tmp_path):
    repo, version = data_repo
    snapshot = file_hashes(repo.root)
    stage = tmp_path / "stage"
    some = patch_bias.dataset.train.ids[:2].tolist()
    test_id = patch_bias.dataset.test.ids[0]

    with pytest.raises(DataError, match="no-such-sample"):
        repo.remove_samples([*some, "no-such-sample"], "req-1", stage)
    with pytest.raises(DataError, match=str(test_id)):
        repo.remove_samples([*some, test_id], "req-2", stage)
    with pytest.raises(DataError, match="ids"):
        repo.remove_samples([], "req-3", stage)

    assert head(repo) == version.git_rev and repo.current() == version
    assert file_hashes(repo.root) == snapshot
    assert not (stage / "forget.npz").exists()


def test_version_forget_set_task_runs_a_request_once(data_repo, patch_bias, tmp_path):
    repo, before = data_repo
    ids = patch_bias.forget_ids[:10].tolist()
    first = version_forget_set.fn(repo.root, "req-7", ids, tmp_path / "stage")
    Path(first["staged"]).unlink()
    second = version_forget_set.fn(repo.root, "req-7", ids, tmp_path / "stage")
    assert first["before"]["git_rev"] == before.git_rev
    assert second["after"] == first["after"] and repo.history()[0] == first["after"]["git_rev"]
    assert len(repo.history()) == 2
    assert_same_samples(read_staged(Path(second["staged"])), patch_bias.dataset.train.select(ids))


def test_a_failed_push_leaves_the_stored_version_as_it_was(data_repo, patch_bias, tmp_path):
    repo, version = data_repo
    remote = tmp_path / "remote"

    def stored() -> dict:
        """The working copy, its pointer, the remote, and the cache objects that existed."""
        files = {k: v for k, v in file_hashes(repo.root).items() if not k.startswith(".git/")}
        return {**files, **{f"remote/{k}": v for k, v in file_hashes(remote).items()}}

    snapshot = stored()
    local_config = repo.root / ".dvc" / "config.local"
    saved = local_config.read_text()
    # /proc refuses new folders even to root: the push of the new version fails
    local_config.write_text(saved + "['remote \"storage\"']\n    url = /proc/uib-no-such-remote\n")
    try:
        with pytest.raises(StorageError, match="uib-no-such-remote"):
            repo.remove_samples(patch_bias.forget_ids[:3], "req-5", tmp_path / "stage")
    finally:
        local_config.write_text(saved)
    assert head(repo) == version.git_rev and repo.current() == version
    now = stored()
    assert {k: now.get(k) for k in snapshot} == snapshot  # new cache objects may be left over
    assert not [k for k in now if k not in snapshot and not k.startswith(".dvc/cache/")]
    assert not (tmp_path / "stage" / "forget.npz").exists()
    status = subprocess.run(
        ["git", "-C", str(repo.root), "status", "--porcelain"], capture_output=True, text=True
    )
    assert status.stdout == ""
