"""Training: `train_and_evaluate(config, workdir)` and the pure step it is built from."""

import json
import logging
import os
import time
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import conditioning, data, parallel, sample
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.errors import UserError
from jaxdiff.experiment import create_experiment
from jaxdiff.losses import dsm_loss
from jaxdiff.models import count_params, make_score_fn
from jaxdiff.reporting import MetricsLog
from jaxdiff.sde import SDE
from jaxdiff.state import (
    TrainState,
    abstract_train_state,
    create_learning_rate_schedule,
    create_optimizer,
    create_train_state,
)

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
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up: early on the average would be dominated by the random init.
    decay = jnp.minimum(config.training.ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    new_state = state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads)}


def make_train_call(
    model: nn.Module,
    sde: SDE,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    mesh: jax.sharding.Mesh,
    python_loop: bool | None = None,
) -> Callable[[TrainState, jax.Array, data.DeviceDataset], tuple[TrainState, dict]]:
    """Jits `training.steps_per_call` train steps as one call, donating the state.

    On accelerators the steps are a `lax.scan`. On CPU they are unrolled in
    Python instead: XLA:CPU runs the U-Net's backward pass inside any loop
    (even `lax.scan(unroll=True)`, which keeps a one-trip while loop) about 30x
    slower (benchmarks/results/train_throughput_cpu.json). `python_loop`
    overrides that choice (for benchmarks). Returns per-step metrics stacked
    along a leading axis.
    """
    num_steps = config.training.steps_per_call
    batch_sharding = parallel.batch_sharded(mesh)
    unroll_in_python = jax.default_backend() == "cpu" if python_loop is None else python_loop

    def call(state, key, dataset):
        def step(state):
            return train_step(
                state,
                key,
                dataset,
                model=model,
                sde=sde,
                tx=tx,
                config=config,
                batch_sharding=batch_sharding,
            )

        if unroll_in_python:
            metrics = []
            for _ in range(num_steps):
                state, step_metrics = step(state)
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)
        return jax.lax.scan(lambda state, _: step(state), state, length=num_steps)

    replicated = parallel.replicated(mesh)
    return jax.jit(call, donate_argnums=0, out_shardings=(replicated, replicated))


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir, or fails with one line if it cannot be written."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create workdir {workdir}: {e.strerror}") from None
    if not os.access(workdir, os.W_OK):
        raise UserError(f"workdir {workdir} is not writable")


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Writes the resolved config as `workdir/config.json` (atomically)."""
    path = os.path.join(workdir, "config.json")
    with open(path + ".tmp", "w") as f:
        json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
    """Trains the score model, resuming from the newest checkpoint in `workdir`.

    Writes `config.json`, `metrics.jsonl`, `checkpoints/` and, at each checkpoint,
    `samples/step_<step>.png` drawn with the EMA parameters.

    Returns:
      The final train state.
    """
    experiment = create_experiment(config)
    config = experiment.config  # With automatic values resolved.
    t = config.training
    images, labels = data.load_split(
        config.data.dataset, config.data.train_split, config.data.data_dir, config.data.download
    )
    workdir = os.path.abspath(workdir)
    prepare_workdir(workdir)
    is_main = jax.process_index() == 0
    if is_main:
        write_config(config, workdir)
        os.makedirs(os.path.join(workdir, "samples"), exist_ok=True)

    dataset = data.to_device(images, labels, experiment.mesh)
    tx = create_optimizer(t)
    schedule = create_learning_rate_schedule(t)
    root_key = jax.random.key(config.seed)
    train_key, init_key = jax.random.fold_in(root_key, 0), jax.random.fold_in(root_key, 1)
    checkpointer = Checkpointer(workdir, keep=t.keep_checkpoints)
    abstract_state = abstract_train_state(experiment, tx)
    if checkpointer.latest_step() is not None:
        state = checkpointer.restore(abstract_state)
        logger.info("Resumed from step %d of %s", int(state.step), checkpointer.directory)
    else:
        state = jax.jit(
            lambda key: create_train_state(key, experiment.model, experiment.image_shape, tx),
            out_shardings=jax.tree.map(lambda s: s.sharding, abstract_state),
        )(init_key)
    logger.info(
        "%s: %s with %s parameters, %d training images, %d device(s)",
        config.data.dataset,
        config.model.name,
        f"{count_params(state.params):,}",
        dataset.num_examples,
        experiment.mesh.size,
    )

    train_call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
    draw_samples = sample.make_sample_fn(experiment)
    metrics_log = MetricsLog(workdir, enabled=is_main)
    step = int(state.step)
    pending, last_log_step, last_log_time = [], step, time.perf_counter()
    first_call, start = True, last_log_time
    try:
        while step < t.num_steps:
            state, metrics = train_call(state, train_key, dataset)
            pending.append(metrics)
            step += t.steps_per_call
            if first_call:
                first_call = False
                jax.block_until_ready(state)
                logger.info(
                    "First call (with compilation) took %.1f s", time.perf_counter() - start
                )
                if step % t.log_every:  # Later calls of this interval give the throughput.
                    last_log_step, last_log_time = step, time.perf_counter()
            if step % t.log_every == 0 or step >= t.num_steps:
                fetched = jax.device_get(pending)  # The only host sync between logs.
                loss = float(np.mean([m["loss"] for m in fetched]))
                if not np.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite loss {loss} at step {step}; stopped without saving it "
                        f"(the last checkpoint is in {checkpointer.directory})"
                    )
                steps_per_sec = (step - last_log_step) / (time.perf_counter() - last_log_time)
                record = {
                    "loss": loss,
                    "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                    "learning_rate": float(schedule(step - 1)),
                    "steps_per_sec": steps_per_sec,
                    "images_per_sec": steps_per_sec * t.batch_size,
                }
                metrics_log.write(step, record)
                logger.info(
                    "step %d/%d  loss %.4f  lr %.2e  grad_norm %.3g  %.1f img/s  ETA %s",
                    step,
                    t.num_steps,
                    loss,
                    record["learning_rate"],
                    record["grad_norm"],
                    record["images_per_sec"],
                    _duration((t.num_steps - step) / steps_per_sec),
                )
                pending, last_log_step, last_log_time = [], step, time.perf_counter()
            if step % t.checkpoint_every == 0 or step >= t.num_steps:
                checkpointer.save(step, state)
                if t.sample_at_checkpoints:
                    grid = sample.save_grid(
                        draw_samples(state.ema_params), experiment, workdir, step, is_main
                    )
                    metrics_log.write_image(step, "samples", grid)
                # Saving and sampling are not training time.
                last_log_time = time.perf_counter()
    finally:
        # Also on errors: checkpoint saves in flight complete, metrics are flushed.
        checkpointer.close()
        metrics_log.close()
    return state


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
