"""A trained run in Python: `jaxdiff.load(workdir)` and the `Pipeline` it returns.

    import jaxdiff
    pipeline = jaxdiff.load("runs/mnist")
    images, labels = pipeline.sample(16)

`--mode=sample` (`jaxdiff.commands.sample`) is the same pipeline plus file
writing, so the same run, settings and seed give the same images from either.
"""

import dataclasses
import logging
import os
from collections.abc import Callable, Hashable, Sequence
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import parallel, random
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError
from jaxdiff.data import datasets
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.editing import controlled
from jaxdiff.experiment import Experiment, create_experiment, decode_latents, encode_images
from jaxdiff.generation import (
    make_sample_fn,
    sample_labels,
    trajectory_times,
)
from jaxdiff.training import autoencoder
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.state import abstract_train_state, create_optimizer
from jaxdiff.training.workdir import CONFIG_FILE, check_model_config, read_config

logger = logging.getLogger("jaxdiff")


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
    # Compiled once per pipeline: programs by their settings (`compiled`), the score.
    _programs: dict = dataclasses.field(default_factory=dict, repr=False)
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
          sampler: a registered sampler's name (`jaxdiff.sampling.SAMPLERS`).
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

    def compiled(self, key: Hashable, build: Callable[[], Callable]) -> Callable:
        """The program kept under `key`, made by `build()` on first use.

        Sampling and editing compile one program per settings and pipeline;
        this is where they keep it, so a second call with the same settings
        does not compile again.
        """
        if key not in self._programs:
            self._programs[key] = build()
        return self._programs[key]

    def _draw(self, num, prompt, sampler, steps, guidance_scale, seed, frames, batch=0):
        """(images or snapshots, labels, experiment) for `sample` and `sample_trajectory`.

        Says what it samples when it compiles for new settings; calls with the
        same settings (batches, evaluation calls) draw silently.
        """
        experiment = self.sampling_experiment(num, prompt, sampler, steps, guidance_scale)
        s = experiment.config.sampling
        if frames is not None:
            sampling.snapshot_states(sampling.num_steps(s), frames)  # Validates the count.
        cache_key = (s.to_json(), frames or 0)
        new = cache_key not in self._programs
        program = self.compiled(
            cache_key, lambda: make_sample_fn(experiment, self.latent_scale, frames or 0)
        )
        labels = sample_labels(experiment)
        logger.log(
            logging.INFO if new else logging.DEBUG,
            "Sampling %d images at step %d with %s (%d NFE each%s)%s",
            s.num_samples if labels is None else len(labels),
            self.step,
            s.sampler,
            sampling.num_function_evals(s),
            f", guidance scale {s.guidance_scale:g}" if experiment.prompt_labels else "",
            f", keeping {frames} snapshots" if frames else "",
        )
        seed = experiment.config.seed if seed is None else seed
        images = parallel.to_host(
            program(self.params, self.autoencoder_params, random.sampling_key(seed, batch))
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
        """Fills the pixels of `images` where `mask` is 0 (`jaxdiff.editing.controlled`).

        Args:
          images: uint8 (N, H, W, C), as `sample` returns them.
          mask: 1 keep, 0 fill: (H, W), (H, W, 1), (N, H, W) or (N, H, W, 1);
            `jaxdiff.editing.inputs.make_masks` makes the named ones.
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
        return controlled.inpaint(
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
        return controlled.edit(self, images, strength, prompt, sampler, steps, guidance_scale, seed)

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
        to the steps' error. Nothing is drawn at random, so there is no
        `seed` (the same inputs give the same images) and no `sampler`.

        Args:
          a, b: uint8 (N, H, W, C) each.
          num: images per pair, the ends included.
          prompt, steps, guidance_scale: as for `inpaint`.

        Returns:
          uint8 (N, num, H, W, C).
        """
        return controlled.interpolate(self, a, b, num, prompt, steps, guidance_scale)

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

        Each row keeps one noise draw (from `seed`) and decodes it with `edm`
        without churn under the condition (1 - f) embed(first) + f embed(second)
        for f from 0 to 1 (with guidance), so its ends are the two classes'
        samples from that noise. There is no `sampler`: it is always that one.

        Returns:
          uint8 (rows, num, H, W, C).
        """
        return controlled.interpolate_classes(
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
        latents = encode_images(self.experiment, self.autoencoder_params, images)
        return latents * np.float32(self.latent_scale)

    def decode(self, latents: np.ndarray) -> np.ndarray:
        """Scaled latents (as `encode` returns and the sampler draws) -> uint8 images."""
        self._require_autoencoder("decode")
        unscaled = np.asarray(latents, np.float32) / np.float32(self.latent_scale)
        return decode_latents(self.experiment, self.autoencoder_params, unscaled)


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
        autoencoder_params, scale = autoencoder.load_autoencoder(experiment, workdir)
    return Pipeline(
        experiment=experiment,
        workdir=workdir,
        step=int(state.step),
        params=state.ema_params,
        autoencoder_params=autoencoder_params,
        latent_scale=scale,
    )
