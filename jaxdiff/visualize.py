"""Image grids and PNG files."""

import math
import os

import numpy as np
from PIL import Image


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


def save_png(path: str, image: np.ndarray) -> None:
    """Writes an HWC uint8 image (C = 1 or 3) atomically: a reader never sees half a file."""
    tmp = path + ".tmp"
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(tmp, format="PNG")
    os.replace(tmp, path)
