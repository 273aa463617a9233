"""`keep_freed_memory`: reuse freed host memory instead of page-faulting it in again.

On CPU, XLA allocates each call's temporary buffers in one block (over a
gigabyte for a CIFAR-10 U-Net train call) and frees it when the call returns.
glibc's malloc serves a block that large with a fresh `mmap` and gives it back
with `munmap`, so every call faults its pages in again and the kernel zeroes
them. Keeping freed memory in the heap lets the next call reuse it: train calls
run faster, sampling about as fast, as a sampler's `lax.scan` reuses its
buffers within the call (docs/design.md; the figures are in
docs/performance.md). main.py calls it (`--keep_freed_memory`). The price: the
process keeps its peak memory until it exits.
"""

import ctypes
import ctypes.util
import platform

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER = 2**31 - 1


def keep_freed_memory() -> bool:
    """Makes glibc's malloc keep freed memory for reuse; True where it applied.

    Three settings, all process-wide: one malloc arena, so that the threads XLA
    allocates from share the main heap (a thread's own arena would `mmap` any
    block over 64 MB); no `mmap` for large blocks; and no trimming of the heap's
    free top. Call it before the JAX backend starts (before the first
    computation): the arena setting has no effect once threads own arenas. A
    no-op (False) where the C library is not glibc, e.g. on macOS.
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER))
    return all(mallopt(parameter, value) == 1 for parameter, value in settings)
