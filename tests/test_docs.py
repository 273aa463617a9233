"""Every command in docs/ runs, shrunk to seconds, so the pages cannot drift from the code.

docs/README.md ("How these pages are tested") describes the rules to readers:
bash blocks run line by line, page after page, in one scratch directory, with
SHRINK (or LATENT_SHRINK) inserted after `--config=...`; `# error: ...` after a command
means it must fail with exactly that line; a page's python blocks run as one
script afterwards; `bash ci` blocks must be in .ci/run.
"""

import concurrent.futures
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time

import pytest

from .conftest import ROOT, tiny_latent_overrides

# End-to-end: main.py processes and real runs (not in the fast tier).
pytestmark = pytest.mark.slow

DOCS = ROOT / "docs"

# The pages in reading order (docs/README.md lists them so), in two chains that
# share no run and so run side by side; within a chain, a run trained on one
# page is used on later ones.
CHAINS = [
    [
        "quickstart.md",
        "python_api.md",
        "configs.md",
        "extending.md",
        "variants.md",
        "samplers_and_sdes.md",
        "evaluation.md",
        "scaling.md",
        "checkpoints.md",
        "troubleshooting.md",
    ],
    # About as long as the first chain (the benchmark pages use no run).
    [
        "conditioning.md",
        "latent_diffusion.md",
        "editing.md",
        "your_own_data.md",
        "performance.md",
        "benchmarks.md",
        "benchmarks_configs.md",
        "results.md",
        "design.md",
    ],
]
PAGES = [
    "quickstart.md",
    "python_api.md",
    "configs.md",
    "extending.md",
    "variants.md",
    "samplers_and_sdes.md",
    "conditioning.md",
    "latent_diffusion.md",
    "editing.md",
    "your_own_data.md",
    "evaluation.md",
    "performance.md",
    "benchmarks.md",
    "benchmarks_configs.md",
    "scaling.md",
    "checkpoints.md",
    "troubleshooting.md",
    "results.md",
    "design.md",
]


# A tiny network and a few steps: each documented run takes seconds. Every
# config takes them (the autoencoder fields are unused in pixel space).
SHRINK = {
    **tiny_latent_overrides(),
    "model.channels": (8, 16, 16, 16),
    "model.context_dim": 16,
    # The residual U-Nets (fashion_mnist, cifar10, folder64): one block per level.
    "model.num_res_blocks": 1,
    "sampling.samples_per_class": 2,
    # No sampler to compile during training (tests/test_api.py checks the grids).
    "training.sample_at_checkpoints": False,
    # The feature classifier and --mode=eval (evaluation.md).
    "classifier.channels": (8, 16),
    "classifier.norm_groups": 2,
    "classifier.num_steps": 4,
    "classifier.batch_size": 16,
    "classifier.log_every": 2,
    "classifier.checkpoint_every": 2,
    "classifier.steps_per_call": 1,
    "classifier.eval_split": "test[:100]",
    "eval.num_samples": 20,
    "eval.batch_size": 10,
    "eval.reference_split": "test[:100]",
    "eval.bits_per_dim_steps": 3,
}
# The latent configs' U-Net sees 7x7 latents: two levels compile in half the time.
LATENT_SHRINK = {**SHRINK, "model.channels": tiny_latent_overrides()["model.channels"]}


def shrink_overrides(config_name: str) -> dict[str, object]:
    """The overrides for a config named by path or name."""
    return LATENT_SHRINK if "latent" in config_name else SHRINK


# What other commands get appended.
OTHER_SHRINKS = {
    "examples/quickstart.py": ["--smoke"],
}

# Runs before a page's python blocks: configs.get_config returns shrunk configs.
PYTHON_PRELUDE = f"""
import jaxdiff.configs as configs
from tests.conftest import apply_overrides

_get_config = configs.get_config
configs.get_config = lambda name: apply_overrides(
    _get_config(name), {LATENT_SHRINK!r} if "latent" in name else {SHRINK!r}
)
"""

FENCE = re.compile(r"^```(\w*)([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def blocks(page: str) -> list[tuple[str, str, str]]:
    """(language, rest of the info string, body) of each fenced block of a page."""
    text = (DOCS / page).read_text()
    return [(m.group(1), m.group(2).strip(), m.group(3)) for m in FENCE.finditer(text)]


def commands(body: str) -> list[tuple[str, str | None]]:
    """(command, expected error line or None) of a bash block; `\\` joins lines."""
    result, current = [], ""
    for line in body.splitlines():
        stripped = line.strip()
        if current:
            current += " " + stripped.removesuffix("\\").strip()
            if not stripped.endswith("\\"):
                result.append([current, None])
                current = ""
            continue
        if stripped.startswith("# error: "):
            assert result, f"an error line with no command before it: {line}"
            result[-1][1] = stripped.removeprefix("# ")
        elif stripped and not stripped.startswith("#"):
            if stripped.endswith("\\"):
                current = stripped.removesuffix("\\").strip()
            else:
                result.append([stripped, None])
    assert not current, f"unfinished command: {current}"
    return [(command, error) for command, error in result]


def shrink(command: str) -> str:
    if "python main.py" in command:
        # A field the command sets itself keeps the command's value (given twice,
        # absl would concatenate tuples rather than replace them).
        own = set(re.findall(r"--config\.([\w.]+)=", command))
        config = re.search(r"--config=(\S+)", command)
        if config is None:  # The workdir's config.json, shrunk when the run was trained.
            return command.replace("python main.py", f"{sys.executable} main.py", 1)
        overrides = shrink_overrides(config.group(1))
        flags = " ".join(
            shlex.quote(f"--config.{name}={''.join(str(value).split())}")
            for name, value in overrides.items()
            if name not in own
        )
        # absl wants the overrides after --config.
        command = re.sub(r"(--config=\S+)", rf"\1 {flags}", command, count=1)
        return command.replace("python main.py", f"{sys.executable} main.py", 1)
    for script, flags in OTHER_SHRINKS.items():
        if f"python {script}" in command:
            command = command.replace("python ", f"{sys.executable} ", 1)
            return f"{command} {' '.join(flags)}"
    return command.replace("python ", f"{sys.executable} ", 1)


def matches(expected: str, stderr: str) -> bool:
    """Whether one stderr line is `expected`, where `...` stands for any text."""
    pattern = ".*".join(re.escape(part) for part in expected.split("..."))
    return any(re.fullmatch(pattern, line) for line in stderr.splitlines())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    """A directory with copies of what the commands use; their runs go to its runs/."""
    path = tmp_path_factory.mktemp("docs")
    for name in ("configs", "benchmarks", "examples"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "main.py", path / "main.py")
    return path


def record_time(page: str, what: str, seconds: float) -> None:
    """With JAXDIFF_DOCS_TIMES=<file>, appends a line per command: where the test's time goes."""
    if path := os.environ.get("JAXDIFF_DOCS_TIMES"):
        with open(path, "a") as f:
            f.write(f"{seconds:7.1f}  {page}  {what[:120]}\n")


def run_page(page: str, scratch) -> None:
    env = dict(
        os.environ,
        # The copies in the scratch directory first (configs written by a page), then the package.
        PYTHONPATH=os.pathsep.join([str(scratch), str(ROOT)]),
        # Fitted datasets (your_own_data.md) go to the scratch directory, not the home one.
        XDG_CACHE_HOME=str(scratch / "cache"),
        # scaling.md: one process stands in for the hosts.
        COORDINATOR=f"localhost:{free_port()}",
        NUM_PROCESSES="1",
        PROCESS_ID="0",
    )
    python = []
    for language, info, body in blocks(page):
        if language == "bash" and info == "ci":
            ci = (ROOT / ".ci" / "run").read_text().splitlines()
            for command, _ in commands(body):
                assert command in ci, f"{page}: `{command}` is not in .ci/run"
        elif language == "bash":
            for command, error in commands(body):
                start = time.perf_counter()
                result = subprocess.run(
                    ["bash", "-c", shrink(command)],
                    cwd=scratch,
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=300,
                )
                record_time(page, command, time.perf_counter() - start)
                if error is None:
                    assert result.returncode == 0, f"{page}: {command}\n{result.stderr[-3000:]}"
                else:
                    assert result.returncode == 2, f"{page}: {command} did not fail"
                    assert matches(error, result.stderr), (
                        f"{page}: {command}\nexpected: {error}\ngot: {result.stderr[-2000:]}"
                    )
        elif language == "python":
            first_line = body.splitlines()[0] if body.strip() else ""
            if first_line.startswith("# file: "):
                target = scratch / first_line.removeprefix("# file: ").strip()
                target.write_text(body)
            else:
                python.append(body)
    if python:
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-c", PYTHON_PRELUDE + "\n".join(python)],
            cwd=scratch,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        record_time(page, "python blocks", time.perf_counter() - start)
        assert result.returncode == 0, f"{page}: python blocks\n{result.stderr[-3000:]}"


def test_every_page_is_listed():
    assert sorted(PAGES) == sorted(p.name for p in DOCS.glob("*.md") if p.name != "README.md")
    index = (DOCS / "README.md").read_text()
    positions = [index.index(page) for page in PAGES]
    assert positions == sorted(positions), "docs/README.md lists the pages in another order"
    assert all(language != "bash" for language, _, _ in blocks("README.md"))


def test_documented_commands_run(scratch):
    assert sorted(page for chain in CHAINS for page in chain) == sorted(PAGES)

    def run_chain(pages):
        for page in pages:
            run_page(page, scratch)

    # The commands are mostly single-threaded compilation: two chains use two cores.
    with concurrent.futures.ThreadPoolExecutor(len(CHAINS)) as pool:
        for future in [pool.submit(run_chain, chain) for chain in CHAINS]:
            future.result()
