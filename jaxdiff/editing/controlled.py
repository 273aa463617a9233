"""Controllable generation with a trained run: inpainting, image-to-image editing, interpolation.

- Inpainting fills the masked-out pixels: the run's sampler, with the kept
  pixels replaced after every step by the original noised to that step's level
  (Song et al. 2021), optionally resampled (RePaint, Lugmayr et al. 2022).
- Editing (SDEdit, Meng et al. 2022) noises images to time `strength` and runs
  the sampler from there; with a conditional model, toward a prompt.
- Interpolation encodes two images to noise along the probability-flow ODE
  (`sampling.probability_flow_encode`), interpolates the noises spherically
  and decodes them with `edm` without churn; for a conditional model it can
  also mix two classes' condition embeddings at fixed noise.

Latent runs do the same on the latents: images are encoded, the mask is taken
to the latent grid (a latent cell is kept only where all its pixels are), the
results decoded, and for inpainting the kept pixels pasted back. This is an
approximation in two places: the decoder does not reproduce the kept region
exactly, so the paste can leave a seam, and latent cells that straddle the
mask's edge are regenerated whole.

`Pipeline.inpaint`, `edit`, `interpolate` and `interpolate_classes` are the
Python interface; `run` is `--mode=inpaint|edit|interpolate`.
"""

import json
import logging
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import parallel, random
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError
from jaxdiff.data import batches
from jaxdiff.editing import inputs
from jaxdiff.experiment import Experiment, create_experiment, decode
from jaxdiff.generation import defining_settings, sampling_score_fn

logger = logging.getLogger("jaxdiff")

Prompt = str | Sequence[str | int] | None

# What `editing.interpolate` may say.
INTERPOLATIONS = ("images", "classes")


def _prompt(prompt: Prompt) -> str | Sequence[str | int]:
    """An edit's prompt: None is none (not the run's sampling.prompt, often "all")."""
    return "" if prompt is None else prompt


def _edit_labels(experiment: Experiment, num: int) -> np.ndarray | None:
    """Each image's class for the score: None (unconditional model), the prompt's, or null ids.

    The prompt names one class for every image or one per image.
    """
    if not experiment.num_classes:
        return None
    prompted = list(experiment.prompt_labels)
    if not prompted:
        return np.full(num, experiment.num_classes, np.int32)
    if len(prompted) not in (1, num):
        raise UserError(
            f"the prompt names {len(prompted)} classes for {num} images: give one class "
            "for all of them or one per image (editing.prompt)"
        )
    return np.resize(np.asarray(prompted, np.int32), num)


def _to_model_space(pipeline, images: np.ndarray) -> np.ndarray:
    """uint8 images -> what the score model works on (pixels in its range, or scaled latents)."""
    if pipeline.autoencoder is not None:
        return pipeline.encode(images)
    return np.asarray(batches.to_model_range(images, pipeline.config.data.centered))


def _model_mask(pipeline, masks: np.ndarray) -> np.ndarray:
    if pipeline.autoencoder is None:
        return masks
    height, width, _ = pipeline.experiment.data_shape
    return inputs.latent_mask(masks, height, width)


def _program_settings(sampling_config) -> str:
    """The sampling settings that decide a compiled edit (the labels are an argument)."""
    return json.dumps(defining_settings(sampling_config, with_prompt=False), sort_keys=True)


def _controlled_fn(pipeline, experiment: Experiment, statics: dict[str, Any]):
    """Jits (params, autoencoder params, source, mask, noise, labels, key data) -> uint8 images.

    The sampler of `experiment` runs with a `sampling.Control` of the given
    arrays (None where unused) and the static settings in `statics`. Compiled
    once per pipeline and settings.
    """
    config = experiment.config
    cache_key = ("control", _program_settings(config.sampling), json.dumps(statics, sort_keys=True))
    sampler = sampling.create_sampler(config.sampling)
    guidance = config.sampling.guidance_scale if statics["guided"] else 0.0
    mesh = experiment.mesh

    def run(params, autoencoder_params, source, mask, noise, labels, key_data):
        like = source if source is not None else noise
        num = like.shape[0]
        sharding = parallel.batch_sharded(mesh) if num % mesh.size == 0 else None
        score_fn = sampling_score_fn(experiment, params, labels, guidance, sharding)
        control = sampling.Control(
            source=source,
            mask=mask,
            start_time=statics["start_time"],
            resample_steps=statics["resample_steps"],
            jump_length=statics["jump_length"],
            noise=noise,
        )
        key = jax.random.wrap_key_data(key_data)
        x = sampler(key, score_fn, experiment.sde, like.shape, control=control)
        if mask is not None:  # The kept part exactly (Euler-Maruyama's last mean is not replaced).
            x = mask * source + (1.0 - mask) * x
        if experiment.autoencoder is not None:
            return decode(experiment, autoencoder_params, x / pipeline.latent_scale)
        return batches.to_uint8(x, config.data.centered)

    return pipeline.compiled(cache_key, lambda: jit(run))


def _run_controlled(
    pipeline, experiment, statics, seed, *, source=None, mask=None, noise=None, labels=None
) -> np.ndarray:
    """Runs `_controlled_fn` over the images in calls of `sampling.batch_size`.

    Every call has the same size (the last is padded), so one program serves
    them all; call b draws with `random.sampling_key(seed, b)`.
    """
    fn = _controlled_fn(pipeline, experiment, {**statics, "guided": bool(experiment.prompt_labels)})
    seed = experiment.config.seed if seed is None else seed
    arrays = [source, mask, noise, labels]
    num = len(source if source is not None else noise)
    size = max(1, min(num, experiment.config.sampling.batch_size))
    out = []
    for batch, start in enumerate(range(0, num, size)):
        index = np.minimum(np.arange(start, start + size), num - 1)  # The last call padded.
        chunk = [None if a is None else jnp.asarray(np.asarray(a)[index]) for a in arrays]
        key_data = np.asarray(jax.random.key_data(random.sampling_key(seed, batch)))
        result = fn(pipeline.params, pipeline.autoencoder_params, *chunk, key_data)
        out.append(parallel.to_host(result)[: min(size, num - start)])
    return np.concatenate(out)


def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The standard normal draw an edit starts from, fixed by the seed."""
    return np.asarray(
        jax.random.normal(jax.random.fold_in(random.sampling_key(seed), random.EDIT_NOISE), shape)
    )


def inpaint(
    pipeline,
    images: np.ndarray,
    mask: np.ndarray,
    prompt: Prompt = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
    resample_steps: int = 1,
    jump_length: int = 1,
) -> np.ndarray:
    """`Pipeline.inpaint`: fills the pixels where `mask` is 0; see there."""
    experiment = pipeline.sampling_experiment(None, _prompt(prompt), sampler, steps, guidance_scale)
    image_shape = experiment.image_shape
    images = inputs.check_images(images, image_shape)
    masks = inputs.check_masks(mask, len(images), *image_shape[:2])
    sampling.check_control(
        experiment.config.sampling,
        masked=True,
        resample_steps=resample_steps,
        jump_length=jump_length,
    )
    statics = dict(start_time=1.0, resample_steps=resample_steps, jump_length=jump_length)
    filled = _run_controlled(
        pipeline,
        experiment,
        statics,
        seed,
        source=_to_model_space(pipeline, images),
        mask=_model_mask(pipeline, masks),
        labels=_edit_labels(experiment, len(images)),
    )
    # The kept pixels exactly as given (in pixel space, also the sampler's are close).
    return np.where(masks.astype(bool), images, filled)


def edit(
    pipeline,
    images: np.ndarray,
    strength: float,
    prompt: Prompt = None,
    sampler: str | None = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """`Pipeline.edit`: SDEdit from `images` at time `strength`; see there."""
    experiment = pipeline.sampling_experiment(None, _prompt(prompt), sampler, steps, guidance_scale)
    images = inputs.check_images(images, experiment.image_shape)
    sampling.check_control(experiment.config.sampling, masked=False, start_time=float(strength))
    source = _to_model_space(pipeline, images)
    seed = experiment.config.seed if seed is None else seed
    return _run_controlled(
        pipeline,
        experiment,
        dict(start_time=float(strength), resample_steps=1, jump_length=1),
        seed,
        source=source,
        noise=_noise(seed, source.shape),
        labels=_edit_labels(experiment, len(images)),
    )


def noised_inputs(pipeline, images: np.ndarray, strength: float, seed: int | None = None):
    """What `edit` starts from, as uint8 pictures: the images noised to time `strength`.

    Scaled by 1 / sqrt(alpha^2 + std^2) so the noise shows as grey levels (as
    trajectory frames are); decoded for a latent run.
    """
    seed = pipeline.config.seed if seed is None else seed
    source = _to_model_space(pipeline, images)
    t = jnp.float32(strength)
    sde = pipeline.sde
    alpha, std = sde.mean_coeff(t), sde.marginal_std(t)
    noised = (alpha * source + std * _noise(seed, source.shape)) / jnp.sqrt(alpha**2 + std**2)
    if pipeline.autoencoder is not None:
        return pipeline.decode(np.asarray(noised))
    return np.asarray(batches.to_uint8(noised, pipeline.config.data.centered))


def _interpolation_experiment(pipeline, prompt, steps, guidance_scale) -> Experiment:
    """The run's experiment with the deterministic `edm` (no churn) that interpolation uses."""
    experiment = pipeline.sampling_experiment(None, _prompt(prompt), "edm", steps, guidance_scale)
    if experiment.config.sampling.s_churn == 0:
        return experiment
    config = experiment.config.copy_and_resolve_references()
    config.sampling.s_churn = 0.0
    return create_experiment(config)


def slerp(a: np.ndarray, b: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Spherical interpolation of each pair a[i], b[i] (flattened) at `fractions` in [0, 1].

    Returns (N, len(fractions), ...). Noise vectors of high dimension are
    nearly orthogonal and of one norm; the straight line between them passes
    through vectors of smaller norm, which the model never saw.
    """
    a64, b64 = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    cos = np.sum(a64 * b64, 1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))
    theta = np.arccos(np.clip(cos, -1.0, 1.0))[:, None, None]
    f = np.asarray(fractions, np.float64)[None, :, None]
    small = theta < 1e-6  # Parallel vectors: the straight line is the arc.
    sin = np.where(small, 1.0, np.sin(theta))
    wa = np.where(small, 1.0 - f, np.sin((1.0 - f) * theta) / sin)
    wb = np.where(small, f, np.sin(f * theta) / sin)
    out = wa * a64[:, None] + wb * b64[:, None]
    return out.reshape(len(a), len(f[0, :, 0]), *a.shape[1:]).astype(np.float32)


def interpolate(
    pipeline,
    a: np.ndarray,
    b: np.ndarray,
    num: int = 8,
    prompt: Prompt = None,
    steps: int | None = None,
    guidance_scale: float | None = None,
) -> np.ndarray:
    """`Pipeline.interpolate`: images between a[i] and b[i] through their ODE noises; see there."""
    if num < 2:
        raise UserError(f"interpolation needs num >= 2 images per pair, got {num}")
    experiment = _interpolation_experiment(pipeline, prompt, steps, guidance_scale)
    a = inputs.check_images(a, experiment.image_shape, "a")
    b = inputs.check_images(b, experiment.image_shape, "b")
    if len(a) != len(b):
        raise UserError(f"interpolate needs as many images in a as in b, got {len(a)} and {len(b)}")
    labels = _edit_labels(experiment, 2 * len(a))
    noise = encode_to_noise(pipeline, experiment, np.concatenate([a, b]), labels)
    path = slerp(noise[: len(a)], noise[len(a) :], np.linspace(0.0, 1.0, num))
    frames = path.reshape(-1, *path.shape[2:])
    frame_labels = None if labels is None else np.repeat(labels[: len(a)], num)
    statics = dict(start_time=1.0, resample_steps=1, jump_length=1)
    out = _run_controlled(pipeline, experiment, statics, 0, noise=frames, labels=frame_labels)
    return out.reshape(len(a), num, *out.shape[1:])


def encode_to_noise(
    pipeline, experiment: Experiment, images: np.ndarray, labels: np.ndarray | None
) -> np.ndarray:
    """uint8 images -> the standard normal draws that `edm` (no churn) decodes back to them."""
    s = sampling.with_steps(experiment.config.sampling)
    guidance = s.guidance_scale if experiment.prompt_labels else 0.0
    cache_key = ("encode", _program_settings(s), guidance, labels is None)

    def run(params, source, labels):
        score_fn = sampling_score_fn(experiment, params, labels, guidance)
        return sampling.probability_flow_encode(
            score_fn,
            experiment.sde,
            source,
            num_steps=s.num_steps,
            eps=s.eps,
            noise_schedule=s.noise_schedule,
            rho=s.rho,
        )

    program = pipeline.compiled(cache_key, lambda: jit(run))
    source = jnp.asarray(_to_model_space(pipeline, images))
    labels = None if labels is None else jnp.asarray(labels)
    return parallel.to_host(program(pipeline.params, source, labels))


def interpolate_classes(
    pipeline,
    first: str | int,
    second: str | int,
    num: int = 8,
    rows: int = 1,
    steps: int | None = None,
    guidance_scale: float | None = None,
    seed: int | None = None,
) -> np.ndarray:
    """`Pipeline.interpolate_classes`: from one class to another at fixed noise; see there."""
    if num < 2:
        raise UserError(f"interpolation needs num >= 2 images per row, got {num}")
    experiment = _interpolation_experiment(pipeline, f"{first},{second}", steps, guidance_scale)
    classes = experiment.prompt_labels
    if len(classes) != 2:
        raise UserError(f"interpolate_classes needs two classes, got {first!r} and {second!r}")
    k = experiment.num_classes + 1
    fractions = np.linspace(0.0, 1.0, num)[:, None]
    mix = (1.0 - fractions) * np.eye(k)[classes[0]] + fractions * np.eye(k)[classes[1]]
    seed = experiment.config.seed if seed is None else seed
    noise = _noise(seed, (rows, *experiment.data_shape))
    frames = np.repeat(noise, num, axis=0)
    weights = np.tile(mix, (rows, 1)).astype(np.float32)
    statics = dict(start_time=1.0, resample_steps=1, jump_length=1)
    out = _run_controlled(pipeline, experiment, statics, seed, noise=frames, labels=weights)
    return out.reshape(rows, num, *out.shape[1:])
