"""main.py on bad input: one `error:` line, a non-zero exit, and the workdir untouched."""

import os
import subprocess
import sys

import pytest

from .conftest import ROOT, xla_flags

# End-to-end: main.py processes and real runs (not in the fast tier).
pytestmark = pytest.mark.slow


def snapshot(path):
    """Every file under path with its size and mtime: equal snapshots mean nothing changed."""
    if not path.exists():
        return None
    return sorted(
        (str(p.relative_to(path)), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*")
    )


def run_main(args, env=None):
    return subprocess.run(
        [sys.executable, "main.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=dict(os.environ, **(env or {})),
    )


def assert_one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


@pytest.fixture
def workdir(tmp_path):
    """An existing workdir holding a file that must survive every failed run."""
    path = tmp_path / "work"
    path.mkdir()
    (path / "notes.txt").write_text("keep me")
    return path


CASES = {
    "unknown dataset": (["--config.data.dataset=svhn"], {}, ["'svhn'", "cifar10", "mnist"]),
    "unknown model": (["--config.model.name=resnet"], {}, ["'resnet'", "small_unet", "unet"]),
    "unknown sde": (["--config.sde.name=vx"], {}, ["'vx'", "subvp", "ve", "vp"]),
    "unknown sampler": (["--config.sampling.sampler=ddpm"], {}, ["'ddpm'", "dpm_solver++", "edm"]),
    "shape does not fit": (
        ["--config.model.name=unet", "--config.model.channels=(8,8,8,8,8,8,8)"],
        {},
        ["28x28", "too small", "7 levels"],
    ),
    "batch not divisible": (
        ["--config.training.batch_size=12"],
        {"XLA_FLAGS": xla_flags(8)},
        ["batch_size=12", "8 devices"],
    ),
    "negative steps": (["--config.training.num_steps=-5"], {}, ["num_steps", ">= 0"]),
    "unknown noise distribution": (
        ["--config.training.noise_distribution=beta"],
        {},
        ["'beta'", "uniform", "log_normal"],
    ),
    "unknown weighting": (
        ["--config.training.loss_weighting=snr"],
        {},
        ["'snr'", "std2", "edm", "min_snr"],
    ),
    "unknown on_device": (["--config.data.on_device=maybe"], {}, ["data.on_device", "'maybe'"]),
    "folder without a path": (["--config.data.dataset=folder"], {}, ["needs data.path"]),
    "zero batch size": (["--config.training.batch_size=0"], {}, ["batch_size", "positive"]),
    "unknown non-finite policy": (
        ["--config.training.on_nonfinite=ignore"],
        {},
        ["training.on_nonfinite", "'stop' or 'skip'", "'ignore'"],
    ),
    "unknown config field": (["--config.training.batchsize=3"], {}, ["batch_size"]),
    "prompt for an unconditional model": (
        ["--config.sampling.prompt=3"],
        {},
        ["sampling.prompt='3'", "model.conditional=True"],
    ),
    "unknown prompt word": (
        ["--config.model.conditional=True", "--config.sampling.prompt=3,eleven"],
        {},
        ["'eleven'", "seven", "integers 0-9"],
    ),
    "latent with flips": (
        ["--config.autoencoder.enabled=True", "--config.data.random_flip=True"],
        {},
        ["data.random_flip", "autoencoder.enabled"],
    ),
    "unknown reconstruction loss": (
        ["--config.autoencoder.enabled=True", "--config.autoencoder.reconstruction_loss=l3"],
        {},
        ["'l3'", "l1", "mse"],
    ),
    "negative guidance": (
        ["--config.model.conditional=True", "--config.sampling.guidance_scale=-1"],
        {},
        ["guidance_scale", ">= 0"],
    ),
    "missing data": (
        # download=False: the error without touching the network (the download's
        # own errors are tested offline in tests/test_prepare.py).
        ["--config.data.download=False"],
        {"TFDS_DATA_DIR": "/nonexistent/tfds"},
        ["/nonexistent/tfds", "python -m jaxdiff.prepare mnist"],
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_training_input(case, workdir):
    args, env, fragments = CASES[case]
    before = snapshot(workdir)
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", *args], env)
    assert_one_line_error(result, *fragments)
    assert snapshot(workdir) == before


def test_bad_training_input_does_not_create_the_workdir(tmp_path):
    result = run_main(
        ["--config=configs/mnist.py", f"--workdir={tmp_path / 'new'}", "--config.sde.name=vx"]
    )
    assert_one_line_error(result, "'vx'")
    assert not (tmp_path / "new").exists()


def test_sample_without_checkpoint(workdir):
    before = snapshot(workdir)
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", "--mode=sample"])
    assert_one_line_error(result, "no checkpoint", str(workdir))
    assert snapshot(workdir) == before


def test_unwritable_workdir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    result = run_main(
        [
            "--config=configs/mnist.py",
            f"--workdir={blocker / 'run'}",
            "--config.data.train_split=train[:64]",
        ]
    )
    assert_one_line_error(result, "cannot create workdir", str(blocker / "run"))


def test_missing_config_file(workdir):
    result = run_main(["--config=configs/nope.py", f"--workdir={workdir}"])
    assert_one_line_error(result, "configs/nope.py")


def test_unknown_config_variant(workdir):
    result = run_main(["--config=configs/mnist_latent.py:large", f"--workdir={workdir}"])
    assert_one_line_error(result, "unknown variant 'large'", ":cond")


def test_unknown_mode(workdir):
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", "--mode=eval2"])
    assert_one_line_error(result, "train|sample|eval|plot")
