"""Writes the small real subsets in tests/data/ from a prepared TFDS data directory.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets python tests/data/make_subsets.py

Each subset is the first rows of the dataset's splits, in the dataset's original
distribution format (what `jaxdiff.data.prepare` reads), so the tests prepare them
with the same code that prepares a download.
"""

import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from jaxdiff.data import prepare

HERE = pathlib.Path(__file__).parent
# Rows per split: enough for the tests' largest slices (a classifier trains on
# train[:1024] and is scored on test[:500]; the other datasets serve test[:200]).
SIZES = {"mnist": (1024, 512), "fashion_mnist": (512, 256), "cifar10": (320, 256)}


def rows(name: str, split: str, num: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The first `num` rows (all if None) of a split of a prepared dataset."""
    sliced = split if num is None else f"{split}[:{num}]"
    source = tfds.data_source(name, split=sliced, data_dir=os.environ["TFDS_DATA_DIR"])
    examples = source.__getitems__(range(len(source)))
    images = np.stack([ex["image"] for ex in examples]).astype(np.uint8)
    return images, np.asarray([ex["label"] for ex in examples], np.uint8)


def write_source_files(name: str, folder: pathlib.Path, sizes=(None, None)) -> None:
    """Writes `name`'s rows in its original distribution format into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    splits = {
        split: rows(name, split, num) for split, num in zip(("train", "test"), sizes, strict=True)
    }
    if name == "cifar10":
        builder = tfds.builder("cifar10", data_dir=os.environ["TFDS_DATA_DIR"])
        names = builder.info.features["label"].names
        prepare.write_cifar10_archive(folder / prepare.CIFAR10_ARCHIVE, splits, names)
        return
    for split, (images, labels) in splits.items():
        prepare.write_idx(folder / prepare.MNIST_FILES[f"{split}_images"], images[..., 0])
        prepare.write_idx(folder / prepare.MNIST_FILES[f"{split}_labels"], labels)


if __name__ == "__main__":
    for dataset, sizes in SIZES.items():
        write_source_files(dataset, HERE / dataset, sizes)
