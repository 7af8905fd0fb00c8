import gzip
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from uib.data import IDX_FILES, MANIFEST_COLUMNS, MNIST_MD5, load_dataset
from uib.samples import DataError, Samples

LABELS_FILE = "train-labels-idx1-ubyte.gz"


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    return load_dataset("mnist", mnist_dir)


@pytest.fixture
def mnist_copy(mnist_dir, tmp_path) -> Path:
    for pair in IDX_FILES.values():
        for name in pair:
            shutil.copyfile(mnist_dir / name, tmp_path / name)
    return tmp_path


def write_idx(directory: Path, n_train: int = 100, n_test: int = 30, size=(28, 28), seed=0):
    """A small IDX set with random pixels; returns {split: (uint8 images, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, size=(n, *size), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_name, label_name = IDX_FILES[split]
        header = np.array([2051, n, *size], dtype=">u4").tobytes()
        (directory / image_name).write_bytes(gzip.compress(header + images.tobytes()))
        header = np.array([2049, n], dtype=">u4").tobytes()
        (directory / label_name).write_bytes(gzip.compress(header + labels.tobytes()))
        out[split] = (images, labels)
    return out


def test_mnist_loads_the_shared_subset(mnist):
    assert mnist.name == "mnist"
    assert mnist.train.x.shape == (24_000, 1, 28, 28)
    assert mnist.test.x.shape == (10_000, 1, 28, 28)
    assert mnist.image_shape == (1, 28, 28)
    assert mnist.num_classes == 10
    for part in (mnist.train, mnist.test):
        assert part.x.dtype == np.float32 and part.y.dtype == np.int64
        assert part.x.min() == 0.0 and part.x.max() == 1.0
        assert set(np.unique(part.y)) == set(range(10))
        part.check(10)
    assert mnist.train.y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.test.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert mnist.train.ids[[0, 12, -1]].tolist() == [
        "mnist-train-00000",
        "mnist-train-00012",
        "mnist-train-23999",
    ]
    assert mnist.test.ids[3] == "mnist-test-00003"


def test_manifest_rows_match_the_samples(mnist):
    m = mnist.manifest
    assert list(m.columns) == list(MANIFEST_COLUMNS)
    assert {c: str(t) for c, t in m.dtypes.items()} == MANIFEST_COLUMNS
    assert len(m) == 34_000 and m["sample_id"].is_unique
    for split, part in (("train", mnist.train), ("test", mnist.test)):
        rows = m[m["split"] == split]
        assert rows["sample_id"].tolist() == part.ids.tolist()
        assert (rows["label"].to_numpy() == part.y).all()
        assert (rows["original_label"].to_numpy() == part.y).all()
    assert set(m["source"]) == {"clean"} and set(m["corruption"]) == {"none"}
    assert not m["patched"].any()


def test_mnist_data_dir_from_the_environment(mnist_dir, monkeypatch):
    monkeypatch.delenv("UIB_MNIST_DIR", raising=False)
    with pytest.raises(DataError, match="UIB_MNIST_DIR"):
        load_dataset("mnist")
    monkeypatch.setenv("UIB_MNIST_DIR", str(mnist_dir))
    assert len(load_dataset("mnist").test) == 10_000


def test_known_md5s_cover_the_subset_and_the_official_files():
    assert "f68b3c2dcbeaaa9fbdd348bbdeb94873" in MNIST_MD5["train-images-idx3-ubyte.gz"]
    assert "d53e105ee54ea40749a09fcbcd1e9432" in MNIST_MD5["train-labels-idx1-ubyte.gz"]
    assert "c78651b59434abca47ceeb4122b408ce" in MNIST_MD5["train-images-idx3-ubyte.gz"]
    assert MNIST_MD5["t10k-images-idx3-ubyte.gz"] == ("9fb629c4189551a2d022fa330f9573f3",)


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


@pytest.mark.parametrize(
    ("damage", "message"),
    [(_flip_byte, "md5"), (_truncate, "md5"), (Path.unlink, "cannot read")],
    ids=["changed-byte", "truncated", "missing"],
)
def test_damaged_mnist_file_is_named(mnist_copy, damage, message):
    path = mnist_copy / LABELS_FILE
    damage(path)
    with pytest.raises(DataError, match=message) as err:
        load_dataset("mnist", mnist_copy)
    assert str(path) in str(err.value)


def test_idx_reads_a_copy_without_checksum(mnist_copy):
    path = mnist_copy / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(path.read_bytes())
    data[4:8] = b"\x01\x02\x03\x04"  # the gzip mtime: new md5, same content
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="md5"):
        load_dataset("mnist", mnist_copy)
    ds = load_dataset(f"idx:{mnist_copy}")
    assert ds.name == f"idx:{mnist_copy}"
    assert (len(ds.train), len(ds.test)) == (24_000, 10_000)
    assert ds.test.ids[0] == "idx-test-00000"


def test_idx_count_and_shape_come_from_the_header(tmp_path):
    written = write_idx(tmp_path, n_train=100, n_test=30, size=(12, 10))
    ds = load_dataset(f"idx:{tmp_path}")
    assert ds.train.x.shape == (100, 1, 12, 10) and ds.test.x.shape == (30, 1, 12, 10)
    images, labels = written["train"]
    np.testing.assert_array_equal(ds.train.x[:, 0], images.astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.train.y, labels)
    assert ds.train.ids[-1] == "idx-train-00099"
    assert len(ds.manifest) == 130


def _rewrite(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes()))))


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("train-images-idx3-ubyte.gz", lambda b: b"\x00\x00\x08\x02" + b[4:], "magic"),
        ("t10k-labels-idx1-ubyte.gz", lambda b: b"\x00\x00\x08\x03" + b[4:], "magic"),
        ("train-images-idx3-ubyte.gz", lambda b: b[:-784], "header announces"),
        ("t10k-labels-idx1-ubyte.gz", lambda b: b + b"\x00", "header announces"),
        ("train-labels-idx1-ubyte.gz", lambda b: b[:5], "shorter than the IDX header"),
    ],
    ids=["images-magic", "labels-magic", "short-data", "extra-data", "short-header"],
)
def test_idx_defects_are_named(tmp_path, name, edit, message):
    write_idx(tmp_path)
    _rewrite(tmp_path / name, edit)
    with pytest.raises(DataError, match=message) as err:
        load_dataset(f"idx:{tmp_path}")
    assert str(tmp_path / name) in str(err.value)


def test_idx_cut_gzip_stream_is_named(tmp_path):
    write_idx(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(DataError, match="gzip") as err:
        load_dataset(f"idx:{tmp_path}")
    assert str(path) in str(err.value)


def test_idx_image_and_label_counts_must_agree(tmp_path):
    write_idx(tmp_path)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    header = np.array([2049, 99], dtype=">u4").tobytes()
    labels.write_bytes(gzip.compress(header + bytes(99)))
    with pytest.raises(DataError, match="100 images but .* 99 labels"):
        load_dataset(f"idx:{tmp_path}")


def test_idx_labels_out_of_range(tmp_path):
    write_idx(tmp_path)
    _rewrite(tmp_path / "t10k-labels-idx1-ubyte.gz", lambda b: b[:-1] + b"\x0a")
    with pytest.raises(DataError, match="labels must be in"):
        load_dataset(f"idx:{tmp_path}")


def test_unknown_dataset_lists_the_known_ones():
    with pytest.raises(DataError, match="digits.*mnist.*idx"):
        load_dataset("cifar10")
    with pytest.raises(DataError, match="needs a directory"):
        load_dataset("idx:")


def test_digits_split_is_fixed_and_stratified(digits):
    assert digits.name == "digits"
    assert (len(digits.train), len(digits.test)) == (1347, 450)
    assert digits.image_shape == (1, 8, 8)
    assert digits.train.x.dtype == np.float32
    assert digits.train.x.min() == 0.0 and digits.train.x.max() == 1.0
    assert digits.train.ids[12] == "digits-train-00012"
    assert digits.test.ids[-1] == "digits-test-00449"
    all_y = np.concatenate([digits.train.y, digits.test.y])
    test_share = np.bincount(digits.test.y) / np.bincount(all_y)
    assert np.all(np.abs(test_share - 0.25) < 0.02)
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.train.x, digits.train.x)
    np.testing.assert_array_equal(again.test.ids, digits.test.ids)
    pd.testing.assert_frame_equal(again.manifest, digits.manifest)


def test_digits_are_sklearns_digits(digits):
    from sklearn.datasets import load_digits

    source = load_digits()
    all_x = np.concatenate([digits.train.x, digits.test.x]).reshape(-1, 64) * 16
    assert sorted(map(bytes, all_x.astype(np.uint8))) == sorted(
        map(bytes, source.data.astype(np.uint8))
    )


def test_with_train_replaces_only_the_training_split(digits):
    smaller = digits.train.take(np.arange(10))
    manifest = digits.manifest.iloc[:10]
    replaced = digits.with_train(smaller, manifest)
    assert len(replaced.train) == 10 and replaced.test is digits.test
    assert replaced.manifest is manifest and len(digits.train) == 1347
    assert isinstance(replaced.train, Samples)
