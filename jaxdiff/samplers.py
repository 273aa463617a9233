"""Reverse-time samplers, each a single `lax.scan` over a fixed grid.

All of them take a `score_fn(x, t)` and an SDE, so they work with any model
(and with classifier-free guidance, which is just another score_fn). Each
returns the final sample, a clean image: the last step lands on noise level 0
(or, for Euler-Maruyama and PC, returns the last step's mean at t ~ 0).

Two families:
- time samplers (`euler_maruyama`, `pc`, `ode`) step the SDE's own time t on a
  uniform grid from 1 to `eps`;
- noise-level samplers (`edm`, `dpm_solver++`, `ddim`) work on x / alpha(t),
  which for every SDE is x_0 + sigma z with sigma = `sde.noise_level(t)`, through
  the denoiser D(x, sigma) = E[x_0 | x] that the score gives (Tweedie). They
  step a grid of `num_steps` noise levels from sigma(1) to sigma(eps) (Karras's
  rho-schedule or uniform in log sigma), then one last step to sigma = 0.

Each sampler is registered once in SAMPLERS, with everything the rest of the
project asks of it: the sampling.* fields it reads, its network evaluations per
sample (`nfe`), the diffusion time of each of its states (`state_times`), and
an optional `check` of its settings. Adding a sampler is that one
registration (plus tests).

With `snapshots=F > 0` a sampler returns (sample, trajectory) instead: F
states of its num_steps + 1 (the prior draw, then the state after each step),
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

# The samplers `sampling.sampler` chooses, each added by `register_sampler`.
SAMPLERS = Registry("sampling.sampler")


def register_sampler(
    name: str,
    *,
    default_steps: int,
    nfe: Callable[..., int],
    state_times: Callable[..., np.ndarray],
    fields: tuple[str, ...] = (),
    check: Callable[..., None] | None = None,
) -> Callable:
    """A decorator that adds a sampler to SAMPLERS with all that the project asks of it.

    The sampler is a function (key, score_fn, sde, shape, *, num_steps, eps,
    snapshots, <its fields>) -> samples (with snapshots > 0: (samples,
    trajectory), see `scan_with_snapshots`).

    Args:
      name: what `sampling.sampler` says to choose it.
      default_steps: its steps when `sampling.num_steps` is 0 (the default), so
        that choosing a sampler by name alone gives its usual settings.
      nfe: sampling_config -> network evaluations per sample (without guidance).
      state_times: (sampling_config, sde) -> the diffusion time t of each of its
        num_steps + 1 states (1 for the prior draw; what trajectory frames show).
        Both get the config with num_steps resolved (`with_steps`).
      fields: the sampling.* fields it reads beyond num_steps and eps.
      check: sampling_config -> None, raising UserError for settings it cannot take.
    """
    extras = {"default_steps": default_steps, "nfe": nfe, "state_times": state_times}
    if check is not None:
        extras["check"] = check
    return SAMPLERS.register(name, fields=fields, **extras)


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


def num_steps(sampling_config) -> int:
    """`sampling.num_steps`, or the sampler's own default where it is 0.

    Raises:
      UserError: an unknown sampler, or fewer than 2 steps.
    """
    c = sampling_config
    steps = c.num_steps or SAMPLERS.get(c.sampler).extras["default_steps"]
    if steps < 2:
        raise UserError(
            f"sampling.num_steps must be >= 2 (or 0: the sampler's default), got {steps}"
        )
    return steps


def with_steps(sampling_config):
    """A copy of the sampling config with `num_steps` resolved (`num_steps`)."""
    c = sampling_config.copy_and_resolve_references()
    c.num_steps = num_steps(sampling_config)
    return c


def state_times(sampling_config, sde: SDE) -> np.ndarray:
    """The diffusion time t of each of the sampler's num_steps + 1 states (1 for the prior draw)."""
    entry = SAMPLERS.get(sampling_config.sampler)
    return np.asarray(entry.extras["state_times"](with_steps(sampling_config), sde), np.float64)


def scan_with_snapshots(step, carry, xs, *, num_steps, snapshots, prior, final=None):
    """A sampler's loop: `step` over `xs` with lax.scan; returns (final carry, trajectory or None).

    `step(carry, x) -> (carry, state)`, where state is the sampler's current
    estimate (what a snapshot records); `prior` is the state before the first
    step. `final(carry) -> (carry, state)`, if given, is the last of the
    num_steps steps, run once after the scan (a step of another form, e.g. the
    jump to noise level 0), so `xs` then holds num_steps - 1 entries.
    """
    scanned = num_steps - (final is not None)
    if not snapshots:
        carry, _ = jax.lax.scan(lambda c, x: (step(c, x)[0], None), carry, xs)
        return (carry if final is None else final(carry)[0]), None
    states = snapshot_states(num_steps, snapshots)
    # Slot of each step's resulting state (step i gives state i + 1); spare slot otherwise.
    slots = np.full(num_steps, snapshots, np.int32)
    slots[states[1:] - 1] = np.arange(1, snapshots)
    buffer = jnp.zeros((snapshots + 1, *prior.shape), prior.dtype).at[0].set(prior)

    def recording_step(carry_and_buffer, inputs):
        carry, buffer = carry_and_buffer
        inner, slot = inputs
        carry, state = step(carry, inner)
        buffer = jax.lax.dynamic_update_index_in_dim(buffer, state, slot, 0)
        return (carry, buffer), None

    xs = (xs, jnp.asarray(slots[:scanned]))
    (carry, buffer), _ = jax.lax.scan(recording_step, (carry, buffer), xs)
    if final is not None:
        carry, state = final(carry)
        buffer = buffer.at[snapshots - 1].set(state)  # The last state is always a snapshot.
    return carry, buffer[:snapshots]


def _batch_times(t, shape):
    return jnp.full((shape[0],), t)


# ---------------------------------------------------------------------------
# Time samplers: uniform grids in the SDE's own t.


def _euler_maruyama_times(c, sde):
    # Fixed steps dt from each t_i; the last ends at eps - dt, at or below 0.
    ts = np.linspace(1.0, c.eps, c.num_steps)
    return np.concatenate([[1.0], ts - (ts[0] - ts[1])])


@register_sampler(
    "euler_maruyama",
    default_steps=500,
    nfe=lambda c: c.num_steps,
    state_times=_euler_maruyama_times,
)
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
        tb = _batch_times(t, shape)
        x_mean = x - sde.reverse_drift(x, tb, score_fn(x, tb)) * dt
        noise = jax.random.normal(step_key, shape)
        x = x_mean + per_example(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise
        return (x, x_mean), x_mean

    x = sde.prior_sample(init_key, shape)
    (_, x_mean), trajectory = scan_with_snapshots(
        step,
        (x, x),
        (ts, jax.random.split(key, num_steps)),
        num_steps=num_steps,
        snapshots=snapshots,
        prior=x,
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


def _pc_times(c, sde):
    # Steps t_i -> t_{i+1}, the last to 0.
    return np.concatenate([np.linspace(1.0, c.eps, c.num_steps), [0.0]])


@register_sampler(
    "pc",
    default_steps=500,
    fields=("predictor", "snr", "corrector_steps"),
    nfe=lambda c: c.num_steps * (1 + c.corrector_steps),
    state_times=_pc_times,
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
        tb, sb = _batch_times(t, shape), _batch_times(s, shape)
        keys = jax.random.split(step_key, corrector_steps + 1)
        for i in range(corrector_steps):
            x = _langevin_corrector(keys[i], score_fn, sde, x, tb, sb, snr)
        x, x_mean = predictor_fn(keys[-1], score_fn, sde, x, tb, sb)
        return (x, x_mean), x_mean

    x = sde.prior_sample(init_key, shape)
    xs = (ts, next_ts, jax.random.split(key, num_steps))
    (_, x_mean), trajectory = scan_with_snapshots(
        step,
        (x, x),
        xs,
        num_steps=num_steps,
        snapshots=snapshots,
        prior=x,
    )
    return x_mean if not snapshots else (x_mean, trajectory)


def _ode_times(c, sde):
    # num_steps Heun steps to eps; the last state is the denoised sample, at t = 0.
    return np.concatenate([np.linspace(1.0, c.eps, c.num_steps + 1)[:-1], [0.0]])


@register_sampler(
    "ode", default_steps=50, nfe=lambda c: 2 * c.num_steps + 1, state_times=_ode_times
)
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

    num_steps Heun steps on linspace(1, eps, num_steps + 1), then the denoised
    estimate E[x_0 | x_eps] (without it, the noise of std(eps) stays in the
    image). Only the prior draw, `sde.prior_sample(key, shape)`, is random.
    NFE = 2 * num_steps + 1.
    """
    ts = jnp.linspace(1.0, eps, num_steps + 1)

    def velocity(x, t):
        tb = _batch_times(t, shape)
        return sde.probability_flow_drift(x, tb, score_fn(x, tb))

    def step(x, inputs):
        t, s = inputs
        h = s - t
        d1 = velocity(x, t)
        d2 = velocity(x + h * d1, s)
        x = x + 0.5 * h * (d1 + d2)
        return x, x

    def denoise(x):
        tb = _batch_times(eps, shape)
        x = sde.denoise(x, tb, score_fn(x, tb))
        return x, x

    # The last Heun step and the denoising are both the last step (one state, t = 0).
    last_heun = lambda x: denoise(step(x, (ts[-2], ts[-1]))[0])  # noqa: E731
    prior = sde.prior_sample(key, shape)
    x, trajectory = scan_with_snapshots(
        step,
        prior,
        (ts[:-2], ts[1:-1]),
        num_steps=num_steps,
        snapshots=snapshots,
        prior=prior,
        final=last_heun,
    )
    return x if not snapshots else (x, trajectory)


# ---------------------------------------------------------------------------
# Noise-level samplers: x / alpha(t) = x_0 + sigma z, for every SDE alike.

NOISE_SCHEDULES = ("karras", "log_snr")


def noise_levels(
    sde: SDE, num_steps: int, eps: float, noise_schedule: str, rho: float = 7.0
) -> np.ndarray:
    """The levels a noise-level sampler steps: num_steps from sigma(1) to sigma(eps), then 0.

    "karras": sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) -
    sigma_max^(1/rho)))^rho (Karras et al. 2022, eq. 5), dense at low noise;
    "log_snr": uniform in log sigma (i.e. in log-SNR, DPM-Solver's choice).
    """
    with jax.ensure_compile_time_eval():  # Constants of the program, also under jit.
        sigma_max = float(sde.noise_level(jnp.float32(1.0)))
        sigma_min = float(sde.noise_level(jnp.float32(eps)))
    fraction = np.linspace(0.0, 1.0, num_steps)
    if noise_schedule == "karras":
        inverse = 1.0 / rho
        sigmas = (sigma_max**inverse + fraction * (sigma_min**inverse - sigma_max**inverse)) ** rho
    else:
        sigmas = np.exp(np.log(sigma_max) + fraction * (np.log(sigma_min) - np.log(sigma_max)))
    return np.append(sigmas, 0.0)


def _noise_level_times(c, sde):
    sigmas = noise_levels(sde, c.num_steps, c.eps, c.noise_schedule, c.rho)[:-1]
    with jax.ensure_compile_time_eval():  # Also asked for while a sampler is traced.
        times = np.asarray(sde.time_at_noise_level(jnp.asarray(sigmas, jnp.float32)))
    return np.concatenate([np.minimum(times, 1.0), [0.0]])


def _check_noise_levels(c) -> None:
    if c.noise_schedule not in NOISE_SCHEDULES:
        raise UserError(
            f"unknown sampling.noise_schedule {c.noise_schedule!r}; "
            f"choose one of {', '.join(NOISE_SCHEDULES)}"
        )
    if c.noise_schedule == "karras" and not c.rho > 0:
        raise UserError(f"sampling.rho must be > 0, got {c.rho}")


class _NoiseLevelProcess:
    """What the noise-level samplers share: x~ = x / alpha(t), its prior and its denoiser."""

    def __init__(self, score_fn: ScoreFn, sde: SDE, shape: tuple[int, ...]):
        self.score_fn, self.sde, self.shape = score_fn, sde, shape

    def time(self, sigma):
        return self.sde.time_at_noise_level(sigma)

    def alpha(self, sigma) -> np.ndarray:
        """alpha(t(sigma)) for an array of levels, as constants of the program."""
        with jax.ensure_compile_time_eval():
            return np.asarray(self.sde.mean_coeff(self.time(jnp.asarray(sigma, jnp.float32))))

    def run(self, key, step, xs, last_step, *, num_steps, snapshots, carry=None):
        """The sampler's scan from the prior draw; returns what the sampler returns.

        x~ starts at the SDE's prior draw `sde.prior_sample(key, shape)` divided by
        alpha(1) (the draw itself is the first snapshot). `xs`: per-step arrays,
        numpy ones becoming float32 constants; `carry(x~)`, if given, is the
        scan's initial carry, and the final carry's first item is the sample.
        """
        drawn = self.sde.prior_sample(key, self.shape)
        prior = drawn / self.sde.mean_coeff(jnp.float32(1.0))
        xs = tuple(jnp.asarray(v, jnp.float32) if isinstance(v, np.ndarray) else v for v in xs)
        out, trajectory = scan_with_snapshots(
            step,
            prior if carry is None else carry(prior),
            xs,
            num_steps=num_steps,
            snapshots=snapshots,
            prior=drawn,
            final=last_step,
        )
        x = out if carry is None else out[0]
        return x if not snapshots else (x, trajectory)

    def denoise(self, x, sigma) -> jax.Array:
        """D(x~, sigma) = E[x_0 | x~], from the score at x = alpha x~ (Tweedie)."""
        tb = _batch_times(self.time(sigma), self.shape)
        x = per_example(self.sde.mean_coeff(tb), x) * x
        return self.sde.denoise(x, tb, self.score_fn(x, tb))


_NOISE_LEVEL_FIELDS = ("noise_schedule", "rho")


def _check_edm(c) -> None:
    _check_noise_levels(c)
    if c.s_churn < 0 or c.s_noise < 0:
        raise UserError(
            f"sampling.s_churn and s_noise must be >= 0, got {c.s_churn} and {c.s_noise}"
        )


@register_sampler(
    "edm",
    default_steps=18,
    fields=(*_NOISE_LEVEL_FIELDS, "s_churn", "s_tmin", "s_tmax", "s_noise"),
    nfe=lambda c: 2 * c.num_steps - 1,
    state_times=_noise_level_times,
    check=_check_edm,
)
def edm(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    noise_schedule: str,
    rho: float,
    s_churn: float,
    s_tmin: float,
    s_tmax: float,
    s_noise: float,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """EDM's sampler (Karras et al. 2022, Algorithm 2): Heun steps in sigma, the last one Euler.

    Over `noise_levels` sigma_0 > ... > sigma_{N-1} > sigma_N = 0:
    dx~/dsigma = (x~ - D(x~, sigma)) / sigma, Heun's method from sigma_i to
    sigma_{i+1}, Euler for the last step (to sigma = 0, which is x~ = D). With
    s_churn > 0, each step first raises its level to sigma_i (1 + gamma),
    gamma = min(s_churn / N, sqrt 2 - 1) where s_tmin <= sigma_i <= s_tmax (at
    most to sigma_0, the highest level the model was trained at), by adding
    noise of scale s_noise. Without churn it is deterministic given the prior
    draw `sde.prior_sample(key, shape)`. NFE = 2 num_steps - 1.
    """
    process = _NoiseLevelProcess(score_fn, sde, shape)
    sigmas = noise_levels(sde, num_steps, eps, noise_schedule, rho)
    levels, next_levels = sigmas[:-1], sigmas[1:]
    churned = (levels >= s_tmin) & (levels <= s_tmax)
    gamma = np.where(churned, min(s_churn / num_steps, np.sqrt(2.0) - 1.0), 0.0)
    raised = np.minimum(levels * (1.0 + gamma), sigmas[0])
    # The churn noise's scale, in float64 here: under jit, XLA's float32 of
    # raised^2 - levels^2 can come out below 0 where they are equal.
    churn_scale = s_noise * np.sqrt(raised**2 - levels**2)
    noise_keys = jax.random.split(jax.random.fold_in(key, 1), num_steps)

    def churn(x, scale, noise_key):
        if not s_churn:
            return x
        return x + scale * jax.random.normal(noise_key, shape, x.dtype)

    def step(x, inputs):
        sigma_hat, scale, sigma_next, alpha_next, noise_key = inputs
        x = churn(x, scale, noise_key)
        d = (x - process.denoise(x, sigma_hat)) / sigma_hat
        x_euler = x + (sigma_next - sigma_hat) * d
        d_next = (x_euler - process.denoise(x_euler, sigma_next)) / sigma_next
        x = x + (sigma_next - sigma_hat) * 0.5 * (d + d_next)
        return x, alpha_next * x

    def last_step(x):
        x = churn(x, churn_scale[-1], noise_keys[-1])
        x = process.denoise(x, raised[-1])
        return x, x

    xs = (raised[:-1], churn_scale[:-1], next_levels[:-1], process.alpha(next_levels[:-1]))
    return process.run(
        key, step, (*xs, noise_keys[:-1]), last_step, num_steps=num_steps, snapshots=snapshots
    )


@register_sampler(
    "dpm_solver++",
    default_steps=20,
    fields=_NOISE_LEVEL_FIELDS,
    nfe=lambda c: c.num_steps,
    state_times=_noise_level_times,
    check=_check_noise_levels,
)
def dpm_solver_pp(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    noise_schedule: str,
    rho: float,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DPM-Solver++(2M) (Lu et al. 2022): second-order multistep in log-SNR, data prediction.

    With lambda = -log sigma and h_i = lambda_{i+1} - lambda_i, each step is
    x~ <- (sigma_{i+1} / sigma_i) x~ + (1 - sigma_{i+1} / sigma_i) D', where
    D' = (1 + 1 / 2r) D_i - (1 / 2r) D_{i-1}, r = h_{i-1} / h_i, extrapolates
    the denoised estimates of this step and the last (D' = D_0 at the first
    step); the last step, to sigma = 0, is x~ = D. One network evaluation per
    step, deterministic given the prior draw `sde.prior_sample(key, shape)`:
    NFE = num_steps.
    """
    process = _NoiseLevelProcess(score_fn, sde, shape)
    sigmas = noise_levels(sde, num_steps, eps, noise_schedule, rho)
    log_levels = np.log(sigmas[:-1])
    ratio = sigmas[1:-1] / sigmas[:-2]
    h = log_levels[:-1] - log_levels[1:]  # h_i = lambda_{i+1} - lambda_i, i < N - 1.
    # The extrapolation weight 1 / 2r = h_i / 2 h_{i-1} of each scanned step; 0 (first-order)
    # at the first.
    weight = np.concatenate([[0.0], h[1:] / (2 * h[:-1])])

    def step(carry, inputs):
        x, previous = carry
        sigma, ratio, weight, alpha_next = inputs
        denoised = process.denoise(x, sigma)
        extrapolated = (1.0 + weight) * denoised - weight * previous
        x = ratio * x + (1.0 - ratio) * extrapolated
        return (x, denoised), alpha_next * x

    def last_step(carry):
        x = process.denoise(carry[0], sigmas[-2])
        return (x, x), x

    xs = (sigmas[:-2], ratio, weight, process.alpha(sigmas[1:-1]))
    return process.run(
        key,
        step,
        xs,
        last_step,
        num_steps=num_steps,
        snapshots=snapshots,
        carry=lambda prior: (prior, jnp.zeros_like(prior)),
    )


def _check_ddim(c) -> None:
    _check_noise_levels(c)
    if not 0.0 <= c.eta <= 1.0:
        raise UserError(f"sampling.eta must be in [0, 1], got {c.eta}")


@register_sampler(
    "ddim",
    default_steps=35,
    fields=(*_NOISE_LEVEL_FIELDS, "eta"),
    nfe=lambda c: c.num_steps,
    state_times=_noise_level_times,
    check=_check_ddim,
)
def ddim(
    key: jax.Array,
    score_fn: ScoreFn,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    num_steps: int,
    eps: float,
    noise_schedule: str,
    rho: float,
    eta: float,
    snapshots: int = 0,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """DDIM (Song et al. 2021) on x~ = x / alpha: first order, one evaluation per step.

    x~ <- D + (sigma_down / sigma_i) (x~ - D) + sigma_up z with
    sigma_up = eta sigma_{i+1} sqrt(1 - sigma_{i+1}^2 / sigma_i^2) and
    sigma_down = sqrt(sigma_{i+1}^2 - sigma_up^2): eta = 0 is the deterministic
    DDIM (Euler in sigma, given the prior draw `sde.prior_sample(key, shape)`);
    eta = 1 is ancestral sampling (DDPM's for VP). The last step, to sigma = 0,
    is x~ = D. NFE = num_steps.
    """
    process = _NoiseLevelProcess(score_fn, sde, shape)
    sigmas = noise_levels(sde, num_steps, eps, noise_schedule, rho)
    levels, next_levels = sigmas[:-2], sigmas[1:-1]
    up = eta * next_levels * np.sqrt(1.0 - (next_levels / levels) ** 2)
    keep = np.sqrt(next_levels**2 - up**2) / levels
    noise_keys = jax.random.split(jax.random.fold_in(key, 1), num_steps - 1)

    def step(x, inputs):
        sigma, keep, up, alpha_next, noise_key = inputs
        denoised = process.denoise(x, sigma)
        x = denoised + keep * (x - denoised)
        if eta:
            x = x + up * jax.random.normal(noise_key, shape, x.dtype)
        return x, alpha_next * x

    def last_step(x):
        x = process.denoise(x, sigmas[-2])
        return x, x

    xs = (levels, keep, up, process.alpha(next_levels), noise_keys)
    return process.run(key, step, xs, last_step, num_steps=num_steps, snapshots=snapshots)


def create_sampler(sampling_config, snapshots: int = 0) -> Sampler:
    """Binds the sampler named by `sampling_config.sampler` to its settings.

    Args:
      sampling_config: the config's `sampling` group.
      snapshots: 0, or how many states of the trajectory to return as well.

    Returns:
      A function (key, score_fn, sde, shape) -> samples, ready for `jax.jit`;
      with snapshots, -> (samples, (snapshots, *shape) trajectory).

    Raises:
      UserError: an unknown sampler or settings it cannot take.
    """
    sampler = SAMPLERS.get(sampling_config.sampler)
    c = with_steps(sampling_config)
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
    return SAMPLERS.get(sampling_config.sampler).extras["nfe"](with_steps(sampling_config))
