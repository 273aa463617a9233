"""Reverse-time samplers, each a single `lax.scan` over a schedule computed once.

All of them take a `score_fn(x, t)` and an SDE, so they work with any model
(and with classifier-free guidance, which is just another score_fn). Each
returns a clean image. Two families:

- time samplers (`euler_maruyama`, `pc`, `ode`; `time_samplers`) step the
  SDE's own time t on a uniform grid from 1 to `eps`;
- noise-level samplers (`edm`, `dpm_solver++`, `ddim`; `noise_level_samplers`)
  step noise levels sigma from sigma(1) to sigma(eps), then to 0.

The modules, lowest first: `schedules` (the levels a sampler steps, and their
spaces), `scan` (the loop with snapshots and editing `Control`), `registry`
(SAMPLERS, `create_sampler` and what the project asks of a sampler), then the
two families, which register themselves.

    from jaxdiff import sampling

    sampler = sampling.create_sampler(config.sampling)
    images = sampler(key, score_fn, sde, (16, 28, 28, 1))
"""

from jaxdiff.sampling.noise_level_samplers import probability_flow_encode
from jaxdiff.sampling.registry import (
    SAMPLERS,
    Sampler,
    check_control,
    create_sampler,
    num_function_evals,
    num_steps,
    register_sampler,
    state_times,
    with_steps,
)
from jaxdiff.sampling.scan import (
    Control,
    SamplerCall,
    Samples,
    repaint_schedule,
    scan_with_control,
    scan_with_snapshots,
    snapshot_states,
)
from jaxdiff.sampling.schedules import NOISE_SCHEDULES, NoiseLevelSpace, TimeSpace, noise_levels
from jaxdiff.sampling.time_samplers import PREDICTORS

__all__ = [
    "NOISE_SCHEDULES",
    "PREDICTORS",
    "SAMPLERS",
    "Control",
    "NoiseLevelSpace",
    "Sampler",
    "SamplerCall",
    "Samples",
    "TimeSpace",
    "check_control",
    "create_sampler",
    "noise_levels",
    "num_function_evals",
    "num_steps",
    "probability_flow_encode",
    "register_sampler",
    "repaint_schedule",
    "scan_with_control",
    "scan_with_snapshots",
    "snapshot_states",
    "state_times",
    "with_steps",
]
