"""Noise-level samplers (`edm`, `dpm_solver++`, `ddim`) and the ODE encoder of editing.

They work on x~ = x / alpha(t), which for every SDE is x_0 + sigma z with
sigma = `sde.noise_level(t)`, through the denoiser D(x~, sigma) = E[x_0 | x~]
that the score gives (Tweedie). Each steps the schedule `noise_levels`:
num_steps levels from sigma(1) to sigma(eps) (Karras's rho-schedule or
uniform in log sigma), then one last step to sigma = 0, which is x~ = D: the
sample is a clean image.
"""

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.common import ScoreFn, per_example
from jaxdiff.core.errors import UserError
from jaxdiff.core.random import SamplerStream
from jaxdiff.diffusion.sde import SDE
from jaxdiff.sampling.registry import register_sampler
from jaxdiff.sampling.scan import PAIR_STATE, SamplerCall, Samples, batch_times
from jaxdiff.sampling.schedules import NoiseLevelSpace, check_noise_schedule, noise_levels

Denoiser = Callable[[jax.Array, jax.Array], jax.Array]


def _noise_level_schedule(c, sde: SDE) -> np.ndarray:
    return noise_levels(sde, c.num_steps, c.eps, c.noise_schedule, c.rho)


# Every noise-level sampler: its schedule, the space of its states, and editing support.
register_noise_level_sampler = functools.partial(
    register_sampler,
    schedule=_noise_level_schedule,
    space=NoiseLevelSpace,
    check=check_noise_schedule,
    control=True,
)


def denoiser(score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...]) -> Denoiser:
    """D(x~, sigma) = E[x_0 | x~], from the score at x = alpha x~ (Tweedie)."""

    def denoise(x, sigma):
        tb = batch_times(sde.time_at_noise_level(sigma), shape)
        x = per_example(sde.mean_coeff(tb), x) * x
        return sde.denoise(x, tb, score_fn(x, tb))

    return denoise


def heun_step(denoise: Denoiser, x: jax.Array, sigma, sigma_next) -> jax.Array:
    """Heun's method on dx~/dsigma = (x~ - D(x~, sigma)) / sigma, from sigma to sigma_next."""
    d = (x - denoise(x, sigma)) / sigma
    x_euler = x + (sigma_next - sigma) * d
    d_next = (x_euler - denoise(x_euler, sigma_next)) / sigma_next
    return x + (sigma_next - sigma) * 0.5 * (d + d_next)


def _alpha(sde: SDE, sigma: np.ndarray) -> np.ndarray:
    """alpha(t(sigma)) for an array of levels, as constants of the program."""
    with jax.ensure_compile_time_eval():
        return np.asarray(sde.mean_coeff(sde.time_at_noise_level(jnp.asarray(sigma, jnp.float32))))


def _run(
    call: SamplerCall, sigmas, step, xs, last_step, initial=lambda x: x, **accessors
) -> Samples:
    """The scan over x~ from the prior draw (the draw itself is the first snapshot).

    x~ starts at the SDE's prior draw `sde.prior_sample(key, shape)` (or a
    control's noised source) divided by alpha; `initial(x~)` is the scan's
    first carry, and `accessors` its state and sample (`SamplerCall.scan`)
    where the carry is more than x~.
    """
    drawn = call.initial_state(call.key)
    start = call.start_time
    prior = drawn / call.sde.mean_coeff(jnp.float32(1.0 if start is None else start))
    return call.scan(
        step, initial(prior), xs, levels=sigmas, prior=drawn, final=last_step, **accessors
    )


def _check_edm(c) -> None:
    check_noise_schedule(c)
    if c.s_churn < 0 or c.s_noise < 0:
        raise UserError(
            f"sampling.s_churn and s_noise must be >= 0, got {c.s_churn} and {c.s_noise}"
        )


@register_noise_level_sampler(
    "edm",
    default_steps=18,
    fields=("num_steps", "s_churn", "s_tmin", "s_tmax", "s_noise"),
    nfe=lambda c: 2 * c.num_steps - 1,
    check=_check_edm,
)
def edm(
    call: SamplerCall,
    sigmas: np.ndarray,
    *,
    num_steps: int,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
) -> Samples:
    """EDM's sampler (Karras et al. 2022, Algorithm 2): Heun steps in sigma, the last one Euler.

    Over the levels sigma_0 > ... > sigma_{N-1} > sigma_N = 0:
    dx~/dsigma = (x~ - D(x~, sigma)) / sigma, Heun's method from sigma_i to
    sigma_{i+1}, Euler for the last step (to sigma = 0, which is x~ = D). With
    s_churn > 0, each step first raises its level to sigma_i (1 + gamma),
    gamma = min(s_churn / num_steps, sqrt 2 - 1) where s_tmin <= sigma_i <= s_tmax
    (at most to sigma_0, the highest level the model was trained at), by adding
    noise of scale s_noise. Without churn it is deterministic given the prior
    draw `sde.prior_sample(key, shape)`. NFE = 2 num_steps - 1.
    """
    denoise = denoiser(call.score_fn, call.sde, call.shape)
    levels, next_levels = sigmas[:-1], sigmas[1:]
    churned = (levels >= s_tmin) & (levels <= s_tmax)
    gamma = np.where(churned, min(s_churn / num_steps, np.sqrt(2.0) - 1.0), 0.0)
    raised = np.minimum(levels * (1.0 + gamma), sigmas[0])
    # The churn noise's scale, in float64 here: under jit, XLA's float32 of
    # raised^2 - levels^2 can come out below 0 where they are equal.
    churn_scale = s_noise * np.sqrt(raised**2 - levels**2)
    noise_keys = jax.random.split(
        jax.random.fold_in(call.key, SamplerStream.STEP_NOISE), len(levels)
    )

    def churn(x, scale, noise_key):
        if not s_churn:
            return x
        return x + scale * jax.random.normal(noise_key, call.shape, x.dtype)

    def step(x, inputs):
        sigma_hat, scale, sigma_next, alpha_next, noise_key = inputs
        x = heun_step(denoise, churn(x, scale, noise_key), sigma_hat, sigma_next)
        return x, alpha_next * x

    def last_step(x):
        x = denoise(churn(x, churn_scale[-1], noise_keys[-1]), raised[-1])
        return x, x

    alphas = _alpha(call.sde, next_levels[:-1])
    xs = (raised[:-1], churn_scale[:-1], next_levels[:-1], alphas, noise_keys[:-1])
    return _run(call, sigmas, step, xs, last_step)


def probability_flow_encode(
    score_fn: ScoreFn,
    sde: SDE,
    x0: jax.Array,
    *,
    num_steps: int,
    eps: float,
    noise_schedule: str,
    rho: float,
) -> jax.Array:
    """Data -> noise along the probability-flow ODE: `edm`'s levels run upward, without churn.

    x0 is taken as x~ at the lowest level sigma(eps), then Heun steps in sigma
    up the `noise_levels` to sigma(1). Returns the standard normal draw z whose
    prior draw prior_std z the `edm` sampler without churn, with the same
    settings, takes back to x0 (up to the steps' error): pass it as
    `Control(noise=z)`. NFE = 2 (num_steps - 1).
    """
    denoise = denoiser(score_fn, sde, x0.shape)

    def step(x, inputs):
        return heun_step(denoise, x, *inputs), None

    levels = noise_levels(sde, num_steps, eps, noise_schedule, rho)[:-1][::-1]
    xs = (jnp.asarray(levels[:-1], jnp.float32), jnp.asarray(levels[1:], jnp.float32))
    x, _ = jax.lax.scan(step, x0, xs)
    return x * sde.mean_coeff(jnp.float32(1.0)) / sde.prior_std


@register_noise_level_sampler(
    "dpm_solver++",
    default_steps=20,
    no_inpainting="its multistep update extrapolates from the previous step's denoised "
    "estimate, which the replaced pixels invalidate",
    nfe=lambda c: c.num_steps,
)
def dpm_solver_pp(call: SamplerCall, sigmas: np.ndarray) -> Samples:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR, data prediction.

    With lambda = -log sigma and h_i = lambda_{i+1} - lambda_i, each step is
    x~ <- (sigma_{i+1} / sigma_i) x~ + (1 - sigma_{i+1} / sigma_i) D', where
    D' = (1 + 1 / 2r) D_i - (1 / 2r) D_{i-1}, r = h_{i-1} / h_i, extrapolates
    the denoised estimates of this step and the last (D' = D_0 at the first
    step); the last step, to sigma = 0, is x~ = D. One network evaluation per
    step, deterministic given the prior draw `sde.prior_sample(key, shape)`:
    NFE = num_steps.
    """
    denoise = denoiser(call.score_fn, call.sde, call.shape)
    log_levels = np.log(sigmas[:-1])
    ratio = sigmas[1:-1] / sigmas[:-2]
    h = log_levels[:-1] - log_levels[1:]  # h_i = lambda_{i+1} - lambda_i, i < N - 1.
    # The extrapolation weight 1 / 2r = h_i / 2 h_{i-1} of each scanned step; 0 (first-order)
    # at the first.
    weight = np.concatenate([[0.0], h[1:] / (2 * h[:-1])])

    def step(carry, inputs):
        x, previous = carry
        sigma, ratio, weight, alpha_next = inputs
        denoised = denoise(x, sigma)
        extrapolated = (1.0 + weight) * denoised - weight * previous
        x = ratio * x + (1.0 - ratio) * extrapolated
        return (x, denoised), alpha_next * x

    def last_step(carry):
        x = denoise(carry[0], sigmas[-2])
        return (x, x), x

    xs = (sigmas[:-2], ratio, weight, _alpha(call.sde, sigmas[1:-1]))
    return _run(
        call,
        sigmas,
        step,
        xs,
        last_step,
        initial=lambda x: (x, jnp.zeros_like(x)),
        **PAIR_STATE,
        sample=lambda carry: carry[0],
    )


def _check_ddim(c) -> None:
    check_noise_schedule(c)
    if not 0.0 <= c.eta <= 1.0:
        raise UserError(f"sampling.eta must be in [0, 1], got {c.eta}")


@register_noise_level_sampler(
    "ddim", default_steps=35, fields=("eta",), nfe=lambda c: c.num_steps, check=_check_ddim
)
def ddim(call: SamplerCall, sigmas: np.ndarray, *, eta: float) -> Samples:
    """DDIM (Song et al. 2021) on x~ = x / alpha: first order, one evaluation per step.

    x~ <- D + (sigma_down / sigma_i) (x~ - D) + sigma_up z with
    sigma_up = eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) and
    sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2): eta = 0 is the deterministic
    DDIM (Euler in sigma, given the prior draw `sde.prior_sample(key, shape)`);
    eta = 1 is ancestral sampling (DDPM's for VP). The last step, to sigma = 0,
    is x~ = D. NFE = num_steps.
    """
    denoise = denoiser(call.score_fn, call.sde, call.shape)
    levels, next_levels = sigmas[:-2], sigmas[1:-1]
    up = eta * next_levels * np.sqrt(1.0 - (next_levels / levels) ** 2)
    keep = np.sqrt(next_levels**2 - up**2) / levels
    noise_keys = jax.random.split(
        jax.random.fold_in(call.key, SamplerStream.STEP_NOISE), len(levels)
    )

    def step(x, inputs):
        sigma, keep, up, alpha_next, noise_key = inputs
        denoised = denoise(x, sigma)
        x = denoised + keep * (x - denoised)
        if eta:
            x = x + up * jax.random.normal(noise_key, call.shape, x.dtype)
        return x, alpha_next * x

    def last_step(x):
        x = denoise(x, sigmas[-2])
        return x, x

    xs = (levels, keep, up, _alpha(call.sde, next_levels), noise_keys)
    return _run(call, sigmas, step, xs, last_step)
