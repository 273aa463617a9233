"""The skeleton every trained component shares: restore or initialise, train, evaluate.

`Trainer.train` owns what each component would otherwise set up again: the
checkpointer of its directory, the resumption from the newest readable
checkpoint (a fresh state otherwise), the metrics log, `run_training` and the
closing of both, on errors and stop signals too. A component (score model,
autoencoder, classifier) names its config group, log name and random streams,
and fills in the hooks: its initial state, its train call and data, and what
to do at checkpoints and once training ends.
"""

import abc
import functools
import logging
import os
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
from jaxdiff.training.reporting import MetricsLog
from jaxdiff.training.state import (
    TrainState,
    abstract_state,
    create_optimizer,
    create_replicated_state,
)

logger = logging.getLogger("jaxdiff")

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
    ):
        """`tx`: the optimizer, if already built; by default the group's."""
        self.config = config
        self.mesh = mesh
        self.directory = directory
        self.group = config[self.group_name]
        self.tx = create_optimizer(self.group) if tx is None else tx
        self.is_main = jax.process_index() == 0

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
            # Records past the checkpoint (logged by a run that was then killed) are dropped.
            metrics_log = MetricsLog(
                self.directory, enabled=self.is_main, resume_step=int(state.step)
            )
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
            self.evaluate(state, metrics_log)
            return state
        finally:
            # Also on errors and stops: checkpoint saves in flight complete, metrics are flushed.
            checkpointer.close()
            if metrics_log is not None:
                metrics_log.close()
