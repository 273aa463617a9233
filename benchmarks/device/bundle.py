"""Builds the folder a GPU machine without network needs: wheels and one compact dataset.

    python benchmarks/device/bundle.py                 # -> .device_bundle/ (git-ignored)

The machine has jax, flax, optax, orbax-checkpoint and PyTorch but not the data stack
(tensorflow-datasets, array-record, ml-collections, clu, tensorboardX): their wheels are
copied from `--wheels` (tensorboardX downloaded if it is not there). The dataset
(`--datasets`, from the TFDS data directory) is rewritten with its records compressed in
groups (`--group_size` records per zstd block, level `--zstd`): TFDS writes each record
compressed alone, and CIFAR-10's records share most of their bytes (the feature framing
and the image headers), so grouping shrinks its folder to less than half.
`tfds.data_source` reads either layout; the rewrite is checked record for record, then
read back through `tfds.data_source` (`check_readable`).

Everything that travels to the machine (the tracked tree and the bundle) must
stay under the device tool's 64 MiB; the script prints the total and exits 1
above it. Then run `benchmarks/device/session.py` there (see its docstring).
"""

import argparse
import os
import shutil
import subprocess
import sys

CARRY_LIMIT_BYTES = 64 * 2**20
DEFAULT_BUNDLE = ".device_bundle"


def repack_dataset(source: str, target: str, group_size: int, zstd_level: int) -> None:
    """Copies a prepared TFDS dataset folder, its array_record files regrouped and recompressed."""
    from array_record.python import array_record_module

    options = f"group_size:{group_size},zstd:{zstd_level}"
    for root, _, files in os.walk(source):
        out_dir = os.path.join(target, os.path.relpath(root, source))
        os.makedirs(out_dir, exist_ok=True)
        for name in files:
            path, out = os.path.join(root, name), os.path.join(out_dir, name)
            if ".array_record-" not in name:
                shutil.copyfile(path, out)
                continue
            reader = array_record_module.ArrayRecordReader(path)
            count = reader.num_records()
            writer = array_record_module.ArrayRecordWriter(out, options)
            for start in range(0, count, 4096):
                for record in reader.read(list(range(start, min(start + 4096, count)))):
                    writer.write(record)
            writer.close()
            reader.close()
            check = array_record_module.ArrayRecordReader(out)
            original = array_record_module.ArrayRecordReader(path)
            indices = list(range(count))
            if check.num_records() != count or check.read(indices) != original.read(indices):
                sys.exit(f"error: the repacked {out} does not hold the records of {path}")


def check_readable(data_dir: str, name: str) -> None:
    """Exits unless `tfds.data_source` reads the last example of each split of `name`."""
    import tensorflow_datasets as tfds

    for split in tfds.builder(name, data_dir=data_dir).info.splits:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        if "image" not in source[len(source) - 1]:
            sys.exit(f"error: tfds reads no image from {name}/{split} in {data_dir}")


def tracked_bytes(repo: str) -> int:
    """Bytes of the files git tracks in `repo` (what travels besides the carried folders)."""
    names = subprocess.run(
        ["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True
    ).stdout.split(b"\0")
    paths = [os.path.join(repo, n.decode()) for n in names if n]
    return sum(os.path.getsize(p) for p in paths if os.path.isfile(p))


def folder_bytes(path: str) -> int:
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, files in os.walk(path)
        for name in files
    )


def main() -> None:
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    shared = os.path.join(os.path.dirname(repo), "shared")
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--wheels", default=os.path.join(shared, "wheels", "cp312"))
    parser.add_argument(
        "--data_dir",
        default=os.environ.get("TFDS_DATA_DIR")
        or os.path.join(shared, "data", "tensorflow_datasets"),
    )
    parser.add_argument("--datasets", default="cifar10")
    parser.add_argument("--out", default=os.path.join(repo, DEFAULT_BUNDLE))
    parser.add_argument("--group_size", type=int, default=64)
    parser.add_argument("--zstd", type=int, default=19)
    args = parser.parse_args()

    if not os.path.isdir(args.wheels):
        sys.exit(f"error: no wheel folder {args.wheels} (pass --wheels)")
    for name in args.datasets.split(","):
        if not os.path.isdir(os.path.join(args.data_dir, name)):
            sys.exit(
                f"error: {name} is not prepared in {args.data_dir}; run "
                f"python -m jaxdiff.prepare {name} --data_dir={args.data_dir}"
            )
    shutil.rmtree(args.out, ignore_errors=True)
    wheels = os.path.join(args.out, "wheels")
    os.makedirs(wheels)
    for name in sorted(os.listdir(args.wheels)):
        if name.endswith(".whl"):
            shutil.copyfile(os.path.join(args.wheels, name), os.path.join(wheels, name))
    # jaxdiff's TensorBoard writer, newer than the wheel folder: fetched from the package index.
    if not any(name.lower().startswith("tensorboardx") for name in os.listdir(wheels)):
        download = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", wheels]
        subprocess.run([*download, "tensorboardX"], check=True)
    for name in args.datasets.split(","):
        source = os.path.join(args.data_dir, name)
        target = os.path.join(args.out, "tensorflow_datasets", name)
        repack_dataset(source, target, args.group_size, args.zstd)
        check_readable(os.path.dirname(target), name)
        print(
            f"{name}: {folder_bytes(source) / 2**20:.1f} MiB -> "
            f"{folder_bytes(target) / 2**20:.1f} MiB"
        )
    bundle, tree = folder_bytes(args.out), tracked_bytes(repo)
    total = bundle + tree
    print(
        f"bundle {bundle / 2**20:.1f} MiB + tracked tree {tree / 2**20:.1f} MiB = "
        f"{total / 2**20:.1f} MiB of the {CARRY_LIMIT_BYTES / 2**20:.0f} MiB that can travel"
    )
    if total > CARRY_LIMIT_BYTES:
        sys.exit("error: too large to travel; bundle fewer datasets")
    print(f"carry: {os.path.relpath(args.out, repo)}")


if __name__ == "__main__":
    main()
