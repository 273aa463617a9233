"""benchmarks/run.py's tables: rows of several machines merged into one file, and rendered."""

import argparse
import json
import subprocess
import sys

import pytest

from .conftest import ROOT, load_script

run = load_script(ROOT / "benchmarks" / "run.py")

CPU, GPU = "x86_64 CPU, 2 cores", "NVIDIA H200"


def row(device, model="mnist", side="jaxdiff", batch=64, precision="fp32", train=200.0, **extra):
    """A row as run.py writes it, with made-up figures."""
    return {
        "model": model,
        "side": side,
        "device": device,
        "batch": batch,
        "precision": precision,
        "params": 1022849,
        "train_images_per_sec": train,
        "sample_per_sec": train / 4,
        "sample_steps": 20,
        "sample_batch": 64,
        "ms_per_eval": 10.0,
        "peak_mem_mb": None,
        "warmup_s": 1.0,
        "gflops_per_step": 4.73,
        "mfu": None,
        **extra,
    }


def sections(text: str) -> dict[str, str]:
    """A markdown page's `## ` sections by heading."""
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in text.split("\n## ")[1:]}


def table_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """The cells of each table row of `text`, by (model, side); one table's rows expected."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0] != "model":
            assert (cells[0], cells[1]) not in rows, "a row twice: more than one table given"
            rows[cells[0], cells[1]] = cells
    return rows


def test_merge_replaces_rows_of_the_same_key_and_keeps_the_others():
    cpu = [row(CPU), row(CPU, side="torch_eager", train=100.0)]
    gpu = [row(GPU, train=5000.0), row(GPU, side="torch_eager", train=4000.0)]

    merged = run.merge_rows(cpu, gpu)
    assert merged == cpu + gpu  # A GPU run keeps the CPU rows.

    rerun = [row(CPU, train=250.0)]
    merged = run.merge_rows(merged, rerun)
    assert merged == [rerun[0], cpu[1], *gpu]  # In place; the GPU rows survive a CPU rerun.

    merged = run.merge_rows(merged, [row(GPU, side="torch_eager", train=4100.0)])
    assert [r["train_images_per_sec"] for r in merged] == [250.0, 100.0, 5000.0, 4100.0]


def test_merge_keys_are_device_model_side_precision_and_batch():
    old = [row(CPU)]
    others = [
        row(GPU),
        row(CPU, model="seed_cond"),
        row(CPU, side="torch_compile"),
        row(CPU, precision="bf16"),
        row(CPU, batch=128),
    ]
    # Each differs from the old row in one key part: appended, in order, the old row kept.
    assert run.merge_rows(old, others) == old + others
    # Other fields (speeds, the run record) are no part of the key.
    newer = row(CPU, train=1.0, command="python benchmarks/run.py", date="2030-01-01")
    assert run.merge_rows(old + others, [newer]) == [newer, *others]
    assert run.merge_rows([], others) == others
    assert run.merge_rows(others, []) == others


def test_write_tables_merges_into_the_file_unless_told_not_to(tmp_path):
    out = str(tmp_path / "sub" / "benchmarks")
    cpu = [row(CPU), row(CPU, side="torch_eager", train=100.0)]
    gpu = [row(GPU, batch=256, train=5000.0)]
    run.write_tables(out, cpu, {CPU: []})
    run.write_tables(out, gpu, {GPU: []})
    with open(out + ".json") as f:
        assert json.load(f) == cpu + gpu
    with open(out + ".md") as f:
        assert list(sections(f.read())) == [CPU, GPU]

    # A CPU rerun replaces its row and keeps the GPU one.
    rerun = row(CPU, train=300.0)
    run.write_tables(out, [rerun], {CPU: []})
    with open(out + ".json") as f:
        assert json.load(f) == [rerun, cpu[1], *gpu]

    # --no_merge: this run's rows alone.
    written = run.write_tables(out, gpu, {GPU: []}, merge=False)
    with open(out + ".json") as f:
        assert json.load(f) == written == gpu
    with open(out + ".md") as f:
        assert list(sections(f.read())) == [GPU]
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == [
        "benchmarks.json",
        "benchmarks.md",
    ]


def test_a_file_that_is_not_rows_is_not_overwritten(tmp_path):
    path = tmp_path / "benchmarks.json"
    assert run.load_rows(str(path)) == []
    path.write_text("{not json")
    with pytest.raises(SystemExit, match="not JSON"):
        run.write_tables(str(tmp_path / "benchmarks"), [row(CPU)], {})
    assert path.read_text() == "{not json"
    path.write_text('{"model": "mnist"}')
    with pytest.raises(SystemExit, match="not a list of rows"):
        run.load_rows(str(path))


def test_markdown_has_a_section_per_device_and_ratios_only_within_a_group():
    rows = [
        row(CPU, train=200.0),
        row(CPU, side="torch_eager", train=100.0),
        row(GPU, side="torch_eager", train=100.0),  # No jaxdiff row on this device.
        row(CPU, side="torch_eager", batch=128, train=50.0),  # None at this batch.
        row(CPU, side="torch_eager", precision="bf16", train=50.0),  # None in bf16.
        row(CPU, model="seed_cond", train=80.0),
        row(CPU, model="seed_cond", side="torch_compile", train=100.0),
    ]
    text = run.markdown(rows, {})
    by_device = sections(text)
    assert list(by_device) == [CPU, GPU]
    assert text.count("\n## ") == 2

    cpu_tables = by_device[CPU].split("\n### ")[1:]
    assert [t.split("\n", 1)[0] for t in cpu_tables] == [
        "Batch 64, fp32",
        "Batch 128, fp32",
        "Batch 64, bf16",
    ]
    fp32_64 = table_rows(cpu_tables[0])
    assert fp32_64["mnist", "jaxdiff"][-1] == ""
    assert fp32_64["mnist", "torch_eager"][-1] == "jaxdiff 2.00x, 2.00x"
    assert fp32_64["seed_cond", "torch_compile"][-1] == "jaxdiff 0.80x, 0.80x"
    assert table_rows(cpu_tables[1])["mnist", "torch_eager"][-1] == ""
    assert table_rows(cpu_tables[2])["mnist", "torch_eager"][-1] == ""
    # The same torch row on another device gets no ratio from the CPU's jaxdiff row.
    assert table_rows(by_device[GPU])["mnist", "torch_eager"][-1] == ""
    assert "x," not in by_device[GPU]


def test_markdown_keeps_the_columns_mfu_peak_memory_note_and_failures():
    rows = [row(GPU, mfu=0.4123, peak_mem_mb=1234.5, gflops_per_step=12.5), row(CPU)]
    text = run.markdown(rows, {GPU: ["cifar10_cond / torch_compile, batch 64, fp32: E: boom"]})
    assert "| GFLOP/step | MFU | vs jaxdiff (train, sample) |" in text
    cells = table_rows(sections(text)[GPU])["mnist", "jaxdiff"]
    assert cells[2:] == [
        "1,022,849",
        "200.0",
        "50.00",
        "10.00",
        "1,234",
        "1.0",
        "12.5",
        "41.2%",
        "",
    ]
    assert "Peak MB: jaxdiff, the compiled train call's" in text
    gpu, cpu = sections(text)[GPU], sections(text)[CPU]
    assert "Sides that failed to build:\n\n- cifar10_cond / torch_compile" in gpu
    assert "failed" not in cpu
    # A device with failures only still gets its section.
    assert list(sections(run.markdown([row(CPU)], {GPU: ["x / jaxdiff: E"]}))) == [CPU, GPU]


def test_markdown_names_each_devices_runs_and_renders_missing_values_as_na():
    first = {"command": "python benchmarks/run.py --repeats=7", "jax": "0.10.2", "torch": "2.13.0"}
    second = {**first, "command": "python benchmarks/run.py --batch=128"}
    rows = [
        row(CPU, **first, date="2030-01-01"),
        row(CPU, batch=128, **second, date="2030-01-02"),
        row(GPU, **first, date="2030-01-03"),
        {"model": "old_model", "side": "torch_eager", "device": "old machine"},
    ]
    by_device = sections(run.markdown(rows))
    assert list(by_device) == [CPU, GPU, "old machine"]
    cpu = by_device[CPU]
    assert "1. `python benchmarks/run.py --repeats=7`; jax 0.10.2, torch 2.13.0; 2030-01-01." in cpu
    assert "2. `python benchmarks/run.py --batch=128`; jax 0.10.2, torch 2.13.0; 2030-01-02." in cpu
    assert "Rows from run 1." in cpu and "Rows from run 2." in cpu
    assert "Command: `python benchmarks/run.py --repeats=7`" in by_device[GPU]
    assert "2030-01-03" not in cpu

    old = by_device["old machine"]
    assert "Command: n/a; jax n/a, torch n/a; date n/a." in old
    assert "### Batch n/a, n/a" in old
    assert "Sampling: n/a Euler-Maruyama steps on n/a samples." in old
    cells = table_rows(old)["old_model", "torch_eager"]
    assert cells[2:] == ["n/a"] * 8 + [""]


def test_the_committed_tables_still_render():
    for name in ("benchmarks.json", "benchmarks_configs.json"):
        path = ROOT / "docs" / name
        if not path.exists():
            continue
        rows = run.load_rows(str(path))
        assert rows
        text = run.markdown(rows)
        assert list(sections(text)) == list(dict.fromkeys(r["device"] for r in rows))
        rendered = set()
        for section in sections(text).values():
            for table in section.split("\n### ")[1:]:
                rendered |= set(table_rows(table))
        assert rendered == {(r["model"], r["side"]) for r in rows}
        assert "None" not in text
        # Merging a file's rows into themselves changes nothing.
        assert run.merge_rows(rows, rows) == rows


def test_batch_takes_a_comma_separated_list():
    assert run.batch_list("64") == [64]
    assert run.batch_list("128,256,512") == [128, 256, 512]
    assert run.batch_list("256,128,256") == [256, 128]
    for bad in ("", "0", "128,", "a,256", "-8"):
        with pytest.raises(argparse.ArgumentTypeError):
            run.batch_list(bad)


def test_run_record_and_new_rows_share_the_same_keys():
    record = run.run_record()
    assert tuple(record) == run.RECORD_KEYS
    assert record["command"].startswith("python benchmarks/run.py")
    assert len(record["date"]) == len("2030-01-01")


def test_help_runs():
    result = subprocess.run(
        [sys.executable, "benchmarks/run.py", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "--no_merge" in result.stdout and "comma-separated" in result.stdout


def _flops(fn, *args):
    import jax

    return run.jaxpr_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def test_flop_count_of_a_matrix_product_and_a_scan_of_them():
    import jax
    import jax.numpy as jnp

    a, b = jnp.ones((4, 5)), jnp.ones((5, 6))
    assert _flops(jnp.matmul, a, b) == 2 * 4 * 5 * 6
    steps = lambda a, b: jax.lax.scan(lambda c, _: (c, c @ b), a, length=3)[1]  # noqa: E731
    assert _flops(steps, a, b) == 3 * 2 * 4 * 5 * 6


def test_flop_count_of_convolutions_leaves_out_padding_and_dilation_zeros():
    import jax
    import jax.numpy as jnp
    import numpy as np

    x, k = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4))
    dims = ("NHWC", "HWIO", "NHWC")

    def conv(x, k, **kw):
        return jax.lax.conv_general_dilated(x, k, dimension_numbers=dims, **kw)

    # SAME 3x3 on 8 positions: 8 x 3 tap pairs, less the 2 that fall on padding.
    same = _flops(lambda x, k: conv(x, k, window_strides=(1, 1), padding="SAME"), x, k)
    assert same == 2 * 2 * 4 * 3 * 22 * 22
    # A stride-2 transposed conv does one multiply-add per input element, tap and
    # channel pair: 2 * N * H * W * C_in * kh * kw * C_out, less taps past the edge.
    up = lambda x, k: jax.lax.conv_transpose(x, k, (2, 2), "SAME", dimension_numbers=dims)  # noqa: E731
    out = jax.eval_shape(up, x, k).shape
    assert out == (2, 16, 16, 4)

    # The same count from a brute-force tally of which products meet an input element.
    def useful_pairs(size, taps, outputs, pad_lo, dilation):
        return sum(
            1
            for o in range(outputs)
            for t in range(taps)
            if 0 <= o + t - pad_lo <= (size - 1) * dilation and (o + t - pad_lo) % dilation == 0
        )

    lowered = jax.make_jaxpr(up)(x, k).jaxpr
    (eqn,) = [e for e in lowered.eqns if e.primitive.name == "conv_general_dilated"]
    pad_lo = eqn.params["padding"][0][0]
    per_dim = useful_pairs(8, 3, 16, pad_lo, 2)
    assert per_dim < 16 * 3  # the zeros of the dilated input are left out
    assert _flops(up, x, k) == 2 * 2 * 4 * 3 * per_dim**2
    assert np.isclose(per_dim, 8 * 3, atol=2)  # about one product per input element and tap
