"""Renders the measured figures of README.md and docs/results.md from committed records.

    python docs/render.py           # rewrites the rendered blocks in place
    python docs/render.py --check   # exits 1 if a page differs from its records

A page marks each rendered part as

    <!-- render: NAME -->
    ...
    <!-- end render -->

and the text between the markers is whatever `BLOCKS[NAME]` makes of the records:
`docs/records/*.json` (written by `benchmarks/record.py`: one `main.py` command,
its wall time and what its run or evaluation measured) and the benchmark scripts'
results in `benchmarks/results/`. A figure changes only by measuring it again;
nothing between the markers is edited by hand (tests/test_render.py checks).
"""

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "records"
RESULTS = ROOT / "benchmarks" / "results"
PAGES = [ROOT / "README.md", ROOT / "docs" / "results.md"]

BLOCK = re.compile(r"(<!-- render: (\S+) -->\n)(.*?)(<!-- end render -->)", re.DOTALL)


def record(name: str) -> dict:
    """`docs/records/NAME.json`."""
    return json.loads((RECORDS / f"{name}.json").read_text())


def result(name: str):
    """`benchmarks/results/NAME.json`."""
    return json.loads((RESULTS / f"{name}.json").read_text())


# Formatting.


def duration(seconds: float) -> str:
    """ "5 min 41 s", "38 s", "1 h 2 min"."""
    seconds = round(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def num(x: float, digits: int = 3) -> str:
    """A figure with `digits` decimals and thousands separators."""
    return f"{x:,.{digits}f}"


def pct(x: float, digits: int = 2) -> str:
    """A fraction as a percentage."""
    return f"{100 * x:.{digits}f}%"


def both(values: list[str]) -> str:
    """Two seeds' values as "a / b"."""
    return " / ".join(values)


def table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table, one line per row."""

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cells) + " |\n"

    return line(header) + "|" + "---|" * len(header) + "\n" + "".join(map(line, rows))


def cmd(r: dict) -> str:
    """A record's command as inline code."""
    return f"`{r['command']}`"


def result_link(name: str) -> str:
    """A markdown link to a benchmark result, from docs/."""
    return f"[{name}.json](../benchmarks/results/{name}.json)"


def link(name: str) -> str:
    """A markdown link to a record, from docs/."""
    return f"[{name}](records/{name}.json)"


# The blocks. Each returns markdown for docs/results.md unless its name starts
# with "readme": README.md links into docs/.


def shared(r: dict) -> str:
    """Where other work kept part of the machine busy during a record's command, how much."""
    others = r.get("other_cores_busy", 0.0)
    if others < 0.1:
        return ""
    return f"; other work kept {others:.1f} cores busy on average meanwhile, so alone it is faster"


def wall(r: dict) -> str:
    """A record's wall time, marked where other work shared the machine."""
    marked = " (beside other work)" if r.get("other_cores_busy", 0.0) >= 0.1 else ""
    return duration(r["wall_s"]) + marked


def train_sentence(r: dict) -> str:
    """ "4,000 steps in 5 min 41 s (median 812 images/s); final loss 16.6"."""
    return (
        f"{r['steps']:,} steps in {duration(r['wall_s'])} from the command's start "
        f"(median {r['images_per_sec']:,.0f} images/s over the log intervals"
        + shared(r)
        + (f"; {r['note']}" if r.get("note") else "")
        + f"); loss {r['final_loss']:.1f} at the last interval"
    )


def eval_sentence(r: dict) -> str:
    """An evaluation's figures in words."""
    text = (
        f"{r['num_samples']:,} samples from `{r['sampler']}` ({r['nfe']} NFE"
        + (f", guidance w = {r['guidance_scale']:g}" if r.get("guidance_scale") else "")
        + f"): FID {num(r['fid'])} "
        f"(floor {num(r['fid_floor'])}), precision {num(r['precision'])}, "
        f"recall {num(r['recall'])}, HF ratio {r['hf_ratio']:.2f}"
    )
    if r.get("cond_accuracy") is not None:
        text += f", conditional accuracy {pct(r['cond_accuracy'])}"
    return text


def run_block(train: str, evaluation: str) -> Callable[[], str]:
    """A config's section: its two commands, time and quality."""

    def render() -> str:
        t, e = record(train), record(evaluation)
        return (
            f"- **Training**, {cmd(t)}: {train_sentence(t)} ({t['machine']}, "
            f"jax {t['jax']}, {t['date']}; {link(train)}).\n"
            f"- **Quality**, {cmd(e)}: {eval_sentence(e)} ({e['date']}; {link(evaluation)}).\n"
        )

    return render


GUIDANCE_EVALS = [
    "mnist_cond_eval_w0",
    "mnist_cond_eval_w1",
    "mnist_cond_eval",
    "mnist_cond_eval_w3",
]


def guidance_block() -> str:
    lines = [
        "| guidance w | FID | precision | recall | HF ratio | conditional accuracy | record |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in GUIDANCE_EVALS:
        r = record(name)
        lines.append(
            f"| {r['guidance_scale'] or 0:g} | {num(r['fid'])} | {num(r['precision'])} | "
            f"{num(r['recall'])} | {r['hf_ratio']:.2f} | {pct(r['cond_accuracy'])} | {link(name)} |"
        )
    return "\n".join(lines) + "\n"


def short_run_block() -> str:
    r = record("mnist_1k_train")
    return (
        f"{cmd(r)}: {r['steps']:,} steps, loss {r['final_loss']:.1f} at the last interval "
        f"({r['date']}; {link('mnist_1k_train')}).\n"
    )


def prepare_block() -> str:
    rows = result("prepare_data_cpu")["rows"]
    return (
        "; ".join(
            f"{name}: {r['median_s']:.1f} s for {r['source_mb']:.1f} MB of original files"
            for name, r in rows.items()
        )
        + f" ({result_link('prepare_data_cpu')}).\n"
    )


def latent_block() -> str:
    t, e = record("mnist_latent_train"), record("mnist_latent_eval")
    ae = t["autoencoder"]
    return (
        f"- **Both stages**, {cmd(t)}: {duration(t['wall_s'])} from the command's start"
        f"{shared(t)}; "
        f"the autoencoder's test PSNR {ae['test_psnr']:.1f} dB (MSE {ae['test_mse']:.5f}); "
        f"the score model: {t['steps']:,} steps at a median {t['images_per_sec']:,.0f} "
        f"images/s, loss {t['final_loss']:.1f} at the last interval ({t['machine']}, "
        f"{t['date']}; {link('mnist_latent_train')}).\n"
        f"- **Quality**, {cmd(e)}: {eval_sentence(e)} ({e['date']}; "
        f"{link('mnist_latent_eval')}).\n"
    )


# The samplers table: (record, what the row is).
SAMPLER_ROWS = [
    (["samplers_edm_seed0", "samplers_edm_seed1"], "`edm` (the default: churn 40)"),
    (["samplers_edm_no_churn"], "`edm`, no churn (`--config.sampling.s_churn=0`)"),
    (["samplers_dpm_solver_20"], "`dpm_solver++`"),
    (["samplers_ddim_eta1_20"], "`ddim`, eta 1"),
    (["samplers_ode"], "`ode`"),
    (["samplers_pc_250"], "`pc`, 250 steps"),
    (["samplers_euler_maruyama"], "`euler_maruyama`"),
]


def samplers_block() -> str:
    lines = [
        "| sampler | NFE | FID | precision | recall | HF ratio | record |",
        "|---|---|---|---|---|---|---|",
    ]
    for names, label in SAMPLER_ROWS:
        rs = [record(n) for n in names]
        lines.append(
            f"| {label} | {rs[0]['nfe']} | {both([num(r['fid']) for r in rs])} | "
            f"{both([num(r['precision']) for r in rs])} | {both([num(r['recall']) for r in rs])} | "
            f"{both([format(r['hf_ratio'], '.2f') for r in rs])} | "
            f"{', '.join(link(n) for n in names)} |"
        )
    first = record(SAMPLER_ROWS[0][0][0])
    return (
        f"{first['num_samples']:,} samples per row, on the checkpoint of `configs/mnist.py` "
        f"above ({first['date']}); where a row has two values they are `--config.seed=0` and "
        f"`1`. Each row's command is in its record, e.g. {cmd(first)}.\n\n"
        + "\n".join(lines)
        + "\n"
    )


def editing_block() -> str:
    rows = result("editing_quality")["rows"]
    cells = [
        [r["name"], pct(r["accuracy"], 1), duration(r["seconds"]) if r["seconds"] else ""]
        for r in rows
    ]
    header = ["what", "classifier accuracy", "sampling time"]
    return table(header, cells) + "\n(" + result_link("editing_quality") + ")\n"


def speed_ratio(rows: list[dict], pixel: str, latent: str) -> float:
    by_row = {r["row"]: r for r in rows}
    return by_row[latent]["images_per_sec"] / by_row[pixel]["images_per_sec"]


# Where each dataset's pixel and latent score models were timed side by side: MNIST's
# since its decoder became the transposed-convolution one, the others' before.
LATENT_VS_PIXEL = {
    "mnist": "upsampling_cpu",
    "fashion_mnist": "latent_vs_pixel_cpu",
    "cifar10": "latent_vs_pixel_cpu",
}


def latent_vs_pixel_block() -> str:
    rows = []
    for dataset, name in LATENT_VS_PIXEL.items():
        by_row = {r["row"]: r for r in result(name)["rows"]}
        p, q = by_row[dataset], by_row[f"{dataset}_latent"]
        rows.append(
            [
                dataset,
                f"{p['images_per_sec']:,.1f} images/s ({p['params']:,} parameters)",
                f"{q['images_per_sec']:,.1f} images/s ({q['params']:,})",
                f"{q['images_per_sec'] / p['images_per_sec']:.1f}x",
                str(p["batch"]),
                result_link(name),
            ]
        )
    return table(["dataset", "pixel space", "latent", "latent / pixel", "batch", "record"], rows)


def streaming_block() -> str:
    header = ["network", "batch", "on the device", "streamed", "streamed / on device"]
    rows = []
    for name in ("streaming_cifar10_cpu", "streaming_cifar10_small_cpu"):
        r = result(name)
        rows.append(
            [
                f"`unet`, {'/'.join(map(str, r['model_channels']))} channels",
                str(r["batch_size"]),
                f"{r['images_per_sec_on_device']:,.1f} img/s",
                f"{r['images_per_sec_streamed']:,.1f} img/s",
                f"{r['streamed_over_on_device']:.2f}",
                f"{r['images_per_sec_pipeline_alone']:,.0f} img/s",
            ]
        )
    return table([*header, "host pipeline alone"], rows)


def memory_block() -> str:
    labels = {
        "base": "base",
        "remat": "`model.remat=True`",
        "accum4": "`training.grad_accum_steps=4`",
    }
    rows = [
        [
            labels.get(r["variant"], r["variant"]),
            f"{r['total_bytes'] / 2**30:.2f} GiB",
            f"{r['temp_bytes'] / 2**30:.2f} GiB",
            f"{r['images_per_sec']:.2f}",
        ]
        for r in result("memory_options_folder64_cpu")
    ]
    return table(["variant", "train call memory", "temporaries", "images/s"], rows)


CLASSIFIERS = {"MNIST": "classifier_mnist"}


def classifiers_block() -> str:
    lines = []
    for dataset, name in CLASSIFIERS.items():
        r = record(name)
        lines.append(
            f"- {dataset}, {cmd(r)}: {r['steps']:,} steps, test "
            f"accuracy {pct(r['test_accuracy'])} ({r['date']}; {link(name)}).\n"
        )
    return "".join(lines)


def compile_block() -> str:
    rows = result("compile_time_h200")["rows"]
    lines = [
        "| program (`cifar10_cond`, bf16) | compilation cache | XLA compile | first call "
        "| then, per call |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        for part, label in (
            ("train", "train step, batch 256"),
            ("sample", "sampler, 1,000 samples"),
        ):
            p = r[part]
            lines.append(
                f"| {label} | {r['variant'].removeprefix('cache_')} | {p['compile_s']:.1f} s | "
                f"{p['first_call_s']:.1f} s | {p['steady_ms']:,.1f} ms |"
            )
    return "\n".join(lines) + "\n"


H100_LINE = re.compile(
    r"^(\S+)\s+(jaxdiff|torch_eager|torch_compile)\s+train\s+([\d.]+) img/s\s+sample\s+([\d.]+)/s"
)


def h100_rows() -> dict[tuple[str, str], tuple[float, float]]:
    """(model, side) -> (train images/s, samples/s) of the bf16 H100 benchmark log."""
    rows = {}
    for line in (RESULTS / "run_h100_bf16.log").read_text().splitlines():
        if m := H100_LINE.match(line):
            rows[m.group(1), m.group(2)] = (float(m.group(3)), float(m.group(4)))
    return rows


def h100_block() -> str:
    rows = h100_rows()
    names = {"seed_uncond": "the original project's U-Net", "seed_cond": "its conditional one"}
    cells = []
    for (model, side), (train, sample) in rows.items():
        ours = rows[model, "jaxdiff"]
        ratio = "" if side == "jaxdiff" else f"{ours[0] / train:.2f}x, {ours[1] / sample:.2f}x"
        cells.append([names[model], side, f"{train:,.1f}", f"{sample:,.2f}", ratio])
    header = ["network", "side", "train images/s", "samples/s"]
    return table([*header, "jaxdiff's speed-up (train, sampling)"], cells)


def cpu_vs_torch() -> tuple[dict, dict]:
    """`configs/mnist.py`'s jaxdiff and PyTorch eager rows of docs/benchmarks.json."""
    rows = json.loads((ROOT / "docs" / "benchmarks.json").read_text())
    pick = {r["side"]: r for r in rows if r["model"] == "mnist" and r["batch"] == 64}
    return pick["jaxdiff"], pick["torch_eager"]


def readme_results_block() -> str:
    t, e = record("mnist_train"), record("mnist_eval")
    ct, ce = record("mnist_cond_train"), record("mnist_cond_eval")
    lt, le = record("mnist_latent_train"), record("mnist_latent_eval")
    default = [record("samplers_edm_seed0"), record("samplers_edm_seed1")]
    em, pc = record("samplers_euler_maruyama"), record("samplers_pc_250")
    ours, torch = cpu_vs_torch()
    h100 = h100_rows()
    speedups = [
        h100[m, "jaxdiff"][0] / h100[m, "torch_eager"][0] for m in ("seed_uncond", "seed_cond")
    ]
    editing = {r["name"]: r["accuracy"] for r in result("editing_quality")["rows"]}
    h200 = {r["variant"]: r["train"] for r in result("compile_time_h200")["rows"]}
    rows = [
        (
            "`configs/mnist.py`, the main job",
            f"{t['steps']:,} steps in {wall(t)}; FID {num(e['fid'])}, precision "
            f"{num(e['precision'])}, recall {num(e['recall'])} ({e['num_samples']:,} samples, "
            f"default sampler)",
            "results.md#mnist",
        ),
        (
            "`configs/mnist_cond.py`",
            f"{ct['steps']:,} steps in {wall(ct)}; conditional accuracy "
            f"{pct(ce['cond_accuracy'])} at w = {ce['guidance_scale']:g}, FID {num(ce['fid'])}",
            "results.md#conditional-mnist",
        ),
        (
            "`configs/mnist_latent.py`",
            f"both stages in {wall(lt)}; FID {num(le['fid'])}, precision "
            f"{num(le['precision'])}, recall {num(le['recall'])}",
            "results.md#latent-mnist",
        ),
        (
            "samplers on the `configs/mnist.py` checkpoint",
            f"default `edm`, {default[0]['nfe']} NFE: FID "
            f"{both([num(r['fid']) for r in default])} (two seeds); `euler_maruyama`, "
            f"{em['nfe']} NFE: {num(em['fid'])}; `pc`, {pc['nfe']} NFE: {num(pc['fid'])}",
            "results.md#samplers",
        ),
        (
            "inpainting the lower half of MNIST test digits",
            f"{pct(editing['inpaint lower half, unconditional'], 1)} classified as the true digit "
            f"({pct(editing['half-masked inputs (zeros)'], 1)} for the masked inputs); "
            f"{pct(editing['conditional run, inpaint toward the true class, w=2'], 1)} when "
            "told the class",
            "results.md#inpainting-and-editing",
        ),
        (
            "`configs/mnist.py`'s train step against PyTorch, CPU",
            f"{ours['train_images_per_sec'] / torch['train_images_per_sec']:.2f}x PyTorch eager "
            f"at batch {ours['batch']} ({ours['date']})",
            "benchmarks.md",
        ),
        (
            "the original project's networks against PyTorch, one H100, bf16",
            f"{speedups[0]:.2f}x (conditional {speedups[1]:.2f}x) PyTorch eager's training "
            "speed, measured before the transposed-convolution rewrite",
            "results.md#gpus",
        ),
        (
            "`configs/cifar10_cond.py`'s train step, one H200, bf16",
            f"first call {h200['cache_cold']['first_call_s']:.1f} s, "
            f"{h200['cache_warm']['first_call_s']:.1f} s from the persistent compilation cache",
            "results.md#gpus",
        ),
    ]
    lines = ["| what | result | details |", "|---|---|---|"]
    lines += [
        f"| {what} | {res} | [{page.split('#')[0]}](docs/{page}) |" for what, res, page in rows
    ]
    return "\n".join(lines) + "\n"


def where_block() -> str:
    machines = sorted({record(n)["machine"] for n in ("mnist_train", "mnist_cond_train")})
    jax_versions = sorted({record(n)["jax"] for n in ("mnist_train", "mnist_cond_train")})
    return (
        f"**Where.** Unless a figure names a GPU: {', '.join(machines)}, no accelerator, "
        f"jax {', '.join(jax_versions)}. Wall times are those of a machine running nothing "
        "else, unless the figure says otherwise.\n"
    )


BLOCKS: dict[str, Callable[[], str]] = {
    "readme-results": readme_results_block,
    "where": where_block,
    "mnist": run_block("mnist_train", "mnist_eval"),
    "mnist-cond": run_block("mnist_cond_train", "mnist_cond_eval"),
    "mnist-cond-guidance": guidance_block,
    "mnist-1k": short_run_block,
    "prepare": prepare_block,
    "mnist-latent": latent_block,
    "samplers": samplers_block,
    "latent-vs-pixel": latent_vs_pixel_block,
    "editing": editing_block,
    "streaming": streaming_block,
    "memory": memory_block,
    "classifiers": classifiers_block,
    "h200-compile": compile_block,
    "h100-vs-pytorch": h100_block,
}


def render(text: str) -> str:
    """`text` with every rendered block made again from the records."""

    def replace(m: re.Match) -> str:
        name = m.group(2)
        if name not in BLOCKS:
            raise KeyError(f"unknown render block {name!r}; known: {', '.join(BLOCKS)}")
        return m.group(1) + BLOCKS[name]() + m.group(4)

    return BLOCK.sub(replace, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 on a difference")
    args = parser.parse_args()
    stale = []
    for page in PAGES:
        text = page.read_text()
        rendered = render(text)
        if rendered != text:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(rendered)
    verb = "differ from their records" if args.check else "rendered"
    print(f"{verb}: {', '.join(map(str, stale)) or 'none'}")
    sys.exit(1 if args.check and stale else 0)


if __name__ == "__main__":
    main()
