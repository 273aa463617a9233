"""Time samplers: `euler_maruyama`, `pc` and `ode` step the SDE's own time t on a uniform grid.

Each returns a clean image: Euler-Maruyama and PC the last step's mean at
t ~ 0 (no noise is added at the end), the ODE its denoised estimate
E[x_0 | x_eps].
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.common import per_example
from jaxdiff.core.errors import UserError
from jaxdiff.sampling.registry import register_sampler
from jaxdiff.sampling.scan import PAIR_STATE, SamplerCall, Samples, batch_times
from jaxdiff.sampling.schedules import time_grid

# Euler-Maruyama's and PC's carry is (x, x_mean): the state is x, the sample x_mean.
_SAMPLE_AND_MEAN = dict(PAIR_STATE, sample=lambda carry: carry[1])


def _euler_maruyama_schedule(c, sde) -> np.ndarray:
    # Fixed steps dt from each t_i = linspace(1, eps, num_steps); the last ends at eps - dt,
    # at or below 0.
    ts = time_grid(c.num_steps, c.eps)
    return np.append(ts, c.eps - (ts[0] - ts[1]))


@register_sampler(
    "euler_maruyama",
    default_steps=500,
    nfe=lambda c: c.num_steps,
    schedule=_euler_maruyama_schedule,
    control=True,
)
def euler_maruyama(call: SamplerCall, ts: np.ndarray) -> Samples:
    """The original project's Euler-Maruyama sampler for the reverse SDE.

    Times t_i = linspace(1, eps, num_steps), fixed step dt = t_0 - t_1:
    x <- x - (f - g^2 score) dt + g sqrt(dt) z (a started schedule's first step
    is shorter). Returns the last step's mean (no noise is added at the end).
    NFE = num_steps.
    """
    sde, score_fn, shape = call.sde, call.score_fn, call.shape
    init_key, key = jax.random.split(call.key)

    def step(carry, inputs):
        x, _ = carry
        t, dt, step_key = inputs
        tb = batch_times(t, shape)
        x_mean = x - sde.reverse_drift(x, tb, score_fn(x, tb)) * dt
        noise = jax.random.normal(step_key, shape)
        x = x_mean + per_example(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise
        return (x, x_mean), x_mean

    x = call.initial_state(init_key)
    xs = (ts[:-1], ts[:-1] - ts[1:], jax.random.split(key, len(ts) - 1))
    return call.scan(step, (x, x), xs, levels=ts, prior=x, key=key, **_SAMPLE_AND_MEAN)


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


def _pc_schedule(c, sde) -> np.ndarray:
    # Steps t_i -> t_{i+1} on linspace(1, eps, num_steps), the last to 0.
    return np.append(time_grid(c.num_steps, c.eps), 0.0)


@register_sampler(
    "pc",
    default_steps=500,
    fields=("predictor", "snr", "corrector_steps"),
    nfe=lambda c: c.num_steps * (1 + c.corrector_steps),
    schedule=_pc_schedule,
    check=_check_pc,
    control=True,
)
def predictor_corrector(
    call: SamplerCall, ts: np.ndarray, *, predictor: str, snr: float, corrector_steps: int
) -> Samples:
    """Predictor-corrector sampling (Song et al. 2021).

    At each t_i = linspace(1, eps, num_steps): `corrector_steps` Langevin steps,
    then a predictor step to t_{i+1} (t_num_steps = 0). Returns the last
    predictor mean. NFE = num_steps * (1 + corrector_steps).
    """
    sde, score_fn, shape = call.sde, call.score_fn, call.shape
    predictor_fn = PREDICTORS[predictor]
    init_key, key = jax.random.split(call.key)

    def step(carry, inputs):
        x, _ = carry
        t, s, step_key = inputs
        tb, sb = batch_times(t, shape), batch_times(s, shape)
        keys = jax.random.split(step_key, corrector_steps + 1)
        for i in range(corrector_steps):
            x = _langevin_corrector(keys[i], score_fn, sde, x, tb, sb, snr)
        x, x_mean = predictor_fn(keys[-1], score_fn, sde, x, tb, sb)
        return (x, x_mean), x_mean

    x = call.initial_state(init_key)
    xs = (ts[:-1], ts[1:], jax.random.split(key, len(ts) - 1))
    return call.scan(step, (x, x), xs, levels=ts, prior=x, key=key, **_SAMPLE_AND_MEAN)


def _ode_schedule(c, sde) -> np.ndarray:
    # num_steps Heun steps on linspace(1, eps, num_steps + 1); the last state is the denoised
    # sample, at t = 0.
    return np.append(time_grid(c.num_steps + 1, c.eps)[:-1], 0.0)


@register_sampler(
    "ode",
    default_steps=50,
    fields=("eps",),
    nfe=lambda c: 2 * c.num_steps + 1,
    schedule=_ode_schedule,
    control=True,
)
def probability_flow_ode(call: SamplerCall, levels: np.ndarray, *, eps: float) -> Samples:
    """Deterministic sampling: Heun's method on the probability-flow ODE from t=1 to eps.

    num_steps Heun steps on linspace(1, eps, num_steps + 1), then the denoised
    estimate E[x_0 | x_eps] (without it, the noise of std(eps) stays in the
    image). Only the prior draw, `sde.prior_sample(key, shape)`, is random.
    NFE = 2 * num_steps + 1.
    """
    sde, score_fn, shape = call.sde, call.score_fn, call.shape
    # The Heun steps end at eps; the last state, at level 0, is its denoised estimate.
    ts = np.append(levels[:-1], eps)

    def velocity(x, t):
        tb = batch_times(t, shape)
        return sde.probability_flow_drift(x, tb, score_fn(x, tb))

    def step(x, inputs):
        t, s = inputs
        h = s - t
        d1 = velocity(x, t)
        d2 = velocity(x + h * d1, s)
        x = x + 0.5 * h * (d1 + d2)
        return x, x

    def denoise(x):
        tb = batch_times(eps, shape)
        x = sde.denoise(x, tb, score_fn(x, tb))
        return x, x

    # The last Heun step and the denoising are both the last step (one state, t = 0).
    last_heun = lambda x: denoise(step(x, (ts[-2], ts[-1]))[0])  # noqa: E731
    prior = call.initial_state(call.key)
    return call.scan(step, prior, (ts[:-2], ts[1:-1]), levels=levels, prior=prior, final=last_heun)
