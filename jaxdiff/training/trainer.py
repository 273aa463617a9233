"""The skeleton every trained component shares: restore or initialise, train, evaluate.

`Trainer.train` owns what each component would otherwise set up again: the
checkpointer of its directory, the resumption from the newest readable
checkpoint (a fresh state otherwise), the metrics log, `run_training` and the
closing of both, on errors and stop signals too; at the end of a completed
run, the line saying where its checkpoint is and `summary.json`. A component (score model,
autoencoder, classifier) names its config group, log name and random streams,
and fills in the hooks: its initial state, its train call and data, and what
to do at checkpoints and once training ends.
"""

import abc
import datetime
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from jaxdiff.core import parallel, random
from jaxdiff.data import batches, streaming
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.loop import TrainCall, compile_train_call, run_training
from jaxdiff.training.reporting import MetricsLog, write_parameter_overview
from jaxdiff.training.state import (
    TrainState,
    abstract_state,
    create_optimizer,
    create_replicated_state,
)

logger = logging.getLogger("jaxdiff")

# A completed run's record in its directory (`run_summary`).
SUMMARY_FILE = "summary.json"

# What a pure train step returns: the new state and the step's metrics.
StepResult = tuple[TrainState, dict[str, jax.Array]]


class Trainer(abc.ABC):
    """Trains one component in `directory`, resuming from its newest checkpoint.

    Subclasses set the class attributes and implement `create_state`,
    `train_call` and `training_data`; by default `resume` logs one line and
    the other hooks do nothing.

    Attributes:
      name: the component in logs and errors ("score model").
      group_name: its optimisation config group ("training"): num_steps,
        batch_size, the optimizer, logging and checkpointing.
      init_stream: the random stream of its initial parameters.
      train_stream: the random stream of its train steps.
      config_name: the config the run was started with, as `--config` named
        it ("configs/mnist.py"), for `summary.json`; None if unknown.
    """

    name: str
    group_name: str
    init_stream: random.Stream
    train_stream: random.Stream

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        mesh: jax.sharding.Mesh,
        directory: str,
        tx: optax.GradientTransformation | None = None,
        config_name: str | None = None,
    ):
        """`tx`: the optimizer, if already built; by default the group's."""
        self.config = config
        self.mesh = mesh
        self.directory = directory
        self.group = config[self.group_name]
        self.tx = create_optimizer(self.group) if tx is None else tx
        self.is_main = jax.process_index() == 0
        self.config_name = config_name

    @abc.abstractmethod
    def create_state(self, key: jax.Array) -> TrainState:
        """A fresh step-0 state initialised from `key`; pure (it is jitted and shape-traced)."""

    @abc.abstractmethod
    def train_call(self) -> TrainCall:
        """The group's `steps_per_call` train steps as one jitted call."""

    @abc.abstractmethod
    def training_data(self) -> batches.DeviceDataset | streaming.HostStream:
        """The data the train call draws from, on the devices or streamed."""

    def resume(self, state: TrainState, checkpoint_dir: str) -> bool:
        """Reports a restored `state`; False when it is final and training is skipped."""
        logger.info("%s: resumed from step %d of %s", self.name, int(state.step), checkpoint_dir)
        return True

    def on_start(  # noqa: B027
        self, state: TrainState, dataset: batches.DeviceDataset | streaming.HostStream
    ) -> None:
        """Called once the state and data are ready, before the first step."""

    def on_checkpoint(  # noqa: B027
        self, step: int, state: TrainState, metrics_log: MetricsLog
    ) -> None:
        """Called after each checkpoint is saved."""

    def evaluate(self, state: TrainState, metrics_log: MetricsLog) -> None:  # noqa: B027
        """Called once training has reached `num_steps`."""

    def done_line(self, step: int, checkpoint_dir: str) -> str:
        """The line logged at the end of a completed run: where its checkpoint is."""
        return f"{self.name} done: checkpoint step {step} in {display_path(checkpoint_dir)}"

    def compile_steps(self, step_fn: Callable[..., StepResult], **bound: Any) -> TrainCall:
        """The group's `steps_per_call` applications of a pure step as one jitted call.

        `step_fn(state, key, data, *, tx, config, batch_sharding, **bound)`, such
        as `classifier_step`, gets the trainer's optimizer, config and batch sharding.
        """
        step = functools.partial(
            step_fn,
            tx=self.tx,
            config=self.config,
            batch_sharding=parallel.batch_sharded(self.mesh),
            **bound,
        )
        return compile_train_call(step, self.group.steps_per_call, self.mesh)

    def place_data(
        self, images: np.ndarray, labels: np.ndarray, batch_key: streaming.BatchKeyFn, what: str
    ) -> batches.DeviceDataset | streaming.HostStream:
        """A training split on the devices or streamed (`streaming.training_data`)."""
        return streaming.training_data(
            images, labels, self.mesh, self.config.data.on_device, batch_key, what
        )

    def abstract_state(self) -> TrainState:
        """Shapes, dtypes and shardings of the state (see `state.abstract_state`)."""
        return abstract_state(functools.partial(self.create_state, jax.random.key(0)), self.mesh)

    def train(self) -> TrainState:
        """Trains until the group's `num_steps`, then evaluates; returns the final state.

        A stop signal saves a checkpoint and raises `preemption.Preempted`;
        running again resumes from it.
        """
        if self.is_main:
            os.makedirs(self.directory, exist_ok=True)
        checkpointer = Checkpointer(self.directory, keep=self.group.keep_checkpoints)
        metrics_log = None
        try:
            if checkpointer.latest_step() is not None:
                state = checkpointer.restore(self.abstract_state(), set_aside=True)
                if not self.resume(state, checkpointer.directory):
                    return state
            else:
                key = random.stream(self.config.seed, self.init_stream)
                state = create_replicated_state(self.create_state, key, self.mesh)
            dataset = self.training_data()
            self.on_start(state, dataset)
            if self.is_main:
                write_parameter_overview(self.directory, state.params)
            # Records past the checkpoint (logged by a run that was then killed) are dropped.
            metrics_log = MetricsLog(
                self.directory, enabled=self.is_main, resume_step=int(state.step)
            )
            start, start_step = time.perf_counter(), int(state.step)
            state = run_training(
                name=self.name,
                state=state,
                train_call=self.train_call(),
                dataset=dataset,
                key=random.stream(self.config.seed, self.train_stream),
                group=self.group,
                checkpointer=checkpointer,
                metrics_log=metrics_log,
                on_checkpoint=lambda step, state: self.on_checkpoint(step, state, metrics_log),
                group_name=self.group_name,
            )
            train_seconds = time.perf_counter() - start
            self.evaluate(state, metrics_log)
            if self.is_main:
                self._report_completion(
                    int(state.step), start_step, train_seconds, checkpointer.directory
                )
            return state
        finally:
            # Also on errors and stops: checkpoint saves in flight complete, metrics are flushed.
            checkpointer.close()
            if metrics_log is not None:
                metrics_log.close()

    def _report_completion(
        self, step: int, start_step: int, train_seconds: float, checkpoint_dir: str
    ) -> None:
        """Writes `summary.json` and logs `done_line` (process 0, once `num_steps` is reached)."""
        # A run started again once complete trained nothing: its record stays.
        if step > start_step or not os.path.exists(summary_path(self.directory)):
            summary = run_summary(self.directory, self.name, self.config_name, step, train_seconds)
            write_summary(self.directory, summary)
        logger.info("%s", self.done_line(step, checkpoint_dir))


def display_path(path: str) -> str:
    """`path` as a message shows it: relative to the working directory when inside it."""
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def run_summary(
    directory: str, component: str, config_name: str | None, steps: int, train_seconds: float
) -> dict[str, Any]:
    """What `summary.json` records of a completed run (docs/checkpoints.md lists the fields).

    `final_loss` and `images_per_sec` are the last ones `directory/metrics.jsonl`
    logged (None where it logged none); `train_seconds` is the wall time of this
    process's training loop, the first call's compilation and the checkpoint
    saves included.
    """
    logged = {}
    path = os.path.join(directory, "metrics.jsonl")
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:  # A torn last line.
                    continue
                logged.update({k: record[k] for k in ("loss", "images_per_sec") if k in record})
    loss = logged.get("loss")
    return {
        "component": component,
        "config": config_name,
        "steps": steps,
        "final_loss": loss if loss is not None and math.isfinite(loss) else None,
        "images_per_sec": logged.get("images_per_sec"),
        "train_seconds": round(train_seconds, 1),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "jax": jax.__version__,
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
    }


def summary_path(directory: str) -> str:
    """Where a trained component's directory keeps its `summary.json`."""
    return os.path.join(directory, SUMMARY_FILE)


def write_summary(directory: str, summary: dict[str, Any]) -> str:
    """Writes `directory/summary.json` atomically; returns its path."""
    path = summary_path(directory)
    with open(path + ".tmp", "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    os.replace(path + ".tmp", path)
    return path
