"""The training loop shared by every trained model: score model, autoencoder, classifier.

A model brings its own pure step (loss, gradients, then `apply_update`);
`compile_train_call` jits several steps as one call and `run_training` drives
the calls: logging, throughput, non-finite losses, checkpoints and callbacks.
`trainer.Trainer` sets the loop up around them.
"""

import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff.core import parallel, preemption
from jaxdiff.core.compiler import jit, memory_summary
from jaxdiff.data import batches, streaming
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.reporting import MetricsLog
from jaxdiff.training.state import TrainState, create_learning_rate_schedule

logger = logging.getLogger("jaxdiff")


def apply_update(
    state: TrainState,
    grads: Any,
    tx: optax.GradientTransformation,
    ema_decay: float,
    skip_nonfinite: bool = False,
) -> TrainState:
    """The optimizer step and the EMA update shared by every model's train step.

    With `skip_nonfinite`, a step whose gradients hold a NaN or Inf leaves
    parameters, EMA and optimizer state as they were; only the step count moves
    on (so the next step draws another batch).
    """
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    # EMA warm-up: early on the average would be dominated by the random init.
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, state.ema_params, params)
    updated = state.replace(params=params, ema_params=ema_params, opt_state=opt_state)
    if skip_nonfinite:
        finite = jnp.isfinite(optax.tree.norm(grads))
        updated = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    return updated.replace(step=state.step + 1)


TrainData = batches.DeviceDataset | batches.StreamedBatches


TrainCall = Callable[[TrainState, jax.Array, TrainData], tuple[TrainState, dict]]


def compile_train_call(
    step_fn: Callable[[TrainState, jax.Array, TrainData], tuple[TrainState, dict]],
    num_steps: int,
    mesh: jax.sharding.Mesh,
    python_loop: bool | None = None,
) -> TrainCall:
    """Jits `num_steps` applications of `step_fn` as one call, donating the state.

    On accelerators the steps are a `lax.scan`. On CPU they are unrolled in
    Python instead: XLA:CPU runs the U-Net's backward pass inside any loop
    (even `lax.scan(unroll=True)`, which keeps a one-trip while loop) many
    times slower (docs/performance.md). `python_loop`
    overrides that choice (for benchmarks). Returns per-step metrics stacked
    along a leading axis.

    The call takes a `DeviceDataset`, which every step draws from, or the
    call's `StreamedBatches`, whose i-th batch step i takes.
    """
    unroll_in_python = jax.default_backend() == "cpu" if python_loop is None else python_loop

    def call(state, key, dataset):
        streamed = isinstance(dataset, batches.StreamedBatches)
        if unroll_in_python:
            metrics = []
            for i in range(num_steps):
                batch = jax.tree.map(lambda a, i=i: a[i], dataset) if streamed else dataset
                state, step_metrics = step_fn(state, key, batch)
                metrics.append(step_metrics)
            return state, jax.tree.map(lambda *m: jnp.stack(m), *metrics)
        if streamed:
            return jax.lax.scan(lambda state, batch: step_fn(state, key, batch), state, dataset)
        return jax.lax.scan(lambda state, _: step_fn(state, key, dataset), state, length=num_steps)

    replicated = parallel.replicated(mesh)
    return jit(call, donate_argnums=0, out_shardings=(replicated, replicated))


def run_training(
    *,
    name: str,
    state: TrainState,
    train_call: TrainCall,
    dataset: "batches.DeviceDataset | streaming.HostStream",
    key: jax.Array,
    group: ml_collections.ConfigDict,
    checkpointer: Checkpointer,
    metrics_log: MetricsLog,
    on_checkpoint: Callable[[int, TrainState], None] | None = None,
    group_name: str = "training",
) -> TrainState:
    """Calls `train_call` until `group.num_steps`, logging, checkpointing and calling back.

    The loop of every trained model (see `trainer.Trainer`). `group` is its optimisation
    config (`group_name`: training, autoencoder, classifier): num_steps, batch_size,
    steps_per_call, log_every, checkpoint_every, on_nonfinite and the
    learning-rate schedule.

    Nothing unchecked is saved: before each checkpoint the losses and gradient
    norms of every step since the last check are fetched. A non-finite one
    raises FloatingPointError (`on_nonfinite="stop"`) naming the step, and the
    newest checkpoint stays the last good one; with "skip" such steps were not
    applied (see `apply_update`) and are counted in `nonfinite_steps`. A stop
    signal (see `preemption`) ends the loop after the current call with a
    checkpoint of that step and raises `Preempted`.

    `dataset` is on the devices, or a `streaming.HostStream` whose batches
    come call by call.
    """
    schedule = create_learning_rate_schedule(group)
    step = int(state.step)
    if isinstance(dataset, streaming.HostStream):
        batches = dataset.calls(key, step, group.num_steps, group.steps_per_call, group.batch_size)
    else:
        batches = itertools.repeat(dataset)
    pending, last_log_step, last_log_time = [], step, time.perf_counter()
    first_call, start, compiled = True, last_log_time, None
    while step < group.num_steps:
        batch = next(batches)
        if compiled is None:
            # Compiled ahead of the first call, so the memory XLA assigned it is known
            # before it runs; every call then runs this one program.
            compiled = train_call.lower(state, key, batch).compile()
            logger.info("%s: %s", name, memory_summary(compiled, "train call"))
        state, metrics = compiled(state, key, batch)
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
        finished = step >= group.num_steps
        due_log = step % group.log_every == 0 or finished
        due_checkpoint = step % group.checkpoint_every == 0 or finished
        # One process may see a signal one call before another: at log steps
        # (already a host sync) they agree; alone, a process stops at once.
        stop_signal = preemption.stop_requested()
        if jax.process_count() > 1:
            stop_signal = parallel.any_process(stop_signal) if due_log else None
        if due_checkpoint and not (due_log or stop_signal):
            # Nothing unchecked is saved: the checkpoint's steps are checked now,
            # and logged with the rest of their interval.
            pending = jax.device_get(pending)
            _check_and_summarize(name, pending, step, group, group_name, checkpointer.directory)
        if due_log or stop_signal:
            # The only host sync between logs (and checkpoints).
            record = _check_and_summarize(
                name, jax.device_get(pending), step, group, group_name, checkpointer.directory
            )
            # Zero steps timed when a stop comes in the first call: no throughput then.
            steps_per_sec = (step - last_log_step) / (time.perf_counter() - last_log_time)
            record["learning_rate"] = float(schedule(step - 1))
            if steps_per_sec > 0:
                record["steps_per_sec"] = steps_per_sec
                record["images_per_sec"] = steps_per_sec * group.batch_size
            metrics_log.write(step, record)
            logger.info(
                "%s: step %d/%d  loss %.4f  lr %.2e  grad_norm %.3g%s%s",
                name,
                step,
                group.num_steps,
                record["loss"],
                record["learning_rate"],
                record["grad_norm"],
                f"  {record['images_per_sec']:.1f} img/s  ETA "
                + _duration((group.num_steps - step) / steps_per_sec)
                if steps_per_sec > 0
                else "",
                f"  ({record['nonfinite_steps']:g} non-finite steps skipped)"
                if record.get("nonfinite_steps")
                else "",
            )
            pending, last_log_step, last_log_time = [], step, time.perf_counter()
        if due_checkpoint or stop_signal:
            checkpointer.save(step, state)
        if stop_signal:
            raise preemption.Preempted(
                f"{name}: stopped by {stop_signal} at step {step}/{group.num_steps}; "
                f"saved checkpoint {step} in {checkpointer.directory}; "
                "run the same command again to resume"
            )
        if due_checkpoint:
            if on_checkpoint is not None:
                on_checkpoint(step, state)
            # Saving and sampling are not training time.
            last_log_time = time.perf_counter()
    return state


def _check_and_summarize(
    name: str,
    fetched: list[dict],
    step: int,
    group: ml_collections.ConfigDict,
    group_name: str,
    directory: str,
) -> dict[str, float]:
    """Loss and gradient-norm means of the fetched steps, after checking them for NaN/Inf.

    Raises:
      FloatingPointError: with `group.on_nonfinite == "stop"`, naming the first bad step.
    """
    losses = np.concatenate([np.atleast_1d(m["loss"]) for m in fetched])
    norms = np.concatenate([np.atleast_1d(m["grad_norm"]) for m in fetched])
    bad = ~(np.isfinite(losses) & np.isfinite(norms))
    if bad.any() and group.on_nonfinite != "skip":
        first = step - len(losses) + int(np.argmax(bad)) + 1
        value = losses[bad][0] if not np.isfinite(losses[bad][0]) else norms[bad][0]
        raise FloatingPointError(
            f"{name}: non-finite loss or gradient ({value}) at step {first}; stopped without "
            f"saving it (the last good checkpoint is in {directory}; lower the learning rate, "
            f"or set --config.{group_name}.on_nonfinite=skip to skip such steps)"
        )
    good = ~bad
    record = {
        "loss": float(losses[good].mean()) if good.any() else float("nan"),
        "grad_norm": float(norms[good].mean()) if good.any() else float("nan"),
    }
    if group.on_nonfinite == "skip":
        record["nonfinite_steps"] = float(bad.sum())
    return record


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
