"""Sampling from a trained model: compiled sampling programs, grids, and sample files.

The programs serve the grids during training, `Pipeline.sample`, `--mode=sample`
and `--mode=eval`; `SampleFile` keeps what the last two draw, batch by batch,
so that an interrupted run resumes where it stopped with the same samples.
"""

import json
import logging
import os
import zipfile
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import parallel, random
from jaxdiff.core.common import ScoreFn
from jaxdiff.core.compiler import jit
from jaxdiff.core.visualize import (
    captioned,
    image_grid,
    labeled_grid,
    save_gif,
    save_png,
    trajectory_strip,
    write_progress,
)
from jaxdiff.data import batches
from jaxdiff.diffusion import conditioning
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.experiment import Experiment, decode

logger = logging.getLogger("jaxdiff")


def sample_labels(experiment: Experiment) -> np.ndarray | None:
    """The class id of every sample a grid holds, row by row; None for an unconditional model.

    With a prompt: each prompted class `sampling.samples_per_class` times. A
    conditional model without a prompt samples `sampling.num_samples` with the
    null label, i.e. unconditionally.
    """
    if not experiment.num_classes:
        return None
    s = experiment.config.sampling
    if experiment.prompt_labels:
        return conditioning.repeat_labels(list(experiment.prompt_labels), s.samples_per_class)
    return np.full(s.num_samples, experiment.num_classes, np.int32)


def trajectory_times(sampling_config, sde, frames: int) -> np.ndarray:
    """The diffusion time of each of `frames` evenly spaced snapshots (1 first, ~0 last)."""
    states = sampling.snapshot_states(sampling.num_steps(sampling_config), frames)
    return sampling.state_times(sampling_config, sde)[states]


def sampling_score_fn(
    experiment: Experiment,
    params: Any,
    labels: jax.Array | None,
    guidance_scale: float,
    sharding: jax.sharding.Sharding | None = None,
) -> ScoreFn:
    """The score a sampler follows; call inside jit.

    Args:
      experiment: the run.
      params: the score model's parameters.
      labels: None for an unconditional model; else (N,) class ids (the null
        id: unconditional) or (N, num_classes + 1) class weights, guided by
        `guidance_scale` (classifier-free guidance).
      guidance_scale: w, a Python float.
      sharding: if given, the sampler's state is pinned to it (XLA propagates the rest).
    """
    config = experiment.config

    def score_given_labels(x, t, y):
        return make_score_fn(experiment.model, params, experiment.sde, config.model, labels=y)(x, t)

    if labels is None:
        score_fn = lambda x, t: score_given_labels(x, t, None)  # noqa: E731
    else:
        score_fn = conditioning.guided_score_fn(
            score_given_labels, labels, experiment.num_classes, guidance_scale
        )
    if sharding is None:
        return score_fn
    return lambda x, t: score_fn(jax.lax.with_sharding_constraint(x, sharding), t)


def make_sample_fn(
    experiment: Experiment, latent_scale: float | None = None, trajectory_frames: int = 0
) -> Callable[..., jax.Array]:
    """Jits (params, autoencoder_params=None, key=None) -> (N, H, W, C) uint8 samples.

    N is `sampling.num_samples`, or classes x `samples_per_class` with a
    prompt, in which case the conditional score is guided by
    `sampling.guidance_scale`. For latent diffusion the sampled latents are
    divided by `latent_scale` and decoded with `autoencoder_params`; in pixel
    space that argument is None. The key defaults to `random.sampling_key(config.seed)`,
    so grids from successive checkpoints share their noise and show how the
    model improved; it is an argument of the compiled function, so another
    seed does not recompile. Samples are split over the devices when their
    number allows it.

    With `trajectory_frames=F` it returns (F, N, H, W, C) uint8 instead: F
    snapshots from the prior draw to the samples (the last one), at the
    times `trajectory_times` gives; latent snapshots are decoded.
    """
    config = experiment.config
    sampler = sampling.create_sampler(config.sampling, snapshots=trajectory_frames)
    labels = sample_labels(experiment)
    num = config.sampling.num_samples if labels is None else len(labels)
    guidance_scale = config.sampling.guidance_scale if experiment.prompt_labels else 0.0
    mesh = experiment.mesh
    sharding = parallel.batch_sharded(mesh) if num % mesh.size == 0 else parallel.replicated(mesh)
    default_key = random.sampling_key(config.seed)

    def draw(params, autoencoder_params, key_data):
        key = jax.random.wrap_key_data(key_data)
        labels_ = None if labels is None else jnp.asarray(labels)
        sharded_score_fn = sampling_score_fn(experiment, params, labels_, guidance_scale, sharding)

        def to_images(x):
            if experiment.autoencoder is not None:
                return decode(experiment, autoencoder_params, x / latent_scale)
            return batches.to_uint8(x, config.data.centered)

        shape = (num, *experiment.data_shape)
        if not trajectory_frames:
            return to_images(sampler(key, sharded_score_fn, experiment.sde, shape))
        x, snapshots = sampler(key, sharded_score_fn, experiment.sde, shape)
        images = to_images(x)
        # The noisy snapshots are divided by the perturbed data's scale sqrt(alpha(t)^2 +
        # std(t)^2) (1 for VP; 9.8 at t=1 for VE with sigma 25) rather than clipped as they
        # are: noise at unit scale shows as grey-level noise, where VE's prior would be almost
        # only black and white pixels, and VE's frames would stay saturated until t is small.
        # The last frame is the samples themselves, unscaled (it equals the grid).
        t = jnp.asarray(
            trajectory_times(config.sampling, experiment.sde, trajectory_frames)[:-1], jnp.float32
        )
        scale = jnp.sqrt(experiment.sde.mean_coeff(t) ** 2 + experiment.sde.marginal_std(t) ** 2)
        noisy = snapshots[:-1] / scale.reshape((-1,) + (1,) * (snapshots.ndim - 1))
        noisy = to_images(noisy.reshape((-1, *experiment.data_shape)))
        return jnp.concatenate([noisy.reshape((-1, *images.shape)), images[None]])

    out_sharding = sharding if not trajectory_frames else parallel.replicated(mesh)
    jitted = jit(draw, out_shardings=out_sharding)

    def sample_fn(params, autoencoder_params=None, key=None):
        # As host data: every process of a multi-host run passes the same value.
        key_data = np.asarray(jax.random.key_data(default_key if key is None else key))
        return jitted(params, autoencoder_params, key_data)

    return sample_fn


def grid_image(images: np.ndarray, experiment: Experiment) -> np.ndarray:
    """The picture of a batch of samples: one labelled row per prompted class, else square."""
    if experiment.prompt_labels:
        names = conditioning.row_names(list(experiment.prompt_labels), experiment.dataset)
        return labeled_grid(images, names)
    return image_grid(images)


def save_grid(
    samples: jax.Array, experiment: Experiment, workdir: str, step: int, is_main: bool = True
) -> np.ndarray:
    """Writes `workdir/samples/step_<step>.png`, updates the progress montage and GIF.

    Returns:
      The grid image.
    """
    grid = grid_image(parallel.to_host(samples), experiment)
    if is_main:
        directory = os.path.join(workdir, "samples")
        save_png(os.path.join(directory, f"step_{step:07d}.png"), grid)
        write_progress(directory)
    return grid


# Samples the trajectory strip shows at most, one row each.
STRIP_MAX_ROWS = 8


def strip_rows(experiment: Experiment, num: int) -> tuple[np.ndarray, list[str] | None]:
    """Which samples the trajectory strip shows, and their row names (None: unconditional).

    With a prompt, the first sample of each class, then the second of each, ...:
    as many classes as fit in STRIP_MAX_ROWS rows.
    """
    if not experiment.prompt_labels:
        return np.arange(min(num, STRIP_MAX_ROWS)), None
    classes = len(experiment.prompt_labels)
    per_class = num // classes
    # Samples are row by row, class by class: sample j of class c is c * per_class + j.
    order = [c * per_class + j for j in range(per_class) for c in range(classes)]
    rows = np.asarray(order[:STRIP_MAX_ROWS])
    names = conditioning.row_names(list(experiment.prompt_labels), experiment.dataset)
    return rows, [names[row // per_class] for row in rows]


def save_trajectory(
    trajectory: np.ndarray, times: np.ndarray, experiment: Experiment, stem: str
) -> tuple[str, str]:
    """Writes `<stem>_trajectory.png` and `<stem>_trajectory.gif` from (F, N, H, W, C) snapshots.

    The PNG: a few samples, one row each, from noise (left) to sample (right),
    each column headed by its time t. The GIF: the whole grid, one frame per
    snapshot captioned with t, the final samples held for 3 s.

    Returns:
      The two paths.
    """
    rows, names = strip_rows(experiment, trajectory.shape[1])
    png, gif = stem + "_trajectory.png", stem + "_trajectory.gif"
    save_png(png, trajectory_strip(trajectory[:, rows], times, names))
    frames = [
        captioned(grid_image(snapshot, experiment), f"t = {max(float(t), 0.0):.2f}")
        for snapshot, t in zip(trajectory, times, strict=True)
    ]
    save_gif(gif, frames, 250, 3000)
    return png, gif


def save_images(images: np.ndarray, directory: str) -> list[str]:
    """Writes each uint8 image as `directory/<index>.png` (00000.png, ...); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = [os.path.join(directory, f"{i:05d}.png") for i in range(len(images))]
    for path, image in zip(paths, images, strict=True):
        save_png(path, image)
    return paths


# Sampling fields that do not change what a sample is: how many are drawn, in
# which batches, and which extra files are written. Every other sampling field
# defines the samples, with the checkpoint and the seed.
OUTPUT_FIELDS = (
    "num_samples",
    "samples_per_class",
    "batch_size",
    "save_individual",
    "save_trajectory",
    "trajectory_frames",
)


def defining_settings(sampling_config, with_prompt: bool = True) -> dict[str, Any]:
    """The sampling fields that define the samples (steps resolved), as plain values.

    `with_prompt=False` leaves out the prompt too, for callers that choose the
    classes themselves (the evaluation, a compiled program that takes labels).
    """
    settings = json.loads(sampling.with_steps(sampling_config).to_json())
    for field in OUTPUT_FIELDS if with_prompt else (*OUTPUT_FIELDS, "prompt"):
        settings.pop(field, None)
    return settings


class SampleFile:
    """An .npz of samples drawn in batches, rewritten whole after each batch.

    It holds `images` (uint8 NHWC), `labels`, `batches` (how many batches they
    are), `settings` (JSON of what decides the samples) and any extra fields.
    A rerun with the same settings reads the batches back and draws only the
    rest; other settings, or a damaged or foreign file, start afresh. Each
    write replaces the file atomically, so an interruption leaves it whole.
    """

    def __init__(self, path: str, settings: dict[str, Any], **fields: Any):
        self.path = path
        self.settings = json.dumps(settings, sort_keys=True)
        self.fields = fields

    def read(self) -> tuple[np.ndarray, np.ndarray, int] | None:
        """(images, labels, batches) saved with these settings, else None."""
        if not os.path.exists(self.path):
            return None
        try:
            with np.load(self.path) as saved:
                if "settings" not in saved.files or str(saved["settings"]) != self.settings:
                    return None
                return saved["images"], saved["labels"], int(saved["batches"])
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # Not ours, or damaged.
            return None

    def write(self, images: np.ndarray, labels: np.ndarray, batches: int) -> None:
        """Saves the samples of the first `batches` batches."""
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path + ".tmp", "wb") as f:
            np.savez(
                f,
                images=images,
                labels=labels,
                batches=batches,
                settings=self.settings,
                **self.fields,
            )
        os.replace(self.path + ".tmp", self.path)
