"""`jit`: `jax.jit` with the XLA options every jaxdiff program is compiled with.

On CPU, XLA (jaxlib 0.10) hands convolutions, single dots and reductions to
YNNPACK fusions by default. Measured on CPU, YNNPACK's convolutions were
slower than XLA's own kernels and its reductions faster; a training step's
backward pass is full of such reductions (bias and normalization gradients).
So on CPU jaxdiff keeps YNNPACK for reductions and single dots and gives
convolutions to XLA's own kernels, unless `XLA_FLAGS` sets the option itself,
or this XLA does not know it. The figures, kernel by kernel and for whole train
and sampling calls, are in docs/performance.md (docs/design.md).
"""

import dataclasses
import functools
import os
from collections.abc import Callable
from typing import Any

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


@dataclasses.dataclass(frozen=True)
class MemorySummary:
    """What XLA assigned to one compiled call, per device, beside the memory it can use.

    The byte counts are None where the backend reports no memory analysis.
    `str()` gives one line: "train call: <total> per device (arguments <a> +
    outputs <o> - donated <d> + temp <t>) of <capacity> device memory (<share>%)".

    Attributes:
      name: what the call is, for the line ("train call").
      argument_bytes: the call's inputs (parameters, optimizer state, data...).
      output_bytes: its results.
      alias_bytes: outputs written into donated arguments, counted in both above.
      temp_bytes: XLA's scratch buffers: activations kept for the backward pass and
        other intermediates; what remat and gradient accumulation shrink.
      peak_bytes: XLA's own peak estimate where the backend gives one, else None.
      capacity_bytes: the device's memory limit, or the host's physical memory.
      capacity_source: "device" or "host" (a backend without memory statistics,
        e.g. CPU, where the devices share the host's memory).
      devices_sharing: local devices that share `capacity_bytes` (host memory), else 1.
    """

    name: str
    argument_bytes: int | None
    output_bytes: int | None
    alias_bytes: int | None
    temp_bytes: int | None
    peak_bytes: int | None
    capacity_bytes: int
    capacity_source: str
    devices_sharing: int = 1

    @property
    def total_bytes(self) -> int | None:
        """Arguments + outputs - donated + temp: the call's footprint on one device."""
        if self.argument_bytes is None:
            return None
        return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

    def __str__(self) -> str:
        capacity = f"{format_bytes(self.capacity_bytes)} {self.capacity_source} memory"
        if self.devices_sharing > 1:
            capacity += f" (shared by {self.devices_sharing} devices)"
        if self.total_bytes is None:
            return f"{self.name}: memory not reported by this backend ({capacity})"
        parts = f"arguments {format_bytes(self.argument_bytes)} + outputs "
        parts += format_bytes(self.output_bytes)
        if self.alias_bytes:
            parts += f" - donated {format_bytes(self.alias_bytes)}"
        parts += f" + temp {format_bytes(self.temp_bytes)}"
        share = 100 * self.total_bytes / self.capacity_bytes
        return (
            f"{self.name}: {format_bytes(self.total_bytes)} per device ({parts}) "
            f"of {capacity} ({share:.1f}%)"
        )


def format_bytes(n: int) -> str:
    """Bytes in binary units: "512 B", "1.5 KiB", "12.0 MiB", "1.23 GiB"."""
    if n < 1024:
        return f"{n} B"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}" if unit == "GiB" else f"{n / scale:.1f} {unit}"
    raise AssertionError("unreachable")


def memory_summary(
    compiled: jax.stages.Compiled, name: str = "call", device: jax.Device | None = None
) -> MemorySummary:
    """XLA's memory analysis of a compiled call, beside `device`'s memory.

    Args:
      compiled: e.g. `jitted.lower(*args).compile()` (see `call_memory_summary`).
      name: what the call is, for the summary's line.
      device: whose memory limit to compare with; default the first local device.
        Where it reports none (`memory_stats()` is None on CPU), the host's
        physical memory is used, labelled as such.

    Returns:
      The numbers; `str()` of it is one line for a log.
    """
    try:
        stats = compiled.memory_analysis()
    except NotImplementedError:  # Backends without the analysis may raise instead.
        stats = None
    device = device or jax.local_devices()[0]
    capacity, source, sharing = device_memory(device)
    if stats is None:
        return MemorySummary(name, None, None, None, None, None, capacity, source, sharing)
    return MemorySummary(
        name=name,
        argument_bytes=stats.argument_size_in_bytes,
        output_bytes=stats.output_size_in_bytes,
        alias_bytes=stats.alias_size_in_bytes,
        temp_bytes=stats.temp_size_in_bytes,
        peak_bytes=getattr(stats, "peak_memory_in_bytes", 0) or None,
        capacity_bytes=capacity,
        capacity_source=source,
        devices_sharing=sharing,
    )


def call_memory_summary(
    jitted: Any, *args: Any, name: str = "call", **kwargs: Any
) -> MemorySummary:
    """`memory_summary` of `jitted(*args, **kwargs)`, compiled but not run.

    `jitted` is a `jax.jit` (or `compiler.jit`) function; args may be arrays or
    `jax.ShapeDtypeStruct`s (with shardings for a sharded call).
    """
    return memory_summary(jitted.lower(*args, **kwargs).compile(), name)


def device_memory(device: jax.Device) -> tuple[int, str, int]:
    """(bytes, "device" or "host", local devices sharing them) of the memory `device` can use.

    A backend without memory statistics (CPU) gives the host's physical memory.
    """
    stats = device.memory_stats()
    if stats and stats.get("bytes_limit"):
        return int(stats["bytes_limit"]), "device", 1
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return host, "host", jax.local_device_count()
