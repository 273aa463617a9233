"""Writes the small real subsets in tests/data/ from a prepared TFDS data directory.

    TFDS_DATA_DIR=../shared/data/tensorflow_datasets python tests/data/make_subsets.py

Each subset is the first rows of the dataset's splits, in the dataset's original
distribution format (what `jaxdiff.prepare` reads), so the tests prepare them
with the same code that prepares a download.
"""

import gzip
import io
import os
import pathlib
import tarfile

import numpy as np
import tensorflow_datasets as tfds

from jaxdiff import prepare

HERE = pathlib.Path(__file__).parent
# Rows per split: enough for the tests' largest slices (a classifier trains on
# train[:1024] and is scored on test[:500]; the other datasets serve test[:200]).
SIZES = {"mnist": (1024, 512), "fashion_mnist": (512, 256), "cifar10": (320, 256)}


def rows(name: str, split: str, num: int) -> tuple[np.ndarray, np.ndarray]:
    source = tfds.data_source(name, split=f"{split}[:{num}]", data_dir=os.environ["TFDS_DATA_DIR"])
    examples = source.__getitems__(range(len(source)))
    images = np.stack([ex["image"] for ex in examples]).astype(np.uint8)
    return images, np.asarray([ex["label"] for ex in examples], np.uint8)


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    # mtime=0: the same subset gives the same bytes.
    return gzip.compress(header + array.tobytes(), mtime=0)


def write_idx_dataset(name: str) -> None:
    folder = HERE / name
    folder.mkdir(exist_ok=True)
    for split, num in zip(("train", "test"), SIZES[name], strict=True):
        images, labels = rows(name, split, num)
        (folder / prepare.MNIST_FILES[f"{split}_images"]).write_bytes(idx_bytes(images[..., 0]))
        (folder / prepare.MNIST_FILES[f"{split}_labels"]).write_bytes(idx_bytes(labels))


def write_cifar10() -> None:
    folder = HERE / "cifar10"
    folder.mkdir(exist_ok=True)
    members = {}
    for split, num in zip(("train", "test"), SIZES["cifar10"], strict=True):
        images, labels = rows("cifar10", split, num)
        records = np.concatenate(
            [labels[:, None], images.transpose(0, 3, 1, 2).reshape(num, -1)], axis=1
        )
        # The archive's layout: the training rows in five batches, the test rows in one.
        parts = np.array_split(records, len(prepare.CIFAR10_MEMBERS[split]))
        for member, part in zip(prepare.CIFAR10_MEMBERS[split], parts, strict=True):
            members[member] = part.tobytes()
    names = tfds.builder("cifar10", data_dir=os.environ["TFDS_DATA_DIR"]).info.features["label"].names
    members[prepare.CIFAR10_MEMBERS["label_names"]] = ("\n".join(names) + "\n\n").encode()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, payload in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    (folder / prepare.CIFAR10_ARCHIVE).write_bytes(gzip.compress(buffer.getvalue(), mtime=0))


if __name__ == "__main__":
    write_idx_dataset("mnist")
    write_idx_dataset("fashion_mnist")
    write_cifar10()
