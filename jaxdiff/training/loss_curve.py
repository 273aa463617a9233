"""Loss curves drawn from `metrics.jsonl` as PNGs (Pillow only, no plotting library)."""

import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

from jaxdiff.core.visualize import _font, save_png

WIDTH, HEIGHT = 640, 360
# Plot area inside the canvas: room for tick labels on the left and below, a title above.
LEFT, RIGHT, TOP, BOTTOM = 70, 620, 30, 320
CURVE_COLOR = (0, 90, 200)


def read_losses(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, losses) of the records of a metrics.jsonl that have a finite loss.

    Lines a killed run left half-written, and records without a loss (the
    autoencoder's test metrics), are skipped.
    """
    steps, losses = [], []
    with open(path) as f:
        for line in f:
            try:
                record = json.loads(line)
                step, loss = int(record["step"]), float(record["loss"])
            except (ValueError, KeyError, TypeError):
                continue
            if math.isfinite(loss):
                steps.append(step)
                losses.append(loss)
    return np.asarray(steps), np.asarray(losses)


def plot_coordinates(steps: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """Pixel (x, y) of each point, and whether the y axis is logarithmic.

    Log scale when every loss is positive and they span more than a factor of
    10 (diffusion losses fall steeply at first, then slowly).
    """
    log = bool(losses.min() > 0 and losses.max() / losses.min() > 10)
    values = np.log10(losses) if log else losses
    x_span = max(steps.max() - steps.min(), 1)
    y_span = values.max() - values.min() or 1.0
    x = LEFT + (steps - steps.min()) / x_span * (RIGHT - LEFT)
    y = BOTTOM - (values - values.min()) / y_span * (BOTTOM - TOP)
    return x, y, log


def loss_curve_image(steps: np.ndarray, losses: np.ndarray, title: str) -> np.ndarray:
    """An RGB image of loss against step, with the first, last and extreme values labelled."""
    image = Image.new("RGB", (WIDTH, HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    font = _font(12)
    x, y, log = plot_coordinates(steps, losses)
    black = (0, 0, 0)
    draw.line([(LEFT, TOP), (LEFT, BOTTOM), (RIGHT, BOTTOM)], fill=black)
    for value, row in ((losses.max(), TOP), (losses.min(), BOTTOM)):
        draw.line([(LEFT - 4, row), (LEFT, row)], fill=black)
        draw.text((4, row - 7), f"{value:.4g}", fill=black, font=font)
    for step, column in ((steps.min(), LEFT), (steps.max(), RIGHT)):
        draw.line([(column, BOTTOM), (column, BOTTOM + 4)], fill=black)
        label = f"{step:,}"
        width = draw.textbbox((0, 0), label, font=font)[2]
        draw.text(
            (min(column - width // 2, WIDTH - width - 2), BOTTOM + 8), label, fill=black, font=font
        )
    scale = "log scale" if log else "linear scale"
    text = f"{title}: loss ({scale}), last {losses[-1]:.4g} at step {steps[-1]:,}"
    draw.text((LEFT, 8), text, fill=black, font=font)
    if len(x) == 1:
        draw.ellipse([x[0] - 2, y[0] - 2, x[0] + 2, y[0] + 2], fill=CURVE_COLOR)
    else:
        draw.line(list(zip(x.tolist(), y.tolist(), strict=True)), fill=CURVE_COLOR, width=2)
    return np.asarray(image)


def write_loss_curves(workdir: str, title: str = "score model") -> list[str]:
    """Writes `loss.png` beside each metrics.jsonl of a run (`title`; autoencoder).

    Returns:
      The paths written (none for a run that has not logged yet).
    """
    written = []
    stages = ((workdir, title), (os.path.join(workdir, "autoencoder"), "autoencoder"))
    for directory, title in stages:
        path = os.path.join(directory, "metrics.jsonl")
        if not os.path.exists(path):
            continue
        steps, losses = read_losses(path)
        if len(steps):
            save_png(os.path.join(directory, "loss.png"), loss_curve_image(steps, losses, title))
            written.append(os.path.join(directory, "loss.png"))
    return written
