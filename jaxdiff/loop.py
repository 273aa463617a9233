"""The training loop shared by every trained model: score model and autoencoder.

A model brings its own pure step (loss, gradients, then `apply_update`);
`compile_train_call` jits several steps as one call and `run_training` drives
the calls: logging, throughput, non-finite losses, checkpoints and callbacks.
"""

import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff import data, parallel
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.reporting import MetricsLog
from jaxdiff.state import TrainState, create_learning_rate_schedule

logger = logging.getLogger("jaxdiff")


def apply_update(
    state: TrainState, grads: Any, tx: optax.GradientTransformation, ema_decay: float
) -> TrainState:
    """The optimizer step and the EMA update shared by every model's train step."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up: early on the average would be dominated by the random init.
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    return state.replace(
        step=state.step + 1, params=params, ema_params=ema_params, opt_state=opt_state
    )


TrainCall = Callable[[TrainState, jax.Array, data.DeviceDataset], tuple[TrainState, dict]]


def compile_train_call(
    step_fn: Callable[[TrainState, jax.Array, data.DeviceDataset], tuple[TrainState, dict]],
    num_steps: int,
    mesh: jax.sharding.Mesh,
    python_loop: bool | None = None,
) -> TrainCall:
    """Jits `num_steps` applications of `step_fn` as one call, donating the state.

    On accelerators the steps are a `lax.scan`. On CPU they are unrolled in
    Python instead: XLA:CPU runs the U-Net's backward pass inside any loop
    (even `lax.scan(unroll=True)`, which keeps a one-trip while loop) about 30x
    slower (benchmarks/results/train_throughput_cpu.json). `python_loop`
    overrides that choice (for benchmarks). Returns per-step metrics stacked
    along a leading axis.
    """
    unroll_in_python = jax.default_backend() == "cpu" if python_loop is None else python_loop

    def call(state, key, dataset):
        if unroll_in_python:
            metrics = []
            for _ in range(num_steps):
                state, step_metrics = step_fn(state, key, dataset)
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)
        return jax.lax.scan(lambda state, _: step_fn(state, key, dataset), state, length=num_steps)

    replicated = parallel.replicated(mesh)
    return jax.jit(call, donate_argnums=0, out_shardings=(replicated, replicated))


def run_training(
    *,
    name: str,
    state: TrainState,
    train_call: TrainCall,
    dataset: data.DeviceDataset,
    key: jax.Array,
    group: ml_collections.ConfigDict,
    checkpointer: Checkpointer,
    metrics_log: MetricsLog,
    on_checkpoint: Callable[[int, TrainState], None] | None = None,
) -> TrainState:
    """Calls `train_call` until `group.num_steps`, logging, checkpointing and calling back.

    The loop of every trained model (score model, autoencoder). `group` is its
    optimisation config (training, autoencoder): num_steps, batch_size,
    steps_per_call, log_every, checkpoint_every and the learning-rate schedule.
    A non-finite loss raises FloatingPointError before that state is saved.
    """
    schedule = create_learning_rate_schedule(group)
    step = int(state.step)
    pending, last_log_step, last_log_time = [], step, time.perf_counter()
    first_call, start = True, last_log_time
    while step < group.num_steps:
        state, metrics = train_call(state, key, dataset)
        pending.append(metrics)
        step += group.steps_per_call
        if first_call:
            first_call = False
            jax.block_until_ready(state)
            logger.info(
                "%s: first call (with compilation) took %.1f s", name, time.perf_counter() - start
            )
            if step % group.log_every:  # Later calls of this interval give the throughput.
                last_log_step, last_log_time = step, time.perf_counter()
        if step % group.log_every == 0 or step >= group.num_steps:
            fetched = jax.device_get(pending)  # The only host sync between logs.
            loss = float(np.mean([m["loss"] for m in fetched]))
            if not np.isfinite(loss):
                raise FloatingPointError(
                    f"{name}: non-finite loss {loss} at step {step}; stopped without saving it "
                    f"(the last checkpoint is in {checkpointer.directory})"
                )
            steps_per_sec = (step - last_log_step) / (time.perf_counter() - last_log_time)
            record = {
                "loss": loss,
                "grad_norm": float(np.mean([m["grad_norm"] for m in fetched])),
                "learning_rate": float(schedule(step - 1)),
                "steps_per_sec": steps_per_sec,
                "images_per_sec": steps_per_sec * group.batch_size,
            }
            metrics_log.write(step, record)
            logger.info(
                "%s: step %d/%d  loss %.4f  lr %.2e  grad_norm %.3g  %.1f img/s  ETA %s",
                name,
                step,
                group.num_steps,
                loss,
                record["learning_rate"],
                record["grad_norm"],
                record["images_per_sec"],
                _duration((group.num_steps - step) / steps_per_sec),
            )
            pending, last_log_step, last_log_time = [], step, time.perf_counter()
        if step % group.checkpoint_every == 0 or step >= group.num_steps:
            checkpointer.save(step, state)
            if on_checkpoint is not None:
                on_checkpoint(step, state)
            # Saving and sampling are not training time.
            last_log_time = time.perf_counter()
    return state


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
