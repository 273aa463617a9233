"""Loss curves: points land where the axes say; metrics.jsonl is read as a killed run leaves it."""

import json

import numpy as np

from jaxdiff.training.loss_curve import (
    BOTTOM,
    CURVE_COLOR,
    LEFT,
    RIGHT,
    TOP,
    loss_curve_image,
    read_losses,
    write_loss_curves,
)


def curve_rows(image):
    """Mean row of the curve's pixels in each plot column that has some (column -> row)."""
    mask = np.all(image == CURVE_COLOR, axis=-1)
    return {c: np.nonzero(mask[:, c])[0].mean() for c in range(image.shape[1]) if mask[:, c].any()}


def test_exponential_decay_is_a_straight_line_on_the_log_axis():
    steps = np.arange(0, 1001, 10)
    losses = 500.0 * 10 ** (-2 * steps / 1000)  # 500 -> 5: two decades
    rows = curve_rows(loss_curve_image(steps, losses, "test"))
    assert min(rows) <= LEFT + 1 and max(rows) >= RIGHT - 1  # spans the plot area
    for column, row in rows.items():
        expected = TOP + (column - LEFT) / (RIGHT - LEFT) * (
            BOTTOM - TOP
        )  # straight, top-left down
        assert abs(row - expected) < 2.0, (column, row, expected)


def test_linear_axis_for_a_narrow_range_puts_the_minimum_at_the_bottom():
    steps = np.arange(0, 101)
    losses = 30.0 + np.abs(steps - 25) / 10  # within a factor of 10: linear; lowest at step 25
    rows = curve_rows(loss_curve_image(steps, losses, "test"))
    lowest_column = max(rows, key=rows.get)
    assert abs(lowest_column - (LEFT + 0.25 * (RIGHT - LEFT))) <= 3
    assert abs(rows[lowest_column] - BOTTOM) < 2.0
    # Linear: the two arms have slopes of equal size (the value changes by 0.1 per step).
    left_slope = (rows[LEFT + 2] - rows[lowest_column - 20]) / (lowest_column - 20 - LEFT - 2)
    right_slope = (rows[RIGHT - 2] - rows[lowest_column + 20]) / (RIGHT - 2 - lowest_column - 20)
    assert abs(abs(left_slope) - abs(right_slope)) < 0.05 * abs(left_slope)


def test_read_losses_skips_torn_lines_test_records_and_nan(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(
        json.dumps({"step": 2, "loss": 9.0})
        + "\n"
        + json.dumps({"step": 4, "loss": float("nan")})
        + "\n"
        + json.dumps({"step": 4, "test_mse": 0.1})
        + "\n"
        + json.dumps({"step": 6, "loss": 7.0})
        + '\n{"step": 8, "lo'
    )
    steps, losses = read_losses(str(path))
    assert steps.tolist() == [2, 6] and losses.tolist() == [9.0, 7.0]


def test_write_loss_curves_draws_each_stage_that_has_logged(tmp_path):
    (tmp_path / "autoencoder").mkdir()
    (tmp_path / "autoencoder" / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 1.0}))
    assert write_loss_curves(str(tmp_path)) == [str(tmp_path / "autoencoder" / "loss.png")]
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 2, "loss": 3.0}))
    assert len(write_loss_curves(str(tmp_path))) == 2
