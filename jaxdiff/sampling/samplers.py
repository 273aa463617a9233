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

import dataclasses
import functools
import inspect
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.common import ScoreFn, per_example
from jaxdiff.core.errors import UserError
from jaxdiff.core.random import SamplerStream
from jaxdiff.core.registry import Registry
from jaxdiff.diffusion.sde import SDE

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
    no_inpainting: str = "",
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
      no_inpainting: why it cannot take a `Control` with a mask (empty: it can).
    """
    extras = {
        "default_steps": default_steps,
        "nfe": nfe,
        "state_times": state_times,
        "no_inpainting": no_inpainting,
    }
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


def _f32(values) -> jax.Array:
    """A sampler's per-step numpy values as float32 constants of the program."""
    return jnp.asarray(values, jnp.float32)


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


# ---------------------------------------------------------------------------
# Control: inpainting and image-to-image editing (`jaxdiff.editing.controlled`) inside any sampler.


@dataclasses.dataclass(frozen=True)
class Control:
    """What inpainting and image-to-image editing ask of a sampler, beyond plain sampling.

    Attributes:
      source: x_0 in the model's space, shaped as the samples: the images to
        complete (with `mask`) or to edit (with `start_time` < 1); None to
        start from `noise` alone.
      mask: 1 where `source` is kept, 0 where the sampler fills, broadcastable
        to the samples; None to edit without one. After every step the kept
        pixels are replaced by `source` noised to the new state's level (the
        replacement method of Song et al. 2021).
      start_time: where the reverse process starts: `source` noised by the
        forward kernel to this time (SDEdit, Meng et al. 2022), then the part
        of the sampler's own grid below it. 1 starts from the prior draw, as
        plain sampling does.
      resample_steps: RePaint's resampling (Lugmayr et al. 2022), with a mask:
        each block of `jump_length` steps is run this many times, the state
        noised back up to the block's start in between (1: no resampling).
      jump_length: steps per resampled block.
      noise: the standard normal draw z the start uses (the prior draw is
        prior_std z; a started one alpha source + std z), instead of one drawn
        from the key: how interpolation decodes chosen noise.
    """

    source: jax.Array | None = None
    mask: jax.Array | None = None
    start_time: float = 1.0
    resample_steps: int = 1
    jump_length: int = 1
    noise: jax.Array | None = None


def check_control(
    sampling_config,
    *,
    masked: bool,
    start_time: float = 1.0,
    resample_steps: int = 1,
    jump_length: int = 1,
) -> None:
    """Refuses a `Control` the configured sampler cannot run, with one line.

    Raises:
      UserError: an unknown sampler, one without a `control` argument, one
        that cannot inpaint (with a mask), a start time outside
        (sampling.eps, 1], resampling without a mask or with counts below 1.
    """
    entry = SAMPLERS.get(sampling_config.sampler)
    if "control" not in inspect.signature(entry.build).parameters:
        raise UserError(
            f"sampling.sampler {entry.name!r} takes no control: it cannot inpaint or edit"
        )
    if masked and entry.extras["no_inpainting"]:
        can = sorted(name for name in SAMPLERS if not SAMPLERS.get(name).extras["no_inpainting"])
        raise UserError(
            f"sampling.sampler {entry.name!r} cannot inpaint: {entry.extras['no_inpainting']}; "
            f"choose one of {', '.join(can)}"
        )
    if not sampling_config.eps < start_time <= 1.0:
        raise UserError(
            f"editing.strength must be in (sampling.eps = {sampling_config.eps:g}, 1], "
            f"got {start_time:g}"
        )
    if resample_steps < 1 or jump_length < 1:
        raise UserError(
            f"editing.resample_steps and jump_length must be >= 1, got {resample_steps} "
            f"and {jump_length}"
        )
    if resample_steps > 1 and not masked:
        raise UserError("editing.resample_steps > 1 resamples around a mask: inpainting only")


def repaint_schedule(
    num_steps: int, resampled: int, resample_steps: int, jump_length: int
) -> np.ndarray:
    """The moves of a resampled run, as (from_state, to_state) rows: down a step, or up a jump.

    States 0..num_steps are a sampler's (0: the start). The first `resampled`
    steps go in blocks of `jump_length`; each block is run `resample_steps`
    times, the state noised back up from the block's end to its start in
    between (RePaint's schedule); the remaining steps run once.
    """
    moves = []
    for start in range(0, resampled, jump_length):
        end = min(start + jump_length, resampled)
        for repeat in range(resample_steps):
            moves += [(i, i + 1) for i in range(start, end)]
            if repeat < resample_steps - 1:
                moves.append((end, start))
    moves += [(i, i + 1) for i in range(resampled, num_steps)]
    return np.asarray(moves, np.int32).reshape(-1, 2)


def _start_grid(grid: np.ndarray, start: float | None) -> np.ndarray:
    """A decreasing grid's part below `start`, with `start` first (all of it if start is None)."""
    if start is None or start >= grid[0]:
        return grid
    return np.concatenate([[start], grid[grid < start]])


def _start_time(control: Control | None) -> float | None:
    return None if control is None or control.start_time >= 1.0 else control.start_time


def _initial_state(key, sde: SDE, shape, control: Control | None) -> jax.Array:
    """The prior draw, or the source noised to the control's start time (the same normal draw)."""
    start = _start_time(control)
    given = None if control is None else control.noise
    # Without one: what sde.prior_sample(key, shape) draws.
    z = jax.random.normal(key, shape) if given is None else given
    if start is None:
        return sde.prior_std * z
    t = jnp.float32(start)
    return sde.mean_coeff(t) * control.source + sde.marginal_std(t) * z


class _TimeSpace:
    """Sampler states x at diffusion time t (the time samplers)."""

    def __init__(self, sde: SDE):
        self.sde = sde

    def known(self, source, level, z):
        t = jnp.maximum(level, 0.0)  # Euler-Maruyama's last state is at eps - dt <= 0.
        return self.sde.mean_coeff(t) * source + self.sde.marginal_std(t) * z

    def renoise(self, x, level, up_to, z):
        a, v = self.sde.transition(jnp.maximum(level, 0.0), up_to)
        return a * x + jnp.sqrt(v) * z


class _NoiseLevelSpace:
    """Sampler states x~ = x / alpha = x_0 + sigma z at noise level sigma."""

    def known(self, source, level, z):
        return source + level * z

    def renoise(self, x, level, up_to, z):
        return x + jnp.sqrt(up_to**2 - level**2) * z


def scan_with_control(
    step,
    carry,
    xs,
    *,
    num_steps,
    snapshots,
    prior,
    final=None,
    control: Control | None = None,
    key=None,
    levels=None,
    space=None,
    get_x=lambda carry: carry,
    set_x=lambda carry, x: x,
):
    """`scan_with_snapshots`, or with a masked `control`, the inpainting loop.

    The inpainting loop runs the moves of `repaint_schedule` (without
    resampling: the steps themselves); after each one the kept pixels of the
    state are replaced by the source noised to the state's level. `levels`:
    the level (time, or noise level) of each of the scanned states;
    `space`: how states at a level are noised (`_TimeSpace`, `_NoiseLevelSpace`);
    `get_x`/`set_x`: the state in the carry. Steps that end at level <= 0
    (the last of Euler-Maruyama and PC) are not resampled.
    """
    if control is None or control.mask is None:
        return scan_with_snapshots(
            step,
            carry,
            xs,
            num_steps=num_steps,
            snapshots=snapshots,
            prior=prior,
            final=final,
        )
    if snapshots:
        raise ValueError("inpainting keeps no snapshots")
    scanned = num_steps - (final is not None)
    levels = np.asarray(levels, np.float64)
    resampled = int(np.sum(levels[1 : scanned + 1] > 0))
    moves = repaint_schedule(scanned, resampled, control.resample_steps, control.jump_length)
    start, end = moves[:, 0], moves[:, 1]
    jumps = end < start
    # A step run again must draw new noise: key leaves of xs get one key per move.
    leaves, tree = jax.tree.flatten(xs)
    index = np.where(jumps, 0, start)
    leaves = [
        jax.random.split(jax.random.fold_in(key, SamplerStream.STEP_NOISE + i), len(moves))
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)
        else leaf[index]
        for i, leaf in enumerate(leaves)
    ]
    inner = jax.tree.unflatten(tree, leaves)
    mask, source = control.mask, control.source
    shape = prior.shape

    def move(carry, inputs):
        inner, jump, level, new_level, move_key = inputs
        noise_key, known_key = jax.random.split(move_key)

        def down(carry):
            return step(carry, inner)[0]

        def up(carry):
            z = jax.random.normal(noise_key, shape)
            return set_x(carry, space.renoise(get_x(carry), level, new_level, z))

        carry = jax.lax.cond(jump, up, down, carry) if jumps.any() else down(carry)
        known = space.known(source, new_level, jax.random.normal(known_key, shape))
        return set_x(carry, mask * known + (1.0 - mask) * get_x(carry)), None

    inputs = (inner, jnp.asarray(jumps), _f32(levels[start]), _f32(levels[end]))
    carry, _ = jax.lax.scan(move, carry, (*inputs, jax.random.split(key, len(moves))))
    return (carry if final is None else final(carry)[0]), None


# Euler-Maruyama's and PC's carry is (x, x_mean): the state is x.
_SAMPLE_AND_MEAN = dict(get_x=lambda carry: carry[0], set_x=lambda carry, x: (x, carry[1]))


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
    control: Control | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """The seed's Euler-Maruyama sampler for the reverse SDE.

    Times t_i = linspace(1, eps, num_steps), fixed step dt = t_0 - t_1:
    x <- x - (f - g^2 score) dt + g sqrt(dt) z. Returns the last step's mean
    (no noise is added at the end). NFE = num_steps.
    """
    init_key, key = jax.random.split(key)
    grid = np.linspace(1.0, eps, num_steps)
    ts = _start_grid(grid, _start_time(control))
    # Each step ends at the next time; the last at eps - dt (a started grid's first step is
    # shorter).
    ends = np.append(ts[1:], eps - (grid[0] - grid[1]))

    def step(carry, inputs):
        x, _ = carry
        t, dt, step_key = inputs
        tb = _batch_times(t, shape)
        x_mean = x - sde.reverse_drift(x, tb, score_fn(x, tb)) * dt
        noise = jax.random.normal(step_key, shape)
        x = x_mean + per_example(sde.diffusion(tb), x) * jnp.sqrt(dt) * noise
        return (x, x_mean), x_mean

    x = _initial_state(init_key, sde, shape, control)
    (_, x_mean), trajectory = scan_with_control(
        step,
        (x, x),
        (_f32(ts), _f32(ts - ends), jax.random.split(key, len(ts))),
        num_steps=len(ts),
        snapshots=snapshots,
        prior=x,
        control=control,
        key=jax.random.fold_in(key, SamplerStream.CONTROL),
        levels=np.append(ts, ends[-1]),
        space=_TimeSpace(sde),
        **_SAMPLE_AND_MEAN,
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
    control: Control | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Predictor-corrector sampling (Song et al. 2021).

    At each t_i = linspace(1, eps, num_steps): `corrector_steps` Langevin steps,
    then a predictor step to t_{i+1} (t_num_steps = 0). Returns the last
    predictor mean. NFE = num_steps * (1 + corrector_steps).
    """
    predictor_fn = PREDICTORS[predictor]
    init_key, key = jax.random.split(key)
    ts = _start_grid(np.linspace(1.0, eps, num_steps), _start_time(control))
    next_ts = np.append(ts[1:], 0.0)

    def step(carry, inputs):
        x, _ = carry
        t, s, step_key = inputs
        tb, sb = _batch_times(t, shape), _batch_times(s, shape)
        keys = jax.random.split(step_key, corrector_steps + 1)
        for i in range(corrector_steps):
            x = _langevin_corrector(keys[i], score_fn, sde, x, tb, sb, snr)
        x, x_mean = predictor_fn(keys[-1], score_fn, sde, x, tb, sb)
        return (x, x_mean), x_mean

    x = _initial_state(init_key, sde, shape, control)
    xs = (_f32(ts), _f32(next_ts), jax.random.split(key, len(ts)))
    (_, x_mean), trajectory = scan_with_control(
        step,
        (x, x),
        xs,
        num_steps=len(ts),
        snapshots=snapshots,
        prior=x,
        control=control,
        key=jax.random.fold_in(key, SamplerStream.CONTROL),
        levels=np.append(ts, 0.0),
        space=_TimeSpace(sde),
        **_SAMPLE_AND_MEAN,
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
    control: Control | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Deterministic sampling: Heun's method on the probability-flow ODE from t=1 to eps.

    num_steps Heun steps on linspace(1, eps, num_steps + 1), then the denoised
    estimate E[x_0 | x_eps] (without it, the noise of std(eps) stays in the
    image). Only the prior draw, `sde.prior_sample(key, shape)`, is random.
    NFE = 2 * num_steps + 1.
    """
    ts = _start_grid(np.linspace(1.0, eps, num_steps + 1), _start_time(control))

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
    prior = _initial_state(key, sde, shape, control)
    x, trajectory = scan_with_control(
        step,
        prior,
        (_f32(ts[:-2]), _f32(ts[1:-1])),
        num_steps=len(ts) - 1,
        snapshots=snapshots,
        prior=prior,
        final=last_heun,
        control=control,
        key=jax.random.fold_in(key, SamplerStream.CONTROL),
        levels=ts,
        space=_TimeSpace(sde),
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

    def levels(self, num_steps, eps, noise_schedule, rho, control) -> np.ndarray:
        """The sampler's `noise_levels`; with a control's start time, the part below its level."""
        sigmas = noise_levels(self.sde, num_steps, eps, noise_schedule, rho)
        start = _start_time(control)
        if start is None:
            return sigmas
        with jax.ensure_compile_time_eval():
            start_level = float(self.sde.noise_level(jnp.float32(start)))
        return _start_grid(sigmas, start_level)

    def run(self, key, step, xs, last_step, *, levels, snapshots, control, carry=None):
        """The sampler's scan from the prior draw; returns what the sampler returns.

        x~ starts at the SDE's prior draw `sde.prior_sample(key, shape)` (or a
        control's noised source) divided by alpha (the draw itself is the first
        snapshot). `levels`: the sampler's noise levels, ending at 0. `xs`:
        per-step arrays, numpy ones becoming float32 constants; `carry(x~)`, if
        given, is the scan's initial carry, and the final carry's first item is
        the sample.
        """
        drawn = _initial_state(key, self.sde, self.shape, control)
        start = _start_time(control)
        prior = drawn / self.sde.mean_coeff(jnp.float32(1.0 if start is None else start))
        xs = tuple(_f32(v) if isinstance(v, np.ndarray) else v for v in xs)
        out, trajectory = scan_with_control(
            step,
            prior if carry is None else carry(prior),
            xs,
            num_steps=len(levels) - 1,
            snapshots=snapshots,
            prior=drawn,
            final=last_step,
            control=control,
            key=jax.random.fold_in(key, SamplerStream.CONTROL),
            levels=levels,
            space=_NoiseLevelSpace(),
            get_x=(lambda carry: carry) if carry is None else (lambda carry: carry[0]),
            set_x=(lambda carry, x: x) if carry is None else (lambda carry, x: (x, *carry[1:])),
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
    control: Control | None = None,
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
    sigmas = process.levels(num_steps, eps, noise_schedule, rho, control)
    levels, next_levels = sigmas[:-1], sigmas[1:]
    churned = (levels >= s_tmin) & (levels <= s_tmax)
    gamma = np.where(churned, min(s_churn / num_steps, np.sqrt(2.0) - 1.0), 0.0)
    raised = np.minimum(levels * (1.0 + gamma), sigmas[0])
    # The churn noise's scale, in float64 here: under jit, XLA's float32 of
    # raised^2 - levels^2 can come out below 0 where they are equal.
    churn_scale = s_noise * np.sqrt(raised**2 - levels**2)
    noise_keys = jax.random.split(jax.random.fold_in(key, SamplerStream.STEP_NOISE), len(levels))

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
        key,
        step,
        (*xs, noise_keys[:-1]),
        last_step,
        levels=sigmas,
        snapshots=snapshots,
        control=control,
    )


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
    """Data -> noise along the probability-flow ODE: `edm`'s grid run upward, without churn.

    x0 is taken as x~ at the lowest level sigma(eps), then Heun steps in sigma
    up the `noise_levels` to sigma(1). Returns the standard normal draw z whose
    prior draw prior_std z the `edm` sampler without churn, with the same
    settings, takes back to x0 (up to the steps' error): pass it as
    `Control(noise=z)`. NFE = 2 (num_steps - 1).
    """
    process = _NoiseLevelProcess(score_fn, sde, x0.shape)
    levels = noise_levels(sde, num_steps, eps, noise_schedule, rho)[:-1][::-1]

    def step(x, inputs):
        sigma, sigma_next = inputs
        d = (x - process.denoise(x, sigma)) / sigma
        x_euler = x + (sigma_next - sigma) * d
        d_next = (x_euler - process.denoise(x_euler, sigma_next)) / sigma_next
        return x + (sigma_next - sigma) * 0.5 * (d + d_next), None

    x, _ = jax.lax.scan(step, x0, (_f32(levels[:-1]), _f32(levels[1:])))
    return x * sde.mean_coeff(jnp.float32(1.0)) / sde.prior_std


@register_sampler(
    "dpm_solver++",
    default_steps=20,
    fields=_NOISE_LEVEL_FIELDS,
    no_inpainting="its multistep update extrapolates from the previous step's denoised "
    "estimate, which the replaced pixels invalidate",
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
    control: Control | None = None,
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
    sigmas = process.levels(num_steps, eps, noise_schedule, rho, control)
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
        levels=sigmas,
        snapshots=snapshots,
        control=control,
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
    control: Control | None = None,
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
    sigmas = process.levels(num_steps, eps, noise_schedule, rho, control)
    levels, next_levels = sigmas[:-2], sigmas[1:-1]
    up = eta * next_levels * np.sqrt(1.0 - (next_levels / levels) ** 2)
    keep = np.sqrt(next_levels**2 - up**2) / levels
    noise_keys = jax.random.split(jax.random.fold_in(key, SamplerStream.STEP_NOISE), len(levels))

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
    return process.run(
        key, step, xs, last_step, levels=sigmas, snapshots=snapshots, control=control
    )


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
