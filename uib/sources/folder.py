"""`folder:DIR`: images in the ImageFolder layout, with an optional manifest of attributes.

    DIR/train/<class>/**/*.png|.jpg|.jpeg     training images, one folder per class
    DIR/test/<class>/**/*.png|.jpg|.jpeg      test images
    DIR/manifest.csv  or  DIR/manifest.parquet   optional: one row per image

Classes are the class-folder names of both splits, sorted: class index k is the k-th name
(torchvision's ImageFolder rule), and the names are kept as `Dataset.class_names`. A class
folder without images, an image directly in `train/` or `test/`, and any other folder in DIR
(`val/`: only train and test are splits) are refused. Files of other kinds and hidden files are
ignored.

Images are decoded with Pillow. Grey or colour is the image's mode, not its pixels: when all
are greyscale (modes 1, L, LA, I;16, I) the data has one channel; when any has another mode
(RGB, RGBA, P palette, CMYK, ...), every image is converted to RGB (three channels; alpha is
dropped). All images must have one size. Values are float32 in [0, 1] (8-bit / 255, 16-bit
/ 65535), shape N×C×H×W.

Sample ids — the one rule, `sample_id_of`: an image's id is its path relative to DIR with `/`
separators, e.g. `train/cat/0001.png`, unless the manifest gives it another. The manifest joins
on its `path` column (a path relative to DIR) when it has one, otherwise on its `sample_id`
column, which then must be that relative path. Its `sample_id` column, when present, gives the
ids. Every image needs exactly one row and every row exactly one image: an image without a row
or a row without an image is refused, since attributes silently missing would make a deletion
by attribute (`--where source=faulty`) silently miss samples. The other columns are the
attributes, typed as `uib.sources.tables` says; `split`, `label` and `original_label` come from
the folders and may not appear in the manifest.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from uib.dataset import CORE_COLUMNS, SPLITS, SourceData
from uib.samples import DataError, Samples
from uib.sources.registry import source
from uib.sources.tables import read_table

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_NAMES = ("manifest.csv", "manifest.parquet")
GREY_MODES = ("1", "L", "LA")
DEEP_GREY_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")  # 16-bit grey PNGs
KEY_COLUMNS = ("sample_id", "path")


def sample_id_of(relpath: PurePosixPath) -> str:
    """The id of the image at `relpath` (relative to DIR) when no manifest names it."""
    return relpath.as_posix()


@source(
    "folder",
    "folder:<dir>",
    "images in DIR/{train,test}/<class>/, attributes in DIR/manifest.csv|.parquet",
    "a directory",
)
def read_folder(arg: str, data_dir: Path | None) -> SourceData:
    root = Path(arg)
    if not root.is_dir():
        raise DataError(f"folder {root}: not a directory")
    listed = list_images(root)
    classes = sorted({name for split in listed.values() for _, name in split})
    relpaths = [rel for split in SPLITS for rel, _ in listed[split]]
    x = decode_images(root, relpaths)
    ids, attributes = join_manifest(root, relpaths)
    samples, start = {}, 0
    for split in SPLITS:
        n = len(listed[split])
        y = np.array([classes.index(name) for _, name in listed[split]], dtype=np.int64)
        samples[split] = Samples(x[start : start + n], y, ids[start : start + n])
        start += n
    return SourceData(samples["train"], samples["test"], attributes, tuple(classes))


def _visible(path: Path) -> bool:
    return not path.name.startswith(".")


def list_images(root: Path) -> dict[str, list[tuple[PurePosixPath, str]]]:
    """{split: [(path relative to root, class name)]}, sorted by class, then by path."""
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and _visible(p))
    unknown = [name for name in folders if name not in SPLITS]
    if unknown:
        raise DataError(
            f"folder {root}: unknown split folders {unknown}; the splits are train and test"
        )
    listed = {}
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(
                f"folder {root}: no {split}/ folder; need train/ and test/, one folder per class"
            )
        loose = [p.name for p in split_dir.iterdir() if p.is_file() and _is_image(p)]
        if loose:
            raise DataError(
                f"folder {split_dir}: images outside a class folder, e.g. {sorted(loose)[:3]}"
            )
        classes = sorted(p for p in split_dir.iterdir() if p.is_dir() and _visible(p))
        if not classes:
            raise DataError(f"folder {split_dir}: no class folders (expected {split}/<class>/)")
        listed[split] = []
        for class_dir in classes:
            images = sorted(
                PurePosixPath(p.relative_to(root).as_posix())
                for p in class_dir.rglob("*")
                if p.is_file() and _is_image(p) and all(map(_visible, p.relative_to(root).parents))
            )
            if not images:
                raise DataError(
                    f"folder {class_dir}: class folder without images ({', '.join(IMAGE_SUFFIXES)})"
                )
            listed[split] += [(rel, class_dir.name) for rel in images]
    return listed


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES and _visible(path)


def decode_image(path: Path) -> tuple[np.ndarray, bool]:
    """(float32 pixels in [0, 1], (H, W) or (H, W, 3); whether the image is in colour)."""
    from PIL import Image  # only folder data needs Pillow

    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode in GREY_MODES:
                return np.asarray(image.convert("L"), np.float32) / 255, False
            if mode in DEEP_GREY_MODES:
                return np.asarray(image, np.float32) / 65535, False
            if mode != "F":
                return np.asarray(image.convert("RGB"), np.float32) / 255, True
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{path}: cannot decode the image ({err})") from err
    raise DataError(f"{path}: floating-point images (mode F) are not supported")


def decode_images(root: Path, relpaths: list[PurePosixPath]) -> np.ndarray:
    """N×C×H×W float32 of the images at `relpaths`: one channel if all are grey, else RGB."""
    pixels, colour, first = [], False, None
    for rel in relpaths:
        path = root / rel
        array, is_colour = decode_image(path)
        colour |= is_colour
        if first is None:
            first = (rel, array.shape[:2])
        elif array.shape[:2] != first[1]:
            (h, w), (h0, w0) = array.shape[:2], first[1]
            raise DataError(
                f"{path}: image is {w}×{h} pixels, but {root / first[0]} is {w0}×{h0}; "
                "all images must have one size"
            )
        pixels.append(array)
    channels = 3 if colour else 1
    out = np.empty((len(pixels), channels, *first[1]), np.float32)
    for k, array in enumerate(pixels):
        out[k] = array.transpose(2, 0, 1) if array.ndim == 3 else array
    return np.clip(out, 0.0, 1.0)


def _manifest_path(root: Path) -> Path | None:
    found = [root / name for name in MANIFEST_NAMES if (root / name).is_file()]
    if len(found) > 1:
        raise DataError(f"folder {root}: both {' and '.join(MANIFEST_NAMES)}; keep one")
    return found[0] if found else None


def join_manifest(
    root: Path, relpaths: list[PurePosixPath]
) -> tuple[np.ndarray, pd.DataFrame | None]:
    """(sample ids, attribute table) of the images at `relpaths`, in their order."""
    derived = [sample_id_of(rel) for rel in relpaths]
    path = _manifest_path(root)
    if path is None:
        return np.array(derived, dtype=str), None
    table = read_table(path, KEY_COLUMNS)
    key = next((c for c in ("path", "sample_id") if c in table.columns), None)
    if key is None:
        raise DataError(f"{path}: needs a path or a sample_id column to match its rows to images")
    reserved = [c for c in table.columns if c in CORE_COLUMNS and c != "sample_id"]
    if reserved:
        raise DataError(
            f"{path}: columns {reserved} come from the folder layout; remove them from the manifest"
        )
    for column in KEY_COLUMNS:
        if column in table.columns and table[column].isna().any():
            rows = np.flatnonzero(table[column].isna().to_numpy())[:5]
            raise DataError(f"{path}: empty {column} in rows {(rows + 2).tolist()}")
    if key == "path":
        table["path"] = [sample_id_of(PurePosixPath(p.replace("\\", "/"))) for p in table["path"]]
    keys = table[key].to_numpy(dtype=str)
    for column in KEY_COLUMNS:
        if column in table.columns and table[column].duplicated().any():
            twice = table.loc[table[column].duplicated(), column].unique()[:5].tolist()
            raise DataError(f"{path}: duplicate {column} {twice}")
    no_image = np.setdiff1d(keys, derived)
    if no_image.size:
        raise DataError(
            f"{path}: {no_image.size} rows name no image (by {key}), e.g. {no_image[:5].tolist()}"
        )
    no_row = np.setdiff1d(derived, keys)
    if no_row.size:
        raise DataError(
            f"{path}: {no_row.size} images have no row (by {key}), e.g. {no_row[:5].tolist()}"
        )
    rows = table.set_index(key).loc[derived].reset_index()
    ids = rows["sample_id"].to_numpy(dtype=str) if "sample_id" in rows else np.array(derived)
    attributes = rows.drop(columns=[c for c in KEY_COLUMNS if c in rows.columns])
    return ids.astype(str), attributes
