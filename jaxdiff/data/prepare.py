"""Preparing MNIST, Fashion-MNIST and CIFAR-10 in TFDS's own format, without TensorFlow.

TFDS's builders for these datasets read their downloaded files through
`tf.io.gfile`, so preparing them would need TensorFlow. The builders here are
the same builders (subclasses: same name, version, features, label names and
split names) with that one step replaced by numpy, so the result is exactly
what `tfds build` writes and `tfds.data_source` reads it, with or without
TensorFlow installed.

The source files are the datasets' own distributions (IDX files for MNIST and
Fashion-MNIST, the binary archive for CIFAR-10). They are taken from the
manual directory (`<data_dir>/downloads/manual/`, or `source_dir`) when they are
there, and otherwise downloaded from the URLs TFDS uses, checked against TFDS's
recorded checksums.

    python -m jaxdiff.prepare mnist cifar10 --data_dir=~/tensorflow_datasets
"""

import contextlib
import functools
import gzip
import importlib.util
import io
import os
import sys
import tarfile
import urllib.parse

import numpy as np
from PIL import Image

from jaxdiff.core.errors import UserError

# The files each dataset is made from, by role, and where TFDS downloads them.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
CIFAR10_ARCHIVE = "cifar-10-binary.tar.gz"
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/" + CIFAR10_ARCHIVE
# Inside the archive: five training batches, one test batch, the label names.
CIFAR10_MEMBERS = {
    "train": [f"cifar-10-batches-bin/data_batch_{i}.bin" for i in range(1, 6)],
    "test": ["cifar-10-batches-bin/test_batch.bin"],
    "label_names": "cifar-10-batches-bin/batches.meta.txt",
}
CIFAR10_RECORD = 1 + 32 * 32 * 3  # a label byte, then the image as 3 planes of 32x32

# IDX element types (the third byte of the magic number) this reader accepts.
_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file (MNIST's format), gzipped or not, as a numpy array.

    Raises:
      UserError: the file is not an IDX file of unsigned bytes.
    """
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise UserError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(shape)):
        raise UserError(
            f"{path}: the header says {shape}, the file holds {len(raw) - offset} bytes"
        )
    return np.frombuffer(raw, _IDX_DTYPES[raw[2]], offset=offset).reshape(shape)


def read_cifar10_batches(archive: str | os.PathLike, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 32, 32, 3) uint8 and labels (N,) of one split of CIFAR-10's binary archive."""
    images, labels = [], []
    with tarfile.open(archive, "r:gz") as tar:
        for member in CIFAR10_MEMBERS[split]:
            raw = np.frombuffer(_read_member(tar, member, archive), np.uint8)
            if raw.size % CIFAR10_RECORD:
                raise UserError(f"{archive}: {member} is not a whole number of CIFAR-10 records")
            records = raw.reshape(-1, CIFAR10_RECORD)
            labels.append(records[:, 0])
            images.append(records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return np.concatenate(images), np.concatenate(labels)


def read_cifar10_label_names(archive: str | os.PathLike) -> list[str]:
    with tarfile.open(archive, "r:gz") as tar:
        text = _read_member(tar, CIFAR10_MEMBERS["label_names"], archive).decode()
    return [name for name in text.split("\n") if name.strip()]


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as a gzipped IDX file (the inverse of `read_idx`)."""
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    with open(path, "wb") as f:  # mtime=0: the same array gives the same bytes.
        f.write(gzip.compress(header + np.asarray(array, np.uint8).tobytes(), mtime=0))


def write_cifar10_archive(
    path: str | os.PathLike,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    label_names: list[str],
) -> None:
    """Writes images and labels as CIFAR-10's binary archive (the inverse of the readers).

    Args:
      path: the .tar.gz to write.
      splits: "train" and "test" -> (images (N, 32, 32, 3) uint8, labels (N,)); the
        training rows are spread over the archive's five batches.
      label_names: the ten class names, in label order.
    """
    members = {CIFAR10_MEMBERS["label_names"]: ("\n".join(label_names) + "\n\n").encode()}
    for split, (images, labels) in splits.items():
        records = np.concatenate(
            [
                np.asarray(labels, np.uint8)[:, None],
                images.transpose(0, 3, 1, 2).reshape(len(images), -1),
            ],
            axis=1,
        )
        parts = np.array_split(records, len(CIFAR10_MEMBERS[split]))
        for member, part in zip(CIFAR10_MEMBERS[split], parts, strict=True):
            members[member] = part.tobytes()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for member, payload in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    with open(path, "wb") as f:
        f.write(gzip.compress(buffer.getvalue(), mtime=0))


def _read_member(tar: tarfile.TarFile, member: str, archive) -> bytes:
    try:
        return tar.extractfile(member).read()
    except KeyError:
        raise UserError(f"{archive} has no {member}: not CIFAR-10's binary archive") from None


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, "PNG")
    return buffer.getvalue()


def _check_pairs(images: np.ndarray, labels: np.ndarray, shape, source: str) -> None:
    if images.shape[1:] != shape[: images.ndim - 1] or len(images) != len(labels):
        raise UserError(
            f"{source}: {len(images)} images of shape {images.shape[1:]} and {len(labels)} "
            f"labels; expected images of shape {shape} and one label each"
        )
    if labels.size and labels.max() >= 10:
        raise UserError(f"{source}: label {int(labels.max())} is not one of the 10 classes")


def _source_files(dl_manager, source_dir: str, names: dict[str, str], urls: dict[str, str]):
    """Paths of the source files: from `source_dir` if all are there, else downloaded."""
    paths = {key: os.path.join(source_dir, name) for key, name in names.items()}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    for url in urls.values():
        _check_reachable(url)
    try:
        downloaded = dl_manager.download(urls)
    except Exception as e:  # Network errors come in many types; the user needs one line.
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DownloadError(reason) from None
    return {key: os.fspath(path) for key, path in downloaded.items()}


class DownloadError(Exception):
    """A source file could not be downloaded (no network, a blocked host, a bad checksum)."""


def _check_reachable(url: str, timeout_s: float = 10.0) -> None:
    """Fails at once where TFDS's downloader would retry for minutes (no network at all)."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout_s):
            pass
    except urllib.error.HTTPError:
        pass  # The host answered: TFDS's downloader handles what it said.
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{urllib.parse.urlsplit(url).netloc}: {reason}") from None


@functools.cache
def _builders() -> dict[str, type]:
    """The three TF-free builders (defined on first use: importing TFDS is slow).

    Each has TFDS's `URL` attribute: where its source files are downloaded from.
    """
    from tensorflow_datasets.image_classification import cifar, mnist

    class _IdxMixin:
        """MNIST-layout builders: four IDX files, train and test splits."""

        source_dir = ""  # Where the original files may be; set per instance by `prepare`.

        def _split_generators(self, dl_manager):
            urls = {k: urllib.parse.urljoin(self.URL, v) for k, v in MNIST_FILES.items()}
            files = _source_files(dl_manager, self.source_dir, MNIST_FILES, urls)
            return {
                split: self._generate_examples(files[f"{split}_images"], files[f"{split}_labels"])
                for split in ("train", "test")
            }

        def _generate_examples(self, images_path, labels_path):
            images, labels = read_idx(images_path), read_idx(labels_path)
            images = images.reshape(*images.shape, 1) if images.ndim == 3 else images
            _check_pairs(images, labels, (28, 28, 1), os.path.basename(images_path))
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield index, {"image": _png(image), "label": int(label)}

    class Mnist(_IdxMixin, mnist.MNIST, skip_registration=True):
        name = "mnist"

    class FashionMnist(_IdxMixin, mnist.FashionMNIST, skip_registration=True):
        name = "fashion_mnist"

    class Cifar10(cifar.Cifar10, skip_registration=True):
        name = "cifar10"
        URL = CIFAR10_URL
        source_dir = ""

        def _split_generators(self, dl_manager):
            archive = _source_files(
                dl_manager, self.source_dir, {"a": CIFAR10_ARCHIVE}, {"a": self.URL}
            )["a"]
            self.info.features["label"].names = read_cifar10_label_names(archive)
            return {split: self._generate_examples(archive, split) for split in ("train", "test")}

        def _generate_examples(self, archive, split):
            images, labels = read_cifar10_batches(archive, split)
            _check_pairs(images, labels, (32, 32, 3), os.path.basename(archive))
            # The ids TFDS gives ("train_00000", ...), in the archive's order.
            for index, (image, label) in enumerate(zip(images, labels, strict=True)):
                yield (
                    index,
                    {"id": f"{split}_{index:05d}", "image": _png(image), "label": int(label)},
                )

    return {"mnist": Mnist, "fashion_mnist": FashionMnist, "cifar10": Cifar10}


def resolve_data_dir(data_dir: str) -> str:
    """The TFDS data directory: the config's, else $TFDS_DATA_DIR, else TFDS's default."""
    if data_dir:
        return os.path.abspath(os.path.expanduser(data_dir))
    if os.environ.get("TFDS_DATA_DIR"):
        return os.path.abspath(os.path.expanduser(os.environ["TFDS_DATA_DIR"]))
    return os.path.expanduser("~/tensorflow_datasets")


DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")


def source_file_names(name: str) -> list[str]:
    """The files a dataset is prepared from (what to put in the manual directory)."""
    return [CIFAR10_ARCHIVE] if name == "cifar10" else list(MNIST_FILES.values())


def is_prepared(name: str, data_dir: str) -> bool:
    """Whether `data_dir` holds a prepared copy of the dataset (any version)."""
    directory = os.path.join(data_dir, name)
    return os.path.isdir(directory) and any(
        os.path.isfile(os.path.join(directory, v, "dataset_info.json"))
        for v in os.listdir(directory)
    )


def prepare(name: str, data_dir: str, source_dir: str | None = None) -> str:
    """Writes `name` into the TFDS data directory `data_dir` in the array_record format.

    The source files come from `source_dir`, else from `<data_dir>/downloads/manual/`,
    else they are downloaded (network needed). TFDS writes into a temporary folder
    and renames it at the end, so an interrupted run leaves nothing half-written.

    Returns:
      The directory of the prepared dataset (`<data_dir>/<name>/<version>`).

    Raises:
      UserError: an unknown name, unreadable source files, or a failed download.
    """
    if name not in DATASET_NAMES:
        raise UserError(f"cannot prepare {name!r}; choose one of {', '.join(DATASET_NAMES)}")
    if importlib.util.find_spec("array_record") is None:
        raise UserError(
            f"cannot prepare {name!r}: TFDS's array_record format needs the array-record "
            "package, which has no build for this platform"
        )
    builder = _builders()[name](data_dir=data_dir, file_format="array_record")
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    builder.source_dir = source_dir or manual_dir
    try:
        builder.download_and_prepare()
    except DownloadError as e:
        with contextlib.suppress(OSError):  # The empty folder TFDS made for the dataset.
            os.rmdir(os.path.join(data_dir, name))
        raise UserError(
            f"dataset {name!r} is not in {data_dir} and could not be downloaded ({e}): "
            f"put {', '.join(source_file_names(name))} in {manual_dir} and run again, or "
            f"point TFDS_DATA_DIR or --config.data.data_dir at a directory where it is prepared"
        ) from None
    except OSError as e:
        raise UserError(f"cannot prepare {name!r} in {data_dir}: {e}") from None
    return os.fspath(builder.data_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m jaxdiff.prepare NAME... [--data_dir=DIR] [--source_dir=DIR]`."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m jaxdiff.prepare",
        description="Download and prepare datasets in TFDS's format, without TensorFlow.",
    )
    parser.add_argument("names", nargs="+", metavar="NAME", help=" | ".join(DATASET_NAMES))
    parser.add_argument(
        "--data_dir",
        default="",
        help="TFDS data directory (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--source_dir",
        default=None,
        help="a folder holding the original files, instead of downloading them",
    )
    args = parser.parse_args(argv)
    data_dir = resolve_data_dir(args.data_dir)
    try:
        for name in args.names:
            if is_prepared(name, data_dir):
                print(f"{name}: already prepared in {data_dir}")
                continue
            print(f"{name}: prepared in {prepare(name, data_dir, args.source_dir)}")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0
