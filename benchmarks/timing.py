"""Helpers the layer and option benchmarks share: timing programs in turns, saving rows."""

import json
import os
import statistics
import time

import jax


def time_in_turns(programs: dict, args: tuple, repeats: int) -> dict:
    """Median seconds of each program on `args`, called in turns after one warm-up call each.

    Calling the programs in turns, rather than one after the other, spreads this
    machine's drifts in speed over all of them alike.
    """
    times = {key: [] for key in programs}
    for program in programs.values():
        jax.block_until_ready(program(*args))
    for _ in range(repeats):
        for key, program in programs.items():
            start = time.perf_counter()
            jax.block_until_ready(program(*args))
            times[key].append(time.perf_counter() - start)
    return {key: statistics.median(t) for key, t in times.items()}


def write_json(rows, path: str) -> None:
    """Writes `rows` as indented JSON to `path`, creating its folder, and says so."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump(rows, f, indent=1)
    print(f"wrote {path}")
