"""Reverse-time samplers, each a single `lax.scan` over a fixed time grid.

All of them take a `score_fn(x, t)` and an SDE, so they work with any model
(and with classifier-free guidance, which is just another score_fn). Each
returns the final sample; `num_steps` is the number of scan iterations.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from jaxdiff.errors import UserError
from jaxdiff.losses import ScoreFn
from jaxdiff.sde import SDE, _bcast

Sampler = Callable[[jax.Array, ScoreFn, SDE, tuple[int, ...]], jax.Array]


def euler_maruyama(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
) -> jax.Array:
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
        return (x_mean + _bcast(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise, x_mean), None

    x = sde.prior_sample(init_key, shape)
    (_, x_mean), _ = jax.lax.scan(step, (x, x), (ts, jax.random.split(key, num_steps)))
    return x_mean


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
    x_mean = x + _bcast(step_size, x) * score
    return x_mean + _bcast(jnp.sqrt(2 * step_size), x) * noise


def _reverse_diffusion_predictor(key, score_fn, sde, x, t, s):
    """Ancestral step from t to s < t through the exact forward kernel x_t = a x_s + sqrt(v) z.

    x_s = (x_t + v score) / a + sqrt(v) z: SMLD's reverse diffusion for VE and
    DDPM's ancestral sampling for VP. Returns (sample, mean).
    """
    a, v = sde.transition(s, t)
    x_mean = (x + _bcast(v, x) * score_fn(x, t)) / _bcast(a, x)
    return x_mean + _bcast(jnp.sqrt(v), x) * jax.random.normal(key, x.shape), x_mean


def _euler_maruyama_predictor(key, score_fn, sde, x, t, s):
    """One Euler-Maruyama step from t to s < t. Returns (sample, mean)."""
    dt = _bcast(t - s, x)
    x_mean = x - sde.reverse_drift(x, t, score_fn(x, t)) * dt
    noise = jax.random.normal(key, x.shape)
    return x_mean + _bcast(sde.diffusion(t), x) * jnp.sqrt(dt) * noise, x_mean


PREDICTORS = {
    "reverse_diffusion": _reverse_diffusion_predictor,
    "euler_maruyama": _euler_maruyama_predictor,
}


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
) -> jax.Array:
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
    (_, x_mean), _ = jax.lax.scan(step, (x, x), xs)
    return x_mean


def probability_flow_ode(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
) -> jax.Array:
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

    x, _ = jax.lax.scan(step, sde.prior_sample(key, shape), (ts[:-1], ts[1:]))
    return x


SAMPLERS = {
    "euler_maruyama": euler_maruyama,
    "pc": predictor_corrector,
    "ode": probability_flow_ode,
}


def create_sampler(sampling_config) -> Sampler:
    """Binds the sampler named by `sampling_config.sampler` to its settings.

    Returns:
      A function (key, score_fn, sde, shape) -> samples, ready for `jax.jit`.
    """
    c = sampling_config
    if c.sampler not in SAMPLERS:
        raise UserError(f"unknown sampling.sampler {c.sampler!r}; choose one of {sorted(SAMPLERS)}")
    if c.num_steps < 2:
        raise UserError(f"sampling.num_steps must be >= 2, got {c.num_steps}")
    if not 0.0 < c.eps < 1.0:
        raise UserError(f"sampling.eps must be in (0, 1), got {c.eps}")
    kwargs = {"num_steps": c.num_steps, "eps": c.eps}
    if c.sampler == "pc":
        if c.predictor not in PREDICTORS:
            raise UserError(
                f"unknown sampling.predictor {c.predictor!r}; choose one of {sorted(PREDICTORS)}"
            )
        if c.corrector_steps < 0:
            raise UserError(f"sampling.corrector_steps must be >= 0, got {c.corrector_steps}")
        kwargs.update(predictor=c.predictor, snr=c.snr, corrector_steps=c.corrector_steps)
    return functools.partial(SAMPLERS[c.sampler], **kwargs)


def num_function_evals(sampling_config) -> int:
    """Network evaluations per sample for the configured sampler."""
    c = sampling_config
    if c.sampler == "pc":
        return c.num_steps * (1 + c.corrector_steps)
    if c.sampler == "ode":
        return 2 * c.num_steps
    return c.num_steps
