"""Training: `train_and_evaluate(config, workdir)` and the pure step it is built from."""

import dataclasses
import functools
import logging
import os
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import generation
from jaxdiff.core import parallel, random
from jaxdiff.core.errors import shell_command
from jaxdiff.data import batches, datasets, streaming
from jaxdiff.diffusion import conditioning
from jaxdiff.diffusion.losses import (
    draw_training_noise,
    dsm_loss_given_noise,
    loss_recipe,
    loss_weights,
)
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.diffusion.sde import SDE
from jaxdiff.experiment import Experiment, create_experiment, encode_images
from jaxdiff.models import count_params
from jaxdiff.training import autoencoder
from jaxdiff.training.loop import TrainCall, TrainData, apply_update, compile_train_call
from jaxdiff.training.loss_curve import write_loss_curves
from jaxdiff.training.reporting import MetricsLog
from jaxdiff.training.state import (
    TrainState,
    create_optimizer,
    create_replicated_train_state,
    create_train_state,
)
from jaxdiff.training.trainer import Trainer, display_path
from jaxdiff.training.workdir import training_workdir

logger = logging.getLogger("jaxdiff")


def draw_training_batch(
    key: jax.Array,
    dataset: TrainData,
    config: ml_collections.ConfigDict,
    num_classes: int,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[jax.Array, jax.Array | None]:
    """A training batch and, for a conditional model, its labels with some replaced by null.

    Each label becomes the null token `num_classes` with probability
    `training.cond_drop_prob`, which teaches the same network the unconditional
    score that classifier-free guidance needs. Call inside jit.
    """
    batch_key, drop_key = jax.random.split(key)
    x0, labels = batches.draw_batch(
        batch_key,
        dataset,
        config.training.batch_size,
        batch_sharding,
        config.data.random_flip,
        config.data.centered,
    )
    if not num_classes:
        return x0, None
    return x0, conditioning.drop_labels(
        drop_key, labels, config.training.cond_drop_prob, num_classes
    )


def train_step(
    state: TrainState,
    key: jax.Array,
    dataset: batches.DeviceDataset,
    *,
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch drawn on device from `dataset`. Pure; jit it.

    With `training.grad_accum_steps` > 1 the gradient is accumulated over
    micro-batches (see `loss_and_grads`); the metrics are the whole batch's.
    """
    batch_key, loss_key, dropout_key = random.score_step_keys(key, state.step)
    num_classes = getattr(model, "num_classes", 0)
    x0, labels = draw_training_batch(batch_key, dataset, config, num_classes, batch_sharding)
    loss, grads = loss_and_grads(
        state.params,
        x0,
        labels,
        loss_key,
        dropout_key,
        model=model,
        sde=sde,
        config=config,
        batch_sharding=batch_sharding,
    )
    training = config.training
    skip_nonfinite = training.on_nonfinite == "skip"
    return apply_update(state, grads, tx, training.ema_decay, skip_nonfinite), {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
    }


def loss_and_grads(
    params: Any,
    x0: jax.Array,
    labels: jax.Array | None,
    loss_key: jax.Array,
    dropout_key: jax.Array,
    *,
    model: nn.Module,
    sde: SDE,
    config: ml_collections.ConfigDict,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[jax.Array, Any]:
    """The DSM loss of the batch `x0` (`labels`: its classes, or None) and its gradient.

    The noise (t and z) is drawn from `loss_key` once for the whole batch, by the
    config's training recipe (`losses.LossRecipe`), as are the examples' weights.
    With `training.grad_accum_steps` = k > 1 the batch is split into k
    micro-batches of B/k examples whose losses and gradients are summed and
    divided by k: the whole batch's loss and gradient up to float rounding,
    while the backward pass holds one micro-batch's activations.
    Micro-batch i holds examples i, i + k, i + 2k, ...: the batch axis is sharded
    over devices in contiguous blocks, so each device keeps its share of every
    micro-batch and nothing moves between devices. Dropout (unet) is the one
    difference from the big batch: micro-batch i draws its masks from
    `fold_in(dropout_key, i)`.

    The micro-batches run in a `lax.scan`, on CPU too, although XLA:CPU runs the
    backward pass inside a loop several times slower (see `loop.compile_train_call`):
    only the loop bounds the memory: unrolled, XLA:CPU schedules the micro-batches
    side by side and keeps most of the big batch's activations.

    Returns:
      (loss, grads), grads shaped like `params`.
    """
    k = config.training.grad_accum_steps
    recipe = loss_recipe(config)
    t, z = draw_training_noise(loss_key, x0, sde, recipe)
    weights = loss_weights(sde, t, recipe)

    def micro_batch_loss_and_grads(batch, dropout_key):
        x0, labels, t, z, weights = batch

        def loss_fn(params):
            score_fn = make_score_fn(
                model, params, sde, config.model, train=True, dropout_key=dropout_key, labels=labels
            )
            return dsm_loss_given_noise(score_fn, sde, x0, t, z, weights)

        return jax.value_and_grad(loss_fn)(params)

    if k == 1:
        return micro_batch_loss_and_grads((x0, labels, t, z, weights), dropout_key)

    def split(a):  # (B, ...) -> (k, B/k, ...), micro-batch i holding rows i, i + k, ...
        return jnp.swapaxes(a.reshape(a.shape[0] // k, k, *a.shape[1:]), 0, 1)

    # labels and weights that are None stay None.
    micro_batches = jax.tree.map(split, (x0, labels, t, z, weights))

    def accumulate(total, batch_and_index):
        batch, i = batch_and_index
        batch = jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, batch_sharding), batch)
        loss_grads = micro_batch_loss_and_grads(batch, jax.random.fold_in(dropout_key, i))
        return jax.tree.map(jnp.add, total, loss_grads), None

    total = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(accumulate, total, (micro_batches, jnp.arange(k)))
    return jax.tree.map(lambda s: s / k, total)


def make_train_step(
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, jax.Array, TrainData], tuple[TrainState, dict]]:
    """`train_step` with its model, SDE, optimizer, config and batch sharding bound (not jitted)."""
    return functools.partial(
        train_step,
        model=model,
        sde=sde,
        tx=tx,
        config=config,
        batch_sharding=parallel.batch_sharded(mesh),
    )


def make_train_call(
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    python_loop: bool | None = None,
) -> TrainCall:
    """The score model's `training.steps_per_call` train steps as one jitted call."""
    step_fn = make_train_step(model, sde, tx, config, mesh)
    return compile_train_call(step_fn, config.training.steps_per_call, mesh, python_loop)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
    """What a score model's training consists of, without a workdir or data.

    Attributes:
      experiment: model, SDE, mesh and the config with automatic values resolved.
      tx: the optimizer.
      train_call: `training.steps_per_call` steps as one jitted call,
        (state, key, data) -> (state, metrics).
    """

    experiment: Experiment
    tx: optax.GradientTransformation
    train_call: TrainCall

    def init_state(self, key: jax.Array) -> TrainState:
        """A freshly initialised state, placed as the train call returns it."""
        return create_replicated_train_state(key, self.experiment, self.tx)


def create_train_setup(
    config: ml_collections.ConfigDict, python_loop: bool | None = None
) -> TrainSetup:
    """The experiment, optimizer and train call a config trains with.

    `train_and_evaluate` trains with it; benchmarks, memory reports and
    notebooks that time or inspect a train call start here too. `python_loop`:
    see `compile_train_call`.
    """
    experiment = create_experiment(config)
    tx = create_optimizer(experiment.config.training)
    call = make_train_call(
        experiment.model, experiment.sde, tx, experiment.config, experiment.mesh, python_loop
    )
    return TrainSetup(experiment, tx, call)


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    allow_config_change: bool = False,
    config_name: str | None = None,
) -> TrainState:
    """Trains the score model, resuming from the newest checkpoint in `workdir`.

    Writes `config.json`, `metrics.jsonl`, `checkpoints/` and, at each checkpoint,
    `samples/step_<step>.png` drawn with the EMA parameters; once complete,
    `summary.json` (recording `config_name`, the config file's name, if given)
    and a line saying where the checkpoint and samples are. With
    `autoencoder.enabled` (latent diffusion) the autoencoder is trained first
    in `workdir/autoencoder/` (skipped when complete) and the score model learns
    its scaled latents.

    The workdir is locked for the run (a second run on it fails at once), and a
    run that would resume with a config that changes what is learned fails
    unless `allow_config_change`. SIGTERM/SIGINT stop it after the current
    compiled call with a checkpoint (`preemption.Preempted` is raised);
    running it again resumes.

    Returns:
      The final train state of the score model.
    """
    setup = create_train_setup(config)
    config = setup.experiment.config  # With automatic values resolved.
    images, labels = datasets.read_split(config.data, config.data.train_split)
    with training_workdir(config, workdir, allow_config_change) as workdir:
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        return _train(setup, workdir, images, labels, config_name)


def _train(
    setup: TrainSetup,
    workdir: str,
    images: np.ndarray,
    labels: np.ndarray,
    config_name: str | None = None,
) -> TrainState:
    """The body of `train_and_evaluate`, once the workdir is locked and checked."""
    experiment = setup.experiment
    config = experiment.config
    autoencoder_params, latent_scale = None, None
    if experiment.autoencoder is not None:
        autoencoder_params = autoencoder.train_autoencoder(
            experiment, workdir, images, labels, config_name
        )
        latents = encode_images(experiment, autoencoder_params, images)
        is_main = jax.process_index() == 0
        latent_scale = autoencoder.save_latent_scale(workdir, latents, is_main)
        images = latents * latent_scale
    dataset = streaming.training_data(
        images, labels, experiment.mesh, config.data.on_device, random.score_batch_key
    )
    trainer = ScoreTrainer(setup, workdir, dataset, autoencoder_params, latent_scale, config_name)
    return trainer.train()


class ScoreTrainer(Trainer):
    """The score model's training in the workdir, on pixels or on scaled latents.

    At each checkpoint it writes `loss.png` and, with
    `training.sample_at_checkpoints`, a sample grid drawn with the EMA parameters.
    """

    name = "score model"
    group_name = "training"
    init_stream = random.Stream.SCORE_INIT
    train_stream = random.Stream.SCORE_TRAINING

    def __init__(
        self,
        setup: TrainSetup,
        workdir: str,
        dataset: batches.DeviceDataset | streaming.HostStream,
        autoencoder_params: Any = None,
        latent_scale: float | None = None,
        config_name: str | None = None,
    ):
        """`dataset`: images, or latents times `latent_scale` with the autoencoder's params."""
        experiment = setup.experiment
        super().__init__(experiment.config, experiment.mesh, workdir, setup.tx, config_name)
        self.setup, self.experiment = setup, experiment
        self.dataset = dataset
        self.autoencoder_params = autoencoder_params
        self.latent_scale = latent_scale
        self.draw_samples = generation.make_sample_fn(experiment, latent_scale)

    def create_state(self, key: jax.Array) -> TrainState:
        experiment = self.experiment
        return create_train_state(key, experiment.model, experiment.data_shape, self.tx)

    def train_call(self) -> TrainCall:
        return self.setup.train_call

    def training_data(self) -> batches.DeviceDataset | streaming.HostStream:
        return self.dataset

    def resume(self, state: TrainState, checkpoint_dir: str) -> bool:
        logger.info("Resumed from step %d of %s", int(state.step), checkpoint_dir)
        return True

    def on_start(
        self, state: TrainState, dataset: batches.DeviceDataset | streaming.HostStream
    ) -> None:
        experiment = self.experiment
        logger.info(
            "%s: %s with %s parameters, %d training %s of shape %s, %d device(s)",
            self.config.data.dataset,
            self.config.model.name,
            f"{count_params(state.params):,}",
            dataset.num_examples,
            "latents" if self.latent_scale else "images",
            experiment.data_shape,
            experiment.mesh.size,
        )

    def done_line(self, step: int, checkpoint_dir: str) -> str:
        """Where the checkpoint and sample grids are, and the command that samples the run."""
        line = super().done_line(step, checkpoint_dir)
        if self.group.sample_at_checkpoints:
            line += f", samples in {display_path(os.path.join(self.directory, 'samples'))}"
        command = shell_command(
            "python", "main.py", f"--workdir={display_path(self.directory)}", "--mode=sample"
        )
        return f"{line}; sample with: {command}"

    def on_checkpoint(self, step: int, state: TrainState, metrics_log: MetricsLog) -> None:
        if self.is_main:
            write_loss_curves(self.directory)
        if self.group.sample_at_checkpoints:
            samples = self.draw_samples(state.ema_params, self.autoencoder_params)
            grid = generation.save_grid(
                samples, self.experiment, self.directory, step, self.is_main
            )
            metrics_log.write_image(step, "samples", grid)
