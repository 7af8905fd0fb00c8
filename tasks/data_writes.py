"""The shard rewriting side of a new data version: the tree `data_switch.publish` switches in.

`write_tree` writes a whole dataset; `remove_samples` writes the current version less some
training samples — only the shards that held one are rewritten, every other file is a hard link
of the checked-out one — and stages the removed samples for the run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tasks import data_switch
from tasks.data_plumbing import DATA_DIR, DataVersion
from tasks.shards import (
    concat_samples,
    decode_shard,
    encode_shard,
    json_bytes,
    manifest_dtypes,
    read_manifest,
    write_manifest,
    write_npz,
)
from uib.data import Dataset, default_class_names
from uib.samples import DataError, Samples
from uib.scenarios import ScenarioConfig

if TYPE_CHECKING:
    from tasks.data_repo import DataRepo

FORMAT_VERSION = 1


def write_tree(
    out: Path, dataset: Dataset, scenario_config: ScenarioConfig | None, shard_size: int
) -> None:
    """The whole of `data/` for `dataset`, written into the empty folder `out`."""
    manifest = dataset.manifest.reset_index(drop=True)
    meta = {
        "format": FORMAT_VERSION,
        "name": dataset.name,
        "num_classes": int(dataset.num_classes),
        "image_shape": [int(d) for d in dataset.train.x.shape[1:]],
        "shard_size": shard_size,
        "manifest_dtypes": manifest_dtypes(manifest),
    }
    # Only names other than the default "0".."K-1" are written: a data version of default
    # names keeps the bytes (and the DVC hash) it had before class names existed.
    if tuple(dataset.class_names) != default_class_names(dataset.num_classes):
        meta["class_names"] = list(dataset.class_names)
    config = None if scenario_config is None else scenario_config.model_dump(mode="json")
    (out / "dataset.json").write_bytes(json_bytes(meta))
    (out / "scenario.json").write_bytes(json_bytes(config))
    write_manifest(manifest, out / "manifest.csv")
    for split, samples in (("train", dataset.train), ("test", dataset.test)):
        (out / split).mkdir()
        for k, start in enumerate(range(0, len(samples), shard_size)):
            part = samples.take(np.arange(start, min(start + shard_size, len(samples))))
            write_npz(out / split / f"shard-{k:05d}.npz", encode_shard(part))


def remove_samples(
    repo: DataRepo, wanted: np.ndarray, message: str, stage_dir: Path, request_id: str | None
) -> tuple[DataVersion, Path]:
    """`DataRepo.remove_samples` once the writer lock is held and the work tree repaired."""
    repo.current()
    data = repo.root / DATA_DIR
    meta = json.loads((data / "dataset.json").read_text())
    manifest = read_manifest((data / "manifest.csv").read_bytes(), meta["manifest_dtypes"])
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

    touched: dict[str, Samples] = {}
    for path in sorted((data / "train").glob("shard-*.npz")):
        shard = decode_shard(path)
        if np.isin(shard.ids, wanted).any():
            touched[f"train/{path.name}"] = shard
    forget = concat_samples(
        [s.select(wanted[np.isin(wanted, s.ids)]) for s in touched.values()],
        tuple(meta["image_shape"]),
    )
    remaining = manifest[~manifest["sample_id"].isin(wanted)].reset_index(drop=True)

    def build(out: Path) -> None:
        for source in sorted(data.rglob("*")):
            relpath = source.relative_to(data).as_posix()
            target = out / relpath
            if source.is_dir():
                target.mkdir(parents=True, exist_ok=True)
            elif relpath == "manifest.csv":
                write_manifest(remaining, target)
            elif relpath in touched:
                kept = touched[relpath].drop(wanted)
                if len(kept):
                    write_npz(target, encode_shard(kept))
            else:
                data_switch.link_or_copy(source, target)

    stage_dir.mkdir(parents=True, exist_ok=True)
    staged = stage_dir / "forget.npz"
    write_npz(staged, {"x": forget.x, "y": forget.y, "ids": forget.ids})
    try:
        version = data_switch.publish(
            repo,
            build,
            message,
            int((remaining["split"] == "train").sum()),
            int((remaining["split"] == "test").sum()),
            request_id=request_id,
        )
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    return version, staged
