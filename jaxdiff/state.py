"""The train state and its optimizer."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdiff import parallel
from jaxdiff.errors import UserError
from jaxdiff.experiment import Experiment


@flax.struct.dataclass
class TrainState:
    """Everything a checkpoint holds. The RNG is not here: step keys are fold_in(key, step)."""

    step: jax.Array
    params: Any
    ema_params: Any
    opt_state: Any


def create_learning_rate_schedule(training_config) -> optax.Schedule:
    """Linear warmup to the peak, then cosine decay (or constant) until num_steps."""
    c = training_config
    if c.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            0.0,
            c.learning_rate,
            c.warmup_steps,
            max(c.num_steps, c.warmup_steps + 1),
            end_value=c.learning_rate * c.end_lr_factor,
        )
    if c.schedule == "constant":
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, c.learning_rate, c.warmup_steps),
                optax.constant_schedule(c.learning_rate),
            ],
            [c.warmup_steps],
        )
    raise UserError(
        f"unknown training.schedule {c.schedule!r}; choose one of ['constant', 'cosine']"
    )


def create_optimizer(training_config) -> optax.GradientTransformation:
    """AdamW (decay on kernels only) after global-norm clipping."""
    c = training_config
    decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)  # noqa: E731
    adamw = optax.adamw(
        create_learning_rate_schedule(c), weight_decay=c.weight_decay, mask=decay_mask
    )
    return optax.chain(optax.clip_by_global_norm(c.grad_clip), adamw) if c.grad_clip else adamw


def create_train_state(
    key: jax.Array, model: nn.Module, image_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Initialises parameters (EMA starts equal to them) and the optimizer state."""
    # Labels are ignored by unconditional nets.
    dummy = (jnp.zeros((1, *image_shape)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
    params = model.init(key, *dummy)["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def abstract_train_state(experiment: Experiment, tx: optax.GradientTransformation) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of the train state, computed without FLOPs."""
    shapes = jax.eval_shape(
        lambda: create_train_state(jax.random.key(0), experiment.model, experiment.image_shape, tx)
    )
    replicated = parallel.replicated(experiment.mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )
