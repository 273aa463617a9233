"""Image grids and PNG files."""

import math
import os
import re

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
    font = _font(max(8, round(tile * 0.4)))
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


# Grids the progress montage shows at most (the GIF shows every one).
MONTAGE_MAX_GRIDS = 8


def _font(size: int):
    try:  # A scalable font where Pillow has FreeType, else its fixed bitmap font.
        return ImageFont.load_default(size=size)
    except (TypeError, ImportError, OSError):
        return ImageFont.load_default()


def captioned(image: np.ndarray, caption: str) -> Image.Image:
    """An HWC uint8 image with a white caption on a black band above it, as an RGB PIL image."""
    picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert("RGB")
    font = _font(max(10, min(24, picture.width // 12)))
    left, top, right, bottom = ImageDraw.Draw(picture).textbbox((0, 0), caption, font=font)
    band = bottom - top + 8
    canvas = Image.new("RGB", (max(picture.width, right - left + 8), picture.height + band))
    canvas.paste(picture, (0, band))
    ImageDraw.Draw(canvas).text((4 - left, 4 - top), caption, fill=(255, 255, 255), font=font)
    return canvas


def step_grids(samples_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the `step_<step>.png` grids training wrote, in step order."""
    found = []
    for name in os.listdir(samples_dir) if os.path.isdir(samples_dir) else []:
        match = re.fullmatch(r"step_(\d+)\.png", name)
        if match:
            found.append((int(match.group(1)), os.path.join(samples_dir, name)))
    return sorted(found)


def write_progress(samples_dir: str) -> tuple[str, str] | None:
    """How the samples improved during training, from the checkpoints' grids.

    Writes `progress.png` (up to MONTAGE_MAX_GRIDS grids side by side, evenly
    spread from the first checkpoint to the last, each captioned with its step)
    and `progress.gif` (every grid in turn, captioned) into `samples_dir`.

    Returns:
      The two paths, or None when there is no grid yet.
    """
    grids = step_grids(samples_dir)
    if not grids:
        return None
    frames = [captioned(np.asarray(Image.open(path)), f"step {step}") for step, path in grids]
    width = max(f.width for f in frames)
    height = max(f.height for f in frames)
    # Grids may differ in size if the sampling settings changed between runs.
    frames = [_padded(f, width, height) for f in frames]
    shown = np.unique(np.linspace(0, len(frames) - 1, MONTAGE_MAX_GRIDS).round().astype(int))
    pad = 4
    montage = Image.new("RGB", (len(shown) * (width + pad) - pad, height), (64, 64, 64))
    for column, index in enumerate(shown):
        montage.paste(frames[index], (column * (width + pad), 0))
    png = os.path.join(samples_dir, "progress.png")
    gif = os.path.join(samples_dir, "progress.gif")
    save_png(png, np.asarray(montage))
    # One second per grid, the last held for three; loop forever.
    durations = [1000] * (len(frames) - 1) + [3000]
    frames[0].save(
        gif + ".tmp",
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
    )
    os.replace(gif + ".tmp", gif)
    return png, gif


def _padded(frame: Image.Image, width: int, height: int) -> Image.Image:
    if frame.size == (width, height):
        return frame
    canvas = Image.new("RGB", (width, height))
    canvas.paste(frame, (0, 0))
    return canvas
