"""benchmarks/device/bundle.py: the compact dataset a GPU machine without network reads."""

import importlib.util
import os
import pathlib

import numpy as np
import tensorflow_datasets as tfds
from array_record.python import array_record_module

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _bundle_module():
    path = ROOT / "benchmarks" / "device" / "bundle.py"
    spec = importlib.util.spec_from_file_location("device_bundle", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_repacked_cifar10_reads_the_same_examples_and_is_smaller(tmp_path):
    bundle = _bundle_module()
    data_dir = os.environ["TFDS_DATA_DIR"]  # The test datasets (conftest) or the full ones.
    target = tmp_path / "tensorflow_datasets"
    bundle.repack_dataset(os.path.join(data_dir, "cifar10"), str(target / "cifar10"), 64, 19)

    for split in ("train", "test"):
        original = tfds.data_source("cifar10", split=split, data_dir=data_dir, download=False)
        repacked = tfds.data_source("cifar10", split=split, data_dir=str(target), download=False)
        assert len(repacked) == len(original)
        for i in (0, len(original) // 2, len(original) - 1):
            assert np.array_equal(repacked[i]["image"], original[i]["image"])
            assert repacked[i]["label"] == original[i]["label"]
    records = list(target.rglob("*.array_record-*"))
    assert records
    for path in records:
        reader = array_record_module.ArrayRecordReader(str(path))
        assert "group_size:64" in reader.writer_options_string()
    assert bundle.folder_bytes(str(target)) < bundle.folder_bytes(os.path.join(data_dir, "cifar10"))
