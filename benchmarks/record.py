"""Runs one `main.py` command and writes what it measured as a record for the docs.

    python benchmarks/record.py NAME -- --config=configs/mnist.py --workdir=runs/mnist

writes `docs/records/NAME.json`: the command, the date, the machine, the wall time
of the whole command, and what the run left in its workdir:

- training (the default mode): steps, the loss of the last log interval, the
  median images/s over the log intervals; a classifier's test accuracy;
- `--mode=eval`: the fields of the evaluation's JSON (FID, precision, ...).

`docs/render.py` renders the docs' figures from these records, so a figure
changes only by measuring it again.
"""

import argparse
import glob
import importlib.metadata
import json
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from datetime import date

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORDS = os.path.join(ROOT, "docs", "records")


def machine() -> str:
    """The CPU's model and core count, e.g. "AMD EPYC 7B13, 2 cores"."""
    model = platform.processor() or platform.machine()
    if os.path.exists("/proc/cpuinfo"):
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        model = names[0] if names else model
    return f"{model}, {os.cpu_count()} cores"


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (Linux; 0 elsewhere)."""
    if not os.path.exists("/proc/stat"):
        return 0.0
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK")


def flag(args: list[str], name: str, default: str | None = None) -> str | None:
    """The value of `--name=value` in `args` (the last one), else `default`."""
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    return values[-1] if values else default


def read_jsonl(path: str) -> list[dict]:
    """The records of a `metrics.jsonl`."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def training_fields(workdir: str) -> dict:
    """Steps, last loss and median images/s of a score-model or classifier run."""
    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    losses = [r for r in records if "loss" in r]
    fields = {
        "steps": losses[-1]["step"],
        "final_loss": losses[-1]["loss"],
        "images_per_sec": statistics.median(
            r["images_per_sec"] for r in losses if "images_per_sec" in r
        ),
    }
    accuracies = [r["accuracy"] for r in records if set(r) == {"step", "accuracy"}]
    if accuracies:
        fields["test_accuracy"] = accuracies[-1]
    stage1 = os.path.join(workdir, "autoencoder", "metrics.jsonl")
    if os.path.exists(stage1):
        fields["autoencoder"] = read_jsonl(stage1)[-1]
    return fields


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("name", help="the record's name: docs/records/NAME.json")
    parser.add_argument(
        "--note",
        default="",
        help="what a reader must know about the measurement, e.g. that other work shared the "
        "machine; the docs show it beside the figure",
    )
    parser.add_argument("main_args", nargs=argparse.REMAINDER, help="-- then main.py's flags")
    args = parser.parse_args()
    main_args = [a for a in args.main_args if a != "--"]
    workdir = flag(main_args, "workdir")
    if workdir is None:
        sys.exit("error: the main.py flags need --workdir")
    mode = flag(main_args, "mode", "train")
    evals_before = set(glob.glob(os.path.join(workdir, "eval", "*.json")))

    start, busy_before = time.perf_counter(), busy_cpu_seconds()
    subprocess.run([sys.executable, os.path.join(ROOT, "main.py"), *main_args], check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    # The cores other processes kept busy meanwhile: a wall time measured beside other
    # work is longer than the command's own.
    others = (busy_cpu_seconds() - busy_before - usage.ru_utime - usage.ru_stime) / wall

    record = {
        "command": shlex.join(["python", "main.py", *main_args]),
        "date": date.today().isoformat(),
        "machine": machine(),
        "jax": importlib.metadata.version("jax"),
        "wall_s": round(wall, 1),
        "other_cores_busy": round(max(others, 0.0), 2),
    }
    if args.note:
        record["note"] = args.note
    if mode == "train":
        record.update(training_fields(workdir))
    elif mode == "eval":
        written = set(glob.glob(os.path.join(workdir, "eval", "*.json"))) - evals_before
        if len(written) != 1:
            sys.exit(f"error: expected one new eval JSON in {workdir}/eval, found {len(written)}")
        with open(written.pop()) as f:
            result = json.load(f)
        result.pop("classifier", None)  # a path on the measuring machine
        record.update(result)
    os.makedirs(RECORDS, exist_ok=True)
    path = os.path.join(RECORDS, f"{args.name}.json")
    with open(path, "w") as f:
        json.dump(record, f, indent=1)
        f.write("\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
