"""Image grids and PNG files."""

import math
import os

import numpy as np
from PIL import Image, ImageDraw, ImageFont


def image_grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
    """Tiles (N, H, W, C) uint8 images into one (rows*(H+pad)+pad, ...) image, row-major.

    Args:
      images: uint8 images.
      columns: images per row; ceil(sqrt(N)) if None.
      pad: pixels of black border between tiles.
    """
    n, h, w, c = images.shape
    columns = columns or math.ceil(math.sqrt(n))
    rows = math.ceil(n / columns)
    grid = np.zeros((rows * (h + pad) + pad, columns * (w + pad) + pad, c), np.uint8)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = image
    return grid


def labeled_grid(images: np.ndarray, row_names: list[str], pad: int = 2) -> np.ndarray:
    """A grid with one row per name (len(images) / len(row_names) columns), names on the left."""
    columns = len(images) // len(row_names)
    grid = image_grid(images, columns, pad)
    tile = images.shape[1] + pad
    try:  # A scalable font where Pillow has FreeType, else its fixed bitmap font.
        font = ImageFont.load_default(size=max(8, round(tile * 0.4)))
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    margin = max(measure.textbbox((0, 0), name, font=font)[2] for name in row_names) + 3 * pad
    canvas = Image.new(
        "L" if grid.shape[-1] == 1 else "RGB", (margin + grid.shape[1], grid.shape[0])
    )
    canvas.paste(Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid), (margin, 0))
    draw = ImageDraw.Draw(canvas)
    white = 255 if canvas.mode == "L" else (255, 255, 255)
    for row, name in enumerate(row_names):
        _, top, _, bottom = draw.textbbox((0, 0), name, font=font)
        y = pad + row * tile + (tile - pad - (bottom - top)) // 2 - top
        draw.text((pad, y), name, fill=white, font=font)
    out = np.asarray(canvas)
    return out[..., None] if out.ndim == 2 else out


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an HWC uint8 image (C = 1 or 3) atomically: a reader never sees half a file."""
    tmp = path + ".tmp"
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    os.replace(tmp, path)
