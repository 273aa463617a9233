"""The Python API: jaxdiff.load / Pipeline, jaxdiff.train, configs.get_config, progress images."""

import copy
import json
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jaxdiff.configs import get_config
from PIL import Image

import jaxdiff
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.experiment import create_experiment, encode_images, reconstruct

from .conftest import ROOT, cli_flags, tiny_cond_overrides, tiny_overrides
from .test_cli import run_main


def model_flags(overrides):
    """The command-line flags that give a tiny run's network (what the checkpoint needs)."""
    return cli_flags({k: v for k, v in overrides.items() if k.startswith("model")})


def assert_trees_equal(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def test_load_and_sample_equal_sample_mode(tiny_run):
    _, workdir, state = tiny_run
    result = run_main(
        [
            "--config=configs/mnist.py",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.sampling.sampler=pc",
            "--config.sampling.num_steps=3",
            "--config.sampling.num_samples=5",
            "--config.sampling.save_individual=True",
            *model_flags(tiny_overrides()),
        ]
    )
    assert result.returncode == 0, result.stderr
    stem = workdir / "samples" / "sample_0000004_pc"
    with np.load(f"{stem}.npz") as npz:
        cli_images, cli_labels = npz["images"], npz["labels"]

    # Config from config.json, not from the config file: the round trip must hold.
    pipeline = jaxdiff.load(workdir)
    assert pipeline.step == 4
    assert_trees_equal(pipeline.params, state.ema_params)
    images, labels = pipeline.sample(5, sampler="pc", steps=3)
    assert images.dtype == np.uint8 and images.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(images, cli_images)
    np.testing.assert_array_equal(labels, cli_labels)
    np.testing.assert_array_equal(labels, [-1] * 5)

    # save_individual: one PNG per sample beside the grid, the same pixels.
    files = sorted(p.name for p in stem.iterdir())
    assert files == [f"{i:05d}.png" for i in range(5)]
    for i, name in enumerate(files):
        np.testing.assert_array_equal(np.asarray(Image.open(stem / name)), cli_images[i, ..., 0])

    # The seed is the noise: another seed, other images; the same seed, the same.
    other, _ = pipeline.sample(5, sampler="pc", steps=3, seed=1)
    assert not np.array_equal(other, images)
    again, _ = pipeline.sample(5, sampler="pc", steps=3, seed=0)
    np.testing.assert_array_equal(again, images)


def test_config_json_round_trips(tiny_run):
    config, workdir, _ = tiny_run
    read = jaxdiff.read_config(workdir)
    assert read.model.channels == (8, 16, 16, 16)  # a tuple again, not a list
    assert read.to_json() == create_experiment(config).config.to_json()


def test_conditional_load_and_sample_equal_sample_mode(tiny_cond_run):
    _, workdir, _ = tiny_cond_run
    result = run_main(
        [
            "--config=configs/mnist_cond.py",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.sampling.num_steps=3",
            "--config.sampling.samples_per_class=3",
            "--config.sampling.prompt=3,seven",
            "--config.sampling.guidance_scale=2",
            *model_flags(tiny_cond_overrides()),
        ]
    )
    assert result.returncode == 0, result.stderr
    with np.load(workdir / "samples" / "sample_0000004_edm_w2_3-7.npz") as npz:
        cli_images = npz["images"]
    pipeline = jaxdiff.load(workdir)
    images, labels = pipeline.sample(
        3, prompt=["3", "seven"], sampler="edm", steps=3, guidance_scale=2
    )
    np.testing.assert_array_equal(labels, [3, 3, 3, 7, 7, 7])
    np.testing.assert_array_equal(images, cli_images)
    # An empty prompt samples `num` images unconditionally from the same model.
    images, labels = pipeline.sample(4, prompt="", steps=3)
    assert images.shape == (4, 28, 28, 1)
    np.testing.assert_array_equal(labels, [-1] * 4)


def test_score_is_the_models_score(tiny_run, tiny_cond_run):
    x = jax.random.normal(jax.random.key(0), (3, 28, 28, 1))
    t = np.asarray([0.1, 0.5, 0.9], np.float32)
    for _, workdir, state in (tiny_run, tiny_cond_run):
        pipeline = jaxdiff.load(workdir)
        experiment = pipeline.experiment

        @jax.jit
        def expected(x, t, labels, experiment=experiment, params=state.ema_params):
            return make_score_fn(
                experiment.model, params, experiment.sde, experiment.config.model, labels=labels
            )(x, t)

        if experiment.num_classes:
            labels = np.asarray([1, 4, 10], np.int32)  # 10: the null label
            # No labels: the unconditional (null-label) score.
            np.testing.assert_allclose(
                pipeline.score(x, t), expected(x, t, np.full(3, 10, np.int32)), rtol=1e-5, atol=1e-5
            )
            assert not np.allclose(pipeline.score(x, t, [2, 2, 2]), pipeline.score(x, t))
        else:
            labels = None
        np.testing.assert_allclose(
            pipeline.score(x, t, labels), expected(x, t, labels), rtol=1e-5, atol=1e-5
        )
        # A scalar time is every sample's time.
        np.testing.assert_allclose(
            pipeline.score(x, 0.5, labels),
            expected(x, np.full(3, 0.5, np.float32), labels),
            rtol=1e-5,
            atol=1e-5,
        )


def test_latent_encode_decode_and_sample(tiny_latent_run):
    _, workdir, _ = tiny_latent_run
    pipeline = jaxdiff.load(workdir)
    assert pipeline.latent_scale > 0
    images = np.asarray(
        jax.random.randint(jax.random.key(0), (6, 28, 28, 1), 0, 256), dtype=np.uint8
    )
    latents = pipeline.encode(images)
    assert latents.shape == (6, 7, 7, 4) and latents.dtype == np.float32
    experiment, params = pipeline.experiment, pipeline.autoencoder_params
    np.testing.assert_allclose(
        latents, encode_images(experiment, params, images) * pipeline.latent_scale
    )
    decoded = pipeline.decode(latents)
    assert decoded.shape == images.shape and decoded.dtype == np.uint8
    # decode(encode(x)) is the autoencoder's reconstruction, up to the rounding of
    # scaling by latent_scale and back (one grey level at most).
    reconstruction = reconstruct(experiment, params, images)
    difference = np.abs(decoded.astype(int) - reconstruction.astype(int))
    assert difference.max() <= 1 and np.mean(difference == 0) > 0.99
    # Samples come out decoded, and the score takes (scaled) latents.
    samples, labels = pipeline.sample(3, steps=3)
    np.testing.assert_array_equal(labels, [-1] * 3)
    assert samples.shape == (3, 28, 28, 1) and samples.dtype == np.uint8
    assert pipeline.score(latents, 0.5).shape == latents.shape


def test_errors_are_user_errors_with_one_clear_message(tiny_run, tiny_cond_run, tmp_path):
    _, workdir, _ = tiny_run
    with pytest.raises(jaxdiff.UserError, match=r"no checkpoint in .*: train first"):
        jaxdiff.load(tmp_path)
    with pytest.raises(jaxdiff.UserError, match=r"no checkpoint 3 in .*available steps: 2, 4"):
        jaxdiff.load(workdir, step=3)
    assert jaxdiff.load(workdir, step=2).step == 2
    pipeline = jaxdiff.load(workdir)
    with pytest.raises(jaxdiff.UserError, match=r"sampling.prompt='3' needs a conditional model"):
        pipeline.sample(2, prompt="3")
    with pytest.raises(jaxdiff.UserError, match=r"encode needs a latent diffusion run"):
        pipeline.encode(np.zeros((1, 28, 28, 1), np.uint8))
    with pytest.raises(jaxdiff.UserError, match=r"decode needs a latent diffusion run"):
        pipeline.decode(np.zeros((1, 7, 7, 4), np.float32))
    with pytest.raises(jaxdiff.UserError, match=r"labels need a conditional model"):
        pipeline.score(np.zeros((1, 28, 28, 1)), 0.5, labels=[3])
    with pytest.raises(jaxdiff.UserError, match=r"unknown sampling.sampler 'ddpm'"):
        pipeline.sample(2, sampler="ddpm")
    with pytest.raises(jaxdiff.UserError, match=r"'eleven'.*integers 0-9"):
        jaxdiff.load(tiny_cond_run[1]).sample(1, prompt="3,eleven")
    # Checkpoints without config.json: the message says to pass the config.
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(jaxdiff.UserError, match=r"no config.json in .*pass the run's config"):
        jaxdiff.load(tmp_path)
    assert jaxdiff.load(tmp_path, config=tiny_run[0]).step == 4
    # A config of another model than the run's config.json (here the same
    # parameters read as another function) is refused with the overrides to use.
    other = copy.deepcopy(tiny_run[0])
    other.model.preconditioning, other.model.channels = "none", (8, 16, 16, 32)
    with pytest.raises(
        jaxdiff.UserError,
        match=re.escape(
            "(model.channels [8, 16, 16, 16] there, [8, 16, 16, 32] here; "
            "model.preconditioning 'edm' there, 'none' here); add "
            "'--config.model.channels=(8,16,16,16)' --config.model.preconditioning=edm"
        ),
    ):
        jaxdiff.load(workdir, config=other)
    # A run from before a field existed used its default: that is the override named.
    older = tmp_path / "older"
    older.mkdir()
    stored = json.loads((workdir / "config.json").read_text())
    del stored["model"]["preconditioning"]
    (older / "config.json").write_text(json.dumps(stored))
    with pytest.raises(
        jaxdiff.UserError, match=r"'<absent>' there.*--config.model.preconditioning=edm"
    ):
        jaxdiff.load(older, config=other)


def test_train_is_train_and_evaluate(tiny_run):
    config, workdir, state = tiny_run
    # A finished run resumes at its last step and returns that state.
    assert_trees_equal(jaxdiff.train(config, str(workdir)), state)


def test_get_config_by_name():
    config = get_config("mnist_cond")
    assert config.model.conditional and config.data.dataset == "mnist"
    config.training.num_steps = 10  # a ConfigDict that can be overridden
    assert get_config("mnist_cond").training.num_steps == 4000  # a fresh copy each time
    latent_cond = get_config("mnist_latent:cond")
    assert latent_cond.autoencoder.enabled and latent_cond.model.conditional
    assert not get_config("configs/mnist_latent.py").model.conditional
    with pytest.raises(jaxdiff.UserError, match=r"unknown config 'mnist_large'.*mnist_cond"):
        get_config("mnist_large")
    with pytest.raises(jaxdiff.UserError, match=r"unknown config 'mnist:cond'.*mnist_latent:cond"):
        get_config("mnist:cond")
    assert get_config("mnist_original:cond").model.num_heads == 1
    # Fashion-MNIST's CPU variant: mnist_cond's net and recipe on Fashion-MNIST with flips.
    cpu, mnist_net = get_config("fashion_mnist_cond:cpu"), get_config("mnist_cond")
    assert cpu.data.dataset == "fashion_mnist" and cpu.data.random_flip
    assert cpu.model == mnist_net.model and get_config("fashion_mnist_cond").model.name == "unet"
    for field in ("noise_distribution", "loss_weighting", "learning_rate", "ema_decay"):
        assert cpu.training[field] == mnist_net.training[field]


def test_every_config_file_is_reachable_by_name_from_the_installed_package():
    import jaxdiff.configs as configs

    files = {p.stem for p in (ROOT / "configs").glob("*.py")} - {"__init__", "default"}
    assert set(configs.NAMES) | set(configs.ALIASES) == files
    for name in configs.NAMES:
        assert get_config(name).data.dataset in ("mnist", "fashion_mnist", "cifar10", "folder")
    # Installed as jaxdiff.configs, not as a top-level package of its own.
    script = "import importlib.util; print(importlib.util.find_spec('configs'))"
    found = subprocess.run(
        [sys.executable, "-c", script], cwd="/", capture_output=True, text=True, check=True
    )
    assert found.stdout.strip() == "None"


def test_training_writes_a_progress_montage_and_gif(tiny_run):
    _, workdir, _ = tiny_run
    samples = workdir / "samples"
    grids = [np.asarray(Image.open(samples / f"step_{s:07d}.png")) for s in (2, 4)]
    gif = Image.open(samples / "progress.gif")
    assert gif.n_frames == 2
    montage = np.asarray(Image.open(samples / "progress.png").convert("L"))
    height, width = grids[0].shape
    # Captions above, each grid's pixels below them, side by side.
    band = montage.shape[0] - height
    assert band > 0 and montage.shape[1] >= 2 * width
    np.testing.assert_array_equal(montage[band:, :width], grids[0])
    for frame, grid in enumerate(grids):
        gif.seek(frame)
        pixels = np.asarray(gif.convert("L"))
        np.testing.assert_array_equal(pixels[band:, :width], grid)
        assert pixels[:band].max() > 0  # the caption


def test_importing_jaxdiff_is_light():
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, jaxdiff; jaxdiff.UserError; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('jax', 'flax', 'tensorflow', 'tensorflow_datasets', 'orbax')))",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
