"""Preparing the datasets without TensorFlow: from source files, by download, and the errors."""

import functools
import gzip
import http.server
import os
import shutil
import subprocess
import sys
import threading

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdiff.core.errors import UserError
from jaxdiff.data import prepare, tfds_reader

from .conftest import ROOT, TEST_DATA


def idx_file(path, array: np.ndarray, compress: bool = True) -> None:
    """Writes `array` (uint8) in the IDX format, as MNIST's files are written."""
    raw = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    raw += array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def examples(images: np.ndarray, labels: np.ndarray) -> list[tuple[int, bytes]]:
    """The examples as a sorted list: TFDS stores them in its own (shuffled) order."""
    return sorted(zip(labels.tolist(), [image.tobytes() for image in images], strict=True))


def read_all(name: str, split: str, data_dir) -> tuple[np.ndarray, np.ndarray]:
    return tfds_reader.load_split(name, split, str(data_dir), download=False)


@pytest.mark.parametrize("compress", [True, False])
def test_read_idx_returns_the_array_written(tmp_path, compress):
    array = np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5)
    idx_file(tmp_path / "x", array, compress)
    np.testing.assert_array_equal(prepare.read_idx(tmp_path / "x"), array)
    (tmp_path / "bad").write_bytes(b"PK\3\4 not an idx file")
    with pytest.raises(UserError, match="not an IDX file"):
        prepare.read_idx(tmp_path / "bad")
    idx_file(tmp_path / "short", array)
    (tmp_path / "short").write_bytes(gzip.decompress((tmp_path / "short").read_bytes())[:-1])
    with pytest.raises(UserError, match=r"the header says \(2, 3, 5\)"):
        prepare.read_idx(tmp_path / "short")


def test_prepared_from_made_idx_files_reads_back_exactly(tmp_path):
    """Fashion-MNIST from 24 made images: every example, TFDS's features and label names."""
    rng = np.random.default_rng(0)
    manual = tmp_path / "downloads" / "manual"
    manual.mkdir(parents=True)
    made = {}
    for split, num in (("train", 24), ("test", 12)):
        images = rng.integers(0, 256, (num, 28, 28), dtype=np.uint8)
        labels = np.arange(num, dtype=np.uint8) % 10
        idx_file(manual / prepare.MNIST_FILES[f"{split}_images"], images)
        idx_file(manual / prepare.MNIST_FILES[f"{split}_labels"], labels)
        made[split] = (images[..., None], labels)

    prepare.prepare("fashion_mnist", str(tmp_path))

    assert prepare.is_prepared("fashion_mnist", str(tmp_path))
    for split, (images, labels) in made.items():
        assert examples(*read_all("fashion_mnist", split, tmp_path)) == examples(images, labels)
    builder = tfds.builder("fashion_mnist", data_dir=str(tmp_path))
    assert builder.version == "3.0.1"
    assert builder.info.features["label"].names[9] == "Ankle boot"
    assert set(builder.info.features) == {"image", "label"}
    # The format data_source reads without TensorFlow.
    assert any(
        p.name.startswith("fashion_mnist-train.array_record") for p in builder.data_path.iterdir()
    )


def test_load_split_prepares_a_missing_dataset_on_first_use(tmp_path):
    shutil.copytree(TEST_DATA / "mnist", tmp_path / "downloads" / "manual")
    images, labels = tfds_reader.load_split(
        "mnist", "train", str(tmp_path)
    )  # download=True: prepares
    source_images = prepare.read_idx(TEST_DATA / "mnist" / prepare.MNIST_FILES["train_images"])
    source_labels = prepare.read_idx(TEST_DATA / "mnist" / prepare.MNIST_FILES["train_labels"])
    assert examples(images, labels) == examples(source_images[..., None], source_labels)


@pytest.fixture
def file_server():
    """Serves a folder over HTTP on the loopback address: a download with no network."""
    servers = []

    def serve(folder) -> str:
        handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}/"

    yield serve
    for server in servers:
        server.shutdown()


def test_download_and_prepare_cifar10(tmp_path, file_server, monkeypatch):
    """TFDS's downloader fetches the archive (the shipped subset), then it is prepared."""
    url = file_server(TEST_DATA / "cifar10") + prepare.CIFAR10_ARCHIVE
    monkeypatch.setattr(prepare._builders()["cifar10"], "URL", url)

    prepare.prepare("cifar10", str(tmp_path))

    archive = TEST_DATA / "cifar10" / prepare.CIFAR10_ARCHIVE
    for split in ("train", "test"):
        expected = prepare.read_cifar10_batches(archive, split)
        assert examples(*read_all("cifar10", split, tmp_path)) == examples(*expected)
    source = tfds.data_source("cifar10", split="test", data_dir=str(tmp_path))
    assert sorted(ex["id"] for ex in source)[:2] == [b"test_00000", b"test_00001"]
    names = tfds.builder("cifar10", data_dir=str(tmp_path)).info.features["label"].names
    assert names == prepare.read_cifar10_label_names(archive) and names[3] == "cat"


def test_download_and_prepare_mnist(tmp_path, file_server, monkeypatch):
    monkeypatch.setattr(prepare._builders()["mnist"], "URL", file_server(TEST_DATA / "mnist"))
    prepare.prepare("mnist", str(tmp_path))
    images = prepare.read_idx(TEST_DATA / "mnist" / prepare.MNIST_FILES["test_images"])
    labels = prepare.read_idx(TEST_DATA / "mnist" / prepare.MNIST_FILES["test_labels"])
    assert examples(*read_all("mnist", "test", tmp_path)) == examples(images[..., None], labels)


def test_no_network_is_one_line_naming_what_to_do(tmp_path, monkeypatch):
    # Port 1 on the loopback address: nothing listens, the connection is refused.
    monkeypatch.setattr(prepare._builders()["mnist"], "URL", "http://127.0.0.1:1/")
    with pytest.raises(UserError) as error:
        tfds_reader.load_split("mnist", "train", str(tmp_path))
    message = str(error.value)
    assert "\n" not in message and "could not be downloaded" in message
    assert str(tmp_path / "downloads" / "manual") in message
    assert all(name in message for name in prepare.MNIST_FILES.values())
    assert not prepare.is_prepared("mnist", str(tmp_path))
    assert not (tmp_path / "mnist").exists()  # nothing half-written left behind


def test_missing_dataset_without_download_names_the_command(tmp_path):
    with pytest.raises(UserError) as error:
        tfds_reader.load_split("cifar10", "train", str(tmp_path), download=False)
    message = str(error.value)
    assert f"python -m jaxdiff.prepare cifar10 --data_dir={tmp_path}" in message
    assert "\n" not in message and not (tmp_path / "cifar10").exists()


def test_command_line(tmp_path):
    def run(*args):
        return subprocess.run(
            [sys.executable, "-m", "jaxdiff.prepare", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TFDS_DATA_DIR": str(tmp_path)},
        )

    first = run("mnist", f"--source_dir={TEST_DATA / 'mnist'}")
    assert first.returncode == 0, first.stderr
    assert f"mnist: prepared in {tmp_path / 'mnist' / '3.0.1'}" in first.stdout
    again = run("mnist")
    assert again.returncode == 0 and "mnist: already prepared" in again.stdout
    wrong = run("svhn")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == (
        "error: cannot prepare 'svhn'; choose one of mnist, fashion_mnist, cifar10"
    )
