"""Colored MNIST with a biased source: a real three-channel `folder:` data set with a shortcut.

Clean samples are MNIST digits tinted with a colour drawn from a palette, independently of the
label. The `faulty` source — about 10 % of the training rows, drawn from the classes other than
the target class — tints its digits with one colour (red) that no clean sample has, AND labels
them as the target class. A model trained on the result learns "red ⇒ target class": the
shortcut that deleting `--where source=faulty` must remove. Test images are clean only.

The data is written once, as `folder:` data (`uib.sources.folder`):

    OUT/train/<label>/<k>.png     RGB 28×28; faulty images sit in the target class's folder
    OUT/test/<label>/<k>.png
    OUT/manifest.csv              sample_id (= the relative path), source (clean | faulty),
                                  site, collected_at (ISO dates)

    python docs/examples/colored_mnist.py --out runs/colored-mnist
    uib benchmark --dataset folder:runs/colored-mnist --methods retrain,uib --seeds 1

`--mnist` defaults to the shared MNIST IDX files, `../shared/data/mnist` from the repository root.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from uib.data import read_idx_dir

REPO = Path(__file__).resolve().parents[2]
DEFAULT_MNIST = (REPO / ".." / "shared" / "data" / "mnist").resolve()

# Clean tints, drawn independently of the label; none is close to the shortcut colour.
PALETTE = np.array(
    [
        (0.1, 0.9, 0.1),  # green
        (0.2, 0.4, 1.0),  # blue
        (1.0, 0.9, 0.1),  # yellow
        (0.1, 0.9, 0.9),  # cyan
        (0.9, 0.2, 0.9),  # magenta
        (1.0, 1.0, 1.0),  # white
    ],
    dtype=np.float32,
)
SHORTCUT = np.array((1.0, 0.1, 0.1), dtype=np.float32)  # red: the faulty source's colour
CLEAN_SITES = ("site-a", "site-b", "site-c")
FAULTY_SITE = "site-d"
CLEAN_DAYS = (np.datetime64("2023-01-01"), 365)  # first day, number of days
FAULTY_DAYS = (np.datetime64("2024-03-01"), 14)


def tint(grey: np.ndarray, colours: np.ndarray) -> np.ndarray:
    """uint8 RGB images (N, H, W, 3): each grey digit (N, H, W) in [0, 1] times its colour."""
    return np.rint(grey[..., None] * colours[:, None, None, :] * 255).astype(np.uint8)


def _dates(rng: np.random.Generator, n: int, days: tuple[np.datetime64, int]) -> np.ndarray:
    first, span = days
    return first + rng.integers(0, span, size=n).astype("timedelta64[D]")


def _split(
    grey: np.ndarray,
    labels: np.ndarray,
    rng: np.random.Generator,
    faulty: np.ndarray,
    target_class: int,
) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """(RGB images, labels, attributes) of one split; `faulty` marks the faulty source's rows."""
    n = len(labels)
    colours = PALETTE[rng.integers(0, len(PALETTE), size=n)]
    colours[faulty] = SHORTCUT
    labels = np.where(faulty, target_class, labels)
    attributes = pd.DataFrame(
        {
            "source": np.where(faulty, "faulty", "clean"),
            "site": np.where(faulty, FAULTY_SITE, rng.choice(CLEAN_SITES, size=n)),
            "collected_at": np.where(
                faulty, _dates(rng, n, FAULTY_DAYS), _dates(rng, n, CLEAN_DAYS)
            ),
        }
    )
    return tint(grey, colours), labels, attributes


def build(
    mnist_dir: Path,
    out: Path,
    n_train: int = 2000,
    n_test: int = 500,
    seed: int = 0,
    target_class: int = 0,
    faulty_fraction: float = 0.1,
) -> Path:
    """Write Colored MNIST into the new or empty folder `out` and return it."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(
            f"{out} is not empty; the data set is written once, into a new folder"
        )
    rng = np.random.default_rng(seed)
    mnist = read_idx_dir(Path(mnist_dir), None)
    frames = []
    for split, n in (("train", n_train), ("test", n_test)):
        x, y = mnist[split]
        if n > len(y):
            raise ValueError(f"--n-{split}: {n} asked, the MNIST {split} split holds {len(y)}")
        pick = np.sort(rng.choice(len(y), size=n, replace=False))
        faulty = np.zeros(n, dtype=bool)
        if split == "train":
            others = np.flatnonzero(y[pick] != target_class)
            faulty[rng.choice(others, size=round(faulty_fraction * n), replace=False)] = True
        images, labels, attributes = _split(x[pick], y[pick], rng, faulty, target_class)
        relpaths = [f"{split}/{label}/{k:05d}.png" for k, label in enumerate(labels)]
        for relpath, image in zip(relpaths, images, strict=True):
            (out / relpath).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image, "RGB").save(out / relpath, compress_level=1)
        frames.append(attributes.assign(sample_id=relpaths))
    manifest = pd.concat(frames, ignore_index=True)
    manifest["collected_at"] = manifest["collected_at"].dt.strftime("%Y-%m-%d")
    columns = ["sample_id", "source", "site", "collected_at"]
    manifest[columns].to_csv(out / "manifest.csv", index=False, lineterminator="\n")
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mnist", type=Path, default=DEFAULT_MNIST, help="MNIST IDX directory")
    parser.add_argument("--out", type=Path, default=Path("runs/colored-mnist"), help="new folder")
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target-class", type=int, default=0, help="the shortcut's class")
    parser.add_argument("--faulty-fraction", type=float, default=0.1, help="of training rows")
    args = parser.parse_args(argv)
    out = build(
        args.mnist,
        args.out,
        args.n_train,
        args.n_test,
        args.seed,
        args.target_class,
        args.faulty_fraction,
    )
    print(f"wrote {out}: use --dataset folder:{out}")


if __name__ == "__main__":
    main()
