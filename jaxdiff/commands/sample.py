"""`--mode=sample`: samples of a trained run written into its workdir, resumably."""

import dataclasses
import json
import logging
import os
import zipfile

import jax
import ml_collections
import numpy as np

from jaxdiff.core import parallel, preemption
from jaxdiff.core.errors import UserError
from jaxdiff.core.progress import Progress
from jaxdiff.core.visualize import save_png
from jaxdiff.diffusion import conditioning
from jaxdiff.experiment import Experiment
from jaxdiff.generation import grid_image, save_trajectory
from jaxdiff.pipeline import Pipeline, load
from jaxdiff.sampling import samplers

logger = logging.getLogger("jaxdiff")


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
    labels stay whole classes) with `random.sampling_key(seed, b)`; the last batch is
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
