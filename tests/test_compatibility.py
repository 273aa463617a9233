"""Runs written by earlier versions of jaxdiff load, sample the same and resume.

tests/data/run_7ee3d19 is a tiny MNIST run and its samples, written by the code
of commit 7ee3d19 (see make_run.py there). Networks' parameters and outputs from
before `jaxdiff.ops` are checked in test_ops.py.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest

import jaxdiff
from jaxdiff.training.score import train_and_evaluate

from .conftest import load_script

RUN = pathlib.Path(__file__).parent / "data" / "run_7ee3d19"


def make_run():
    return load_script(RUN / "make_run.py")


@pytest.fixture
def old_run(tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(RUN / "workdir", workdir)
    return workdir


def test_a_run_written_before_samples_the_same_images(old_run):
    pipeline = jaxdiff.load(str(old_run))
    assert pipeline.step == 2
    images, labels = pipeline.sample(**make_run().SAMPLE)
    with np.load(RUN / "samples.npz") as saved:
        if jax.__version_info__ >= (0, 10, 2):
            np.testing.assert_array_equal(images, saved["images"])
        else:  # An older XLA may round a sample's last bit otherwise: one grey level.
            np.testing.assert_allclose(images.astype(int), saved["images"], atol=1)
        np.testing.assert_array_equal(labels, saved["labels"])


@pytest.mark.slow  # it trains: the full suite's, not the fast tier's
def test_a_run_written_before_resumes(old_run):
    config = jaxdiff.read_config(str(old_run))
    config.training.num_steps = 4
    state = train_and_evaluate(config, str(old_run), allow_config_change=True)
    assert int(state.step) == 4
    records = [json.loads(line) for line in (old_run / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2, 3, 4]  # Resumed at 3, the records before kept.
    assert sorted(p.name for p in (old_run / "checkpoints").iterdir()) == ["2", "4"]
