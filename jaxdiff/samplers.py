"""Reverse-time samplers, each a single `lax.scan` over a fixed time grid.

All of them take a `score_fn(x, t)` and an SDE, so they work with any model
(and with classifier-free guidance, which is just another score_fn). Each
returns the final sample; `num_steps` is the number of scan iterations.

With `snapshots=F > 0` a sampler returns (sample, trajectory) instead: F
states of its num_steps + 1 (the prior draw, then the mean after each step),
evenly spaced by `snapshot_states`, the last being the sample itself. They are
written into a carried (F + 1, ...) buffer as the scan goes (steps that are not
snapshots write to the spare last slot), so memory is F samples, not num_steps.
Without snapshots the scan is exactly the plain one.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.common import ScoreFn, per_example
from jaxdiff.errors import UserError
from jaxdiff.registry import Registry
from jaxdiff.sde import SDE

Sampler = Callable[[jax.Array, ScoreFn, SDE, tuple[int, ...]], jax.Array]

# The samplers `sampling.sampler` chooses. Each is a function
# (key, score_fn, sde, shape, *, num_steps, eps, snapshots, <its fields>) -> samples,
# registered with the sampling.* fields it reads beyond num_steps and eps, its
# network evaluations per sample `nfe(sampling_config)`, and optionally a
# `check(sampling_config)` that raises UserError for settings it cannot take.
SAMPLERS = Registry("sampling.sampler")


def snapshot_states(num_steps: int, frames: int) -> np.ndarray:
    """Which of the num_steps + 1 sampler states (0: the prior draw) `frames` snapshots show.

    Evenly spaced from the first state to the last.

    Raises:
      UserError: fewer than 2 frames or more than the sampler has states.
    """
    if not 2 <= frames <= num_steps + 1:
        raise UserError(
            f"sampling.trajectory_frames must be in [2, num_steps + 1 = {num_steps + 1}], "
            f"got {frames}"
        )
    # Rounded half up; a spacing >= 1 keeps the states distinct.
    return np.floor(np.linspace(0, num_steps, frames) + 0.5).astype(np.int32)


def state_times(sampling_config) -> np.ndarray:
    """The diffusion time t of each of the sampler's num_steps + 1 states (1 for the prior draw)."""
    c = sampling_config
    if c.sampler == "ode":
        return np.linspace(1.0, c.eps, c.num_steps + 1)
    ts = np.linspace(1.0, c.eps, c.num_steps)
    if c.sampler == "pc":  # Steps t_i -> t_{i+1}, the last to 0.
        return np.concatenate([ts, [0.0]])
    # Euler-Maruyama: fixed steps dt from each t_i; the last ends at eps - dt, at or below 0.
    return np.concatenate([[1.0], ts - (ts[0] - ts[1])])


def _scan(step, carry, xs, *, num_steps, snapshots, prior, state):
    """lax.scan(step, carry, xs)'s final carry, plus `snapshots` states when asked.

    `state(carry)` is the sampler's current estimate (what a snapshot records);
    `prior` is the state before the first step.
    """
    if not snapshots:
        carry, _ = jax.lax.scan(step, carry, xs)
        return carry, None
    states = snapshot_states(num_steps, snapshots)
    # Slot of each step's resulting state (step i gives state i + 1); spare slot otherwise.
    slots = np.full(num_steps, snapshots, np.int32)
    slots[states[1:] - 1] = np.arange(1, snapshots)
    buffer = jnp.zeros((snapshots + 1, *prior.shape), prior.dtype).at[0].set(prior)

    def recording_step(carry_and_buffer, inputs):
        carry, buffer = carry_and_buffer
        inner, slot = inputs
        carry, _ = step(carry, inner)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, state(carry), slot, 0)
        return (carry, buffer), None

    (carry, buffer), _ = jax.lax.scan(recording_step, (carry, buffer), (xs, jnp.asarray(slots)))
    return carry, buffer[:snapshots]


@SAMPLERS.register("euler_maruyama", nfe=lambda c: c.num_steps)
def euler_maruyama(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The seed's Euler-Maruyama sampler for the reverse SDE.

    Times t_i = linspace(1, eps, num_steps), fixed step dt = t_0 - t_1:
    x <- x - (f - g^2 score) dt + g sqrt(dt) z. Returns the last step's mean
    (no noise is added at the end). NFE = num_steps.
    """
    init_key, key = jax.random.split(key)
    ts = jnp.linspace(1.0, eps, num_steps)
    dt = ts[0] - ts[1]

    def step(carry, inputs):
        x, _ = carry
        t, step_key = inputs
        tb = jnp.full((shape[0],), t)
        x_mean = x - sde.reverse_drift(x, tb, score_fn(x, tb)) * dt
        noise = jax.random.normal(step_key, shape)
        return (x_mean + per_example(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise, x_mean), None

    x = sde.prior_sample(init_key, shape)
    (_, x_mean), trajectory = _scan(
        step,
        (x, x),
        (ts, jax.random.split(key, num_steps)),
        num_steps=num_steps,
        snapshots=snapshots,
        prior=x,
        state=lambda carry: carry[1],
    )
    return x_mean if not snapshots else (x_mean, trajectory)


def _langevin_corrector(key, score_fn, sde, x, t, s, snr):
    """One Langevin MCMC step at time t with step size set by the signal-to-noise ratio.

    step = 2 a^2 (snr ||z|| / ||score||)^2 per example, where a^2 = alpha(t)^2 /
    alpha(s)^2 is 1 for VE and 1 - beta_i for VP (score_sde's choice). Norms are
    per example so samples in a batch do not influence each other.
    """
    score = score_fn(x, t)
    noise = jax.random.normal(key, x.shape)
    axes = tuple(range(1, x.ndim))
    grad_norm = jnp.sqrt(jnp.sum(score**2, axis=axes))
    noise_norm = jnp.sqrt(jnp.sum(noise**2, axis=axes))
    a, _ = sde.transition(s, t)
    step_size = 2 * a**2 * (snr * noise_norm / jnp.maximum(grad_norm, 1e-12)) ** 2
    x_mean = x + per_example(step_size, x) * score
    return x_mean + per_example(jnp.sqrt(2 * step_size), x) * noise


def _reverse_diffusion_predictor(key, score_fn, sde, x, t, s):
    """Ancestral step from t to s < t through the exact forward kernel x_t = a x_s + sqrt(v) z.

    x_s = (x_t + v score) / a + sqrt(v) z: SMLD's reverse diffusion for VE and
    DDPM's ancestral sampling for VP. Returns (sample, mean).
    """
    a, v = sde.transition(s, t)
    x_mean = (x + per_example(v, x) * score_fn(x, t)) / per_example(a, x)
    return x_mean + per_example(jnp.sqrt(v), x) * jax.random.normal(key, x.shape), x_mean


def _euler_maruyama_predictor(key, score_fn, sde, x, t, s):
    """One Euler-Maruyama step from t to s < t. Returns (sample, mean)."""
    dt = per_example(t - s, x)
    x_mean = x - sde.reverse_drift(x, t, score_fn(x, t)) * dt
    noise = jax.random.normal(key, x.shape)
    return x_mean + per_example(sde.diffusion(t), x) * jnp.sqrt(dt) * noise, x_mean


PREDICTORS = {
    "reverse_diffusion": _reverse_diffusion_predictor,
    "euler_maruyama": _euler_maruyama_predictor,
}


def _check_pc(sampling_config) -> None:
    c = sampling_config
    if c.predictor not in PREDICTORS:
        raise UserError(
            f"unknown sampling.predictor {c.predictor!r}; choose one of {sorted(PREDICTORS)}"
        )
    if c.corrector_steps < 0:
        raise UserError(f"sampling.corrector_steps must be >= 0, got {c.corrector_steps}")


@SAMPLERS.register(
    "pc",
    fields=("predictor", "snr", "corrector_steps"),
    nfe=lambda c: c.num_steps * (1 + c.corrector_steps),
    check=_check_pc,
)
def predictor_corrector(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    predictor: str,
    snr: float,
    corrector_steps: int,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Predictor-corrector sampling (Song et al. 2021).

    At each t_i = linspace(1, eps, num_steps): `corrector_steps` Langevin steps,
    then a predictor step to t_{i+1} (t_num_steps = 0). Returns the last
    predictor mean. NFE = num_steps * (1 + corrector_steps).
    """
    predictor_fn = PREDICTORS[predictor]
    init_key, key = jax.random.split(key)
    ts = jnp.linspace(1.0, eps, num_steps)
    next_ts = jnp.concatenate([ts[1:], jnp.zeros(1)])

    def step(carry, inputs):
        x, _ = carry
        t, s, step_key = inputs
        tb, sb = jnp.full((shape[0],), t), jnp.full((shape[0],), s)
        keys = jax.random.split(step_key, corrector_steps + 1)
        for i in range(corrector_steps):
            x = _langevin_corrector(keys[i], score_fn, sde, x, tb, sb, snr)
        return predictor_fn(keys[-1], score_fn, sde, x, tb, sb), None

    x = sde.prior_sample(init_key, shape)
    xs = (ts, next_ts, jax.random.split(key, num_steps))
    (_, x_mean), trajectory = _scan(
        step,
        (x, x),
        xs,
        num_steps=num_steps,
        snapshots=snapshots,
        prior=x,
        state=lambda carry: carry[1],
    )
    return x_mean if not snapshots else (x_mean, trajectory)


@SAMPLERS.register("ode", nfe=lambda c: 2 * c.num_steps)
def probability_flow_ode(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Deterministic sampling: Heun's method on the probability-flow ODE from t=1 to eps.

    num_steps Heun steps on linspace(1, eps, num_steps + 1); only the prior draw
    is random. NFE = 2 * num_steps.
    """
    ts = jnp.linspace(1.0, eps, num_steps + 1)

    def velocity(x, t):
        tb = jnp.full((shape[0],), t)
        return sde.probability_flow_drift(x, tb, score_fn(x, tb))

    def step(x, inputs):
        t, s = inputs
        h = s - t
        d1 = velocity(x, t)
        d2 = velocity(x + h * d1, s)
        return x + 0.5 * h * (d1 + d2), None

    prior = sde.prior_sample(key, shape)
    x, trajectory = _scan(
        step,
        prior,
        (ts[:-1], ts[1:]),
        num_steps=num_steps,
        snapshots=snapshots,
        prior=prior,
        state=lambda carry: carry,
    )
    return x if not snapshots else (x, trajectory)


def create_sampler(sampling_config, snapshots: int = 0) -> Sampler:
    """Binds the sampler named by `sampling_config.sampler` to its settings.

    Args:
      sampling_config: the config's `sampling` group.
      snapshots: 0, or how many states of the trajectory to return as well.

    Returns:
      A function (key, score_fn, sde, shape) -> samples, ready for `jax.jit`;
      with snapshots, -> (samples, (snapshots, *shape) trajectory).
    """
    c = sampling_config
    sampler = SAMPLERS.get(c.sampler)
    if c.num_steps < 2:
        raise UserError(f"sampling.num_steps must be >= 2, got {c.num_steps}")
    if not 0.0 < c.eps < 1.0:
        raise UserError(f"sampling.eps must be in (0, 1), got {c.eps}")
    if "check" in sampler.extras:
        sampler.extras["check"](c)
    kwargs = {"num_steps": c.num_steps, "eps": c.eps, **{f: c[f] for f in sampler.fields}}
    if snapshots:
        snapshot_states(c.num_steps, snapshots)  # Validates the count.
        kwargs["snapshots"] = snapshots
    return functools.partial(sampler.build, **kwargs)


def num_function_evals(sampling_config) -> int:
    """Network evaluations per sample for the configured sampler."""
    return SAMPLERS.get(sampling_config.sampler).extras["nfe"](sampling_config)
