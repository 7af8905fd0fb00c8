"""A new data version is written beside the old one and switched in atomically (real git, DVC).

Each kill point SIGKILLs a real process (`UIB_FAULT_AT`, `tasks.faults`) in the middle of
`version_forget_set` (`versioning-written`, before anything moved, takes the same way back as
`versioning-switched` and is left out to save a process start); the next run of the same request repairs the work tree by itself and
makes exactly one data commit. The two states an older build left behind when killed (shards
rewritten in place; the manifest rewritten and added to DVC, not committed) are repaired too.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from tasks.data_switch import NEXT_DIR, PREVIOUS_DIR, read_journal, workspace_changes
from tasks.data_versioning import DataRepo, read_staged, version_forget_set
from tasks.shards import encode_shard, write_manifest, write_npz

pytestmark = pytest.mark.integration

KILLED_RUN = """
import sys
from tasks.data_versioning import version_forget_set
version_forget_set.fn(sys.argv[1], "req-9", sys.argv[3].split(","), sys.argv[2])
"""


def git_status(repo: DataRepo) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo.root), "status", "--porcelain"], capture_output=True, text=True
    )
    return done.stdout


def assert_exactly_once(repo: DataRepo, before, ids, stage) -> None:
    """The rerun versions the request once: one commit, the ids gone, nothing left over."""
    result = version_forget_set.fn(repo.root, "req-9", ids, stage)
    again = version_forget_set.fn(repo.root, "req-9", ids, stage)
    assert again["after"] == result["after"]
    assert repo.history() == [result["after"]["git_rev"], before.git_rev]
    assert repo.find_request("req-9") == result["after"]["git_rev"]
    assert not np.isin(ids, repo.load_manifest()["sample_id"].to_numpy(dtype=str)).any()
    assert sorted(read_staged(stage / "forget.npz").ids.tolist()) == sorted(ids)
    assert git_status(repo) == "" and read_journal(repo.root) is None
    assert not (repo.root / NEXT_DIR).exists() and not (repo.root / PREVIOUS_DIR).exists()
    assert workspace_changes(repo) == {}  # data/ is what data.dvc names, for DVC too


@pytest.mark.parametrize(
    ("point", "committed"),
    [("versioning-switched", False), ("versioning-committed", True)],
)
def test_a_kill_inside_data_versioning_leaves_a_version_and_the_rerun_commits_once(
    data_repo, patch_bias, tmp_path, point, committed
):
    repo, before = data_repo
    ids = sorted(patch_bias.forget_ids[:40].tolist())
    stage = tmp_path / "stage"
    env = {**os.environ, "UIB_FAULT_AT": point}
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(repo.root), str(stage), ",".join(ids)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert killed.returncode == -9, killed.stderr
    head = repo.rev_parse("HEAD")
    assert (head != before.git_rev) is committed
    assert read_journal(repo.root) is not None  # the crash is on record for the next run
    # what a reader (the request's resolve, the CLI's check) sees: a whole version, not data/
    seen = repo.load_manifest()["sample_id"].to_numpy(dtype=str)
    assert np.isin(ids, seen).all() is not committed
    assert_exactly_once(repo, before, ids, stage)


def test_what_an_older_build_left_when_killed_is_repaired_without_a_person(
    data_repo, patch_bias, tmp_path
):
    """Killed while shards were rewritten in place, and after the manifest was rewritten and
    added to DVC but before the commit: it used to say "run `dvc checkout --force`", and then
    "forget set is empty" while the images stayed stored."""
    repo, before = data_repo
    ids = sorted(patch_bias.forget_ids[:40].tolist())
    data = repo.root / "data"
    # 1. a shard rewritten in place without its samples, nothing else
    shard = data / "train" / "shard-00000.npz"
    held = read_staged(shard)
    write_npz(shard, encode_shard(held.drop(held.ids[:3])))
    assert repo.repair().startswith("restored data/ to the last commit")
    assert read_staged(shard).ids.tolist() == held.ids.tolist()
    # 2. the manifest rewritten without the forget set and `dvc add`ed: data.dvc changed
    manifest = repo.load_manifest()
    write_manifest(manifest[~manifest["sample_id"].isin(ids)], data / "manifest.csv")
    subprocess.run(
        [sys.executable, "-m", "dvc", "add", "data"], cwd=repo.root, check=True, capture_output=True
    )
    assert git_status(repo) != ""
    assert_exactly_once(repo, before, ids, tmp_path / "stage")
