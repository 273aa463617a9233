"""Training: `train_and_evaluate(config, workdir)` and the pure step it is built from."""

import functools
import logging
import os
from collections.abc import Callable

import flax.linen as nn
import jax
import ml_collections
import numpy as np
import optax

from jaxdiff import conditioning, data, latent, parallel, sample
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.experiment import Experiment, create_experiment
from jaxdiff.loop import TrainCall, apply_update, compile_train_call, run_training
from jaxdiff.loss_curve import write_loss_curves
from jaxdiff.losses import dsm_loss
from jaxdiff.models import count_params, make_score_fn
from jaxdiff.reporting import MetricsLog
from jaxdiff.sde import SDE
from jaxdiff.state import (
    TrainState,
    abstract_train_state,
    create_optimizer,
    create_replicated_train_state,
)
from jaxdiff.workdir import training_workdir

logger = logging.getLogger("jaxdiff")


def draw_training_batch(
    key: jax.Array,
    dataset: data.DeviceDataset,
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
    x0, labels = data.draw_batch(
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
    dataset: data.DeviceDataset,
    *,
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch drawn on device from `dataset`. Pure; jit it."""
    step_key = jax.random.fold_in(key, state.step)
    batch_key, loss_key, dropout_key = jax.random.split(step_key, 3)
    num_classes = getattr(model, "num_classes", 0)
    x0, labels = draw_training_batch(batch_key, dataset, config, num_classes, batch_sharding)

    def loss_fn(params):
        score_fn = make_score_fn(
            model, params, sde, config.model, train=True, dropout_key=dropout_key, labels=labels
        )
        return dsm_loss(score_fn, sde, x0, loss_key, config.training.eps)

    loss, grads = jax.value_and_grad(loss_fn)(state.params)
    t = config.training
    return apply_update(state, grads, tx, t.ema_decay, t.on_nonfinite == "skip"), {
        "loss": loss,
        "grad_norm": optax.tree.norm(grads),
    }


def make_train_step(
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
) -> Callable[[TrainState, jax.Array, data.DeviceDataset], tuple[TrainState, dict]]:
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


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, allow_config_change: bool = False
) -> TrainState:
    """Trains the score model, resuming from the newest checkpoint in `workdir`.

    Writes `config.json`, `metrics.jsonl`, `checkpoints/` and, at each checkpoint,
    `samples/step_<step>.png` drawn with the EMA parameters. With
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
    experiment = create_experiment(config)
    config = experiment.config  # With automatic values resolved.
    images, labels = data.load_split(
        config.data.dataset, config.data.train_split, config.data.data_dir, config.data.download
    )
    with training_workdir(config, workdir, allow_config_change) as workdir:
        if jax.process_index() == 0:
            os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)
        return _train(experiment, workdir, images, labels)


def _train(
    experiment: Experiment, workdir: str, images: np.ndarray, labels: np.ndarray
) -> TrainState:
    """The body of `train_and_evaluate`, once the workdir is locked and checked."""
    config = experiment.config
    t = config.training
    is_main = jax.process_index() == 0
    root_key = jax.random.key(config.seed)
    train_key, init_key = jax.random.fold_in(root_key, 0), jax.random.fold_in(root_key, 1)
    autoencoder_params, latent_scale = None, None
    if experiment.autoencoder is not None:
        autoencoder_params = latent.train_autoencoder(experiment, workdir, images, labels)
        latents = latent.encode_images(experiment, autoencoder_params, images)
        latent_scale = latent.save_latent_scale(workdir, latents, is_main)
        dataset = data.to_device(latents * latent_scale, labels, experiment.mesh)
    else:
        dataset = data.to_device(images, labels, experiment.mesh)

    tx = create_optimizer(t)
    checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)
    metrics_log = None
    try:
        abstract_state = abstract_train_state(experiment, tx)
        if checkpointer.latest_step() is not None:
            state = checkpointer.restore(abstract_state, set_aside=True)
            logger.info("Resumed from step %d of %s", int(state.step), checkpointer.directory)
        else:
            state = create_replicated_train_state(init_key, experiment, tx)
        logger.info(
            "%s: %s with %s parameters, %d training %s of shape %s, %d device(s)",
            config.data.dataset,
            config.model.name,
            f"{count_params(state.params):,}",
            dataset.num_examples,
            "latents" if latent_scale else "images",
            experiment.data_shape,
            experiment.mesh.size,
        )

        train_call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
        draw_samples = sample.make_sample_fn(experiment, latent_scale)
        # Records past the checkpoint (logged by a run that was then killed) are dropped.
        metrics_log = MetricsLog(workdir, enabled=is_main, resume_step=int(state.step))

        def on_checkpoint(step, state):
            if is_main:
                write_loss_curves(workdir)
            if t.sample_at_checkpoints:
                samples = draw_samples(state.ema_params, autoencoder_params)
                grid = sample.save_grid(samples, experiment, workdir, step, is_main)
                metrics_log.write_image(step, "samples", grid)

        state = run_training(
            name="score model",
            state=state,
            train_call=train_call,
            dataset=dataset,
            key=train_key,
            group=t,
            checkpointer=checkpointer,
            metrics_log=metrics_log,
            on_checkpoint=on_checkpoint,
        )
    finally:
        # Also on errors and stops: checkpoint saves in flight complete, metrics are flushed.
        checkpointer.close()
        if metrics_log is not None:
            metrics_log.close()
    return state
