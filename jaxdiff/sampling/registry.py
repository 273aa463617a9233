"""The samplers `sampling.sampler` chooses, each registered once with all the project asks of it.

A sampler is a function `(call, levels, **fields) -> samples`: `call` a
`SamplerCall` (key, score_fn, SDE, shape, snapshots, control), `levels` its
schedule, computed by the one schedule function it is registered with (the
part below a control's start time, when editing), and `fields` the
sampling.* settings it reads. Its registration gives the rest: default steps,
network evaluations per sample, the diffusion time of each of its states (read
off that same schedule), checks of its settings and whether it takes a control.
"""

from collections.abc import Callable

import jax
import numpy as np

from jaxdiff.core.common import ScoreFn
from jaxdiff.core.errors import UserError
from jaxdiff.core.registry import Registry
from jaxdiff.diffusion.sde import SDE
from jaxdiff.sampling.scan import Control, SamplerCall, Samples, snapshot_states
from jaxdiff.sampling.schedules import Space, TimeSpace

# The samplers `sampling.sampler` chooses, each added by `register_sampler`.
SAMPLERS = Registry("sampling.sampler")

# What `create_sampler` returns: (key, score_fn, sde, shape, control=None) -> samples.
Sampler = Callable[..., Samples]


def register_sampler(
    name: str,
    *,
    default_steps: int,
    nfe: Callable[..., int],
    schedule: Callable[..., np.ndarray],
    space: type[Space] = TimeSpace,
    fields: tuple[str, ...] = (),
    check: Callable[..., None] | None = None,
    control: bool = False,
    no_inpainting: str = "",
) -> Callable:
    """A decorator that adds a sampler to SAMPLERS with all that the project asks of it.

    Args:
      name: what `sampling.sampler` says to choose it.
      default_steps: its steps when `sampling.num_steps` is 0 (the default), so
        that choosing a sampler by name alone gives its usual settings.
      nfe: sampling_config -> network evaluations per sample (without guidance).
      schedule: (sampling_config, sde) -> the level of each of its num_steps + 1
        states, in `space`: what the sampler is handed, and where its state
        times (trajectory frames) come from.
      space: `TimeSpace` (levels are diffusion times) or `NoiseLevelSpace`.
      fields: the sampling.* fields passed to it as keywords.
      check: sampling_config -> None, raising UserError for settings it cannot take.
      control: whether it takes a `Control` (it starts from `call.initial_state`
        and loops with `call.scan`).
      no_inpainting: why it cannot take a `Control` with a mask (empty: it can).

    `nfe`, `schedule` and `check` get the config with num_steps resolved (`with_steps`).
    """
    extras = {
        "default_steps": default_steps,
        "nfe": nfe,
        "schedule": schedule,
        "space": space,
        "control": control,
        "no_inpainting": no_inpainting,
    }
    if check is not None:
        extras["check"] = check
    return SAMPLERS.register(name, fields=fields, **extras)


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
    levels = entry.extras["schedule"](with_steps(sampling_config), sde)
    return entry.extras["space"](sde).times(levels)


def num_function_evals(sampling_config) -> int:
    """Network evaluations per sample for the configured sampler."""
    return SAMPLERS.get(sampling_config.sampler).extras["nfe"](with_steps(sampling_config))


def create_sampler(sampling_config, snapshots: int = 0) -> Sampler:
    """Binds the sampler named by `sampling_config.sampler` to its schedule and settings.

    Args:
      sampling_config: the config's `sampling` group.
      snapshots: 0, or how many states of the trajectory to return as well.

    Returns:
      A function (key, score_fn, sde, shape, control=None) -> samples, ready for
      `jax.jit`; with snapshots, -> (samples, (snapshots, *shape) trajectory).

    Raises:
      UserError: an unknown sampler or settings it cannot take.
    """
    entry = SAMPLERS.get(sampling_config.sampler)
    c = with_steps(sampling_config)
    if not 0.0 < c.eps < 1.0:
        raise UserError(f"sampling.eps must be in (0, 1), got {c.eps}")
    if "check" in entry.extras:
        entry.extras["check"](c)
    if snapshots:
        snapshot_states(c.num_steps, snapshots)  # Validates the count.
    fields = {f: c[f] for f in entry.fields}

    def sampler(
        key: jax.Array,
        score_fn: ScoreFn,
        sde: SDE,
        shape: tuple[int, ...],
        control: Control | None = None,
    ) -> Samples:
        if control is not None and not entry.extras["control"]:
            raise ValueError(f"sampling.sampler {entry.name!r} takes no control")
        space = entry.extras["space"](sde)
        call = SamplerCall(key, score_fn, sde, shape, space, snapshots, control)
        levels = call.space.start(entry.extras["schedule"](c, sde), call.start_time)
        return entry.build(call, levels, **fields)

    return sampler


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
      UserError: an unknown sampler, one that takes no control, one that
        cannot inpaint (with a mask), a start time outside (sampling.eps, 1],
        resampling without a mask or with counts below 1.
    """
    entry = SAMPLERS.get(sampling_config.sampler)
    # .get: an entry added to SAMPLERS without `register_sampler` takes none.
    if not entry.extras.get("control"):
        raise UserError(
            f"sampling.sampler {entry.name!r} takes no control: it cannot inpaint or edit"
        )
    if masked and entry.extras["no_inpainting"]:
        can = sorted(
            name
            for name in SAMPLERS
            if SAMPLERS.get(name).extras.get("control")
            and not SAMPLERS.get(name).extras["no_inpainting"]
        )
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
