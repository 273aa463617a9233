"""Denoising trajectories: sampler snapshots, and the strip and GIF `--mode=sample` writes."""

import jax
import numpy as np
import pytest
from jaxdiff.configs import get_config
from PIL import Image

import jaxdiff
from jaxdiff.commands.sample import run as sample_mode
from jaxdiff.core.errors import UserError
from jaxdiff.core.visualize import captioned
from jaxdiff.diffusion.sde import VESDE
from jaxdiff.generation import grid_image, strip_rows
from jaxdiff.sampling import create_sampler, noise_levels, snapshot_states, state_times

from .conftest import apply_overrides, tiny_overrides
from .test_samplers import analytic_score, sampling_config

SHAPE = (3, 4, 4, 1)
SAMPLERS = {
    "euler_maruyama": dict(sampler="euler_maruyama"),
    "pc": dict(sampler="pc", corrector_steps=1),
    "ode": dict(sampler="ode"),
    "edm": dict(sampler="edm", s_churn=5.0),
    "dpm_solver++": dict(sampler="dpm_solver++"),
    "ddim": dict(sampler="ddim", eta=0.5),
}
# Samplers whose prior draw is sde.prior_sample(key, shape) itself (the others split the key).
PRIOR_FROM_KEY = ("ode", "edm", "dpm_solver++", "ddim")


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_snapshots_run_from_the_prior_draw_to_the_sample(name):
    sde = VESDE()  # Prior std 9.8: the first snapshot is unmistakably the prior draw.
    config = sampling_config(num_steps=9, **SAMPLERS[name])
    plain = create_sampler(config)
    recording = create_sampler(config, snapshots=4)
    key = jax.random.key(7)
    x = jax.jit(lambda k: plain(k, analytic_score(sde), sde, SHAPE))(key)
    final, trajectory = jax.jit(lambda k: recording(k, analytic_score(sde), sde, SHAPE))(key)
    assert trajectory.shape == (4, *SHAPE)
    np.testing.assert_array_equal(final, x)
    np.testing.assert_array_equal(trajectory[-1], x)
    # The prior draw, with the key the sampler uses for it.
    prior_key = key if name in PRIOR_FROM_KEY else jax.random.split(key)[0]
    prior = jax.jit(lambda k: sde.prior_sample(k, SHAPE))(prior_key)
    np.testing.assert_array_equal(trajectory[0], prior)
    if name == "ode":  # Deterministic given the prior: states 3 and 6 of 9 by hand.
        score, ts, x = analytic_score(sde), np.linspace(1.0, config.eps, 10), prior
        velocity = lambda x, t: sde.probability_flow_drift(x, t, score(x, t))  # noqa: E731
        for i in range(6):
            t, s = np.full(SHAPE[0], ts[i], np.float32), np.full(SHAPE[0], ts[i + 1], np.float32)
            d1 = velocity(x, t)
            x = x + 0.5 * (s[0] - t[0]) * (d1 + velocity(x + (s[0] - t[0]) * d1, s))
            if i + 1 in (3, 6):
                np.testing.assert_allclose(trajectory[(i + 1) // 3], x, rtol=1e-4, atol=1e-4)


def test_snapshot_spacing_and_times():
    np.testing.assert_array_equal(snapshot_states(9, 4), [0, 3, 6, 9])
    np.testing.assert_array_equal(snapshot_states(500, 10)[[0, 1, -1]], [0, 56, 500])
    np.testing.assert_array_equal(snapshot_states(3, 4), [0, 1, 2, 3])
    for n, f in ((5, 3), (7, 5), (10, 4), (1000, 10)):
        states = snapshot_states(n, f)
        assert len(np.unique(states)) == f and states[0] == 0 and states[-1] == n
        assert np.ptp(np.diff(states)) <= 1  # Even spacing.
    # Euler-Maruyama steps dt = 0.225 from each of linspace(1, 0.1, 5), the last to -0.125;
    # the predictor-corrector steps between them, the last to 0.
    sde = VESDE()
    em = state_times(sampling_config(num_steps=5, eps=0.1), sde)
    np.testing.assert_allclose(em, [1.0, 0.775, 0.55, 0.325, 0.1, -0.125], atol=1e-12)
    pc = state_times(sampling_config(sampler="pc", num_steps=5, eps=0.1), sde)
    np.testing.assert_allclose(pc, [1.0, 0.775, 0.55, 0.325, 0.1, 0.0], atol=1e-12)
    # The ODE's last state is its denoised estimate, at t = 0.
    ode = state_times(sampling_config(sampler="ode", num_steps=4, eps=0.2), sde)
    np.testing.assert_allclose(ode, [1.0, 0.8, 0.6, 0.4, 0.0], atol=1e-12)
    # Noise-level samplers: the t of each noise level, then 0.
    for name in ("edm", "dpm_solver++", "ddim"):
        config = sampling_config(sampler=name, num_steps=6, eps=0.01)
        times = state_times(config, sde)
        sigmas = noise_levels(sde, 6, 0.01, "karras")
        np.testing.assert_allclose(sde.noise_level(times[:-1]), sigmas[:-1], rtol=1e-5)
        assert times[0] == pytest.approx(1.0) and times[-2] == pytest.approx(0.01)
        assert times[-1] == 0.0


@pytest.mark.parametrize("frames", [1, 12])
def test_bad_frame_counts_are_rejected(frames):
    with pytest.raises(UserError, match=r"sampling.trajectory_frames must be in \[2, .* = 11\]"):
        create_sampler(sampling_config(num_steps=10), snapshots=frames)


def test_sample_mode_writes_the_strip_and_the_gif(tiny_run):
    _, workdir, _ = tiny_run
    overrides = {
        **tiny_overrides(),
        "sampling.sampler": "pc",
        "sampling.num_steps": 3,
        "sampling.num_samples": 5,
        "sampling.save_trajectory": True,
        "sampling.trajectory_frames": 4,
    }
    # What --mode=sample runs, in process: a subprocess would add seconds of imports.
    sample_mode(apply_overrides(get_config("mnist"), overrides), str(workdir))
    stem = workdir / "samples" / "sample_0000004_pc"
    with np.load(f"{stem}.npz") as npz:
        images = npz["images"]
    # The strip: 5 rows (samples) x 4 columns (times) of 28 + 2 pixel tiles, under a caption band.
    strip = np.asarray(Image.open(f"{stem}_trajectory.png").convert("L"))
    band = strip.shape[0] - (5 * 30 + 2)
    assert strip.shape[1] == 4 * 30 + 2 and 8 <= band <= 30
    for row, image in enumerate(images):
        top, left = band + 2 + row * 30, 2 + 3 * 30
        np.testing.assert_array_equal(strip[top : top + 28, left : left + 28], image[..., 0])
    # The prior draw (VE, std 9.8 at t=1) scaled to unit variance: grey noise, not only 0 and 255.
    prior = strip[band + 2 :, 2:30]
    assert prior.std() > 50 and 0.2 < np.mean((prior > 0) & (prior < 255)) < 0.6
    gif = Image.open(f"{stem}_trajectory.gif")
    assert gif.n_frames == 4
    final = captioned(grid_image(images, Unprompted()), "t = 0.00")
    assert gif.size == final.size
    gif.seek(3)
    assert gif.info["duration"] == 3000
    np.testing.assert_array_equal(np.asarray(gif.convert("RGB")), np.asarray(final))


class Unprompted:
    """What grid_image needs of an experiment without a prompt."""

    prompt_labels = ()


def test_conditional_trajectory_ends_at_the_guided_samples(tiny_cond_run):
    _, workdir, _ = tiny_cond_run
    pipeline = jaxdiff.load(workdir)
    settings = dict(prompt="3,seven", num=2, guidance_scale=2.0, steps=4)
    trajectory, times, labels = pipeline.sample_trajectory(**settings, frames=3)
    images, sample_labels = pipeline.sample(**settings)
    assert trajectory.shape == (3, 4, 28, 28, 1) and trajectory.dtype == np.uint8
    np.testing.assert_array_equal(trajectory[-1], images)
    np.testing.assert_array_equal(labels, sample_labels)
    # Euler-Maruyama's fixed steps dt = (1 - eps) / 3 end one step past eps, below 0.
    dt = (1 - 1e-3) / 3
    np.testing.assert_allclose(times, [1.0, 1.0 - 2 * dt, 1e-3 - dt], atol=1e-6)
    # The strip: the first sample of each class, then the second, named by class.
    experiment = pipeline.sampling_experiment(2, "3,seven", None, 4, 2.0)
    rows, names = strip_rows(experiment, 4)
    np.testing.assert_array_equal(rows, [0, 2, 1, 3])
    assert names == ["3", "7", "3", "7"]
    for frames in (1, 6):
        with pytest.raises(UserError, match=r"sampling.trajectory_frames must be in"):
            pipeline.sample_trajectory(**settings, frames=frames)


def test_latent_trajectory_is_decoded(tiny_latent_run):
    _, workdir, _ = tiny_latent_run
    pipeline = jaxdiff.load(workdir)
    trajectory, _, _ = pipeline.sample_trajectory(num=2, sampler="ode", steps=3, frames=4)
    # Images, not latents (7 x 7 x 4), each snapshot decoded.
    assert trajectory.shape == (4, 2, 28, 28, 1) and trajectory.dtype == np.uint8
    assert all((trajectory[i] != trajectory[i + 1]).any() for i in range(3))


def test_state_times_can_be_asked_for_while_a_sampler_is_traced():
    # make_sample_fn scales trajectory frames by their times inside the jitted draw.
    sde = VESDE()
    config = sampling_config(sampler="edm", num_steps=6, eps=0.01)
    traced = jax.jit(lambda: jax.numpy.asarray(state_times(config, sde)))()
    np.testing.assert_allclose(traced, state_times(config, sde), rtol=1e-6)
