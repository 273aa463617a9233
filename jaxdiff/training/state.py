"""The train state and its optimizer."""

from collections.abc import Callable
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdiff.core import parallel
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError
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


def init_state(params: Any, tx: optax.GradientTransformation) -> TrainState:
    """A step-0 state: the EMA starts equal to the parameters."""
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        ema_params=jax.tree.map(jnp.copy, params),
        opt_state=tx.init(params),
    )


def create_train_state(
    key: jax.Array, model: nn.Module, data_shape: tuple[int, ...], tx: optax.GradientTransformation
) -> TrainState:
    """Initialises a score model for data of `data_shape` and its optimizer state."""
    # Labels are ignored by unconditional nets.
    dummy = (jnp.zeros((1, *data_shape)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
    return init_state(model.init(key, *dummy)["params"], tx)


def create_autoencoder_state(
    key: jax.Array,
    autoencoder: nn.Module,
    image_shape: tuple[int, ...],
    tx: optax.GradientTransformation,
) -> TrainState:
    """Initialises latent diffusion's autoencoder and its optimizer state."""
    return init_state(autoencoder.init(key, jnp.zeros((1, *image_shape)))["params"], tx)


def abstract_state(create: Callable[[], TrainState], mesh: jax.sharding.Mesh) -> TrainState:
    """Shapes, dtypes and (replicated) shardings of `create()`'s state, computed without FLOPs."""
    shapes = jax.eval_shape(create)
    replicated = parallel.replicated(mesh)
    return jax.tree.map(
        lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=replicated), shapes
    )


def abstract_train_state(experiment: Experiment, tx: optax.GradientTransformation) -> TrainState:
    """The score model's abstract state (see `abstract_state`)."""
    return abstract_state(
        lambda: create_train_state(jax.random.key(0), experiment.model, experiment.data_shape, tx),
        experiment.mesh,
    )


def create_replicated_state(
    create: Callable[[jax.Array], TrainState], key: jax.Array, mesh: jax.sharding.Mesh
) -> TrainState:
    """`create(key)`, made under `jax.jit` and replicated over `mesh`.

    Placed as the train call returns it, so that the call compiled for the
    first step is the one every later step reuses; a state created outside
    `jax.jit` has another sharding, and the second call would compile again.
    """
    return jit(create, out_shardings=parallel.replicated(mesh))(key)


def create_replicated_train_state(
    key: jax.Array, experiment: Experiment, tx: optax.GradientTransformation
) -> TrainState:
    """`create_train_state` for the experiment's model, replicated over its mesh."""
    return create_replicated_state(
        lambda key: create_train_state(key, experiment.model, experiment.data_shape, tx),
        key,
        experiment.mesh,
    )
