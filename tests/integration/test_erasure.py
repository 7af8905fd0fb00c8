"""Erasure with real git and DVC: forgotten samples' bytes are gone, the retained data is not."""

import json
import os
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from tasks.data_versioning import DataRepo
from tasks.erasure import build_audit_record, erase_forgotten, erase_request, hash_id
from uib.samples import DataError

pytestmark = pytest.mark.integration

SALT = "a-secret-salt-of-the-deployment"


def stored_images(samples) -> list[bytes]:
    """Each image's bytes as a shard stores them (float32 C-order, or uint8 when exact)."""
    x = np.ascontiguousarray(samples.x, dtype=np.float32)
    q = np.rint(x * 255).astype(np.uint8)
    exact = np.array_equal(
        (q.astype(np.float32) / np.float32(255)).view(np.uint32), x.view(np.uint32)
    )
    return [img.tobytes() for img in (q if exact else x)]


def files_holding(images: list[bytes], *roots: Path) -> dict[str, int]:
    """{file: how many of `images` its raw bytes contain}, over every file under `roots`."""
    found = {}
    for root in roots:
        for folder, _, names in os.walk(root):
            for name in names:
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    raw = f.read()
                hits = sum(img in raw for img in images)
                if hits:
                    found[path] = hits
    return found


def test_erased_samples_leave_no_bytes_and_the_retained_data_reproduces(
    data_repo, patch_bias, tmp_path
):
    repo, before = data_repo
    remote = tmp_path / "remote"
    forget_ids = patch_bias.forget_ids.tolist()
    train = patch_bias.dataset.train
    retain = train.drop(forget_ids)
    kept_bytes = set(stored_images(retain)) | set(stored_images(patch_bias.dataset.test))
    # an image identical to a retained one may stay; patched images have no such twin
    images = [img for img in stored_images(train.select(forget_ids)) if img not in kept_bytes]
    assert len(images) == len(forget_ids) > 50

    after, staged = repo.remove_samples(forget_ids, "Remove for req-9", tmp_path / "stage", "req-9")
    cache, remote_files = repo.root / ".dvc" / "cache", remote / "files"
    # the search does find them while the older version's objects are stored
    for root in (cache, remote_files):
        assert sum(files_holding(images, root).values()) == len(images)

    record = erase_forgotten(repo, before, after, forget_ids, SALT, staged)

    assert files_holding(images, repo.root, remote, tmp_path / "stage") == {}
    assert not staged.exists() and record.staged_file_deleted
    assert record.deleted_from_cache == record.deleted_from_remote == len(record.purged_objects) > 0
    assert record.unrecoverable_revs == [before.git_rev]
    with pytest.raises(DataError, match="cannot be read"):
        repo.load(before.git_rev)

    clone = DataRepo.clone(repo.root, tmp_path / "clone")  # git clone + dvc pull from the remote
    got, config = clone.load()
    assert config == patch_bias.config
    assert np.array_equal(got.train.x.view(np.uint32), retain.x.view(np.uint32))
    assert np.array_equal(got.train.y, retain.y) and np.array_equal(got.train.ids, retain.ids)
    assert np.array_equal(got.test.x.view(np.uint32), patch_bias.dataset.test.x.view(np.uint32))

    audit = build_audit_record(
        "req-9", record, "uib-model/1", "uib-model/2", {"retained_ta": True}, datetime.now(UTC)
    )
    text = audit.to_json()
    assert not [i for i in forget_ids if i in text]
    assert sorted(json.loads(text)["forgotten_id_hashes"]) == sorted(
        hash_id(i, SALT) for i in forget_ids
    )
    assert audit.purged_object_count == len(record.purged_objects)
    assert SALT not in text

    # the Prefect task again for the same request: nothing more to delete, same record, on disk
    rerun = erase_request.fn(
        repo.root, "req-9", before, after, forget_ids, SALT, tmp_path / "audit", datetime.now(UTC)
    )
    assert rerun["purged_objects"] == record.purged_objects
    assert rerun["unrecoverable_revs"] == [before.git_rev]
    on_disk = Path(rerun["audit_path"]).read_text()
    assert json.loads(on_disk)["request_id"] == "req-9"
    assert not [i for i in forget_ids if i in on_disk]


def test_erasure_refuses_a_mismatched_request(data_repo, patch_bias, tmp_path):
    repo, before = data_repo
    ids = patch_bias.forget_ids[:5].tolist()
    after, staged = repo.remove_samples(ids, "Remove for req-3", tmp_path / "stage", "req-3")
    objects = sorted((repo.root / ".dvc" / "cache").rglob("*"))

    with pytest.raises(DataError, match="before"):
        erase_forgotten(repo, after, before, ids, SALT)
    still_there = patch_bias.forget_ids[5:7].tolist()
    with pytest.raises(DataError, match=still_there[0]):
        erase_forgotten(repo, before, after, ids + still_there, SALT)
    with pytest.raises(DataError, match="salt"):
        erase_forgotten(repo, before, after, ids, "short")

    assert sorted((repo.root / ".dvc" / "cache").rglob("*")) == objects and staged.exists()
