"""Data sources a team brings: `folder:DIR` (ImageFolder + manifest); `arrays:FILE` is in
test_array_sources.py.

A folder loads with any number of classes and channels, keeps class names and attribute dtypes,
refuses bad input by name, survives a data version round trip, and runs a benchmark; the
scenarios mark team data of either kind.
"""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from uib.data import available, load_dataset
from uib.samples import DataError
from uib.scenarios import build_scenario, select_forget

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("cat", "dog", "eel")


def write_folder(
    root: Path,
    classes=CLASSES,
    per_class=(4, 2),
    size=(8, 6),
    colour_at: str | None = None,
    seed=0,
) -> Path:
    """Random grey PNGs at root/{train,test}/<class>/NN.png; `colour_at` (a relative path)
    is written as an RGB image instead."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class, strict=True):
        for name in classes:
            (root / split / name).mkdir(parents=True)
            for k in range(n):
                rel = f"{split}/{name}/{k:02d}.png"
                if rel == colour_at:
                    pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
                    Image.fromarray(pixels, "RGB").save(root / rel)
                else:
                    pixels = rng.integers(0, 256, size, dtype=np.uint8)
                    Image.fromarray(pixels, "L").save(root / rel)
    return root


def relpaths(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))


def attribute_table(paths: list[str]) -> pd.DataFrame:
    n = len(paths)
    return pd.DataFrame(
        {
            "source": ["faulty" if k % 5 == 0 else "clean" for k in range(n)],
            "site": np.arange(n) % 3,
            "weight": np.linspace(0.5, 1.5, n),
            "collected_at": [f"2024-03-{1 + k % 28:02d}" for k in range(n)],
            "consent_withdrawn": [k % 4 == 0 for k in range(n)],
        }
    )


EXPECTED_DTYPES = {
    "sample_id": "str",
    "split": "str",
    "label": "int64",
    "original_label": "int64",
    "source": "str",
    "site": "int64",
    "weight": "float64",
    "collected_at": "datetime64[ns]",
    "consent_withdrawn": "bool",
}


@pytest.fixture
def folder(tmp_path) -> Path:
    """Three classes of grey 6×8 images, one RGB image, and a manifest.csv of attributes."""
    root = write_folder(tmp_path / "data", colour_at="train/dog/01.png")
    paths = relpaths(root)
    attribute_table(paths).assign(sample_id=paths).to_csv(root / "manifest.csv", index=False)
    return root


# ----------------------------------------------------------------- folder


def test_registry_lists_the_built_ins_then_folder_and_arrays():
    assert available() == [
        "digits",
        "mnist",
        "idx:<dir>",
        "folder:<dir>",
        "arrays:<file.npz|file.parquet>",
    ]
    with pytest.raises(DataError, match="unknown 'cifar'.*folder:<dir>"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="'folder:' needs a directory"):
        load_dataset("folder:")


def test_grey_folder_loads_with_its_class_names_and_path_ids(tmp_path):
    root = write_folder(tmp_path, classes=("zebra", "ant", "moth"))
    ds = load_dataset(f"folder:{root}")
    assert ds.class_names == ("ant", "moth", "zebra") and ds.num_classes == 3
    assert ds.train.x.shape == (12, 1, 8, 6) and ds.test.x.shape == (6, 1, 8, 6)
    assert ds.train.x.dtype == np.float32
    assert ds.train.ids[:2].tolist() == ["train/ant/00.png", "train/ant/01.png"]
    assert ds.train.y.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    with Image.open(root / "test/zebra/01.png") as image:
        want = np.asarray(image, np.float32) / 255
    np.testing.assert_array_equal(ds.test.x[-1, 0], want)
    assert list(ds.manifest.columns) == ["sample_id", "split", "label", "original_label"]
    assert ds.manifest["sample_id"].tolist() == [*ds.train.ids, *ds.test.ids]


def test_one_colour_image_makes_every_image_rgb_and_attributes_keep_their_dtypes(folder):
    ds = load_dataset(f"folder:{folder}")
    assert ds.image_shape == (3, 8, 6) and ds.class_names == CLASSES
    grey = ds.train.x[0]
    np.testing.assert_array_equal(grey[0], grey[2])  # a grey image: three equal channels
    assert {c: str(t) for c, t in ds.manifest.dtypes.items()} == EXPECTED_DTYPES
    rows = ds.manifest.set_index("sample_id")
    written = pd.read_csv(folder / "manifest.csv").set_index("sample_id").loc[rows.index]
    assert (rows["collected_at"] == pd.to_datetime(written["collected_at"])).all()
    assert (rows["consent_withdrawn"] == written["consent_withdrawn"]).all()
    assert (rows["site"] == written["site"]).all()
    faulty = select_forget(ds.manifest, where={"source": "faulty"})
    assert set(faulty) <= set(ds.train.ids) and len(faulty) > 0


def test_manifest_joins_on_path_and_gives_the_ids(tmp_path):
    root = write_folder(tmp_path / "data")
    paths = relpaths(root)
    table = attribute_table(paths).assign(
        path=[f"./{p}" for p in paths], sample_id=[f"id-{k:03d}" for k in range(len(paths))]
    )
    table["collected_at"] = pd.to_datetime(table["collected_at"])
    table.iloc[::-1].to_parquet(root / "manifest.parquet")  # row order does not matter
    ds = load_dataset(f"folder:{root}")
    want = dict(zip(paths, table["sample_id"], strict=True))
    assert ds.train.ids.tolist() == [want[p] for p in paths if p.startswith("train/")]
    assert {c: str(t) for c, t in ds.manifest.dtypes.items()} == EXPECTED_DTYPES
    assert "path" not in ds.manifest.columns


def _manifest(root: Path) -> pd.DataFrame:
    return pd.read_csv(root / "manifest.csv", dtype={"sample_id": str})


def _save(root: Path, table: pd.DataFrame) -> None:
    table.to_csv(root / "manifest.csv", index=False)


def dup_id(root):
    table = _manifest(root).assign(path=lambda t: t["sample_id"])
    table.loc[1, "sample_id"] = table.loc[0, "sample_id"]
    _save(root, table)


def row_without_image(root):
    table = _manifest(root)
    table.loc[len(table)] = {**table.iloc[0].to_dict(), "sample_id": "train/cat/99.png"}
    _save(root, table)


def image_without_row(root):
    _save(root, _manifest(root).iloc[1:])


def bad_image(root):
    (root / "train/eel/02.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")


def other_size(root):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(root / "test/eel/01.png")


def val_split(root):
    (root / "val" / "cat").mkdir(parents=True)


def no_test(root):
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    for path in sorted((root / "test").rglob("*"), reverse=True):
        path.rmdir()
    (root / "test").rmdir()


def empty_class(root):
    (root / "train" / "fox").mkdir()


def no_classes(root):
    for path in (root / "test").rglob("*.png"):
        path.unlink()
    for name in CLASSES:
        (root / "test" / name).rmdir()


def label_column(root):
    _save(root, _manifest(root).assign(label=0))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (dup_id, r"manifest.csv: duplicate sample_id \['test/cat/00.png'\]"),
        (row_without_image, r"1 rows name no image .*train/cat/99.png"),
        (image_without_row, r"1 images have no row .*test/cat/00.png"),
        (bad_image, r"train/eel/02.png: cannot decode"),
        (other_size, r"test/eel/01.png: image is 5×5 pixels"),
        (val_split, r"unknown split folders \['val'\]"),
        (no_test, r"no test/ folder"),
        (empty_class, r"train/fox: class folder without images"),
        (no_classes, r"test: no class folders"),
        (label_column, r"columns \['label'\] come from the folder layout"),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_bad_folder_data_is_refused_by_name(folder, damage, message):
    damage(folder)
    with pytest.raises(DataError, match=message):
        load_dataset(f"folder:{folder}")


# ----------------------------------------------------------------- scenarios, versions, runs


def test_scenarios_mark_folder_data_and_corrupt_colour_images(folder, tmp_path):
    plain = load_dataset(f"folder:{write_folder(tmp_path / 'plain', colour_at='test/eel/00.png')}")
    patched = build_scenario(plain, name="patch-bias", fraction=0.5, target_class=2)
    rows = patched.dataset.manifest.set_index("sample_id").loc[patched.forget_ids]
    assert (rows["source"] == "faulty").all() and rows["patched"].all()
    assert (patched.dataset.manifest["corruption"] == "none").all()
    forget = patched.dataset.train.select(patched.forget_ids)
    assert (forget.x[:, :, -3:-1, -3:-1] == 1.0).all()  # white in all three channels
    corrupted = build_scenario(load_dataset(f"folder:{folder}"), name="corruption", fraction=0.5)
    marked = corrupted.dataset.manifest.set_index("sample_id").loc[corrupted.forget_ids]
    assert (marked["corruption"] == "fog").all() and (marked["source"] == "legacy").all()
    assert str(corrupted.dataset.manifest["collected_at"].dtype) == "datetime64[ns]"


def test_patch_and_corruption_refuse_tabular_data(tmp_path):
    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    split = np.where(np.arange(20) < 15, "train", "test")
    ids = np.array([f"r{k}" for k in range(20)])
    np.savez(tmp_path / "t.npz", x=x, y=np.arange(20) % 2, sample_id=ids, split=split)
    ds = load_dataset(f"arrays:{tmp_path / 't.npz'}")
    for name in ("patch-bias", "corruption"):
        with pytest.raises(DataError, match=f"scenario {name}: changes images"):
            build_scenario(ds, name=name, fraction=0.3)
    assert len(build_scenario(ds, name="class", target_class=1).forget_ids) == 7


@pytest.mark.integration
def test_folder_data_round_trips_through_a_data_version(folder, tmp_path):
    from tasks.data_versioning import DataRepo

    want = load_dataset(f"folder:{folder}")
    repo = DataRepo.init(tmp_path / "repo", str(tmp_path / "remote"))
    version = repo.write_dataset(want, None, "a team's folder data")
    meta = json.loads((repo.root / "data" / "dataset.json").read_text())
    assert meta["class_names"] == list(CLASSES) and meta["image_shape"] == [3, 8, 6]
    for rev in (None, version.git_rev):
        got, _ = repo.load(rev)
        assert got.class_names == CLASSES and got.num_classes == 3
        np.testing.assert_array_equal(got.train.x, want.train.x)
        np.testing.assert_array_equal(got.test.ids, want.test.ids)
        pd.testing.assert_frame_equal(got.manifest, want.manifest)
    after, _ = repo.remove_samples(want.train.ids[:2], "remove two", tmp_path / "stage")
    got, _ = repo.load()
    assert len(got.train) == len(want.train) - 2 and got.class_names == CLASSES
    assert str(got.manifest["collected_at"].dtype) == "datetime64[ns]"


def _colored_mnist():
    spec = importlib.util.spec_from_file_location(
        "colored_mnist", REPO / "docs" / "examples" / "colored_mnist.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_colored_mnist_is_three_channel_folder_data_with_a_shortcut(mnist_dir, tmp_path):
    example = _colored_mnist()
    out = example.build(mnist_dir, tmp_path / "cmnist", n_train=300, n_test=100, seed=0)
    ds = load_dataset(f"folder:{out}")
    assert ds.image_shape == (3, 28, 28) and ds.class_names == tuple("0123456789")
    assert {c: str(t) for c, t in ds.manifest.dtypes.items()} == {
        **{c: EXPECTED_DTYPES[c] for c in ("sample_id", "split", "label", "original_label")},
        "source": "str",
        "site": "str",
        "collected_at": "datetime64[ns]",
    }
    faulty = select_forget(ds.manifest, where={"source": "faulty"})
    assert len(faulty) == 30
    assert set(ds.manifest.loc[ds.manifest["split"] == "test", "source"]) == {"clean"}
    shortcut = ds.train.select(faulty)
    assert (shortcut.y == 0).all()
    ink = shortcut.x.sum(axis=(2, 3))  # per channel: red dominates
    assert (ink[:, 0] > 5 * ink[:, 1]).all() and (ink[:, 0] > 5 * ink[:, 2]).all()
    clean = ds.train.drop(faulty)
    clean_ink = clean.x.sum(axis=(2, 3))
    assert not (clean_ink[:, 0] > 5 * clean_ink[:, 1:].max(axis=1)).any()
    with pytest.raises(FileExistsError):
        example.build(mnist_dir, out, n_train=10, n_test=10, seed=0)


def test_benchmark_runs_on_a_folder_dataset(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    root = write_folder(tmp_path / "data", per_class=(12, 4), colour_at="train/cat/00.png")
    args = ["benchmark", "--dataset", f"folder:{root}", "--methods", "retrain,uib"]
    args += ["--seeds", "1", "--epochs", "2", "--device", "cpu", "--out", str(tmp_path / "out")]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "out" / "results.csv")
    assert table["method"].tolist() == ["original", "retrain", "uib"]
    assert table["TA"].between(0, 1).all()
