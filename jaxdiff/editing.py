"""Controllable generation with a trained run: inpainting, image-to-image editing, interpolation.

- Inpainting fills the masked-out pixels: the run's sampler, with the kept
  pixels replaced after every step by the original noised to that step's level
  (Song et al. 2021), optionally resampled (RePaint, Lugmayr et al. 2022).
- Editing (SDEdit, Meng et al. 2022) noises images to time `strength` and runs
  the sampler from there; with a conditional model, toward a prompt.
- Interpolation encodes two images to noise along the probability-flow ODE
  (`samplers.probability_flow_encode`), interpolates the noises spherically
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
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import conditioning, data, edit_inputs, latent, parallel, samplers
from jaxdiff.compiler import jit
from jaxdiff.errors import UserError
from jaxdiff.experiment import Experiment, create_experiment
from jaxdiff.sample import sample_key, sampling_score_fn
from jaxdiff.visualize import labeled_grid, save_png

logger = logging.getLogger("jaxdiff")

Prompt = str | Sequence[str | int] | None

# The modes of this module and what `editing.interpolate` may say.
MODES = ("inpaint", "edit", "interpolate")
INTERPOLATIONS = ("images", "classes")
# Columns of the grids `run` writes (a band of original | input | result rows per GRID_COLUMNS
# images), and how many images they show at most; the .npz holds every one.
GRID_COLUMNS = 16
GRID_MAX_IMAGES = 64
# Grey marks the pixels to fill in the pictures of masked inputs.
HOLE_GREY = 128


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
    return np.asarray(data.to_model_range(images, pipeline.config.data.centered))


def _model_mask(pipeline, masks: np.ndarray) -> np.ndarray:
    if pipeline.autoencoder is None:
        return masks
    height, width, _ = pipeline.experiment.data_shape
    return edit_inputs.latent_mask(masks, height, width)


def _program_settings(sampling_config) -> str:
    """The sampling settings that decide a compiled edit (the labels are an argument)."""
    settings = json.loads(sampling_config.to_json())
    for field in ("prompt", "num_samples", "samples_per_class"):
        settings.pop(field, None)
    return json.dumps(settings, sort_keys=True)


def _controlled_fn(pipeline, experiment: Experiment, statics: dict[str, Any]):
    """Jits (params, autoencoder params, source, mask, noise, labels, key data) -> uint8 images.

    The sampler of `experiment` runs with a `samplers.Control` of the given
    arrays (None where unused) and the static settings in `statics`. Compiled
    once per pipeline and settings.
    """
    config = experiment.config
    cache_key = ("control", _program_settings(config.sampling), json.dumps(statics, sort_keys=True))
    if cache_key in pipeline._sample_fns:
        return pipeline._sample_fns[cache_key]
    sampler = samplers.create_sampler(config.sampling)
    guidance = config.sampling.guidance_scale if statics["guided"] else 0.0
    mesh = experiment.mesh

    def run(params, autoencoder_params, source, mask, noise, labels, key_data):
        like = source if source is not None else noise
        num = like.shape[0]
        sharding = parallel.batch_sharded(mesh) if num % mesh.size == 0 else None
        score_fn = sampling_score_fn(experiment, params, labels, guidance, sharding)
        control = samplers.Control(
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
            return latent.decode(experiment, autoencoder_params, x / pipeline.latent_scale)
        return data.to_uint8(x, config.data.centered)

    pipeline._sample_fns[cache_key] = jit(run)
    return pipeline._sample_fns[cache_key]


def _run_controlled(
    pipeline, experiment, statics, seed, *, source=None, mask=None, noise=None, labels=None
) -> np.ndarray:
    """Runs `_controlled_fn` over the images in calls of `sampling.batch_size`.

    Every call has the same size (the last is padded), so one program serves
    them all; call b draws with `sample_key(seed, b)`.
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
        key_data = np.asarray(jax.random.key_data(sample_key(seed, batch)))
        result = fn(pipeline.params, pipeline.autoencoder_params, *chunk, key_data)
        out.append(parallel.to_host(result)[: min(size, num - start)])
    return np.concatenate(out)


def _noise(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """The standard normal draw an edit starts from, fixed by the seed."""
    return np.asarray(jax.random.normal(jax.random.fold_in(sample_key(seed), 5), shape))


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
    images = edit_inputs.check_images(images, image_shape)
    masks = edit_inputs.check_masks(mask, len(images), *image_shape[:2])
    samplers.check_control(
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
    images = edit_inputs.check_images(images, experiment.image_shape)
    samplers.check_control(experiment.config.sampling, masked=False, start_time=float(strength))
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
    return np.asarray(data.to_uint8(noised, pipeline.config.data.centered))


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
    a = edit_inputs.check_images(a, experiment.image_shape, "a")
    b = edit_inputs.check_images(b, experiment.image_shape, "b")
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
    s = samplers.with_steps(experiment.config.sampling)
    guidance = s.guidance_scale if experiment.prompt_labels else 0.0
    cache_key = ("encode", _program_settings(s), guidance, labels is None)
    if cache_key not in pipeline._sample_fns:

        def run(params, source, labels):
            score_fn = sampling_score_fn(experiment, params, labels, guidance)
            return samplers.probability_flow_encode(
                score_fn,
                experiment.sde,
                source,
                num_steps=s.num_steps,
                eps=s.eps,
                noise_schedule=s.noise_schedule,
                rho=s.rho,
            )

        pipeline._sample_fns[cache_key] = jit(run)
    source = jnp.asarray(_to_model_space(pipeline, images))
    labels = None if labels is None else jnp.asarray(labels)
    return parallel.to_host(pipeline._sample_fns[cache_key](pipeline.params, source, labels))


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


# ---------------------------------------------------------------------------
# --mode=inpaint|edit|interpolate


def _stem(pipeline, mode: str, config: ml_collections.ConfigDict) -> str:
    """edits/<mode>_<step>_<what decides the result>, without an extension."""
    e, s = config.editing, config.sampling
    parts = [mode, f"{pipeline.step:07d}"]
    if mode == "interpolate":
        parts.append(e.interpolate)
    else:
        parts.append(s.sampler)
    if mode == "inpaint":
        # A PNG mask by its name without the extension; a named mask whole
        # (splitext would cut random_pixels:0.25 to random_pixels:0).
        mask = os.path.basename(e.mask.strip())
        if os.path.isfile(os.path.expanduser(e.mask.strip())):
            mask = os.path.splitext(mask)[0]
        parts.append(mask.replace(":", ""))
        if e.resample_steps > 1:
            parts.append(f"r{e.resample_steps}j{e.jump_length}")
    if mode == "edit":
        parts.append(f"s{e.strength:g}")
    if e.prompt.strip():
        classes = e.prompt.replace(" ", "").split(",")
        parts += [f"w{s.guidance_scale:g}", "-".join(classes) if len(classes) <= 4 else "per-image"]
    return os.path.join(pipeline.workdir, "edits", "_".join(parts))


def _band_grid(rows: list[np.ndarray], names: list[str]) -> np.ndarray:
    """Rows of images (each (N, H, W, C)) as bands of GRID_COLUMNS columns, one row per name."""
    count = min(len(rows[0]), GRID_MAX_IMAGES)
    columns = min(count, GRID_COLUMNS)
    images, labels = [], []
    for start in range(0, count, columns):
        for row, name in zip(rows, names, strict=True):
            band = row[start : start + columns]
            pad = np.zeros((columns - len(band), *band.shape[1:]), np.uint8)
            images.append(np.concatenate([band, pad]))
            labels.append(name)
    return labeled_grid(np.concatenate(images), labels)


def _write(stem: str, grid: np.ndarray, **arrays) -> None:
    """Writes <stem>.png and <stem>.npz, each atomically (a file is whole or absent)."""
    os.makedirs(os.path.dirname(stem), exist_ok=True)
    with open(stem + ".npz.tmp", "wb") as f:
        np.savez(f, **arrays)
    os.replace(stem + ".npz.tmp", stem + ".npz")
    save_png(stem + ".png.tmp.png", grid)
    os.replace(stem + ".png.tmp.png", stem + ".png")


def check_editing_config(config: ml_collections.ConfigDict, mode: str) -> None:
    """One line for an editing setting no mode can take, before anything is loaded."""
    e = config.editing
    if mode == "interpolate" and e.interpolate not in INTERPOLATIONS:
        raise UserError(
            f"unknown editing.interpolate {e.interpolate!r}; choose one of "
            f"{', '.join(INTERPOLATIONS)}"
        )
    if mode == "interpolate" and e.num_interpolations < 2:
        raise UserError(f"editing.num_interpolations must be >= 2, got {e.num_interpolations}")


def run(pipeline, mode: str) -> str:
    """`--mode=inpaint|edit|interpolate` with a loaded run: writes `edits/<stem>.png` and `.npz`.

    The grid shows, per band of images, rows original | input (masked, or
    noised to the strength) | result; for interpolation, one row per pair or
    per noise draw. The .npz holds every image. Returns the stem.
    """
    check_editing_config(pipeline.config, mode)
    config, e = pipeline.config, pipeline.config.editing
    height, width, channels = pipeline.experiment.image_shape
    stem = _stem(pipeline, mode, config)
    classes = pipeline.experiment.dataset.class_names
    if e.prompt.strip() and not pipeline.experiment.num_classes:
        raise UserError(
            f"editing.prompt={e.prompt!r} needs a conditional model (model.conditional=True)"
        )
    if mode == "interpolate" and e.interpolate == "classes":
        if not pipeline.experiment.num_classes:
            raise UserError("editing.interpolate=classes needs a conditional model")
        prompted = conditioning.parse_prompt(e.prompt, pipeline.experiment.dataset)
        if len(prompted) != 2:
            raise UserError(
                f"editing.interpolate=classes needs editing.prompt to name two classes, "
                f"got {e.prompt!r}"
            )
        rows = config.sampling.samples_per_class
        frames = interpolate_classes(pipeline, *prompted, e.num_interpolations, rows)
        names = [f"{classes[prompted[0]]} > {classes[prompted[1]]}"] * rows
        grid = labeled_grid(frames.reshape(-1, *frames.shape[2:]), names)
        _write(stem, grid, frames=frames, classes=np.asarray(prompted))
        logger.info("Wrote %s.png and %s.npz", stem, stem)
        return stem

    images, labels = edit_inputs.load_sources(e.source, config.data, (height, width, channels))
    if mode == "inpaint":
        masks = edit_inputs.make_masks(e.mask, len(images), height, width, config.seed)
        result = pipeline.inpaint(
            images, masks, e.prompt, resample_steps=e.resample_steps, jump_length=e.jump_length
        )
        shown = np.where(masks.astype(bool), images, np.uint8(HOLE_GREY)).astype(np.uint8)
        rows, names = [images, shown, result], ["original", "masked", "result"]
        arrays = dict(masks=masks)
    elif mode == "edit":
        result = pipeline.edit(images, e.strength, e.prompt)
        shown = noised_inputs(pipeline, images, e.strength)
        rows, names = [images, shown, result], ["original", f"t = {e.strength:g}", "result"]
        arrays = {}
    else:
        if len(images) % 2:
            raise UserError(
                f"editing.source gives {len(images)} images; interpolation takes them in "
                "pairs (an even number)"
            )
        a, b = images[0::2], images[1::2]
        frames = pipeline.interpolate(a, b, e.num_interpolations, e.prompt)
        strip = np.concatenate([a[:, None], frames, b[:, None]], axis=1)
        grid = labeled_grid(
            strip.reshape(-1, *strip.shape[2:]), [f"pair {i}" for i in range(len(a))]
        )
        _write(stem, grid, originals=images, frames=frames, labels=labels)
        logger.info("Wrote %s.png and %s.npz", stem, stem)
        return stem
    grid = _band_grid(rows, names)
    _write(stem, grid, originals=images, inputs=shown, results=result, labels=labels, **arrays)
    logger.info("Wrote %s.png and %s.npz", stem, stem)
    return stem
