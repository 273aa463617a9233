"""`jit`: `jax.jit` with the XLA options every jaxdiff program is compiled with.

On CPU, XLA (jaxlib 0.10) hands convolutions, single dots and reductions to
YNNPACK fusions by default. Measured on CPU, YNNPACK's convolutions were
slower than XLA's own kernels and its reductions faster; a training step's
backward pass is full of such reductions (bias and normalization gradients).
So on CPU jaxdiff keeps YNNPACK for reductions and single dots and gives
convolutions to XLA's own kernels, unless `XLA_FLAGS` sets the option itself,
or this XLA does not know it. The figures, kernel by kernel and for whole train
and sampling calls, are in docs/performance.md (benchmarks/probes/xla_options.py).
"""

import functools
import os
from collections.abc import Callable

import jax

_YNNPACK_FUSIONS = ("LIBRARY_FUSION_TYPE_REDUCE", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
_CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ",".join(_YNNPACK_FUSIONS)}


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
