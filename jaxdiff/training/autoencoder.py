"""Latent diffusion: stage 1 trains the autoencoder, stage 2 the score model on its latents.

Stage 1 lives in `workdir/autoencoder/` (checkpoints, metrics.jsonl,
reconstruction grids) and is skipped once its last checkpoint exists. The
frozen encoder (EMA parameters) then maps the whole training split to latents
(the posterior means) once; they are multiplied by a scale factor that gives
them unit variance, as latent diffusion does, and kept on the devices for
stage 2. Samples are latents divided by the scale and decoded.
"""

import functools
import json
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff.core import random
from jaxdiff.core.errors import UserError
from jaxdiff.core.visualize import image_grid, save_png
from jaxdiff.data import batches, datasets, streaming
from jaxdiff.experiment import Experiment, reconstruct
from jaxdiff.models.autoencoder import kl_divergence
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.loop import TrainCall, TrainData, apply_update
from jaxdiff.training.reporting import MetricsLog
from jaxdiff.training.state import (
    TrainState,
    abstract_state,
    create_autoencoder_state,
    create_optimizer,
)
from jaxdiff.training.trainer import Trainer

logger = logging.getLogger("jaxdiff")

AUTOENCODER_DIR = "autoencoder"
SCALE_FILE = "latent_scale.json"


def autoencoder_loss(
    autoencoder, params: Any, x: jax.Array, key: jax.Array, config: ml_collections.ConfigDict
) -> jax.Array:
    """Per-pixel reconstruction loss (L1 or MSE) + kl_weight * KL (VAE only), batch-averaged."""
    c = config.autoencoder
    reconstruction, mean, log_var = autoencoder.apply({"params": params}, x, key)
    error = reconstruction - x
    loss = jnp.mean(jnp.abs(error)) if c.reconstruction_loss == "l1" else jnp.mean(error**2)
    if log_var is not None and c.kl_weight:
        loss = loss + c.kl_weight * jnp.mean(kl_divergence(mean, log_var))
    return loss


def autoencoder_step(
    state: TrainState,
    key: jax.Array,
    dataset: TrainData,
    *,
    autoencoder,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the autoencoder on a batch drawn on device. Pure; jit it."""
    batch_key, noise_key = random.step_keys(key, state.step)
    x, _ = batches.draw_batch(
        batch_key,
        dataset,
        config.autoencoder.batch_size,
        batch_sharding,
        config.data.random_flip,
        config.data.centered,
    )
    loss, grads = jax.value_and_grad(
        lambda params: autoencoder_loss(autoencoder, params, x, noise_key, config)
    )(state.params)
    c = config.autoencoder
    new_state = apply_update(state, grads, tx, c.ema_decay, c.on_nonfinite == "skip")
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def reconstruction_metrics(images: np.ndarray, reconstructions: np.ndarray) -> dict[str, float]:
    """MSE on the [0, 1] pixel scale and PSNR (dB) of uint8 reconstructions."""
    error = images.astype(np.float64) / 255.0 - reconstructions.astype(np.float64) / 255.0
    mse = float(np.mean(error**2))
    return {"test_mse": mse, "test_psnr": float(10.0 * np.log10(1.0 / max(mse, 1e-12)))}


def latent_scale(latents: np.ndarray) -> float:
    """The factor that gives the latents unit variance: 1 / std over all their entries."""
    std = float(np.std(latents.astype(np.float64)))
    if not np.isfinite(std) or std == 0.0:
        raise UserError(f"the autoencoder's latents have standard deviation {std}: retrain it")
    return 1.0 / std


def _autoencoder_dir(workdir: str) -> str:
    return os.path.join(workdir, AUTOENCODER_DIR)


def save_latent_scale(workdir: str, latents: np.ndarray, is_main: bool = True) -> float:
    """Computes the scale factor and records it in `workdir/autoencoder/latent_scale.json`."""
    scale = latent_scale(latents)
    if is_main:
        path = os.path.join(_autoencoder_dir(workdir), SCALE_FILE)
        with open(path + ".tmp", "w") as f:
            json.dump({"scale": scale, "latent_std": 1.0 / scale}, f)
        os.replace(path + ".tmp", path)
    logger.info("Latent scale factor %.4f (latent std %.4f)", scale, 1.0 / scale)
    return scale


def _abstract_autoencoder_state(experiment: Experiment, tx) -> TrainState:
    return abstract_state(
        functools.partial(
            create_autoencoder_state,
            jax.random.key(0),
            experiment.autoencoder,
            experiment.image_shape,
            tx,
        ),
        experiment.mesh,
    )


class AutoencoderTrainer(Trainer):
    """Stage 1 in `workdir/autoencoder/`: skipped once complete, evaluated when it ends.

    Evaluation writes the test split's reconstruction MSE and PSNR to
    `workdir/autoencoder/metrics.jsonl` and an originals-over-reconstructions
    grid to `workdir/autoencoder/reconstructions_<step>.png`.
    """

    name = "autoencoder"
    group_name = "autoencoder"
    init_stream = random.Stream.AUTOENCODER_INIT
    train_stream = random.Stream.AUTOENCODER_TRAINING

    def __init__(
        self,
        experiment: Experiment,
        workdir: str,
        images: np.ndarray,
        labels: np.ndarray,
        config_name: str | None = None,
    ):
        directory = _autoencoder_dir(workdir)
        super().__init__(experiment.config, experiment.mesh, directory, config_name=config_name)
        self.experiment = experiment
        self.images, self.labels = images, labels

    def create_state(self, key: jax.Array) -> TrainState:
        return create_autoencoder_state(
            key, self.experiment.autoencoder, self.experiment.image_shape, self.tx
        )

    def train_call(self) -> TrainCall:
        return self.compile_steps(autoencoder_step, autoencoder=self.experiment.autoencoder)

    def training_data(self) -> batches.DeviceDataset | streaming.HostStream:
        return self.place_data(self.images, self.labels, random.step_batch_key, "autoencoder data")

    def resume(self, state: TrainState, checkpoint_dir: str) -> bool:
        if int(state.step) >= self.group.num_steps:
            logger.info("Stage 1 (autoencoder) is complete at step %d: skipped", state.step)
            return False
        logger.info("Stage 1 (autoencoder): resumed from step %d", state.step)
        return True

    def evaluate(self, state: TrainState, metrics_log: MetricsLog) -> None:
        """Test-split reconstruction metrics and grid of the finished autoencoder."""
        config = self.config
        test_images, _ = datasets.read_split(config.data, config.autoencoder.eval_split)
        reconstructions = reconstruct(self.experiment, state.ema_params, test_images)
        metrics = reconstruction_metrics(test_images, reconstructions)
        step = int(state.step)
        metrics_log.write(step, metrics)
        logger.info(
            "Autoencoder on %s (%d images): reconstruction MSE %.5f, PSNR %.2f dB",
            config.autoencoder.eval_split,
            len(test_images),
            metrics["test_mse"],
            metrics["test_psnr"],
        )
        if self.is_main:
            shown = min(16, len(test_images))
            grid = image_grid(
                np.concatenate([test_images[:shown], reconstructions[:shown]]), columns=shown
            )
            save_png(os.path.join(self.directory, f"reconstructions_{step:07d}.png"), grid)


def train_autoencoder(
    experiment: Experiment,
    workdir: str,
    images: np.ndarray,
    labels: np.ndarray,
    config_name: str | None = None,
) -> Any:
    """Stage 1: trains (or resumes, or skips when complete) the autoencoder.

    Returns:
      The autoencoder's EMA parameters.
    """
    trainer = AutoencoderTrainer(experiment, workdir, images, labels, config_name)
    return trainer.train().ema_params


def load_autoencoder(experiment: Experiment, workdir: str) -> tuple[Any, float]:
    """The trained autoencoder's EMA parameters and the latent scale, for sampling.

    Raises:
      UserError: stage 1 has no checkpoint, or stage 2 never started (no scale).
    """
    directory = _autoencoder_dir(workdir)
    tx = create_optimizer(experiment.config.autoencoder)
    checkpointer = Checkpointer(directory, create=False)
    try:
        params = checkpointer.restore(_abstract_autoencoder_state(experiment, tx)).ema_params
    finally:
        checkpointer.close()
    path = os.path.join(directory, SCALE_FILE)
    if not os.path.exists(path):
        raise UserError(f"no latent scale in {path}: train the score model first (--mode=train)")
    with open(path) as f:
        return params, float(json.load(f)["scale"])
