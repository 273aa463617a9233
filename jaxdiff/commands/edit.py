"""`--mode=inpaint|edit|interpolate`: controlled generation from a run, into `edits/`."""

import logging
import os

import ml_collections
import numpy as np

from jaxdiff.core.errors import UserError
from jaxdiff.core.visualize import labeled_grid, save_png
from jaxdiff.diffusion import conditioning
from jaxdiff.editing import inputs
from jaxdiff.editing.controlled import (
    INTERPOLATIONS,
    interpolate_classes,
    noised_inputs,
)

logger = logging.getLogger("jaxdiff")

# Columns of the grids `run` writes (a band of original | input | result rows per GRID_COLUMNS
# images), and how many images they show at most; the .npz holds every one.
GRID_COLUMNS = 16
GRID_MAX_IMAGES = 64
# Grey marks the pixels to fill in the pictures of masked inputs.
HOLE_GREY = 128


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

    images, labels = inputs.load_sources(e.source, config.data, (height, width, channels))
    if mode == "inpaint":
        masks = inputs.make_masks(e.mask, len(images), height, width, config.seed)
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
