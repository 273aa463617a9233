"""A sampler's loop: one `lax.scan` over its schedule, with snapshots and editing control.

With `snapshots=F > 0` a sampler returns (sample, trajectory) instead: F
states of its num_steps + 1 (the prior draw, then the state after each step),
evenly spaced by `snapshot_states`, the last being the sample itself. They are
written into a carried (F + 1, ...) buffer as the scan goes (steps that are not
snapshots write to the spare last slot), so memory is F samples, not num_steps.
Without snapshots the scan is exactly the plain one.

A `Control` (inpainting and image-to-image editing, `jaxdiff.editing.controlled`)
starts the sampler from a noised source and, with a mask, replaces the known
pixels after every step, optionally with RePaint's resampling.

`SamplerCall` binds one call's key, score, SDE, shape, snapshots and control, so
that a sampler needs only its schedule and settings besides.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.common import ScoreFn
from jaxdiff.core.errors import UserError
from jaxdiff.core.random import SamplerStream
from jaxdiff.diffusion.sde import SDE
from jaxdiff.sampling.schedules import Space

# What a sampler returns: the samples, or with snapshots (samples, trajectory).
Samples = jax.Array | tuple[jax.Array, jax.Array]


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


def _f32(values) -> jax.Array:
    """A sampler's per-step numpy values as float32 constants of the program."""
    return jnp.asarray(values, jnp.float32)


def batch_times(t, shape: tuple[int, ...]) -> jax.Array:
    """One diffusion time per example of a batch of `shape`, as score functions take them."""
    return jnp.full((shape[0],), t)


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
        of the sampler's own schedule below it. 1 starts from the prior draw,
        as plain sampling does.
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
    space: Space | None = None,
    get_x=lambda carry: carry,
    set_x=lambda carry, x: x,
):
    """`scan_with_snapshots`, or with a masked `control`, the inpainting loop.

    The inpainting loop runs the moves of `repaint_schedule` (without
    resampling: the steps themselves); after each one the kept pixels of the
    state are replaced by the source noised to the state's level. `levels`:
    the level (time, or noise level) of each of the num_steps + 1 states;
    `space`: how states at a level are noised (`TimeSpace`, `NoiseLevelSpace`);
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


# Accessors of a carry (x, other) whose state, what a control replaces, is x.
PAIR_STATE = dict(get_x=lambda carry: carry[0], set_x=lambda carry, x: (x, *carry[1:]))


@dataclasses.dataclass(frozen=True)
class SamplerCall:
    """One call of a sampler: what it is given besides its schedule and settings.

    Attributes:
      key: the call's random key.
      score_fn: score_fn(x, t), t one time per example.
      sde: the noise process.
      shape: the samples' shape (B, H, W, C).
      space: the space of the sampler's schedule (`TimeSpace`, `NoiseLevelSpace`).
      snapshots: 0, or how many states of the trajectory to return as well.
      control: inpainting or editing, or None.
    """

    key: jax.Array
    score_fn: ScoreFn
    sde: SDE
    shape: tuple[int, ...]
    space: Space
    snapshots: int = 0
    control: Control | None = None

    @property
    def start_time(self) -> float | None:
        """The control's start time, or None where the reverse process starts at t = 1."""
        control = self.control
        return None if control is None or control.start_time >= 1.0 else control.start_time

    def initial_state(self, key: jax.Array) -> jax.Array:
        """The prior draw, or the source noised to the control's start time (the same normal draw).

        Without a control: what `sde.prior_sample(key, shape)` draws.
        """
        start, control = self.start_time, self.control
        given = None if control is None else control.noise
        z = jax.random.normal(key, self.shape) if given is None else given
        if start is None:
            return self.sde.prior_std * z
        t = jnp.float32(start)
        return self.sde.mean_coeff(t) * control.source + self.sde.marginal_std(t) * z

    def scan(
        self,
        step,
        carry,
        xs,
        *,
        levels: np.ndarray,
        prior: jax.Array,
        key: jax.Array | None = None,
        final=None,
        get_x=lambda carry: carry,
        set_x=lambda carry, x: x,
        sample=lambda carry: carry,
    ) -> Samples:
        """The sampler's loop over its schedule `levels`; returns what the sampler returns.

        `step`, `final` and `prior` as for `scan_with_snapshots`; numpy arrays in
        `xs` become float32 constants. `key` (the call's by default) is what the
        control's draws are folded from; `get_x`/`set_x` the state in the carry
        (as for `scan_with_control`); `sample(carry)` the sample in the final carry.
        """
        key = self.key if key is None else key
        xs = jax.tree.map(lambda v: _f32(v) if isinstance(v, np.ndarray) else v, xs)
        carry, trajectory = scan_with_control(
            step,
            carry,
            xs,
            num_steps=len(levels) - 1,
            snapshots=self.snapshots,
            prior=prior,
            final=final,
            control=self.control,
            key=jax.random.fold_in(key, SamplerStream.CONTROL),
            levels=levels,
            space=self.space,
            get_x=get_x,
            set_x=set_x,
        )
        x = sample(carry)
        return x if not self.snapshots else (x, trajectory)
