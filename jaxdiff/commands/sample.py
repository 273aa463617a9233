"""`--mode=sample`: samples of a trained run written into its workdir, resumably."""

import dataclasses
import logging
import os

import jax
import ml_collections
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import parallel, preemption
from jaxdiff.core.errors import UserError
from jaxdiff.core.progress import Progress
from jaxdiff.core.visualize import save_png
from jaxdiff.diffusion import conditioning
from jaxdiff.experiment import Experiment
from jaxdiff.generation import SampleFile, defining_settings, grid_image, save_trajectory
from jaxdiff.pipeline import Pipeline, load

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


@dataclasses.dataclass(frozen=True)
class SampleBatches:
    """How `--mode=sample` splits its samples into sampler calls.

    The samples form `classes` rows (the prompted classes; 1 without a
    prompt) of `per_class` each. Batch b draws `per_batch` of each row (so
    labels stay whole classes) with `random.sampling_key(seed, b)`; the last
    batch is drawn whole and cut, so every batch compiles to one program and
    the first samples of a run are those of a longer run with the same batch.
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


class _Samples:
    """The samples of one `--mode=sample` run, row by row, and the files that show them.

    `images[c, j]` is sample j of row c; the first `done` of each row are drawn.
    """

    def __init__(self, pipeline: Pipeline, batches: SampleBatches, stem: str):
        config, experiment = pipeline.config, pipeline.experiment
        s = config.sampling
        self.experiment, self.batches, self.stem = experiment, batches, stem
        self.save_individual = s.save_individual
        self.images = np.zeros(
            (batches.classes, batches.per_class, *experiment.image_shape), np.uint8
        )
        self.labels = np.zeros((batches.classes, batches.per_class), np.int32)
        self.done = 0
        self.shown = 0  # Samples per row the grid on disk shows.
        settings = {
            "step": pipeline.step,
            "seed": config.seed,
            "per_batch": batches.per_batch,
            "sampling": defining_settings(s),
        }
        self.file = SampleFile(
            stem + ".npz",
            settings,
            class_names=np.asarray(experiment.dataset.class_names),
            step=pipeline.step,
            sampler=s.sampler,
            num_steps=sampling.num_steps(s),
            guidance_scale=s.guidance_scale,
            prompt=s.prompt,
            seed=config.seed,
        )

    def resume(self) -> None:
        """Takes the whole batches of a saved run with the same settings (or all asked for)."""
        saved = self.file.read()
        if saved is None:
            return
        b = self.batches
        count = len(saved[0]) // b.classes
        done = min(count, b.per_class)
        if done < b.per_class:
            done -= done % b.per_batch  # The last batch of a shorter run was cut.
        shape = (b.classes, count, *self.images.shape[2:])
        self.images[:, :done] = saved[0].reshape(shape)[:, :done]
        self.labels[:, :done] = saved[1].reshape(shape[:2])[:, :done]
        self.done = done

    def add(self, batch: int, drawn: np.ndarray, drawn_labels: np.ndarray) -> int:
        """Places batch `batch`'s samples; returns the index in each row where they start."""
        b = self.batches
        start = batch * b.per_batch
        take = min(b.per_batch, b.per_class - start)
        shape = (b.classes, b.per_batch, *self.images.shape[2:])
        self.images[:, start : start + take] = drawn.reshape(shape)[:, :take]
        self.labels[:, start : start + take] = drawn_labels.reshape(shape[:2])[:, :take]
        self.done = start + take
        return start

    def write(self, new: int, missing_only: bool = False) -> None:
        """Writes the .npz, the grid if it shows more now, and the PNGs of samples new.. on."""
        b, done = self.batches, self.done
        if self.save_individual:
            _save_individual(self.images, self.stem, b, new, done, missing_only)
        flat = self.images[:, :done].reshape(-1, *self.images.shape[2:])
        self.file.write(flat, self.labels[:, :done].reshape(-1), -(-done // b.per_batch))
        shown = min(done, max(1, GRID_MAX_SAMPLES // b.classes))
        if shown != self.shown:
            self.shown = shown
            grid = self.images[:, :shown].reshape(-1, *self.images.shape[2:])
            save_png(self.stem + ".png", grid_image(grid, self.experiment))


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


def run(config: ml_collections.ConfigDict, workdir: str, step: int | None = None) -> str:
    """`--mode=sample`: draws samples with a checkpoint's EMA parameters (the latest if None).

    A thin layer over `jaxdiff.load(workdir, step, config).sample()` that
    writes `samples/<stem>.png` (a grid of the first `GRID_MAX_SAMPLES`; for a
    prompt, one labelled row per class) and `<stem>.npz` (`images` uint8 NHWC,
    `labels` (-1: unconditional), `class_names`, `step`, `sampler`,
    `num_steps`, `guidance_scale`, `prompt`, `seed`, and `settings`, what
    decides the samples as JSON: a `generation.SampleFile`) into the workdir;
    with `sampling.save_individual`, also each image as `<stem>/<index>.png`;
    with `sampling.save_trajectory`, also `<stem>_trajectory.png` and `.gif`
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
    samples = _Samples(pipeline, batches, stem)
    if not s.save_trajectory:
        samples.resume()
    if samples.done:
        logger.info("Resuming from the %d samples in %s.npz", samples.done * batches.classes, stem)
    if batches.num_batches > 1:
        logger.info(
            "%d samples in %d batches of %d (sampling.batch_size) into %s.npz",
            batches.total,
            batches.num_batches,
            batches.classes * batches.per_batch,
            stem,
        )

    trajectory = None
    first_batch = -(-samples.done // batches.per_batch)
    progress = Progress(batches.total, "samples", "sample", initial=samples.done * batches.classes)
    with progress, preemption.stop_signals_caught():
        if samples.done and is_main:  # Resumed: what a rerun may ask for besides the samples.
            samples.write(0, missing_only=True)
        for batch in range(first_batch, batches.num_batches):
            if s.save_trajectory:
                trajectory, times, drawn_labels = pipeline.sample_trajectory()
                drawn = trajectory[-1]
            else:
                drawn, drawn_labels = pipeline.sample(
                    batches.per_batch, seed=config.seed, batch=batch
                )
            start = samples.add(batch, drawn, drawn_labels)
            if is_main:
                samples.write(start)
            progress.update(samples.done * batches.classes)
            stop_signal = preemption.stop_requested()
            if jax.process_count() > 1:  # The batch ended in a host sync: agree now.
                stop_signal = parallel.any_process(stop_signal)
            if stop_signal and samples.done < batches.per_class:
                raise preemption.Preempted(
                    f"sample: stopped by {stop_signal} at {samples.done * batches.classes}/"
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
