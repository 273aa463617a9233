"""Latent diffusion: the autoencoder, the scale factor, and the two stages on real MNIST."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxdiff.configs import cifar10_latent, fashion_mnist_latent, mnist_latent
from PIL import Image

from jaxdiff.core import parallel
from jaxdiff.data import batches, tfds_reader
from jaxdiff.experiment import create_experiment, encode_images
from jaxdiff.models.autoencoder import kl_divergence
from jaxdiff.training import autoencoder
from jaxdiff.training.score import train_and_evaluate
from jaxdiff.training.state import create_autoencoder_state, create_optimizer

from .conftest import apply_overrides, tiny_latent_overrides
from .test_cli import run_main, snapshot


@pytest.mark.parametrize(
    "module, latent_shape",
    [(mnist_latent, (7, 7, 4)), (fashion_mnist_latent, (7, 7, 4)), (cifar10_latent, (8, 8, 4))],
)
@pytest.mark.parametrize("variant", ["uncond", "cond"])
def test_each_latent_config_round_trips_shapes(module, latent_shape, variant):
    experiment = create_experiment(module.get_config(variant))
    assert experiment.data_shape == latent_shape
    assert (experiment.num_classes > 0) == (variant == "cond")
    image_shape = experiment.image_shape
    x = jnp.zeros((2, *image_shape))
    params = jax.eval_shape(experiment.autoencoder.init, jax.random.key(0), x)["params"]
    mean, log_var = jax.eval_shape(
        lambda p: experiment.autoencoder.apply({"params": p}, x, method="encode"), params
    )
    assert mean.shape == log_var.shape == (2, *latent_shape)
    decoded = jax.eval_shape(
        lambda p, z: experiment.autoencoder.apply({"params": p}, z, method="decode"), params, mean
    )
    assert decoded.shape == (2, *image_shape)
    # The score model takes the latents.
    z, t, labels = jnp.zeros(mean.shape), jnp.ones((2,)), jnp.zeros((2,), jnp.int32)
    score_params = jax.eval_shape(experiment.model.init, jax.random.key(0), z, t, labels)
    out = jax.eval_shape(lambda p: experiment.model.apply(p, z, t, labels), score_params)
    assert out.shape == (2, *latent_shape)


def test_kl_matches_numpy():
    rng = np.random.default_rng(0)
    mean = rng.normal(size=(3, 7, 7, 4))
    log_var = rng.normal(size=(3, 7, 7, 4))
    # KL(N(m, s^2) || N(0, 1)) = log(1 / s) + (s^2 + m^2) / 2 - 1/2, summed per example.
    var = np.exp(log_var)
    expected = np.sum(np.log(1 / np.sqrt(var)) + (var + mean**2) / 2 - 0.5, axis=(1, 2, 3))
    np.testing.assert_allclose(
        kl_divergence(jnp.asarray(mean), jnp.asarray(log_var)), expected, rtol=1e-5
    )
    np.testing.assert_allclose(kl_divergence(jnp.zeros((1, 2)), jnp.zeros((1, 2))), [0.0])


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_scale_factor_gives_unit_variance():
    config = apply_overrides(mnist_latent.get_config(), tiny_latent_overrides())
    experiment = create_experiment(config)
    tx = create_optimizer(config.autoencoder)
    params = create_autoencoder_state(
        jax.random.key(0), experiment.autoencoder, experiment.image_shape, tx
    ).params
    images, labels = tfds_reader.load_split("mnist", "train[:1024]")
    latents = encode_images(experiment, params, images)
    assert latents.shape == (1024, 7, 7, 4)
    scale = autoencoder.latent_scale(latents)
    assert abs(float(np.std(latents)) - 1.0) > 0.05  # the scale is doing something
    np.testing.assert_allclose(np.std(latents * scale), 1.0, rtol=1e-5)
    # A training batch, drawn as stage 2 draws it, has about unit variance, and
    # float latents come out of the batch drawer unchanged (no /255, no centering).
    dataset = batches.to_device(latents * scale, labels, experiment.mesh)
    batch, _ = batches.draw_batch(
        jax.random.key(1), dataset, 64, parallel.batch_sharded(experiment.mesh), False, True
    )
    assert abs(float(jnp.std(batch)) - 1.0) < 0.15
    assert any(np.allclose(np.asarray(batch[0]), row) for row in latents * scale)


@pytest.fixture(scope="module")
def latent_run(tiny_latent_run):
    return tiny_latent_run


def test_both_stages_write_their_outputs(latent_run):
    _, workdir, state = latent_run
    assert int(state.step) == 4
    stage1 = workdir / "autoencoder"
    records = [json.loads(line) for line in (stage1 / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4, 4]  # two log intervals, then the test metrics
    assert records[-1]["test_psnr"] == pytest.approx(10 * np.log10(1 / records[-1]["test_mse"]))
    recon = np.asarray(Image.open(stage1 / "reconstructions_0000004.png"))
    assert recon.shape == (2 + 2 * 30, 2 + 16 * 30)  # 16 originals above 16 reconstructions
    assert json.loads((stage1 / "latent_scale.json").read_text())["scale"] > 0
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "4"]
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape == (2 + 2 * 30, 2 + 2 * 30)  # 4 decoded 28x28 samples


def test_stage_one_is_skipped_and_stage_two_resumes(latent_run, tmp_path):
    config, workdir, state = latent_run
    # An interrupted run: the autoencoder finished, the score model saved only step 2.
    shutil.copytree(workdir, tmp_path, dirs_exist_ok=True)
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    stage1_before = snapshot(tmp_path / "autoencoder" / "checkpoints")
    stage1_metrics = (tmp_path / "autoencoder" / "metrics.jsonl").read_text()
    resumed = train_and_evaluate(config, str(tmp_path))
    # Stage 1 was neither retrained nor re-evaluated.
    assert snapshot(tmp_path / "autoencoder" / "checkpoints") == stage1_before
    assert (tmp_path / "autoencoder" / "metrics.jsonl").read_text() == stage1_metrics
    # Stage 2 went on from step 2 and ended where the uninterrupted run did; the
    # copied record of step 4 (past the surviving checkpoint) was replaced, not repeated.
    score_metrics = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in score_metrics] == [2, 4]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_interrupted_stage_one_resumes(latent_run, tmp_path):
    config, workdir, _ = latent_run
    # Killed during stage 1: only the autoencoder's step-2 checkpoint exists.
    shutil.copytree(
        workdir / "autoencoder" / "checkpoints", tmp_path / "autoencoder" / "checkpoints"
    )
    shutil.rmtree(tmp_path / "autoencoder" / "checkpoints" / "4")
    train_and_evaluate(config, str(tmp_path))
    stage1 = [
        json.loads(line)
        for line in (tmp_path / "autoencoder" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["step"] for r in stage1] == [4, 4]  # resumed at 2: logged 4, then evaluated
    # Deterministic from the checkpoint: the same autoencoder, hence the same latents.
    original = json.loads((workdir / "autoencoder" / "latent_scale.json").read_text())
    resumed = json.loads((tmp_path / "autoencoder" / "latent_scale.json").read_text())
    assert resumed == original


def test_sample_mode_decodes_latent_samples(latent_run):
    _, workdir, _ = latent_run
    overrides = [
        f"--config.{k}={v}"
        for k, v in tiny_latent_overrides().items()
        if k.startswith(("model", "autoencoder.channels"))
    ]
    result = run_main(
        [
            "--config=configs/mnist_latent.py",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.sampling.num_samples=6",
            "--config.sampling.num_steps=4",
            *overrides,
        ]
    )
    assert result.returncode == 0, result.stderr
    # The default sampler (edm) on latents.
    with np.load(workdir / "samples" / "sample_0000004_edm.npz") as npz:
        images = npz["images"]
    # Decoded to pixels: the image shape, uint8, and not one flat colour.
    assert images.shape == (6, 28, 28, 1) and images.dtype == np.uint8
    assert images.std() > 0


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
@pytest.mark.parametrize("loss_name", ["l1", "mse"])
def test_autoencoder_loss_terms(loss_name):
    config = apply_overrides(mnist_latent.get_config(), tiny_latent_overrides())
    config.autoencoder.reconstruction_loss = loss_name
    x = jax.random.uniform(jax.random.key(0), (4, 28, 28, 1))
    key = jax.random.key(1)
    # Plain autoencoder: the reconstruction error alone, through the posterior mean.
    config.autoencoder.variational = False
    experiment = create_experiment(config)
    params = experiment.autoencoder.init(jax.random.key(2), x)["params"]
    recon, _, log_var = experiment.autoencoder.apply({"params": params}, x, key)
    assert log_var is None
    error = np.asarray(recon) - np.asarray(x)
    expected = np.mean(np.abs(error)) if loss_name == "l1" else np.mean(error**2)
    loss = autoencoder.autoencoder_loss(experiment.autoencoder, params, x, key, config)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # VAE: the KL term enters with its weight (same key, so the same posterior sample).
    config.autoencoder.variational = True
    experiment = create_experiment(config)
    params = experiment.autoencoder.init(jax.random.key(2), x)["params"]
    _, mean, log_var = experiment.autoencoder.apply({"params": params}, x, key)
    losses = {}
    for weight in (0.0, 0.5):
        config.autoencoder.kl_weight = weight
        losses[weight] = autoencoder.autoencoder_loss(
            experiment.autoencoder, params, x, key, config
        )
    np.testing.assert_allclose(
        losses[0.5] - losses[0.0], 0.5 * np.mean(kl_divergence(mean, log_var)), rtol=1e-4
    )
