"""A trained run in Python: `jaxdiff.load(workdir)` and the `Pipeline` it returns.

    import jaxdiff
    pipeline = jaxdiff.load("runs/mnist")
    images, labels = pipeline.sample(16)

`--mode=sample` is `sample(config, workdir)` below: the same pipeline plus file
writing, so the same run, settings and seed give the same images from either.
"""

import dataclasses
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import conditioning, datasets, editing, latent, parallel, preemption, samplers
from jaxdiff.checkpoint import Checkpointer
from jaxdiff.compiler import jit
from jaxdiff.errors import UserError
from jaxdiff.experiment import Experiment, create_experiment
from jaxdiff.models import make_score_fn
from jaxdiff.progress import Progress
from jaxdiff.sample import (
    grid_image,
    make_sample_fn,
    sample_key,
    sample_labels,
    save_trajectory,
    trajectory_times,
)
from jaxdiff.state import abstract_train_state, create_optimizer
from jaxdiff.visualize import save_png
from jaxdiff.workdir import CONFIG_FILE, check_model_config

logger = logging.getLogger("jaxdiff")


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """The config a run was trained with, from `workdir/config.json`.

    JSON has no tuples, so lists become tuples again (every list-valued field
    is a tuple). The values are laid over `configs/default.py`, so a run
    written before a field existed gets that field's default.

    Raises:
      UserError: no config.json in `workdir`.
    """
    from jaxdiff.configs import default  # The one source of every field and its default.

    path = os.path.join(os.path.abspath(workdir), CONFIG_FILE)
    if not os.path.exists(path):
        raise UserError(f"no {CONFIG_FILE} in {os.path.dirname(path)}: pass the run's config")
    with open(path) as f:
        saved = json.load(f)
    config = default.get_config()
    _merge(config, saved)
    return config


def _merge(config: ml_collections.ConfigDict, values: dict, prefix: str = "") -> None:
    for name, value in values.items():
        if isinstance(value, dict) and isinstance(config.get(name), ml_collections.ConfigDict):
            _merge(config[name], value, f"{prefix}{name}.")
            continue
        try:
            config[name] = tuple(value) if isinstance(value, list) else value
        except TypeError as e:  # ConfigDict refuses a value of another type.
            raise UserError(f"{CONFIG_FILE}: field {prefix}{name}: {e}") from None


@dataclasses.dataclass
class Pipeline:
    """A trained score model (and, for latent diffusion, its autoencoder), ready to use.

    Made by `jaxdiff.load`. Arrays in and out are numpy; images are uint8
    (N, H, W, C). `score` works in the space the score model was trained in:
    pixels in the model's range (`data.centered`: [-1, 1], else [0, 1]), or
    the scaled latents that `encode` returns.

    Attributes:
      experiment: model, SDE, shapes and the config with automatic values resolved.
      workdir: the run's directory.
      step: the training step of the loaded checkpoint.
      params: the score model's EMA parameters (what sampling uses).
      autoencoder_params: latent diffusion's autoencoder (EMA) parameters, else None.
      latent_scale: the factor that gives the latents unit variance, else None.
    """

    experiment: Experiment
    workdir: str
    step: int
    params: Any
    autoencoder_params: Any = None
    latent_scale: float | None = None
    # Compiled once per pipeline: sampling functions by sampling settings, the score.
    _sample_fns: dict = dataclasses.field(default_factory=dict, repr=False)
    _score_fn: Any = dataclasses.field(default=None, repr=False)

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.experiment.config

    @property
    def model(self):
        return self.experiment.model

    @property
    def sde(self):
        return self.experiment.sde

    @property
    def autoencoder(self):
        return self.experiment.autoencoder

    @property
    def class_names(self) -> tuple[str, ...]:
        """The dataset's class names; a conditional model's label i is class_names[i]."""
        return self.experiment.dataset.class_names

    def sampling_experiment(
        self,
        num: int | None = None,
        prompt: str | Sequence[str | int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> Experiment:
        """The experiment with these sampling settings (None: the run's config), validated.

        Raises:
          UserError: as `--mode=sample` would, e.g. a prompt for an unconditional model.
        """
        config = self.config.copy_and_resolve_references()
        s = config.sampling
        if prompt is not None:
            s.prompt = prompt if isinstance(prompt, str) else ",".join(str(p) for p in prompt)
        if sampler is not None:
            s.sampler = sampler
        if steps is not None:
            s.num_steps = steps
        if guidance_scale is not None:
            s.guidance_scale = float(guidance_scale)
        if num is not None:
            prompted = bool(s.prompt.strip()) and config.model.conditional
            if prompted:
                s.samples_per_class = num
            else:
                s.num_samples = num
        if config.to_json() == self.config.to_json():
            return self.experiment
        return create_experiment(config)

    def sample(
        self,
        num: int | None = None,
        prompt: str | Sequence[str | int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        batch: int = 0,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Draws samples with the run's EMA parameters; None means "as the run's config says".

        Args:
          num: how many images; with a prompt, how many per prompted class.
          prompt: classes of a conditional model, "3,seven", ["cat", "dog"], [3, 5]
            or "all"; "" samples unconditionally.
          sampler: a registered sampler's name (`jaxdiff.samplers.SAMPLERS`).
          steps: the sampler's steps (`sampling.num_steps`).
          guidance_scale: classifier-free guidance w (with a prompt).
          seed: the noise; the same seed and settings give the same images.
          batch: which batch of the seed's noise: `--mode=sample` in batches
            of `sampling.batch_size` draws batch 0, 1, ... (0 is the seed's
            own noise, what a single call uses).

        Returns:
          uint8 images (N, H, W, C) and each image's class (-1: unconditional).

        Raises:
          UserError: an impossible setting, named as on the command line.
        """
        images, labels, _ = self._draw(
            num, prompt, sampler, steps, guidance_scale, seed, None, batch
        )
        return images, labels

    def sample_trajectory(
        self,
        num: int | None = None,
        prompt: str | Sequence[str | int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        frames: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Draws samples as `sample` does, with snapshots of the way from noise to them.

        Args:
          num, prompt, sampler, steps, guidance_scale, seed: as for `sample`.
          frames: how many snapshots, evenly spaced over the sampler's steps
            (`sampling.trajectory_frames` if None); 2 to steps + 1.

        Returns:
          uint8 snapshots (frames, N, H, W, C): the prior draw (divided by the
          noise scale at t=1, so it shows as grey-level noise) to the samples,
          which are the last snapshot and equal `sample`'s images for the same
          settings; the time t of each snapshot (frames,); each image's class
          (-1: unconditional).

        Raises:
          UserError: an impossible setting, e.g. frames outside [2, steps + 1].
        """
        frames = self.config.sampling.trajectory_frames if frames is None else frames
        trajectory, labels, experiment = self._draw(
            num, prompt, sampler, steps, guidance_scale, seed, frames
        )
        times = trajectory_times(experiment.config.sampling, experiment.sde, frames)
        return trajectory, times, labels

    def _draw(self, num, prompt, sampler, steps, guidance_scale, seed, frames, batch=0):
        """(images or snapshots, labels, experiment) for `sample` and `sample_trajectory`.

        Says what it samples when it compiles for new settings; calls with the
        same settings (batches, evaluation calls) draw silently.
        """
        experiment = self.sampling_experiment(num, prompt, sampler, steps, guidance_scale)
        s = experiment.config.sampling
        if frames is not None:
            samplers.snapshot_states(samplers.num_steps(s), frames)  # Validates the count.
        cache_key = (s.to_json(), frames or 0)
        new = cache_key not in self._sample_fns
        if new:
            self._sample_fns[cache_key] = make_sample_fn(experiment, self.latent_scale, frames or 0)
        labels = sample_labels(experiment)
        logger.log(
            logging.INFO if new else logging.DEBUG,
            "Sampling %d images at step %d with %s (%d NFE each%s)%s",
            s.num_samples if labels is None else len(labels),
            self.step,
            s.sampler,
            samplers.num_function_evals(s),
            f", guidance scale {s.guidance_scale:g}" if experiment.prompt_labels else "",
            f", keeping {frames} snapshots" if frames else "",
        )
        seed = experiment.config.seed if seed is None else seed
        images = parallel.to_host(
            self._sample_fns[cache_key](
                self.params, self.autoencoder_params, sample_key(seed, batch)
            )
        )
        count = images.shape[1] if frames else len(images)
        if labels is None or not experiment.prompt_labels:
            labels = np.full(count, -1, np.int32)
        return images, np.asarray(labels, np.int32), experiment

    def inpaint(
        self,
        images: np.ndarray,
        mask: np.ndarray,
        prompt: str | Sequence[str | int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
        resample_steps: int = 1,
        jump_length: int = 1,
    ) -> np.ndarray:
        """Fills the pixels of `images` where `mask` is 0 (`jaxdiff.editing`).

        Args:
          images: uint8 (N, H, W, C), as `sample` returns them.
          mask: 1 keep, 0 fill: (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1);
            `jaxdiff.edit_inputs.make_masks` makes the named ones.
          prompt: a conditional model's class for every image, or one per image.
          sampler, steps, guidance_scale, seed: as for `sample`; every sampler
            but dpm_solver++ can inpaint.
          resample_steps, jump_length: RePaint's resampling (1: none).

        Returns:
          uint8 images: the kept pixels as given, the others filled.

        Raises:
          UserError: bad images or mask, a prompt for an unconditional model,
            a sampler that cannot inpaint.
        """
        return editing.inpaint(
            self,
            images,
            mask,
            prompt,
            sampler,
            steps,
            guidance_scale,
            seed,
            resample_steps,
            jump_length,
        )

    def edit(
        self,
        images: np.ndarray,
        strength: float,
        prompt: str | Sequence[str | int] | None = None,
        sampler: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """Image-to-image (SDEdit): `images` noised to time `strength`, then sampled back.

        Low strength keeps the image, 1 forgets it (plain sampling, from the
        edit's own noise for the seed); with a conditional model and a prompt the result moves
        toward the prompted class. The sampler runs the part of its grid
        below `strength`, so the cost falls with it.

        Args:
          images: uint8 (N, H, W, C).
          strength: the start time, in (sampling.eps, 1].
          prompt, sampler, steps, guidance_scale, seed: as for `inpaint`.

        Returns:
          uint8 images (N, H, W, C).
        """
        return editing.edit(self, images, strength, prompt, sampler, steps, guidance_scale, seed)

    def interpolate(
        self,
        a: np.ndarray,
        b: np.ndarray,
        num: int = 8,
        prompt: str | Sequence[str | int] | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
    ) -> np.ndarray:
        """Images between a[i] and b[i]: ODE-encoded to noise, slerped, decoded.

        Encoding runs the probability-flow ODE from the data up to t = 1
        (`edm`'s grid without churn, `steps` levels); decoding is `edm`
        without churn on the same grid, so the ends come back as a and b up
        to the steps' error.

        Args:
          a, b: uint8 (N, H, W, C) each.
          num: images per pair, the ends included.
          prompt, steps, guidance_scale: as for `inpaint`.

        Returns:
          uint8 (N, num, H, W, C).
        """
        return editing.interpolate(self, a, b, num, prompt, steps, guidance_scale)

    def interpolate_classes(
        self,
        first: str | int,
        second: str | int,
        num: int = 8,
        rows: int = 1,
        steps: int | None = None,
        guidance_scale: float | None = None,
        seed: int | None = None,
    ) -> np.ndarray:
        """A conditional model's way from one class to another at fixed noise.

        Each row keeps one noise draw and decodes it with `edm` without churn
        under the condition (1 - f) embed(first) + f embed(second) for f from 0
        to 1 (with guidance), so its ends are the two classes' samples from that
        noise.

        Returns:
          uint8 (rows, num, H, W, C).
        """
        return editing.interpolate_classes(
            self, first, second, num, rows, steps, guidance_scale, seed
        )

    def score(self, x: Any, t: Any, labels: Any = None) -> np.ndarray:
        """The model's score s(x, t) with the EMA parameters.

        Args:
          x: (N, *data_shape) float, in the space the score model was trained in.
          t: diffusion time in (0, 1], a scalar or (N,).
          labels: a conditional model's class ids (N,) (the null id
            `num_classes` or None: unconditional); None for an unconditional model.
        """
        x = jnp.asarray(x, jnp.float32)
        t = jnp.broadcast_to(jnp.asarray(t, jnp.float32), x.shape[:1])
        num_classes = self.experiment.num_classes
        if labels is not None and not num_classes:
            raise UserError("labels need a conditional model (model.conditional=True)")
        if num_classes:
            labels = np.full(len(x), num_classes) if labels is None else labels
            labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), x.shape[:1])
        if self._score_fn is None:
            experiment = self.experiment
            self._score_fn = jit(
                lambda params, x, t, labels: make_score_fn(
                    experiment.model, params, experiment.sde, experiment.config.model, labels=labels
                )(x, t)
            )
        return np.asarray(self._score_fn(self.params, x, t, labels))

    def _require_autoencoder(self, method: str) -> None:
        if self.autoencoder is None:
            raise UserError(
                f"{method} needs a latent diffusion run (autoencoder.enabled); "
                f"{self.workdir} is in pixel space"
            )

    def encode(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (N, H, W, C) -> the scaled latents the score model works on."""
        self._require_autoencoder("encode")
        latents = latent.encode_images(self.experiment, self.autoencoder_params, images)
        return latents * np.float32(self.latent_scale)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents (as `encode` returns and the sampler draws) -> uint8 images."""
        self._require_autoencoder("decode")
        unscaled = np.asarray(latents, np.float32) / np.float32(self.latent_scale)
        return latent.decode_latents(self.experiment, self.autoencoder_params, unscaled)


def load(
    workdir: str, step: int | None = None, config: ml_collections.ConfigDict | None = None
) -> Pipeline:
    """Loads a trained run's EMA parameters (and autoencoder) for sampling and scoring.

    Args:
      workdir: the run's directory (what `--workdir` was).
      step: which checkpoint; the latest if None.
      config: the run's config; read from `workdir/config.json` if None.

    Raises:
      UserError: no checkpoint, no such step (the message lists the steps
        there), a config that describes another model than the run's
        config.json or does not fit the checkpoint.
    """
    workdir = os.path.abspath(workdir)
    if config is not None and os.path.isfile(os.path.join(workdir, CONFIG_FILE)):
        # What the run found out about its data (shape, classes) need not be found again.
        config = config.copy_and_resolve_references()
        datasets.adopt_recorded(config.data, read_config(workdir).data)
    # A given config is checked before the workdir, as the command line does.
    experiment = None if config is None else create_experiment(config)
    if config is not None:
        check_model_config(config, workdir)
    checkpointer = Checkpointer(workdir, create=False)
    try:
        available = checkpointer.all_steps()
        if not available:
            raise UserError(
                f"no checkpoint in {checkpointer.directory}: train first (--mode=train)"
            )
        if step is not None and step not in available:
            raise UserError(
                f"no checkpoint {step} in {checkpointer.directory}; available steps: "
                f"{', '.join(map(str, available))}"
            )
        experiment = experiment or create_experiment(read_config(workdir))
        tx = create_optimizer(experiment.config.training)
        state = checkpointer.restore(abstract_train_state(experiment, tx), step)
    finally:
        checkpointer.close()
    autoencoder_params, scale = None, None
    if experiment.autoencoder is not None:
        autoencoder_params, scale = latent.load_autoencoder(experiment, workdir)
    return Pipeline(
        experiment=experiment,
        workdir=workdir,
        step=int(state.step),
        params=state.ema_params,
        autoencoder_params=autoencoder_params,
        latent_scale=scale,
    )


def _file_stem(experiment: Experiment, step: int) -> str:
    """sample_<step>_<sampler>, plus _w<guidance>_<classes> for a conditional model."""
    config = experiment.config
    stem = f"sample_{step:07d}_{config.sampling.sampler}"
    if not experiment.num_classes:
        return stem
    if not experiment.prompt_labels:
        return stem + "_uncond"
    if config.sampling.prompt.strip().lower() == conditioning.ALL_CLASSES:
        classes = conditioning.ALL_CLASSES
    else:
        classes = "-".join(str(label) for label in experiment.prompt_labels)
    return f"{stem}_w{config.sampling.guidance_scale:g}_{classes}"


# What the grid of --mode=sample shows at most: without a prompt the first
# GRID_MAX_SAMPLES samples, with one the first GRID_MAX_SAMPLES // classes of
# each class (at least one). The .npz and save_individual hold every sample.
GRID_MAX_SAMPLES = 256

# Sampling fields that do not decide which samples --mode=sample draws: the
# number says how many of the seed's sequence (and batch_size is replaced by
# the number per batch it gives); the rest are extra outputs.
_FIELDS_NOT_IN_SAMPLES = (
    "num_samples",
    "samples_per_class",
    "batch_size",
    "save_individual",
    "save_trajectory",
    "trajectory_frames",
)


@dataclasses.dataclass(frozen=True)
class SampleBatches:
    """How `--mode=sample` splits its samples into sampler calls.

    The samples form `classes` rows (the prompted classes; 1 without a
    prompt) of `per_class` each. Batch b draws `per_batch` of each row (so
    labels stay whole classes) with `sample_key(seed, b)`; the last batch is
    drawn whole and cut, so every batch compiles to one program and the
    first samples of a run are those of a longer run with the same batch.
    """

    classes: int
    per_class: int
    per_batch: int

    @property
    def num_batches(self) -> int:
        return -(-self.per_class // self.per_batch)

    @property
    def total(self) -> int:
        return self.classes * self.per_class


def sample_batches(experiment: Experiment) -> SampleBatches:
    """The batches of `--mode=sample` for an experiment's sampling settings.

    Raises:
      UserError: sampling.batch_size below 1.
    """
    s = experiment.config.sampling
    if s.batch_size < 1:
        raise UserError(f"sampling.batch_size must be positive, got {s.batch_size}")
    if experiment.prompt_labels:
        classes, per_class = len(experiment.prompt_labels), s.samples_per_class
    else:
        classes, per_class = 1, s.num_samples
    per_batch = min(per_class, max(1, s.batch_size // classes))
    return SampleBatches(classes, per_class, per_batch)


def _sample_settings(pipeline: Pipeline, batches: SampleBatches) -> str:
    """What decides `--mode=sample`'s samples beside their index, as JSON (kept in the .npz)."""
    config = pipeline.config
    sampling = json.loads(config.sampling.to_json())
    for field in _FIELDS_NOT_IN_SAMPLES:
        sampling.pop(field, None)
    settings = {
        "step": pipeline.step,
        "seed": config.seed,
        "per_batch": batches.per_batch,
        "sampling": sampling,
    }
    return json.dumps(settings, sort_keys=True)


def _saved_samples(path: str, settings: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images, labels) of an .npz that `--mode=sample` wrote with these settings, else None."""
    if not os.path.exists(path):
        return None
    try:
        with np.load(path) as saved:
            if "settings" not in saved.files or str(saved["settings"]) != settings:
                return None
            return saved["images"], saved["labels"]
    except (OSError, ValueError, zipfile.BadZipFile):  # Not ours, or damaged: drawn anew.
        return None


def _save_individual(
    images: np.ndarray, stem: str, batches: SampleBatches, start: int, stop: int, missing: bool
) -> None:
    """Writes samples start..stop-1 of each class (images: classes x per_class) as PNGs.

    Sample j of class c is `<stem>/<c * per_class + j>.png`, its index in the
    .npz. With `missing`, only those not written yet.
    """
    os.makedirs(stem, exist_ok=True)
    for c in range(batches.classes):
        for j in range(start, stop):
            path = os.path.join(stem, f"{c * batches.per_class + j:05d}.png")
            if not (missing and os.path.exists(path)):
                save_png(path, images[c, j])


def sample(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> str:
    """`--mode=sample`: draws samples with a checkpoint's EMA parameters (the latest if None).

    A thin layer over `jaxdiff.load(workdir, step, config).sample()` that
    writes `samples/<stem>.png` (a grid of the first `GRID_MAX_SAMPLES`; for a
    prompt, one labelled row per class) and `<stem>.npz` (`images` uint8 NHWC,
    `labels` (-1: unconditional), `class_names`, `step`, `sampler`,
    `num_steps`, `guidance_scale`, `prompt`, `seed`, and `settings`, what
    decides the samples as JSON) into the workdir; with
    `sampling.save_individual`, also each image as `<stem>/<index>.png`; with
    `sampling.save_trajectory`, also `<stem>_trajectory.png` and `.gif`
    (`save_trajectory`; all samples in one batch). The stem is
    `sample_<step>_<sampler>`, with `_w<guidance>_<classes>` (or `_uncond`)
    added for a conditional model.

    The samples are drawn in batches of `sampling.batch_size` (see
    `SampleBatches`); one batch gives the images of `Pipeline.sample`. After
    each batch the files are rewritten atomically, so an interrupted run
    leaves the completed batches, and the same command resumes from them
    (the .npz's `settings` must match). A stop signal (SIGTERM, Ctrl-C) ends
    the run after the current batch, raising `Preempted`.

    Returns:
      The path of the .npz file.

    Raises:
      UserError: as `load`, a bad sampling setting, save_trajectory with more
        than one batch.
    """
    pipeline = load(workdir, step=step, config=config)
    experiment, config = pipeline.experiment, pipeline.config
    s = config.sampling
    batches = sample_batches(experiment)
    if s.save_trajectory and batches.num_batches > 1:
        raise UserError(
            f"sampling.save_trajectory draws all samples in one batch: {batches.total} "
            f"samples exceed sampling.batch_size={s.batch_size} (sample fewer, or raise "
            "sampling.batch_size)"
        )
    stem = os.path.join(pipeline.workdir, "samples", _file_stem(experiment, pipeline.step))
    is_main = jax.process_index() == 0
    if is_main:
        os.makedirs(os.path.dirname(stem), exist_ok=True)
    settings = _sample_settings(pipeline, batches)
    fields = dict(
        class_names=np.asarray(experiment.dataset.class_names),
        step=pipeline.step,
        sampler=s.sampler,
        num_steps=samplers.num_steps(s),
        guidance_scale=s.guidance_scale,
        prompt=s.prompt,
        seed=config.seed,
        settings=settings,
    )
    # Every sample, class by class: images[c, j] is sample j of row c.
    images = np.zeros((batches.classes, batches.per_class, *experiment.image_shape), np.uint8)
    labels = np.zeros((batches.classes, batches.per_class), np.int32)
    done, first_batch = 0, 0
    saved = None if s.save_trajectory else _saved_samples(stem + ".npz", settings)
    if saved is not None:
        # Whole batches only (the last one of a shorter run was cut), or all that is asked for.
        count = len(saved[0]) // batches.classes
        done = min(count, batches.per_class)
        if done < batches.per_class:
            done -= done % batches.per_batch
        first_batch = -(-done // batches.per_batch)
        shape = (batches.classes, count, *images.shape[2:])
        images[:, :done] = saved[0].reshape(shape)[:, :done]
        labels[:, :done] = saved[1].reshape(shape[:2])[:, :done]
        if done:
            logger.info("Resuming from the %d samples in %s.npz", done * batches.classes, stem)
    if batches.num_batches > 1:
        logger.info(
            "%d samples in %d batches of %d (sampling.batch_size) into %s.npz",
            batches.total,
            batches.num_batches,
            batches.classes * batches.per_batch,
            stem,
        )

    shown = 0  # Samples per row the grid on disk shows.
    per_row_shown = max(1, GRID_MAX_SAMPLES // batches.classes)

    def write(new: int) -> None:
        """Writes the first `done` samples of each row: .npz, grid, PNGs of samples new.. on."""
        nonlocal shown
        if s.save_individual:
            _save_individual(images, stem, batches, new, done, missing=False)
        with open(stem + ".npz.tmp", "wb") as f:
            np.savez(
                f,
                images=images[:, :done].reshape(-1, *images.shape[2:]),
                labels=labels[:, :done].reshape(-1),
                **fields,
            )
        os.replace(stem + ".npz.tmp", stem + ".npz")
        if min(done, per_row_shown) != shown:
            shown = min(done, per_row_shown)
            save_png(
                stem + ".png",
                grid_image(images[:, :shown].reshape(-1, *images.shape[2:]), experiment),
            )

    trajectory = None
    progress = Progress(batches.total, "samples", "sample", initial=done * batches.classes)
    with progress, preemption.stop_signals_caught():
        if done and is_main:  # Resumed: what a rerun may ask for besides the samples.
            if s.save_individual:
                _save_individual(images, stem, batches, 0, done, missing=True)
            write(done)
        for batch in range(first_batch, batches.num_batches):
            if s.save_trajectory:
                trajectory, times, drawn_labels = pipeline.sample_trajectory()
                drawn = trajectory[-1]
            else:
                drawn, drawn_labels = pipeline.sample(
                    batches.per_batch, seed=config.seed, batch=batch
                )
            start = batch * batches.per_batch
            take = min(batches.per_batch, batches.per_class - start)
            shape = (batches.classes, batches.per_batch, *images.shape[2:])
            images[:, start : start + take] = drawn.reshape(shape)[:, :take]
            labels[:, start : start + take] = drawn_labels.reshape(shape[:2])[:, :take]
            done = start + take
            if is_main:
                write(start)
            progress.update(done * batches.classes)
            stop_signal = preemption.stop_requested()
            if jax.process_count() > 1:  # The batch ended in a host sync: agree now.
                stop_signal = parallel.any_process(stop_signal)
            if stop_signal and done < batches.per_class:
                raise preemption.Preempted(
                    f"sample: stopped by {stop_signal} at {done * batches.classes}/"
                    f"{batches.total} samples, saved in {stem}.npz; run the same command "
                    "again to resume"
                )
    if is_main:
        logger.info("Wrote %s.png and %s.npz", stem, stem)
        if s.save_individual:
            logger.info("Wrote %d images to %s/", batches.total, stem)
        if trajectory is not None:
            save_trajectory(trajectory, times, experiment, stem)
            logger.info("Wrote %s_trajectory.png and %s_trajectory.gif", stem, stem)
    return stem + ".npz"
