"""Controllable generation on tiny trained runs: Pipeline.inpaint, edit, interpolate and
interpolate_classes, and `--mode=inpaint|edit|interpolate` (files and one-line errors)."""

import dataclasses
import inspect
import json
import shutil

import numpy as np
import pytest
from PIL import Image

import jaxdiff
from jaxdiff.commands import edit
from jaxdiff.core.errors import UserError
from jaxdiff.core.visualize import save_png
from jaxdiff.data import tfds_reader
from jaxdiff.editing import controlled, inputs
from jaxdiff.experiment import create_experiment

from .conftest import cli_flags, tiny_overrides
from .test_cli import assert_one_line_error, run_main, snapshot

# Where the kept rows of `lower_half` end on 28x28 MNIST.
HALF = 14


@pytest.fixture(scope="module")
def pipe(tiny_run):
    return jaxdiff.load(tiny_run[1])


@pytest.fixture(scope="module")
def cond_pipe(tiny_cond_run):
    return jaxdiff.load(tiny_cond_run[1])


@pytest.fixture(scope="module")
def latent_pipe(tiny_latent_run):
    return jaxdiff.load(tiny_latent_run[1])


@pytest.fixture(scope="module")
def digits():
    """Two sets of 4 test digits, A = test[:4] (what the command line's source reads) and B."""
    images, _ = tfds_reader.load_split("mnist", "test[:8]")
    return images[:4], images[4:]


@pytest.fixture(scope="module")
def mask():
    return inputs.make_masks("lower_half", 4, 28, 28)


# ---------------------------------------------------------------------------
# inpaint


def test_inpaint_keeps_the_kept_pixels_and_fills_from_the_seed(pipe, digits, mask):
    """Kept rows come back bit-exact, the hole is filled with new pixels, the seed decides them."""
    a, b = digits
    result = pipe.inpaint(a, mask, seed=0)
    assert result.shape == (4, 28, 28, 1) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :HALF], a[:, :HALF])
    for filled, original in zip(result[:, HALF:], a[:, HALF:], strict=True):
        assert (filled != original).any()  # Each hole is generated, not the input.
    np.testing.assert_array_equal(pipe.inpaint(a, mask, seed=0), result)
    other_seed = pipe.inpaint(a, mask, seed=1)
    np.testing.assert_array_equal(other_seed[:, :HALF], a[:, :HALF])
    assert not np.array_equal(other_seed[:, HALF:], result[:, HALF:])
    # The sampler sees the kept pixels: other images under the same noise fill differently
    # (plain sampling with the kept rows pasted on afterwards would fill alike).
    assert not np.array_equal(pipe.inpaint(b, mask, seed=0)[:, HALF:], result[:, HALF:])


def test_inpaint_with_resampling_keeps_the_kept_pixels(pipe, digits, mask):
    """RePaint resampling (resample_steps=2) runs other moves, and keeps the kept pixels too."""
    a, _ = digits
    resampled = pipe.inpaint(a, mask, seed=0, resample_steps=2)
    assert resampled.shape == (4, 28, 28, 1) and resampled.dtype == np.uint8
    np.testing.assert_array_equal(resampled[:, :HALF], a[:, :HALF])
    assert not np.array_equal(resampled, pipe.inpaint(a, mask, seed=0))


def test_inpaint_refuses_bad_input_with_user_errors(pipe, digits, mask):
    """Wrong mask shape, float images, dpm_solver++ and a prompt without classes are UserErrors."""
    a, _ = digits
    with pytest.raises(UserError, match=r"mask must be shaped .*got shape \(27, 28\)"):
        pipe.inpaint(a, np.ones((27, 28)))
    with pytest.raises(UserError, match=r"images must be uint8 .*got dtype float32"):
        pipe.inpaint(a.astype(np.float32) / 255, mask)
    with pytest.raises(UserError, match=r"sampling.sampler 'dpm_solver\+\+' cannot inpaint"):
        pipe.inpaint(a, mask, sampler="dpm_solver++")
    with pytest.raises(UserError, match=r"sampling.prompt='3' needs a conditional model"):
        pipe.inpaint(a, mask, prompt="3")


# ---------------------------------------------------------------------------
# edit


def test_edit_at_strength_one_forgets_the_input(pipe, digits):
    """Strength 1 starts from the prior: any images give the same result for one seed."""
    a, b = digits
    result = pipe.edit(a, 1.0, seed=3)
    assert result.shape == (4, 28, 28, 1) and result.dtype == np.uint8
    np.testing.assert_array_equal(pipe.edit(b, 1.0, seed=3), result)
    assert not np.array_equal(pipe.edit(a, 1.0, seed=4), result)


def test_edit_just_above_eps_returns_the_input(pipe, digits):
    """Strength 2 eps adds noise of ~0.045 and denoises it: the input back, nearly.

    With edm (its last step a denoising); Euler-Maruyama's last step is a whole
    grid step long whatever the strength, far off with 5 steps. Measured on the
    tiny run: 6.7 levels mean (the tiny model's denoiser alone is off by ~5);
    an edit that ignores its source is ~150 off, and from the other set ~50.
    """
    a, b = digits
    eps = pipe.config.sampling.eps
    assert eps == 1e-3
    result = pipe.edit(a, 2 * eps, sampler="edm", steps=3, seed=0)
    assert result.shape == a.shape and result.dtype == np.uint8
    off = np.abs(result.astype(np.int32) - a).mean(axis=(1, 2, 3))
    assert (off < 12).all(), off
    assert np.abs(result.astype(np.int32) - b).mean() > 3 * off.mean()


@pytest.mark.parametrize("strength", [0.0, 1.5])
def test_edit_strength_outside_eps_to_one_is_a_user_error(pipe, digits, strength):
    """Strengths outside (eps, 1] are refused with the range in the message."""
    with pytest.raises(UserError, match=r"editing.strength must be in \(sampling.eps = 0.001, 1\]"):
        pipe.edit(digits[0], strength)


# ---------------------------------------------------------------------------
# interpolate


def test_interpolate_ends_do_not_depend_on_num(pipe, digits):
    """(N, num, H, W, C) frames; the ends decode the same two noises for any num."""
    a, b = digits[0][0::2], digits[0][1::2]  # The pairs --mode=interpolate makes of test[:4].
    two = pipe.interpolate(a, b, 2, steps=5)
    eight = pipe.interpolate(a, b, 8, steps=5)
    assert two.shape == (2, 2, 28, 28, 1) and eight.shape == (2, 8, 28, 28, 1)
    assert eight.dtype == np.uint8
    np.testing.assert_array_equal(eight[:, 0], two[:, 0])
    np.testing.assert_array_equal(eight[:, -1], two[:, -1])
    # The way between goes somewhere else than the ends.
    assert not np.array_equal(eight[:, 3], eight[:, 0])
    assert not np.array_equal(eight[:, 3], eight[:, -1])


def test_interpolate_draws_nothing_at_random(pipe, digits):
    """Hence no seed argument: another config seed gives the same frames."""
    a, b = digits[0][0::2], digits[0][1::2]
    config = pipe.config.copy_and_resolve_references()
    config.seed = pipe.config.seed + 1
    reseeded = dataclasses.replace(pipe, experiment=create_experiment(config))
    np.testing.assert_array_equal(
        reseeded.interpolate(a, b, 2, steps=5), pipe.interpolate(a, b, 2, steps=5)
    )
    assert "seed" not in inspect.signature(jaxdiff.Pipeline.interpolate).parameters


def test_interpolate_refuses_unpaired_images_and_one_frame(pipe, digits):
    """a and b of other lengths, and num=1, are UserErrors."""
    a = digits[0]
    with pytest.raises(UserError, match=r"as many images in a as in b, got 3 and 1"):
        pipe.interpolate(a[:3], a[3:], 4)
    with pytest.raises(UserError, match=r"num >= 2"):
        pipe.interpolate(a[:2], a[2:], 1)


def test_interpolate_classes_ends_are_the_plain_class_samples(cond_pipe):
    """One-hot class weights give what integer labels give: the ends are the two classes'
    deterministic edm samples from the row's noise (guidance 20 makes 3 and 7 differ)."""
    rows, steps, guidance, seed = 2, 3, 20.0, 1
    frames = cond_pipe.interpolate_classes(3, 7, 3, rows, steps, guidance, seed)
    assert frames.shape == (rows, 3, 28, 28, 1) and frames.dtype == np.uint8

    experiment = controlled._interpolation_experiment(cond_pipe, "3,7", steps, guidance)
    noise = controlled._noise(seed, (rows, *experiment.data_shape))
    statics = dict(start_time=1.0, resample_steps=1, jump_length=1)
    labels = np.repeat(np.array([3, 7], np.int32), rows)
    reference = controlled._run_controlled(
        cond_pipe, experiment, statics, seed, noise=np.concatenate([noise, noise]), labels=labels
    ).astype(np.int32)
    threes, sevens = reference[:rows], reference[rows:]
    assert np.abs(threes - sevens).max() > 4  # The classes tell apart here.
    assert np.abs(frames[:, 0].astype(np.int32) - threes).max() <= 1
    assert np.abs(frames[:, -1].astype(np.int32) - sevens).max() <= 1


def test_interpolate_classes_needs_a_conditional_model(pipe):
    """An unconditional run has no classes to interpolate."""
    with pytest.raises(UserError, match=r"needs a conditional model"):
        pipe.interpolate_classes(3, 7)


# ---------------------------------------------------------------------------
# Latent runs


def test_latent_inpaint_and_edit_work_in_pixels(latent_pipe, digits, mask):
    """On latents: inpaint pastes the kept pixels back exactly; both return decoded images."""
    a, _ = digits
    result = latent_pipe.inpaint(a, mask, seed=0)
    assert result.shape == (4, 28, 28, 1) and result.dtype == np.uint8
    np.testing.assert_array_equal(result[:, :HALF], a[:, :HALF])
    assert (result[:, HALF:] != a[:, HALF:]).any()
    edited = latent_pipe.edit(a, 0.5, seed=0)
    assert edited.shape == (4, 28, 28, 1) and edited.dtype == np.uint8


# ---------------------------------------------------------------------------
# The files' names


def test_stems_tell_the_settings_apart(pipe, tmp_path):
    """Masks random_pixels:<p> of other fractions write other files; a PNG's by its name."""
    config = pipe.config.copy_and_resolve_references()

    def stem(mask):
        config.editing.mask = mask
        return edit._stem(pipe, "inpaint", config)

    assert stem("random_pixels:0.25") != stem("random_pixels:0.75")
    assert stem("random_pixels:0.25").endswith("inpaint_0000004_euler_maruyama_random_pixels0.25")
    png = tmp_path / "holes.png"
    save_png(str(png), np.zeros((28, 28, 1), np.uint8))
    assert stem(str(png)).endswith("inpaint_0000004_euler_maruyama_holes")


# ---------------------------------------------------------------------------
# Command line. Last in the file: its programs are then the XLA cache's.


@pytest.fixture(scope="module")
def cli_workdir(tiny_run, tmp_path_factory):
    """A copy of the tiny run, so the files written land beside nobody else's."""
    path = tmp_path_factory.mktemp("editing_cli") / "run"
    shutil.copytree(tiny_run[1], path)
    return path


def edit_main(workdir, mode, *flags):
    return run_main(
        [
            "--config=configs/mnist.py",
            f"--workdir={workdir}",
            f"--mode={mode}",
            *cli_flags(tiny_overrides()),
            *flags,
        ]
    )


def edit_main_arrays(workdir, mode, stem_name, *flags):
    """Runs an editing mode on test[:4] (or as flags say); its stem and .npz arrays."""
    result = edit_main(workdir, mode, "--config.editing.source=test[:4]", *flags)
    assert result.returncode == 0, result.stderr
    stem = workdir / "edits" / stem_name
    with np.load(f"{stem}.npz") as npz:
        return stem, dict(npz)


def test_inpaint_mode_writes_what_the_pipeline_gives(cli_workdir, pipe, digits):
    """--mode=inpaint on test[:4]: edits/<stem>.png and .npz, results = Pipeline.inpaint's."""
    stem, arrays = edit_main_arrays(
        cli_workdir, "inpaint", "inpaint_0000004_euler_maruyama_lower_half"
    )
    for name in ("originals", "inputs", "results"):
        assert arrays[name].shape == (4, 28, 28, 1) and arrays[name].dtype == np.uint8, name
    assert arrays["masks"].shape == (4, 28, 28, 1)
    a, _ = digits
    np.testing.assert_array_equal(arrays["originals"], a)
    np.testing.assert_array_equal(arrays["results"], pipe.inpaint(a, arrays["masks"]))
    assert (arrays["inputs"][:, HALF:] == edit.HOLE_GREY).all()
    grid = np.asarray(Image.open(f"{stem}.png"))
    assert grid.ndim >= 2 and grid.shape[0] > 3 * 28
    assert not list((cli_workdir / "edits").glob("*.tmp*"))


def test_edit_mode_writes_what_the_pipeline_gives(cli_workdir, pipe, digits):
    """--mode=edit (strength 0.5): the files, and results = Pipeline.edit's."""
    stem, arrays = edit_main_arrays(cli_workdir, "edit", "edit_0000004_euler_maruyama_s0.5")
    for name in ("originals", "inputs", "results"):
        assert arrays[name].shape == (4, 28, 28, 1) and arrays[name].dtype == np.uint8, name
    np.testing.assert_array_equal(arrays["results"], pipe.edit(digits[0], 0.5))
    assert Image.open(f"{stem}.png").size[1] > 3 * 28


def test_interpolate_mode_writes_the_pairs_frames(cli_workdir, pipe, digits):
    """--mode=interpolate: test[:4] as pairs (0, 1), (2, 3), 8 frames each, as the pipeline's."""
    stem, arrays = edit_main_arrays(cli_workdir, "interpolate", "interpolate_0000004_images")
    assert arrays["originals"].shape == (4, 28, 28, 1)
    assert arrays["frames"].shape == (2, 8, 28, 28, 1)
    a = digits[0]
    expected = pipe.interpolate(a[0::2], a[1::2], 8, steps=5)
    np.testing.assert_array_equal(arrays["frames"], expected)
    assert Image.open(f"{stem}.png").size[1] > 2 * 28


def test_png_files_are_a_source(cli_workdir, digits, tmp_path):
    """A directory of 2 PNGs is read as the source, in name order, pixel for pixel."""
    a, _ = digits
    for i in range(2):
        save_png(str(tmp_path / f"digit_{i}.png"), a[i])
    result = edit_main(cli_workdir, "inpaint", f"--config.editing.source={tmp_path}")
    assert result.returncode == 0, result.stderr
    stem = cli_workdir / "edits" / "inpaint_0000004_euler_maruyama_lower_half"
    with np.load(f"{stem}.npz") as npz:
        np.testing.assert_array_equal(npz["originals"], a[:2])
        np.testing.assert_array_equal(npz["labels"], [-1, -1])
        assert npz["results"].shape == (2, 28, 28, 1)
        np.testing.assert_array_equal(npz["results"][:, :HALF], a[:2, :HALF])


ERRORS = {
    "unknown mask": ("inpaint", ["--config.editing.mask=nope"], ["'nope'", "lower_half"]),
    "strength above 1": (
        "edit",
        ["--config.editing.strength=1.5"],
        ["editing.strength must be in", "got 1.5"],
    ),
    "odd source for interpolate": (
        "interpolate",
        ["--config.editing.source=test[:3]"],
        ["3 images", "even number"],
    ),
    "classes of an unconditional run": (
        "interpolate",
        ["--config.editing.interpolate=classes"],
        ["interpolate=classes needs a conditional model"],
    ),
    "dpm_solver++ cannot inpaint": (
        "inpaint",
        ["--config.sampling.sampler=dpm_solver++"],
        ["'dpm_solver++' cannot inpaint"],
    ),
    "mask PNG of another size": ("inpaint", ["--config.editing.mask={png}"], ["20x20", "28x28"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_editing_input_is_one_error_line(case, cli_workdir, tmp_path):
    """Each mistake: one `error:` line, a nonzero exit, nothing written to the workdir."""
    mode, flags, fragments = ERRORS[case]
    png = tmp_path / "small_mask.png"
    save_png(str(png), np.full((20, 20, 1), 255, np.uint8))
    flags = [flag.format(png=png) for flag in flags]
    if not any(flag.startswith("--config.editing.source") for flag in flags):
        flags.append("--config.editing.source=test[:4]")
    before = snapshot(cli_workdir)
    assert_one_line_error(edit_main(cli_workdir, mode, *flags), *fragments)
    assert snapshot(cli_workdir) == before


# ---------------------------------------------------------------------------
# The record training leaves (here, where the session's tiny run is at hand)


def test_training_left_a_summary_of_the_run(tiny_run):
    """summary.json: the final step, and the last loss and throughput metrics.jsonl logged."""
    import jax

    _, workdir, state = tiny_run
    with open(workdir / "summary.json") as f:
        summary = json.load(f)
    with open(workdir / "metrics.jsonl") as f:
        records = [json.loads(line) for line in f]
    assert summary["component"] == "score model"
    assert summary["config"] is None  # Trained from Python without a config name.
    assert summary["steps"] == int(state.step) == 4
    assert summary["final_loss"] == [r["loss"] for r in records if "loss" in r][-1]
    throughputs = [r["images_per_sec"] for r in records if "images_per_sec" in r]
    assert summary["images_per_sec"] == throughputs[-1]
    assert summary["train_seconds"] > 0
    assert (summary["jax"], summary["devices"]) == (jax.__version__, jax.device_count())
    assert not (workdir / "summary.json.tmp").exists()
