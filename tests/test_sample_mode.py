"""`--mode=sample` in batches (files written as it goes, resumable) and `--step`."""

import logging
import re

import numpy as np
import pytest
from jaxdiff.configs import get_config
from PIL import Image

import jaxdiff
from jaxdiff import pipeline as pipeline_module
from jaxdiff.commands.sample import run as sample_mode
from jaxdiff.core.errors import UserError
from jaxdiff.evaluation.evaluate import evaluate
from jaxdiff.pipeline import Pipeline

from .conftest import apply_overrides, tiny_cond_overrides, tiny_overrides
from .test_api import model_flags
from .test_cli import assert_one_line_error, run_main


def config_of(name, base, **sampling):
    """A tiny run's config with 3 sampler steps and these sampling fields."""
    overrides = {**base, "sampling.num_steps": 3}
    overrides |= {f"sampling.{field}": value for field, value in sampling.items()}
    return apply_overrides(get_config(name), overrides)


def fresh_stem(workdir, name):
    """The files of a sampling run, removed first: each test starts without them."""
    stem = workdir / "samples" / name
    for path in (stem.with_suffix(".npz"), stem.with_suffix(".png")):
        path.unlink(missing_ok=True)
    return stem


def batches_of(pipeline, per_batch, count, **settings):
    """Batch 0, 1, ..., count - 1 of the seed's noise, as Pipeline.sample draws them."""
    return [pipeline.sample(per_batch, steps=3, seed=0, batch=b, **settings) for b in range(count)]


def test_batches_are_the_pipelines_batches_and_files_follow(tiny_run, caplog):
    _, workdir, _ = tiny_run
    stem = fresh_stem(workdir, "sample_0000004_euler_maruyama")
    config = config_of(
        "mnist",
        tiny_overrides(),
        num_samples=5,
        batch_size=2,
        save_individual=True,
    )
    with caplog.at_level(logging.INFO, logger="jaxdiff"):
        path = sample_mode(config, str(workdir))
    assert path == f"{stem}.npz"

    # Three calls of 2 (the last one cut to 1), each with its own noise: batch b of
    # Pipeline.sample, batch 0 being what one call of Pipeline.sample draws.
    pipeline = jaxdiff.load(workdir)
    drawn = batches_of(pipeline, 2, 3)
    expected = np.concatenate([images for images, _ in drawn])[:5]
    np.testing.assert_array_equal(drawn[0][0], pipeline.sample(2, steps=3)[0])
    assert not np.array_equal(drawn[0][0], drawn[1][0])
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["images"], expected)
        np.testing.assert_array_equal(npz["labels"], [-1] * 5)
        assert int(npz["step"]) == 4 and int(npz["seed"]) == 0
    for i in range(5):  # save_individual: written per batch, numbered as in the npz.
        np.testing.assert_array_equal(
            np.asarray(Image.open(stem / f"{i:05d}.png")), expected[i, ..., 0]
        )
    grid = np.asarray(Image.open(f"{stem}.png"))
    assert grid.shape == (2 + 2 * 30, 2 + 3 * 30)  # all 5, in 3 columns
    assert not list(stem.parent.glob("*.tmp"))

    # Progress lines: the first call (with compilation), then rate and the end.
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sample: ")]
    assert lines[0].startswith("sample: 2/5 samples (40%), first batch")
    assert re.fullmatch(r"sample: 5/5 samples \(100%\), [\d.]+ samples/s, .* elapsed", lines[-1])


def test_an_interrupted_run_leaves_its_batches_and_resumes(tiny_run, monkeypatch):
    _, workdir, _ = tiny_run
    stem = fresh_stem(workdir, "sample_0000004_ode")
    config = config_of(
        "mnist",
        tiny_overrides(),
        sampler="ode",
        num_samples=5,
        batch_size=2,
    )
    pipeline = jaxdiff.load(workdir)
    expected = np.concatenate([i for i, _ in batches_of(pipeline, 2, 3, sampler="ode")])[:5]
    real_sample, calls = Pipeline.sample, []

    def killed_in_batch_2(self, *args, **kwargs):
        calls.append(kwargs["batch"])
        if kwargs["batch"] == 2:
            raise RuntimeError("killed")
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "sample", killed_in_batch_2)
    with pytest.raises(RuntimeError, match="killed"):
        sample_mode(config, str(workdir))
    # The two complete batches, in a file that loads; no half-written file beside it.
    with np.load(f"{stem}.npz") as npz:
        np.testing.assert_array_equal(npz["images"], expected[:4])
        np.testing.assert_array_equal(npz["labels"], [-1] * 4)
    assert Image.open(f"{stem}.png").size == (2 + 2 * 30, 2 + 2 * 30)  # the 4 so far
    assert not list(stem.parent.glob("*.tmp"))

    # The same command again: only the missing batch is drawn, and the result is
    # that of an uninterrupted run.
    calls.clear()

    def counted(self, *args, **kwargs):
        calls.append(kwargs["batch"])
        return real_sample(self, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "sample", counted)
    sample_mode(config, str(workdir))
    assert calls == [2]
    with np.load(f"{stem}.npz") as npz:
        np.testing.assert_array_equal(npz["images"], expected)

    # Fewer samples with the same batches: the first ones, nothing drawn; another
    # batch size is other noise, drawn anew.
    calls.clear()
    ode = {"sampler": "ode", "num_samples": 3}
    sample_mode(config_of("mnist", tiny_overrides(), **ode, batch_size=2), str(workdir))
    assert calls == []
    with np.load(f"{stem}.npz") as npz:
        np.testing.assert_array_equal(npz["images"], expected[:3])
    sample_mode(config_of("mnist", tiny_overrides(), **ode, batch_size=3), str(workdir))
    assert calls == [0]


def test_prompted_batches_keep_whole_classes_and_their_labels(tiny_cond_run):
    _, workdir, _ = tiny_cond_run
    stem = fresh_stem(workdir, "sample_0000004_euler_maruyama_w2_3-7")
    config = config_of(
        "mnist_cond",
        tiny_cond_overrides(),
        prompt="3,seven",
        guidance_scale=2.0,
        samples_per_class=3,
        batch_size=5,  # 2 of each class per call: calls of 2 + 2, 2 + 2 (cut to 1 + 1)
    )
    sample_mode(config, str(workdir))
    pipeline = jaxdiff.load(workdir)
    drawn = batches_of(pipeline, 2, 2, prompt="3,seven", guidance_scale=2.0)
    for _, labels in drawn:
        np.testing.assert_array_equal(labels, [3, 3, 7, 7])
    # Class by class, as one call would order them: the 3s of both calls, then the 7s.
    images = np.stack([i.reshape(2, 2, 28, 28, 1) for i, _ in drawn], axis=1)
    expected = images.reshape(2, 4, 28, 28, 1)[:, :3].reshape(6, 28, 28, 1)
    with np.load(f"{stem}.npz") as npz:
        np.testing.assert_array_equal(npz["labels"], [3, 3, 3, 7, 7, 7])
        np.testing.assert_array_equal(npz["images"], expected)
    grid = np.asarray(Image.open(f"{stem}.png"))
    assert grid.shape[0] == 2 + 2 * 30  # two labelled rows (3 and 7) of three
    np.testing.assert_array_equal(grid[2:30, -30:-2], expected[2, ..., 0])
    np.testing.assert_array_equal(grid[32:60, -30:-2], expected[5, ..., 0])


def test_impossible_batch_settings_are_one_line(tiny_run):
    _, workdir, _ = tiny_run
    with pytest.raises(UserError, match=r"^sampling.batch_size must be positive, got 0$"):
        sample_mode(config_of("mnist", tiny_overrides(), batch_size=0), str(workdir))
    config = config_of("mnist", tiny_overrides(), batch_size=2, save_trajectory=True)
    with pytest.raises(UserError, match="save_trajectory draws all samples in one batch: 4 "):
        sample_mode(config, str(workdir))


def test_step_flag_picks_the_checkpoint(tiny_run):
    _, workdir, _ = tiny_run
    stem = fresh_stem(workdir, "sample_0000002_edm")
    args = [
        "--config=configs/mnist.py",
        f"--workdir={workdir}",
        "--config.sampling.num_steps=2",
        "--config.sampling.num_samples=2",
        *model_flags(tiny_overrides()),
    ]
    result = run_main([*args, "--mode=sample", "--step=2"])
    assert result.returncode == 0, result.stderr
    with np.load(f"{stem}.npz") as npz:
        assert int(npz["step"]) == 2 and npz["images"].shape == (2, 28, 28, 1)
    assert "sample: 2/2 samples (100%)" in result.stderr  # a plain progress line: no tty

    result = run_main([*args, "--mode=sample", "--step=3"])
    assert_one_line_error(result, "no checkpoint 3 in", "available steps: 2, 4")
    result = run_main([*args, "--mode=train", "--step=2"])
    assert_one_line_error(result, "--mode=train takes no --step")


def test_eval_takes_the_step(tiny_run, monkeypatch):
    run_config, workdir, _ = tiny_run
    with pytest.raises(UserError, match=r"no checkpoint 3 in .*; available steps: 2, 4"):
        evaluate(run_config, str(workdir), step=3)

    # The chosen checkpoint is the one evaluated (stopped once it is loaded).
    loaded = []

    def load(*args, **kwargs):
        loaded.append(pipeline_module.load(*args, **kwargs).step)
        raise UserError("stop here")

    monkeypatch.setattr("jaxdiff.evaluation.evaluate.load", load)
    with pytest.raises(UserError, match="stop here"):
        evaluate(run_config, str(workdir), step=2)
    assert loaded == [2]
