"""A validated config turned into the objects a run is made of: model, SDE, mesh.

And the way between images and a latent run's model space (`encode`, `decode`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import parallel
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError
from jaxdiff.data import batches, datasets
from jaxdiff.diffusion import conditioning
from jaxdiff.diffusion.losses import LOSS_WEIGHTINGS, NOISE_DISTRIBUTIONS
from jaxdiff.diffusion.preconditioning import PRECONDITIONINGS
from jaxdiff.diffusion.sde import SDE, create_sde
from jaxdiff.models import create_autoencoder, create_model
from jaxdiff.models.autoencoder import latent_shape


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What training and sampling are built from, checked against each other."""

    config: ml_collections.ConfigDict
    model: nn.Module
    sde: SDE
    # Pixels of the dataset's images (H, W, C).
    image_shape: tuple[int, int, int]
    # What the score model generates: the images, or the autoencoder's latents.
    data_shape: tuple[int, int, int]
    mesh: jax.sharding.Mesh
    # The dataset's shape and class names (whether or not the model is conditional).
    dataset: datasets.DatasetInfo
    # Classes the model is conditioned on (0: unconditional); label num_classes is null.
    num_classes: int = 0
    # Class ids named by sampling.prompt, one grid row each; () samples unconditionally.
    prompt_labels: tuple[int, ...] = ()
    # Latent diffusion's autoencoder (None in pixel space).
    autoencoder: nn.Module | None = None


# data.on_device: keep the training split on the devices, stream it, or choose by size.
ON_DEVICE_CHOICES = ("auto", "always", "never")

_POSITIVE_TRAINING_FIELDS = ("batch_size", "log_every", "checkpoint_every", "keep_checkpoints")

# Optimizer steps per compiled call when training.steps_per_call = 0, per backend.
# CPU: 4 steps unrolled in one call trained faster than 1 step per call
# (docs/performance.md); other backends: not measured here, so 1.
_AUTO_STEPS_PER_CALL = {"cpu": 4}


def _auto_steps_per_call(training_config) -> int:
    """The backend's preferred steps per call, lowered until it divides the intervals."""
    t = training_config
    steps = _AUTO_STEPS_PER_CALL.get(jax.default_backend(), 1)
    while any(n % steps for n in (t.num_steps, t.log_every, t.checkpoint_every)):
        steps -= 1
    return steps


def check_optimization(group: ml_collections.ConfigDict, name: str, batch_devices: int) -> None:
    """Validates an optimisation group (training, autoencoder) and resolves steps_per_call."""
    for field in _POSITIVE_TRAINING_FIELDS:
        if group[field] < 1:
            raise UserError(f"{name}.{field} must be positive, got {group[field]}")
    if group.num_steps < 0:
        raise UserError(f"{name}.num_steps must be >= 0, got {group.num_steps}")
    if group.steps_per_call < 0:
        raise UserError(
            f"{name}.steps_per_call must be >= 0 (0: automatic), got {group.steps_per_call}"
        )
    if group.steps_per_call == 0:
        group.steps_per_call = _auto_steps_per_call(group)
    for field in ("num_steps", "log_every", "checkpoint_every"):
        if group[field] % group.steps_per_call:
            raise UserError(
                f"{name}.{field}={group[field]} must be a multiple of "
                f"{name}.steps_per_call={group.steps_per_call}"
            )
    if group.on_nonfinite not in ("stop", "skip"):
        raise UserError(f"{name}.on_nonfinite must be 'stop' or 'skip', got {group.on_nonfinite!r}")
    if not 0.0 <= group.ema_decay < 1.0:
        raise UserError(f"{name}.ema_decay must be in [0, 1), got {group.ema_decay}")
    if group.batch_size % batch_devices:
        raise UserError(
            f"{name}.batch_size={group.batch_size} is not divisible by the {batch_devices} devices"
        )


def create_experiment(config: ml_collections.ConfigDict) -> Experiment:
    """Validates the whole config and builds model, SDE and mesh; reads and writes no file.

    The experiment holds a copy of the config with automatic values resolved
    (steps_per_call = 0); use `experiment.config` from then on.

    Raises:
      UserError: for any unknown name or impossible setting, naming the field.
    """
    config = config.copy_and_resolve_references()
    if config.data.on_device not in ON_DEVICE_CHOICES:
        raise UserError(
            f"data.on_device must be one of {', '.join(ON_DEVICE_CHOICES)}, "
            f"got {config.data.on_device!r}"
        )
    dataset = datasets.dataset_info(config.data, need_labels=config.model.conditional)
    datasets.record(config.data, dataset)
    image_shape = dataset.image_shape
    sde = create_sde(config.sde)
    sampling.create_sampler(config.sampling)
    mesh = parallel.create_mesh()
    t = config.training
    check_optimization(t, "training", mesh.size)
    if t.grad_accum_steps < 1:
        raise UserError(f"training.grad_accum_steps must be positive, got {t.grad_accum_steps}")
    # Each device must hold an equal share of every micro-batch.
    if t.batch_size % (t.grad_accum_steps * mesh.size):
        raise UserError(
            f"training.batch_size={t.batch_size} is not divisible by "
            f"training.grad_accum_steps={t.grad_accum_steps} x {mesh.size} device(s)"
        )
    if not 0.0 < t.eps < 1.0:
        raise UserError(f"training.eps must be in (0, 1), got {t.eps}")
    for field, choices in (
        ("noise_distribution", NOISE_DISTRIBUTIONS),
        ("loss_weighting", LOSS_WEIGHTINGS),
    ):
        if t[field] not in choices:
            raise UserError(
                f"unknown training.{field} {t[field]!r}; choose one of {', '.join(choices)}"
            )
    if t.p_std <= 0 or t.min_snr_gamma <= 0:
        raise UserError(
            f"training.p_std and training.min_snr_gamma must be positive, got {t.p_std} "
            f"and {t.min_snr_gamma}"
        )
    if config.sampling.num_samples < 1:
        raise UserError(f"sampling.num_samples must be positive, got {config.sampling.num_samples}")
    dtype = jnp.bfloat16 if t.half_precision else None
    autoencoder, data_shape = None, image_shape
    if config.autoencoder.enabled:
        check_optimization(config.autoencoder, "autoencoder", mesh.size)
        autoencoder = create_autoencoder(config.autoencoder, image_shape, dtype)
        data_shape = latent_shape(config.autoencoder, image_shape)
        if config.data.random_flip:
            raise UserError(
                "data.random_flip cannot be used with autoencoder.enabled: the latents are "
                "encoded once, without flips; set --config.data.random_flip=False"
            )
    num_classes = dataset.num_classes if config.model.conditional else 0
    prompt_labels = _check_conditioning(config, dataset, num_classes)
    model = create_model(config.model, data_shape, dtype, num_classes)
    PRECONDITIONINGS.get(config.model.preconditioning)  # An unknown name fails here.
    return Experiment(
        config=config,
        model=model,
        sde=sde,
        image_shape=image_shape,
        data_shape=data_shape,
        mesh=mesh,
        dataset=dataset,
        num_classes=num_classes,
        prompt_labels=tuple(prompt_labels),
        autoencoder=autoencoder,
    )


def _check_conditioning(
    config: ml_collections.ConfigDict, dataset: datasets.DatasetInfo, num_classes: int
) -> list[int]:
    """Validates the conditioning fields; returns the prompt's class ids."""
    s = config.sampling
    if not num_classes:
        if s.prompt.strip():
            raise UserError(
                f"sampling.prompt={s.prompt!r} needs a conditional model (model.conditional=True)"
            )
        if s.guidance_scale:
            raise UserError("sampling.guidance_scale needs a conditional model")
        return []
    if not 0.0 <= config.training.cond_drop_prob < 1.0:
        raise UserError(
            f"training.cond_drop_prob must be in [0, 1), got {config.training.cond_drop_prob}"
        )
    if s.guidance_scale < 0:
        raise UserError(f"sampling.guidance_scale must be >= 0, got {s.guidance_scale}")
    if s.samples_per_class < 1:
        raise UserError(f"sampling.samples_per_class must be positive, got {s.samples_per_class}")
    return conditioning.parse_prompt(s.prompt, dataset)


def encode(experiment: Experiment, params: Any, images: jax.Array) -> jax.Array:
    """uint8 images -> posterior means; call inside jit."""
    x = batches.to_model_range(images, experiment.config.data.centered)
    mean, _ = experiment.autoencoder.apply({"params": params}, x, method="encode")
    return mean


def decode(experiment: Experiment, params: Any, latents: jax.Array) -> jax.Array:
    """Unscaled latents -> uint8 images; call inside jit."""
    decoded = experiment.autoencoder.apply({"params": params}, latents, method="decode")
    return batches.to_uint8(decoded, experiment.config.data.centered)


def encode_images(experiment: Experiment, params: Any, images: np.ndarray) -> np.ndarray:
    """uint8 images -> float32 latents (posterior means), unscaled."""
    return batches.map_in_chunks(jit(lambda x: encode(experiment, params, x)), images)


def reconstruct(experiment: Experiment, params: Any, images: np.ndarray) -> np.ndarray:
    """uint8 images -> uint8 reconstructions through the posterior means."""

    @jit
    def round_trip(x):
        return decode(experiment, params, encode(experiment, params, x))

    return batches.map_in_chunks(round_trip, images)


def decode_latents(experiment: Experiment, params: Any, latents: np.ndarray) -> np.ndarray:
    """Unscaled float latents -> uint8 images."""
    return batches.map_in_chunks(jit(lambda z: decode(experiment, params, z)), latents)
