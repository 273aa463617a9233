"""keep_freed_memory: a freed block is reused, not page-faulted in again."""

import json
import platform
import subprocess
import sys

import pytest

from tests.conftest import ROOT

# In a fresh process (the settings are process-wide, and the arena setting only
# takes effect before threads have arenas): a worker thread, as XLA's are,
# allocates a 100 MB block (over the 64 MB a thread's own arena can hold),
# fills it and frees it, twice; prints the page faults of the second round.
SCRIPT = """
import ctypes, json, resource, sys, threading
from jaxdiff.core.host_memory import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
SIZE = 100 << 20
faults = []
def use_block():
    block = libc.malloc(SIZE)
    ctypes.memset(block, 1, SIZE)
    libc.free(block)
def worker():
    use_block()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    use_block()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
thread = threading.Thread(target=worker)
thread.start()
thread.join()
print(json.dumps({"applied": applied, "faults": faults[0], "pages": SIZE // 4096}))
"""


def second_round_faults(mode: str) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, mode], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc only")
def test_freed_block_is_reused_without_page_faults():
    default, kept = second_round_faults("default"), second_round_faults("keep")
    assert kept["applied"] is True
    # glibc's default maps the block afresh each round: its pages fault in again
    # (a few hundred faults with transparent huge pages, 25,600 without).
    assert default["faults"] > kept["faults"]
    assert kept["faults"] < kept["pages"] // 100
