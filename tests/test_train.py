"""The real train_and_evaluate on a shrunken config and real MNIST data."""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jaxdiff.configs import mnist
from PIL import Image

from jaxdiff.core.errors import UserError
from jaxdiff.pipeline import load
from jaxdiff.training.score import train_and_evaluate

from .conftest import ROOT, run_script_on_devices, tiny_cond_overrides, tiny_overrides
from .test_cli import assert_one_line_error, run_main, snapshot


@pytest.fixture(scope="module")
def trained(tiny_run):
    """A 4-step run with checkpoints at steps 2 and 4 (trained once per session)."""
    return tiny_run


def test_run_writes_checkpoints_metrics_config_and_grids(trained):
    config, workdir, state = trained
    assert int(state.step) == 4
    assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [2, 4]
    for record in records:
        assert {"loss", "learning_rate", "images_per_sec", "grad_norm"} <= set(record)
        assert np.isfinite(record["loss"]) and record["loss"] > 0
    # The loss curve, redrawn at each checkpoint from these records.
    assert np.asarray(Image.open(workdir / "loss.png")).shape == (360, 640, 3)
    # Warmup: 2 steps to the peak, then cosine decay.
    assert records[0]["learning_rate"] == pytest.approx(config.training.learning_rate / 2)
    saved = json.loads((workdir / "config.json").read_text())
    assert saved["model"]["channels"] == [8, 16, 16, 16]
    assert saved["data"]["train_split"] == "train[:256]"
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape == (2 + 2 * 30, 2 + 2 * 30)  # 4 samples of 28x28 in a 2x2 grid
    assert grid.std() > 0
    # The EMA moved away from the parameters but stays their running average.
    leaves = zip(jax.tree.leaves(state.params), jax.tree.leaves(state.ema_params), strict=True)
    assert any(not np.array_equal(p, e) for p, e in leaves)


def test_resume_gives_the_same_parameters_as_an_uninterrupted_run(trained, tmp_path):
    config, workdir, state = trained
    # Interrupted copy: only the step-2 checkpoint survived.
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    shutil.rmtree(tmp_path / "checkpoints" / "4")
    resumed = train_and_evaluate(config, str(tmp_path))
    assert int(resumed.step) == 4
    # It started at step 2: a run from scratch would also have logged step 2
    # (and, being deterministic, would end with the same parameters).
    logged = [
        json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
    ]
    assert logged == [4]
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)


def test_rerun_of_a_finished_run_changes_nothing(trained):
    config, workdir, state = trained
    metrics_before = (workdir / "metrics.jsonl").read_text()
    checkpoints_before = snapshot(workdir / "checkpoints")
    again = train_and_evaluate(config, str(workdir))
    # Restored, not retrained (retraining would log again and rewrite checkpoints).
    assert (workdir / "metrics.jsonl").read_text() == metrics_before
    assert snapshot(workdir / "checkpoints") == checkpoints_before
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(again.params), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sample_mode_writes_grid_and_npz(trained):
    _, workdir, _ = trained
    overrides = [f"--config.{k}={v}" for k, v in tiny_overrides().items() if k.startswith("model")]
    result = subprocess.run(
        [
            sys.executable,
            "main.py",
            "--config=configs/mnist.py",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.sampling.num_samples=6",
            "--config.sampling.num_steps=4",
            "--config.sampling.sampler=ode",
            *overrides,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    with np.load(workdir / "samples" / "sample_0000004_ode.npz") as npz:
        assert npz["images"].shape == (6, 28, 28, 1) and npz["images"].dtype == np.uint8
        assert int(npz["step"]) == 4 and str(npz["sampler"]) == "ode"
    assert (workdir / "samples" / "sample_0000004_ode.png").exists()


@pytest.fixture(scope="module")
def trained_cond(tiny_cond_run):
    """The conditional MNIST config with `tiny_cond_overrides` (trained once per session)."""
    return tiny_cond_run


def test_conditional_run_trains_and_draws_a_class_grid(trained_cond):
    _, workdir, state = trained_cond
    assert int(state.step) == 4
    assert "context" in state.params  # the class tokens were trained along
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records)
    # prompt "all": one row per class, samples_per_class columns, names in a left margin.
    grid = np.asarray(Image.open(workdir / "samples" / "step_0000004.png"))
    assert grid.shape[0] == 2 + 10 * 30
    assert grid.shape[1] > 2 + 2 * 30


def sample_cond(workdir, *args):
    overrides = tiny_cond_overrides()
    model = [f"--config.{k}={v}" for k, v in overrides.items() if k.startswith("model")]
    result = run_main(
        [
            "--config=configs/mnist_cond.py",
            f"--workdir={workdir}",
            "--mode=sample",
            "--config.sampling.num_steps=4",
            "--config.sampling.samples_per_class=3",
            "--config.sampling.num_samples=5",
            *model,
            *args,
        ]
    )
    assert result.returncode == 0, result.stderr
    return result


def test_conditional_sample_mode_writes_labelled_rows(trained_cond):
    _, workdir, _ = trained_cond
    sample_cond(workdir, "--config.sampling.prompt=3,seven", "--config.sampling.guidance_scale=2")
    stem = workdir / "samples" / "sample_0000004_edm_w2_3-7"
    with np.load(f"{stem}.npz") as npz:
        assert npz["images"].shape == (6, 28, 28, 1)
        np.testing.assert_array_equal(npz["labels"], [3, 3, 3, 7, 7, 7])
        assert list(npz["class_names"][npz["labels"][::3]]) == ["3", "7"]
        assert float(npz["guidance_scale"]) == 2.0 and str(npz["prompt"]) == "3,seven"
        guided = npz["images"]
    grid = np.asarray(Image.open(f"{stem}.png"))
    assert grid.shape[0] == 2 + 2 * 30  # two rows: 3 and 7
    assert grid.shape[1] > 2 + 3 * 30  # three columns and the row names
    # The names are drawn in the margin: it is not blank.
    assert grid[:, : grid.shape[1] - (2 + 3 * 30)].max() > 0

    # The same noise without guidance gives other images; an empty prompt samples
    # unconditionally (labels -1), num_samples of them.
    sample_cond(workdir, "--config.sampling.prompt=3,7", "--config.sampling.guidance_scale=0")
    with np.load(workdir / "samples" / "sample_0000004_edm_w0_3-7.npz") as npz:
        assert not np.array_equal(npz["images"], guided)
    sample_cond(workdir, "--config.sampling.prompt=")
    with np.load(workdir / "samples" / "sample_0000004_edm_uncond.npz") as npz:
        assert npz["images"].shape == (5, 28, 28, 1)
        np.testing.assert_array_equal(npz["labels"], [-1] * 5)


EIGHT_DEVICE_SCRIPT = """
import json, sys
import jax, numpy as np
sys.path.insert(0, ".")
from jaxdiff.configs import mnist
from tests.conftest import apply_overrides, tiny_overrides
from jaxdiff.data import batches, tfds_reader
from jaxdiff.experiment import create_experiment
from jaxdiff.training.state import create_optimizer, create_replicated_train_state
from jaxdiff.training.score import make_train_call

config = apply_overrides(mnist.get_config(), tiny_overrides())
experiment = create_experiment(config)
images, labels = tfds_reader.load_split("mnist", "train[:100]")  # 100 rows: 104 on 8 devices
dataset = batches.to_device(images, labels, experiment.mesh)
tx = create_optimizer(config.training)
state = create_replicated_train_state(jax.random.key(0), experiment, tx)
call = make_train_call(experiment.model, experiment.sde, tx, config, experiment.mesh)
compiles = []
jax.monitoring.register_event_duration_secs_listener(
    lambda event, duration, **_: compiles.append(event)
    if event == "/jax/core/compile/backend_compile_duration" else None
)
steps, compiles_per_call = [], []
for _ in range(2):  # Two steps of one compiled step.
    before = len(compiles)
    state, step_metrics = call(state, jax.random.key(1), dataset)
    steps.append(step_metrics)
    compiles_per_call.append(len(compiles) - before)
metrics = jax.tree.map(lambda *m: np.concatenate(m), *steps)
print(json.dumps({
    "devices": jax.device_count(),
    "compiles_per_call": compiles_per_call,
    "loss": np.asarray(metrics["loss"]).tolist(),
    "grad_norm": np.asarray(metrics["grad_norm"]).tolist(),
    "params": [np.asarray(p).ravel().tolist() for p in jax.tree.leaves(state.params)],
    "names": [jax.tree_util.keystr(k)
              for k, _ in jax.tree_util.tree_flatten_with_path(state.params)[0]],
}))
"""


def run_on_devices(count):
    return run_script_on_devices(EIGHT_DEVICE_SCRIPT, count, timeout=300)


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_eight_devices_give_the_same_step_as_one():
    # Side by side: each process compiles mostly on one core.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        one, eight = pool.map(run_on_devices, (1, 8))
    assert (one["devices"], eight["devices"]) == (1, 8)
    # The initial state is placed as the call returns it: the second call reuses the first's
    # program (compiles_per_call [1, 1] for a state created outside jit).
    assert one["compiles_per_call"][1] == eight["compiles_per_call"][1] == 0
    assert one["compiles_per_call"][0] >= 1
    # Same batches, same maths: only the order of the gradient all-reduce differs.
    # Step 2's loss depends on step 1's update, so it checks the update too.
    np.testing.assert_allclose(eight["loss"], one["loss"], rtol=1e-5)
    np.testing.assert_allclose(eight["grad_norm"], one["grad_norm"], rtol=1e-4)
    # Parameters agree to rounding, except the time-embedding projections added
    # before a GroupNorm of one channel per group (every level but the first in
    # this 8/16-channel net): GroupNorm cancels them, so their true gradient is 0
    # and Adam, dividing by the gradient's RMS, turns rounding noise into
    # updates. Those only stay within Adam's step size (lr per step; 2 steps).
    lr = mnist.get_config().training.learning_rate
    for name, a, b in zip(one["names"], one["params"], eight["params"], strict=True):
        if re.fullmatch(r"\['Dense_[1-9]'\]\['(bias|kernel)'\]", name):
            assert np.abs(np.subtract(b, a)).max() <= 2 * lr, name
        else:
            np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, err_msg=name)


def test_sample_with_a_config_that_does_not_fit_the_checkpoint(trained, tmp_path):
    _, workdir, _ = trained
    before = snapshot(workdir)
    # The default MNIST sizes (channels 32/64/128/256, ...) instead of the tiny run's:
    # config.json names the fields and the overrides that match the run.
    result = run_main(["--config=configs/mnist.py", f"--workdir={workdir}", "--mode=sample"])
    assert_one_line_error(
        result, "was trained with another model", "--config.model.channels=(8,16,16,16)"
    )
    assert snapshot(workdir) == before
    # Without config.json the checkpoint's own shapes are compared.
    shutil.copytree(workdir / "checkpoints", tmp_path / "checkpoints")
    with pytest.raises(UserError, match=r"does not fit this config: .* config.json"):
        load(str(tmp_path), config=mnist.get_config())
