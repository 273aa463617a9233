"""Schedules: the levels a sampler's states are at, in diffusion time t or in noise level sigma.

A sampler's schedule holds one level per state: num_steps + 1 of them, the
first where the reverse process starts, the last the clean sample's (0, or for
Euler-Maruyama just below). Each sampler computes its schedule with one
function, registered with it; the sampler is handed that schedule, and its
registered state times are read off the same one (`TimeSpace.times`,
`NoiseLevelSpace.times`).

The space of a schedule also says how a state at a level is noised, which the
controlled scan uses to replace known pixels and to run RePaint's jumps.
"""

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.errors import UserError
from jaxdiff.diffusion.sde import SDE

NOISE_SCHEDULES = ("karras", "log_snr")


def time_grid(num: int, eps: float) -> np.ndarray:
    """`num` diffusion times evenly spaced from 1 down to `eps`."""
    return np.linspace(1.0, eps, num)


def karras(sigma_max: float, sigma_min: float, num: int, rho: float) -> np.ndarray:
    """`num` levels from sigma_max to sigma_min, dense at low noise (Karras et al. 2022, eq. 5).

    sigma_i = (sigma_max^(1/rho) + i / (N - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho.
    """
    fraction = np.linspace(0.0, 1.0, num)
    inverse = 1.0 / rho
    return (sigma_max**inverse + fraction * (sigma_min**inverse - sigma_max**inverse)) ** rho


def log_snr(sigma_max: float, sigma_min: float, num: int) -> np.ndarray:
    """`num` levels from sigma_max to sigma_min, uniform in log sigma (DPM-Solver's log-SNR)."""
    fraction = np.linspace(0.0, 1.0, num)
    return np.exp(np.log(sigma_max) + fraction * (np.log(sigma_min) - np.log(sigma_max)))


def noise_levels(
    sde: SDE, num_steps: int, eps: float, noise_schedule: str, rho: float = 7.0
) -> np.ndarray:
    """The levels a noise-level sampler steps: num_steps from sigma(1) to sigma(eps), then 0.

    `noise_schedule` spaces the first num_steps: "karras" (`karras`, with `rho`)
    or "log_snr" (`log_snr`).
    """
    with jax.ensure_compile_time_eval():  # Constants of the program, also under jit.
        sigma_max = float(sde.noise_level(jnp.float32(1.0)))
        sigma_min = float(sde.noise_level(jnp.float32(eps)))
    if noise_schedule == "karras":
        sigmas = karras(sigma_max, sigma_min, num_steps, rho)
    else:
        sigmas = log_snr(sigma_max, sigma_min, num_steps)
    return np.append(sigmas, 0.0)


def check_noise_schedule(sampling_config) -> None:
    """Refuses an unknown `sampling.noise_schedule`, or Karras's with rho <= 0.

    Raises:
      UserError: with the field and the values it takes.
    """
    c = sampling_config
    if c.noise_schedule not in NOISE_SCHEDULES:
        raise UserError(
            f"unknown sampling.noise_schedule {c.noise_schedule!r}; "
            f"choose one of {', '.join(NOISE_SCHEDULES)}"
        )
    if c.noise_schedule == "karras" and not c.rho > 0:
        raise UserError(f"sampling.rho must be > 0, got {c.rho}")


def start_part(levels: np.ndarray, start: float) -> np.ndarray:
    """A decreasing schedule's part below `start`, with `start` first (all of it from its top)."""
    if start >= levels[0]:
        return levels
    return np.concatenate([[start], levels[levels < start]])


class TimeSpace:
    """Levels that are diffusion times t: the sampler's states are x at time t."""

    def __init__(self, sde: SDE):
        self.sde = sde

    def times(self, levels: np.ndarray) -> np.ndarray:
        """The diffusion time of each level: the level itself."""
        return np.asarray(levels, np.float64)

    def start(self, levels: np.ndarray, start_time: float | None) -> np.ndarray:
        """The part of `levels` a reverse process started at `start_time` runs (None: all)."""
        return levels if start_time is None else start_part(levels, start_time)

    def known(self, source: jax.Array, level: jax.Array, z: jax.Array) -> jax.Array:
        """`source` noised by the forward kernel to the level's time."""
        t = jnp.maximum(level, 0.0)  # Euler-Maruyama's last state is at eps - dt <= 0.
        return self.sde.mean_coeff(t) * source + self.sde.marginal_std(t) * z

    def renoise(self, x: jax.Array, level: jax.Array, up_to: jax.Array, z: jax.Array) -> jax.Array:
        """A state at `level` noised forward to the higher level `up_to`."""
        a, v = self.sde.transition(jnp.maximum(level, 0.0), up_to)
        return a * x + jnp.sqrt(v) * z


class NoiseLevelSpace:
    """Levels that are noise levels sigma: the states are x~ = x / alpha = x_0 + sigma z."""

    def __init__(self, sde: SDE):
        self.sde = sde

    def times(self, levels: np.ndarray) -> np.ndarray:
        """The diffusion time t(sigma) of each level (at most 1), 0 at sigma = 0."""
        levels = np.asarray(levels, np.float64)
        positive = levels > 0
        with jax.ensure_compile_time_eval():  # Also asked for while a sampler is traced.
            times = self.sde.time_at_noise_level(jnp.asarray(levels[positive], jnp.float32))
        out = np.zeros_like(levels)
        out[positive] = np.minimum(np.asarray(times), 1.0)
        return out

    def start(self, levels: np.ndarray, start_time: float | None) -> np.ndarray:
        """The part of `levels` below sigma(start_time), that level first (None: all of them)."""
        if start_time is None:
            return levels
        with jax.ensure_compile_time_eval():
            start_level = float(self.sde.noise_level(jnp.float32(start_time)))
        return start_part(levels, start_level)

    def known(self, source: jax.Array, level: jax.Array, z: jax.Array) -> jax.Array:
        """`source` at noise level `level`."""
        return source + level * z

    def renoise(self, x: jax.Array, level: jax.Array, up_to: jax.Array, z: jax.Array) -> jax.Array:
        """A state at `level` noised up to the higher level `up_to`."""
        return x + jnp.sqrt(up_to**2 - level**2) * z


Space = TimeSpace | NoiseLevelSpace
