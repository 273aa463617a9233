"""`jit`: `jax.jit` with the XLA options every jaxdiff program is compiled with.

On CPU, XLA (jaxlib 0.10) hands convolutions, dots and reductions to YNNPACK
fusions by default. With XLA's own kernels instead, jaxdiff's programs sampled
1.14-1.51x faster on 2 CPU cores, and trained the residual U-Nets 1.12x and
the seed nets (at their batch of 64) 1.05-1.13x as fast; the seed nets at
batch 32 trained 0.88-0.91x as fast (benchmarks/xla_options.py, the same
programs compiled both ways and timed in turns; docs/performance.md). So on
CPU jaxdiff compiles with YNNPACK fusions off, unless `XLA_FLAGS` sets the
option itself, or this XLA does not know it.
"""

import functools
import os
from collections.abc import Callable

import jax

_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


@functools.cache
def compiler_options() -> dict[str, str]:
    """The XLA options for the default backend ({} where none apply)."""
    if jax.default_backend() != "cpu":
        return {}
    user_flags = os.environ.get("XLA_FLAGS", "")
    options = {name: value for name, value in _CPU_OPTIONS.items() if name not in user_flags}
    if not options:
        return {}
    try:
        jax.jit(lambda x: x + 1, compiler_options=options).lower(0.0).compile()
    except jax.errors.JaxRuntimeError:  # An XLA without the option: keep its defaults.
        return {}
    return options


def jit(fun: Callable, **kwargs) -> Callable:
    """`jax.jit(fun, **kwargs)` compiled with `compiler_options()`.

    The options are read when `jit` is called, which starts JAX's backend: call
    it after `jax.distributed.initialize`, not at import.
    """
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)
