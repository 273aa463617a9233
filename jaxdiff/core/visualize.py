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
    # One second per grid, the last held for three.
    save_gif(gif, frames, 1000, 3000)
    return png, gif


def save_gif(path: str, frames: list[Image.Image], duration_ms: int, last_ms: int) -> None:
    """Writes a looping GIF atomically: each frame for duration_ms, the last for last_ms."""
    durations = [duration_ms] * (len(frames) - 1) + [last_ms]
    frames[0].save(
        path + ".tmp",
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
    )
    os.replace(path + ".tmp", path)


def trajectory_strip(
    frames: np.ndarray,
    times: np.ndarray,
    row_names: list[str] | None = None,
    pad: int = 2,
) -> np.ndarray:
    """Snapshots of a few samples from noise to image: one row per sample, one column per time.

    Args:
      frames: (F, R, H, W, C) uint8, snapshot f of sample r.
      times: (F,) the diffusion time of each snapshot, written above its column.
      row_names: a name for each row (written on the left), or None.
      pad: pixels between tiles.

    Returns:
      An HWC uint8 image (RGB with the captions).
    """
    num_frames, rows, h, w, c = frames.shape
    tiles = np.swapaxes(frames, 0, 1).reshape(rows * num_frames, h, w, c)
    grid = labeled_grid(tiles, row_names, pad) if row_names else image_grid(tiles, num_frames, pad)
    margin = grid.shape[1] - (num_frames * (w + pad) + pad)
    picture = Image.fromarray(grid[..., 0] if c == 1 else grid).convert("RGB")
    font = _font(max(8, round((w + pad) * 0.33)))
    # -0.00 would be noise: Euler-Maruyama's last step ends a hair below 0.
    captions = [f"{max(float(t), 0.0):.2f}" for t in times]
    measure = ImageDraw.Draw(picture)
    boxes = [measure.textbbox((0, 0), caption, font=font) for caption in captions]
    band = max(bottom - top for _, top, _, bottom in boxes) + 2 * pad + 2
    canvas = Image.new("RGB", (picture.width, picture.height + band))
    canvas.paste(picture, (0, band))
    draw = ImageDraw.Draw(canvas)
    white = (255, 255, 255)
    for column, (caption, (left, top, right, _)) in enumerate(zip(captions, boxes, strict=True)):
        center = margin + pad + column * (w + pad) + w // 2
        draw.text((center - (right - left) // 2 - left, pad - top), caption, fill=white, font=font)
    if margin:
        left, top, _, _ = draw.textbbox((0, 0), "t", font=font)
        draw.text((pad - left, pad - top), "t", fill=white, font=font)
    return np.asarray(canvas)


def _padded(frame: Image.Image, width: int, height: int) -> Image.Image:
    if frame.size == (width, height):
        return frame
    canvas = Image.new("RGB", (width, height))
    canvas.paste(frame, (0, 0))
    return canvas
