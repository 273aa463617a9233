"""How long `jaxdiff.data.prepare` takes to prepare each full dataset from its original files.

    python benchmarks/probes/prepare_data.py --tfds_dir=../shared/data/tensorflow_datasets

The original files (MNIST's IDX files, CIFAR-10's binary archive) are written
first from the prepared datasets in `--tfds_dir` (for MNIST and Fashion-MNIST
they are then byte-for-byte the published files' contents), then each dataset
is prepared from them into an empty data directory, `--repeats` times; the
download itself is not timed. Prints the median seconds per dataset and writes
them as JSON (`--out`).
"""

import argparse
import json
import os
import pathlib
import statistics
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))

from jaxdiff.data import prepare
from tests.data.make_subsets import write_source_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tfds_dir", required=True, help="a TFDS data directory holding them")
    parser.add_argument("--datasets", default="mnist,fashion_mnist,cifar10")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/prepare_data_cpu.json")
    args = parser.parse_args()
    os.environ["TFDS_DATA_DIR"] = os.path.abspath(args.tfds_dir)
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.datasets.split(","):
            sources = pathlib.Path(scratch, "sources", name)
            write_source_files(name, sources)
            size = sum(p.stat().st_size for p in sources.iterdir())
            times = []
            for repeat in range(args.repeats):
                data_dir = os.path.join(scratch, f"{name}_{repeat}")
                start = time.perf_counter()
                prepare.prepare(name, data_dir, source_dir=str(sources))
                times.append(time.perf_counter() - start)
            rows[name] = {"source_mb": size / 2**20, "median_s": statistics.median(times)}
            print(
                f"{name}: {rows[name]['median_s']:.1f} s from {size / 2**20:.1f} MB of source files"
            )
    pathlib.Path(args.out).write_text(
        json.dumps({"cpu_count": os.cpu_count(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
