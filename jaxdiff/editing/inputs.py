"""Inputs of the editing modes (inpaint, edit, interpolate): source images and masks.

Masks are float32 (N, H, W, 1) with 1 = keep (the pixel is known) and 0 = fill
(the sampler generates it). They come from a name (`lower_half`, `center`,
`random_pixels:0.5`, ...) or a PNG; sources come from a split of the run's
dataset or from image files. Every mistake is a one-line `UserError` that names
the config field.
"""

import glob
import os
import re

import ml_collections
import numpy as np
from PIL import Image

from jaxdiff.core.errors import UserError
from jaxdiff.data import datasets

# What `editing.mask` accepts besides a PNG path (documentation and error messages).
MASK_NAMES = (
    "lower_half",
    "upper_half",
    "left_half",
    "right_half",
    "center",
    "random_pixels:<fraction>",
)
_RANDOM_PREFIX = "random_pixels"

# A TFDS split expression of the run's dataset: `test`, `train[:64]`,
# `test[10:20]+train[:5]`, `validation`. Anything else is read as file paths;
# a directory called `test` is reachable as `./test`.
_SPLIT = r"(train|test|validation)(\[[^\]]*\])?"
_SPLIT_RE = re.compile(rf"^{_SPLIT}(\+{_SPLIT})*$")

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# PIL modes by what they hold: converted to L (grayscale) or RGB, alpha dropped.
_GRAY_MODES = {"L", "LA", "La", "1"}
_COLOR_MODES = {"RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _open_image(path: str, what: str) -> Image.Image:
    """The fully decoded image at `path`; a missing, corrupt or non-image file is one line."""
    try:
        with Image.open(path) as image:
            image.load()  # Decodes now: a truncated file fails here, not later.
            return image.copy()
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(f"cannot read image {path!r} ({what}): {_first_line(e)}") from None


def _to_array(image: Image.Image, path: str, what: str) -> np.ndarray:
    """A uint8 (H, W, C) array: C = 1 for grayscale content, 3 for colour; alpha is dropped."""
    mode = image.mode
    if mode.startswith("I;16"):
        # 16-bit grayscale PNG: PIL's convert("L") clips at 255, so scale explicitly.
        return (np.asarray(image, np.uint16) >> 8).astype(np.uint8)[..., None]
    if mode in _GRAY_MODES:
        return np.asarray(image.convert("L"), np.uint8)[..., None]
    if mode in _COLOR_MODES:
        return np.asarray(image.convert("RGB"), np.uint8)
    if mode in ("P", "PA"):
        # A palette holds no channel count: an image whose colours are all grey is
        # grayscale (C = 1), else colour (C = 3).
        rgb = np.asarray(image.convert("RGB"), np.uint8)
        gray = (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()
        return rgb[..., :1] if gray else rgb
    raise UserError(
        f"image {path!r} has PIL mode {mode!r}, which {what} does not read: "
        "save it as 8-bit grayscale or RGB"
    )


def _check_not_trivial(mask: np.ndarray, name: str, hint: str) -> None:
    """A mask that keeps or fills everything is a mistake: nothing would be edited."""
    if mask.all():
        raise UserError(f"{name} keeps every pixel: nothing to inpaint")
    if not mask.any():
        raise UserError(f"{name} removes every pixel: that is plain sampling ({hint})")


def _random_fraction(spec: str) -> float:
    """The p of `random_pixels:p`, checked to lie strictly between 0 and 1."""
    _, sep, text = spec.partition(":")
    try:
        fraction = float(text) if sep else float("nan")
    except ValueError:
        fraction = float("nan")
    if not 0.0 < fraction < 1.0:  # Also false for NaN.
        raise UserError(
            f"editing.mask {spec!r}: random_pixels needs a fraction with 0 < fraction < 1, "
            "e.g. random_pixels:0.5"
        )
    return fraction


def _png_mask(spec: str, height: int, width: int) -> np.ndarray:
    """An (H, W) mask from a PNG: luminance >= 128 keeps the pixel."""
    image = _open_image(os.path.expanduser(spec), "editing.mask")
    if image.mode.startswith("I;16"):
        luminance = np.asarray(image, np.uint16) >> 8
    else:
        # PIL's L is the ITU-R 601 luma of RGB; alpha and palettes are resolved by convert.
        luminance = np.asarray(image.convert("L"), np.uint8)
    if luminance.shape != (height, width):
        raise UserError(
            f"editing.mask {spec!r} is {luminance.shape[0]}x{luminance.shape[1]}; "
            f"this model's images are {height}x{width}"
        )
    return (luminance >= 128).astype(np.float32)


def make_masks(spec: str, num: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """The masks `editing.mask` names, one per image.

    Args:
      spec: a name of MASK_NAMES (the named part is removed) or a PNG path
        (white keeps, black fills; the same mask for every image).
      num: how many masks.
      height: the images' height.
      width: the images' width.
      seed: seeds `random_pixels`, whose images each get their own draw.

    Returns:
      float32 (num, height, width, 1), 1 = keep, 0 = fill.

    Raises:
      UserError: an unknown name, a bad fraction, an unreadable or wrongly sized
        PNG, or a mask that keeps or fills every pixel.
    """
    if num < 1 or height < 1 or width < 1:
        raise ValueError(f"make_masks needs num, height, width >= 1; got {num}, {height}, {width}")
    spec = spec.strip()
    mask = np.ones((num, height, width, 1), np.float32)
    rows = np.arange(height)[:, None]
    cols = np.arange(width)[None, :]
    # The halves are complements (lower_half + upper_half keeps everything once)
    # also for odd sizes: the lower and right halves take the middle row/column.
    holes = {
        "lower_half": rows >= height // 2,
        "upper_half": rows < height // 2,
        "right_half": cols >= width // 2,
        "left_half": cols < width // 2,
        "center": (
            (rows >= height // 4)
            & (rows < height // 4 + height // 2)
            & (cols >= width // 4)
            & (cols < width // 4 + width // 2)
        ),
    }
    if spec in holes:
        mask[:, np.broadcast_to(holes[spec], (height, width))] = 0.0
    elif spec.startswith(_RANDOM_PREFIX):
        fraction = _random_fraction(spec)
        # A permutation removes exactly round(p * H * W) pixels, so the count is exact.
        removed = round(fraction * height * width)
        rng = np.random.default_rng(seed)
        flat = mask.reshape(num, height * width)
        for i in range(num):
            flat[i, rng.permutation(height * width)[:removed]] = 0.0
    elif os.path.isfile(os.path.expanduser(spec)):
        mask[:] = _png_mask(spec, height, width)[..., None]
    else:
        raise UserError(
            f"unknown editing.mask {spec!r}: not a mask name ({', '.join(MASK_NAMES)}) "
            "nor a PNG file"
        )
    _check_not_trivial(mask, f"editing.mask {spec!r}", "use --mode=sample")
    return mask


def latent_mask(mask: np.ndarray, latent_height: int, latent_width: int) -> np.ndarray:
    """The mask on the latent grid: a latent cell keeps only if every pixel it covers keeps.

    Latent cell (i, j) covers pixel rows floor(i*H/lh) .. ceil((i+1)*H/lh) - 1
    (exact blocks when H is a multiple of lh) and likewise columns; a cell that
    touches a pixel to fill is filled, so no generated pixel leaks in as known.

    Args:
      mask: float32 (N, H, W, 1), 1 = keep.
      latent_height: lh, the latent grid's height.
      latent_width: lw, the latent grid's width.

    Returns:
      float32 (N, lh, lw, 1).
    """
    if mask.ndim != 4 or mask.shape[-1] != 1:
        raise ValueError(f"latent_mask takes an (N, H, W, 1) mask; got shape {mask.shape}")
    if latent_height < 1 or latent_width < 1:
        raise ValueError(f"latent sides must be >= 1; got {latent_height}x{latent_width}")

    def pooled(x: np.ndarray, axis: int, cells: int) -> np.ndarray:
        # Min over each cell's span along one axis; the loop is over latent cells (few).
        size = x.shape[axis]
        spans = [(i * size // cells, -(-(i + 1) * size // cells)) for i in range(cells)]
        return np.stack(
            [x.take(range(lo, hi), axis=axis).min(axis=axis) for lo, hi in spans], axis=axis
        )

    mask = np.asarray(mask, np.float32)
    return pooled(pooled(mask, 1, latent_height), 2, latent_width)


def _expand_source(item: str) -> list[str]:
    """The image files one comma-separated item of `editing.source` names."""
    path = os.path.expanduser(item)
    if any(c in item for c in "*?["):
        matches = sorted(p for p in glob.glob(path) if os.path.isfile(p))
        if not matches:
            raise UserError(f"editing.source pattern {item!r} matches no file")
        return matches
    if os.path.isdir(path):
        files = sorted(
            os.path.join(path, name)
            for name in os.listdir(path)
            if name.lower().endswith(_IMAGE_SUFFIXES) and os.path.isfile(os.path.join(path, name))
        )
        if not files:
            raise UserError(f"editing.source directory {item!r} has no .png/.jpg/.jpeg files")
        return files
    if not os.path.isfile(path):
        raise UserError(
            f"editing.source {item!r} is neither a split of the dataset (test[:16], train, ...) "
            "nor an existing file, directory or glob pattern"
        )
    return [path]


def _shape_words(height: int, width: int, channels: int) -> str:
    return f"{height}x{width} with {channels} channel{'' if channels == 1 else 's'}"


def load_sources(
    spec: str, data_config: ml_collections.ConfigDict, image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """The source images `editing.source` names: a split of the dataset, or image files.

    Args:
      spec: a split of the run's dataset (`test[:16]`), or comma-separated PNG/JPEG
        files, directories (their .png/.jpg/.jpeg files, sorted by name) and glob
        patterns (sorted).
      data_config: the run's `data` group, read for a split.
      image_shape: (H, W, C) the model takes; files must match it (no resizing).

    Returns:
      uint8 images (N, H, W, C) and int32 labels (N,), -1 for files.

    Raises:
      UserError: an empty spec, a missing or unreadable file, an image of another
        size or channel count, or a split `datasets.read_split` cannot read.
    """
    spec = spec.strip()
    if _SPLIT_RE.match(spec):
        return datasets.read_split(data_config, spec)
    items = [item.strip() for item in spec.split(",") if item.strip()]
    if not items:
        raise UserError(
            "editing.source is empty: give a split of the dataset (e.g. test[:16]) "
            "or PNG/JPEG files, directories or glob patterns"
        )
    height, width, channels = image_shape
    images = []
    for item in items:
        for path in _expand_source(item):
            image = _to_array(_open_image(path, "editing.source"), path, "editing.source")
            if image.shape != (height, width, channels):
                raise UserError(
                    f"image {path} is {_shape_words(*image.shape)}; this model takes "
                    f"{_shape_words(height, width, channels)} (editing.source)"
                )
            images.append(image)
    return np.stack(images), np.full(len(images), -1, np.int32)


def check_images(
    images: np.ndarray, image_shape: tuple[int, int, int], what: str = "images"
) -> np.ndarray:
    """Source images given through the Python API, as uint8 (N, H, W, C).

    Also accepts one image (H, W, C), and (N, H, W) when C == 1.

    Raises:
      UserError: another dtype than uint8, another shape, no images.
    """
    array = np.asarray(images)
    height, width, channels = image_shape
    accepted = f"uint8 (N, {height}, {width}, {channels}) or ({height}, {width}, {channels})"
    if channels == 1:
        accepted += f" or (N, {height}, {width})"
    if array.dtype != np.uint8:
        raise UserError(
            f"{what} must be {accepted} with values 0..255; got dtype {array.dtype} "
            f"shape {array.shape}"
        )
    if array.shape == tuple(image_shape):
        array = array[None]
    elif channels == 1 and array.ndim == 3 and array.shape[1:] == (height, width):
        array = array[..., None]
    if array.ndim != 4 or array.shape[1:] != tuple(image_shape):
        raise UserError(f"{what} must be {accepted}; got shape {array.shape}")
    if len(array) == 0:
        raise UserError(f"{what} is empty: got shape {array.shape}")
    return array


def check_masks(mask: np.ndarray, num: int, height: int, width: int) -> np.ndarray:
    """A mask given through the Python API, as float32 (num, H, W, 1), 1 = keep.

    Accepts bool, integer or float arrays of 0 and 1 shaped (H, W), (H, W, 1),
    (N, H, W) or (N, H, W, 1); one mask (or N == 1) applies to every image.

    Raises:
      UserError: another shape, N other than 1 or num, values other than 0 and 1,
        or a mask that keeps or fills every pixel.
    """
    array = np.asarray(mask)
    accepted = (
        f"({height}, {width}), ({height}, {width}, 1), (N, {height}, {width}) "
        f"or (N, {height}, {width}, 1)"
    )
    if array.shape in ((height, width), (height, width, 1)):
        array = array.reshape(1, height, width, 1)
    elif array.ndim == 3 and array.shape[1:] == (height, width):
        array = array[..., None]
    if array.ndim != 4 or array.shape[1:] != (height, width, 1):
        raise UserError(f"mask must be shaped {accepted}; got shape {np.shape(mask)}")
    if len(array) not in (1, num):
        raise UserError(
            f"mask holds {len(array)} masks; give one for all images or one per image ({num})"
        )
    if array.dtype.kind not in "biuf":
        raise UserError(f"mask must be a bool, integer or float array; got dtype {array.dtype}")
    if not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))].flat[0].item()
        raise UserError(f"mask values must be 0 (fill) or 1 (keep); got {bad!r}")
    array = np.broadcast_to(array.astype(np.float32), (num, height, width, 1)).copy()
    for i, one in enumerate(array):
        _check_not_trivial(one, f"mask {i}", "use pipeline.sample")
    return array
