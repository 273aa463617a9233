"""Masks and source images of the editing modes: named masks, PNG masks, splits and files."""

import os
import re

import numpy as np
import pytest
from PIL import Image

from jaxdiff.core.errors import UserError
from jaxdiff.core.visualize import save_png
from jaxdiff.data import tfds_reader
from jaxdiff.data.datasets import data_config
from jaxdiff.editing.inputs import (
    MASK_NAMES,
    check_images,
    check_masks,
    latent_mask,
    load_sources,
    make_masks,
)

MNIST = data_config("mnist")


def one_line_error(fn, *args, **kwargs) -> str:
    """The message of the UserError fn raises, checked to be one line."""
    with pytest.raises(UserError) as error:
        fn(*args, **kwargs)
    message = str(error.value)
    assert "\n" not in message and message.strip() == message
    return message


# Named masks


@pytest.mark.parametrize("height, width", [(28, 28), (5, 7)])
def test_halves_remove_the_named_half_and_are_complements(height, width):
    masks = {name: make_masks(name, 3, height, width) for name in MASK_NAMES[:4]}
    for mask in masks.values():
        assert mask.shape == (3, height, width, 1) and mask.dtype == np.float32
        assert set(np.unique(mask)) == {0.0, 1.0}
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    removed = {
        "lower_half": rows >= height // 2,
        "upper_half": rows < height // 2,
        "right_half": cols >= width // 2,
        "left_half": cols < width // 2,
    }
    fill = {name: mask[0, ..., 0] == 0 for name, mask in masks.items()}
    for name, where in removed.items():
        np.testing.assert_array_equal(fill[name], np.broadcast_to(where, (height, width)))
    # Every pixel is removed by exactly one of each pair.
    assert (fill["lower_half"] ^ fill["upper_half"]).all()
    assert (fill["left_half"] ^ fill["right_half"]).all()
    for mask in masks.values():  # The same mask for every image.
        assert (mask == mask[:1]).all()


def test_lower_half_of_mnist_keeps_the_top_14_rows():
    mask = make_masks("lower_half", 2, 28, 28)
    assert (mask[:, :14] == 1).all() and (mask[:, 14:] == 0).all()
    assert mask.sum() == 2 * 14 * 28


def test_center_hole_is_the_middle_half_square():
    mask = make_masks("center", 2, 28, 28)[..., 0]
    assert (mask[:, 7:21, 7:21] == 0).all()
    assert mask.sum() == 2 * (28 * 28 - 14 * 14)
    # Not square: rows 2..5 (8 // 4 .. 8 // 4 + 8 // 2 - 1), columns 3..8.
    mask = make_masks("center", 1, 8, 12)[0, ..., 0]
    holes = np.argwhere(mask == 0)
    assert holes[:, 0].min() == 2 and holes[:, 0].max() == 5
    assert holes[:, 1].min() == 3 and holes[:, 1].max() == 8
    assert len(holes) == 4 * 6


def test_random_pixels_removes_an_exact_reproducible_count_per_image():
    mask = make_masks("random_pixels:0.25", 4, 28, 28, seed=3)
    assert mask.shape == (4, 28, 28, 1) and mask.dtype == np.float32
    np.testing.assert_array_equal((mask == 0).sum(axis=(1, 2, 3)), [196] * 4)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert not (mask[0] == mask[1]).all()  # each image draws its own pixels
    np.testing.assert_array_equal(mask, make_masks("random_pixels:0.25", 4, 28, 28, seed=3))
    assert not (mask == make_masks("random_pixels:0.25", 4, 28, 28, seed=4)).all()
    # The documented draw: one generator, one permutation per image in order.
    rng = np.random.default_rng(3)
    for i in range(4):
        expected = np.ones(28 * 28, np.float32)
        expected[rng.permutation(28 * 28)[:196]] = 0
        np.testing.assert_array_equal(mask[i].ravel(), expected)
    # round(0.3 * 5 * 5) = round(7.5) = 8 (banker's rounding gives 8 too).
    assert (make_masks("random_pixels:0.3", 2, 5, 5) == 0).sum() == 2 * 8


@pytest.mark.parametrize(
    "spec",
    [
        "random_pixels:1.5",
        "random_pixels:x",
        "random_pixels:0",
        "random_pixels",
        "random_pixels:nan",
    ],
)
def test_bad_fraction_is_one_line(spec):
    message = one_line_error(make_masks, spec, 2, 28, 28)
    assert f"editing.mask '{spec}'" in message
    assert "0 < fraction < 1" in message and "random_pixels:0.5" in message


def test_unknown_mask_lists_the_names():
    message = one_line_error(make_masks, "foo", 2, 28, 28)
    assert message == (
        "unknown editing.mask 'foo': not a mask name (lower_half, upper_half, left_half, "
        "right_half, center, random_pixels:<fraction>) nor a PNG file"
    )


def test_a_mask_that_edits_nothing_or_everything_is_an_error(tmp_path):
    # Two pixels at 1% round to no pixel at all.
    message = one_line_error(make_masks, "random_pixels:0.01", 1, 1, 2)
    assert message == "editing.mask 'random_pixels:0.01' keeps every pixel: nothing to inpaint"
    message = one_line_error(make_masks, "random_pixels:0.99", 1, 1, 2)
    assert "removes every pixel: that is plain sampling (use --mode=sample)" in message
    white = str(tmp_path / "white.png")
    save_png(white, np.full((28, 28, 1), 255, np.uint8))
    message = one_line_error(make_masks, white, 2, 28, 28)
    assert message == f"editing.mask '{white}' keeps every pixel: nothing to inpaint"
    black = str(tmp_path / "black.png")
    save_png(black, np.zeros((28, 28, 1), np.uint8))
    message = one_line_error(make_masks, black, 2, 28, 28)
    assert message == (
        f"editing.mask '{black}' removes every pixel: that is plain sampling (use --mode=sample)"
    )


# PNG masks


def test_grayscale_png_mask_round_trips_with_the_128_threshold(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (28, 28, 1), dtype=np.uint8)
    pixels[0, 0], pixels[0, 1] = 127, 128  # The boundary: 127 fills, 128 keeps.
    path = str(tmp_path / "mask.png")
    save_png(path, pixels)
    mask = make_masks(path, 3, 28, 28)
    assert mask.shape == (3, 28, 28, 1) and mask.dtype == np.float32
    np.testing.assert_array_equal(mask, np.broadcast_to(pixels >= 128, (3, 28, 28, 1)))
    assert mask[0, 0, 0, 0] == 0 and mask[0, 0, 1, 0] == 1


def test_colour_png_mask_uses_luminance_and_ignores_alpha(tmp_path):
    pixels = np.zeros((4, 6, 4), np.uint8)
    pixels[0, :] = (255, 0, 0, 255)  # red: luma 76 -> fill
    pixels[1, :] = (0, 255, 0, 255)  # green: luma 150 -> keep
    pixels[2, :] = (255, 255, 255, 0)  # transparent white: alpha dropped -> keep
    pixels[3, :] = (0, 0, 255, 255)  # blue: luma 29 -> fill
    rgba, rgb = str(tmp_path / "rgba.png"), str(tmp_path / "rgb.png")
    Image.fromarray(pixels, "RGBA").save(rgba)
    Image.fromarray(pixels[..., :3], "RGB").save(rgb)
    for path in (rgba, rgb):
        mask = make_masks(path, 1, 4, 6)[0, :, :, 0]
        np.testing.assert_array_equal(mask[:, 0], [0, 1, 1, 0])
        assert (mask == mask[:, :1]).all()


def test_sixteen_bit_png_mask_is_scaled_not_clipped(tmp_path):
    pixels = np.array([[0, 1000, 32767, 32768, 65535]], np.uint16)
    path = str(tmp_path / "deep.png")
    Image.fromarray(pixels).save(path)
    assert Image.open(path).mode.startswith("I;16")
    np.testing.assert_array_equal(make_masks(path, 1, 1, 5)[0, 0, :, 0], [0, 0, 0, 1, 1])


def test_png_mask_of_another_size_names_both_sizes(tmp_path):
    path = str(tmp_path / "big.png")
    save_png(path, np.tile(np.array([0, 255], np.uint8), (32, 16))[..., None])
    message = one_line_error(make_masks, path, 2, 28, 28)
    assert message == f"editing.mask '{path}' is 32x32; this model's images are 28x28"


def test_corrupt_png_mask_is_one_line(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    message = one_line_error(make_masks, str(path), 2, 28, 28)
    assert message.startswith(f"cannot read image '{path}' (editing.mask): ")


# Latent masks


def reference_latent_mask(mask: np.ndarray, lh: int, lw: int) -> np.ndarray:
    """The slow definition: a cell keeps only if every pixel it covers keeps."""
    n, height, width, _ = mask.shape
    out = np.zeros((n, lh, lw, 1), np.float32)
    for b in range(n):
        for i in range(lh):
            r0, r1 = int(np.floor(i * height / lh)), int(np.ceil((i + 1) * height / lh))
            for j in range(lw):
                c0, c1 = int(np.floor(j * width / lw)), int(np.ceil((j + 1) * width / lw))
                keep = all(mask[b, r, c, 0] == 1 for r in range(r0, r1) for c in range(c0, c1))
                out[b, i, j, 0] = 1.0 if keep else 0.0
    return out


@pytest.mark.parametrize(
    "height, width, lh, lw",
    [(28, 28, 7, 7), (32, 32, 8, 8), (28, 28, 14, 4), (28, 28, 8, 8), (10, 7, 3, 5), (3, 4, 5, 6)],
)
def test_latent_mask_matches_the_loop_reference(height, width, lh, lw):
    rng = np.random.default_rng(height * 100 + lh)
    # Sparse holes, so that both kept and filled cells occur.
    mask = (rng.random((3, height, width, 1)) > 0.03).astype(np.float32)
    got = latent_mask(mask, lh, lw)
    assert got.shape == (3, lh, lw, 1) and got.dtype == np.float32
    expected = reference_latent_mask(mask, lh, lw)
    np.testing.assert_array_equal(got, expected)
    for name in ("lower_half", "center", "random_pixels:0.1"):
        named = make_masks(name, 2, height, width)
        np.testing.assert_array_equal(
            latent_mask(named, lh, lw), reference_latent_mask(named, lh, lw)
        )


def test_latent_mask_fills_every_cell_that_touches_a_hole():
    # lower_half of 28 rows removes rows 14..27; 4-row cells: cell 3 (rows 12..15) touches it.
    got = latent_mask(make_masks("lower_half", 1, 28, 28), 7, 7)[0, :, :, 0]
    np.testing.assert_array_equal(got[:, 0], [1, 1, 1, 0, 0, 0, 0])
    # 8 cells over 28 rows: cell 4 covers rows floor(14) .. ceil(17.5) - 1 = 14..17.
    got = latent_mask(make_masks("lower_half", 1, 28, 28), 8, 8)[0, :, :, 0]
    np.testing.assert_array_equal(got[:, 0], [1, 1, 1, 1, 0, 0, 0, 0])
    # Cell 3 covers rows 10..13 only (ceil(14) - 1 = 13): still kept.
    assert (got[3] == 1).all()


# Source images: splits


def test_split_source_equals_load_split():
    data_dir = os.environ["TFDS_DATA_DIR"]
    images, labels = load_sources("test[:5]", data_config("mnist", data_dir=data_dir), (28, 28, 1))
    expected_images, expected_labels = tfds_reader.load_split("mnist", "test[:5]", data_dir)
    assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(images, expected_images)
    np.testing.assert_array_equal(labels, expected_labels)
    assert images.max() > 200  # real digits


def test_split_of_a_missing_dataset_is_load_splits_error(tmp_path):
    message = one_line_error(
        load_sources,
        "test[:5]",
        data_config("mnist", data_dir=str(tmp_path), download=False),
        (28, 28, 1),
    )
    assert "dataset 'mnist' not found" in message


# Source images: files


def gray_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)


def test_png_files_directories_and_globs_round_trip_in_order(tmp_path):
    images = gray_images(4)
    folder = tmp_path / "digits"
    folder.mkdir()
    for name, image in zip(["b.png", "a.png", "c.PNG", "d.png"], images, strict=True):
        save_png(str(folder / name), image)
    (folder / "notes.txt").write_text("not an image")
    (folder / "sub.png").mkdir()  # a directory, not a file: skipped
    # A directory: its images sorted by name (a, b, c.PNG, d).
    got, labels = load_sources(str(folder), MNIST, (28, 28, 1))
    assert got.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(got, images[[1, 0, 2, 3]])
    np.testing.assert_array_equal(labels, [-1, -1, -1, -1])
    # A glob, sorted; then files in the order given, with spaces after commas.
    got, _ = load_sources(str(folder / "[bd].png"), MNIST, (28, 28, 1))
    np.testing.assert_array_equal(got, images[[0, 3]])
    spec = f"{folder / 'd.png'}, {folder / 'a.png'},{folder / 'b*.png'}"
    got, labels = load_sources(spec, MNIST, (28, 28, 1))
    np.testing.assert_array_equal(got, images[[3, 1, 0]])
    assert labels.shape == (3,)


def test_jpeg_files_are_read(tmp_path):
    # A flat grey image survives JPEG exactly enough to compare with a tolerance.
    path = tmp_path / "flat.jpg"
    Image.fromarray(np.full((28, 28), 100, np.uint8), "L").save(path, quality=95)
    got, labels = load_sources(str(tmp_path), MNIST, (28, 28, 1))
    assert got.shape == (1, 28, 28, 1) and labels.tolist() == [-1]
    assert np.abs(got.astype(int) - 100).max() <= 2


def test_colour_modes_are_converted_to_the_models_channels(tmp_path):
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (32, 32, 1), dtype=np.uint8)
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA").save(tmp_path / "rgba.png")
    # A colour palette image: 3 channels.
    palette = Image.fromarray(rgb, "RGB").quantize(colors=16)
    palette.save(tmp_path / "palette.png")
    got, _ = load_sources(
        f"{tmp_path / 'rgb.png'},{tmp_path / 'rgba.png'},{tmp_path / 'palette.png'}",
        data_config("cifar10"),
        (32, 32, 3),
    )
    np.testing.assert_array_equal(got[0], rgb)
    np.testing.assert_array_equal(got[1], rgb)  # alpha dropped, colours untouched
    np.testing.assert_array_equal(got[2], np.asarray(palette.convert("RGB")))

    gray = gray_images(1, seed=2)[0, ..., 0]
    Image.fromarray(np.stack([gray, alpha[:28, :28, 0]], -1), "LA").save(tmp_path / "la.png")
    # A palette whose colours are all grey: 1 channel.
    gray_palette = Image.fromarray(gray, "P")  # index v -> colour (v, v, v)
    gray_palette.putpalette([v for v in range(256) for _ in range(3)])
    gray_palette.save(tmp_path / "gray_palette.png")
    Image.fromarray(gray.astype(np.uint16) * 257).save(tmp_path / "deep.png")  # 16-bit
    got, _ = load_sources(
        ",".join(str(tmp_path / n) for n in ("la.png", "gray_palette.png", "deep.png")),
        MNIST,
        (28, 28, 1),
    )
    assert got.shape == (3, 28, 28, 1)
    for image in got:
        np.testing.assert_array_equal(image[..., 0], gray)


def test_image_of_another_shape_is_one_line_and_not_resized(tmp_path):
    Image.fromarray(np.zeros((32, 32, 3), np.uint8), "RGB").save(tmp_path / "a.png")
    message = one_line_error(load_sources, str(tmp_path / "a.png"), MNIST, (28, 28, 1))
    assert message == (
        f"image {tmp_path / 'a.png'} is 32x32 with 3 channels; "
        "this model takes 28x28 with 1 channel (editing.source)"
    )
    save_png(str(tmp_path / "b.png"), np.zeros((28, 28, 1), np.uint8))
    message = one_line_error(
        load_sources, str(tmp_path / "b.png"), data_config("cifar10"), (32, 32, 3)
    )
    assert "is 28x28 with 1 channel; this model takes 32x32 with 3 channels" in message


def test_missing_paths_and_bad_files_are_one_line(tmp_path):
    message = one_line_error(load_sources, str(tmp_path / "nope.png"), MNIST, (28, 28, 1))
    assert f"editing.source '{tmp_path / 'nope.png'}'" in message
    assert "neither a split" in message and "test[:16]" in message
    message = one_line_error(load_sources, str(tmp_path / "*.png"), MNIST, (28, 28, 1))
    assert message == f"editing.source pattern '{tmp_path / '*.png'}' matches no file"
    message = one_line_error(load_sources, str(tmp_path), MNIST, (28, 28, 1))
    assert message == f"editing.source directory '{tmp_path}' has no .png/.jpg/.jpeg files"
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    message = one_line_error(load_sources, str(broken), MNIST, (28, 28, 1))
    assert message.startswith(f"cannot read image '{broken}' (editing.source): ")
    for spec in ("", " , "):
        message = one_line_error(load_sources, spec, MNIST, (28, 28, 1))
        assert message.startswith("editing.source is empty")


def test_split_expressions_are_told_apart_from_paths(tmp_path, monkeypatch):
    # "test" is a split, "./test" a directory; a bad split reaches load_split's error.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "test").mkdir()
    save_png(str(tmp_path / "test" / "x.png"), gray_images(1)[0])
    got, labels = load_sources("./test", MNIST, (28, 28, 1))
    assert got.shape == (1, 28, 28, 1) and labels.tolist() == [-1]
    message = one_line_error(
        load_sources,
        "validation",
        data_config("mnist", data_dir=os.environ["TFDS_DATA_DIR"]),
        (28, 28, 1),
    )
    assert re.match(r"cannot read 'mnist' split 'validation'", message)


# Python API checks


def test_check_images_accepts_the_documented_shapes():
    images = gray_images(3)
    np.testing.assert_array_equal(check_images(images, (28, 28, 1)), images)
    np.testing.assert_array_equal(check_images(images[0], (28, 28, 1)), images[:1])
    np.testing.assert_array_equal(check_images(images[..., 0], (28, 28, 1)), images)
    colour = np.zeros((2, 32, 32, 3), np.uint8)
    assert check_images(colour[0], (32, 32, 3)).shape == (1, 32, 32, 3)
    assert check_images(colour, (32, 32, 3)).dtype == np.uint8


def test_check_images_rejects_other_dtypes_and_shapes():
    message = one_line_error(check_images, np.zeros((2, 28, 28, 1), np.float32), (28, 28, 1))
    assert message == (
        "images must be uint8 (N, 28, 28, 1) or (28, 28, 1) or (N, 28, 28) with values 0..255; "
        "got dtype float32 shape (2, 28, 28, 1)"
    )
    message = one_line_error(
        check_images, np.zeros((2, 32, 32, 1), np.uint8), (32, 32, 3), what="sources"
    )
    assert message == (
        "sources must be uint8 (N, 32, 32, 3) or (32, 32, 3); got shape (2, 32, 32, 1)"
    )
    # (N, H, W) is only for one-channel models.
    message = one_line_error(check_images, np.zeros((2, 32, 32), np.uint8), (32, 32, 3))
    assert "got shape (2, 32, 32)" in message
    message = one_line_error(check_images, np.zeros((0, 28, 28, 1), np.uint8), (28, 28, 1))
    assert message == "images is empty: got shape (0, 28, 28, 1)"


def test_check_masks_broadcasts_and_converts():
    hole = np.ones((28, 28), bool)
    hole[10:20, 5:9] = False
    expected = np.broadcast_to(hole[None, :, :, None], (4, 28, 28, 1)).astype(np.float32)
    for mask in (hole, hole[..., None], hole[None], hole[None, ..., None]):
        got = check_masks(mask, 4, 28, 28)
        assert got.dtype == np.float32 and got.shape == (4, 28, 28, 1)
        np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(check_masks(hole.astype(np.int64), 4, 28, 28), expected)
    per_image = make_masks("random_pixels:0.5", 3, 28, 28)
    np.testing.assert_array_equal(check_masks(per_image[..., 0], 3, 28, 28), per_image)
    got = check_masks(per_image, 3, 28, 28)
    got[0] = 7  # a copy: the caller's array is untouched
    assert set(np.unique(per_image)) == {0.0, 1.0}


def test_check_masks_rejects_bad_masks():
    good = make_masks("center", 1, 28, 28)
    message = one_line_error(check_masks, np.ones((28, 27), bool), 2, 28, 28)
    assert message == (
        "mask must be shaped (28, 28), (28, 28, 1), (N, 28, 28) or (N, 28, 28, 1); "
        "got shape (28, 27)"
    )
    message = one_line_error(check_masks, np.concatenate([good] * 3), 2, 28, 28)
    assert message == "mask holds 3 masks; give one for all images or one per image (2)"
    message = one_line_error(check_masks, good * 0.5, 2, 28, 28)
    assert message == "mask values must be 0 (fill) or 1 (keep); got 0.5"
    message = one_line_error(check_masks, good.astype(str), 2, 28, 28)
    assert message.startswith("mask must be a bool, integer or float array")
    two = np.concatenate([good, np.ones_like(good)])
    message = one_line_error(check_masks, two, 2, 28, 28)
    assert message == "mask 1 keeps every pixel: nothing to inpaint"
    message = one_line_error(check_masks, np.zeros((28, 28)), 2, 28, 28)
    assert message == "mask 0 removes every pixel: that is plain sampling (use pipeline.sample)"


def test_image_of_an_unsupported_mode_is_one_line(tmp_path):
    # A float image (PIL mode F), in a TIFF that PIL reads whatever its name.
    path = tmp_path / "float.png"
    Image.fromarray(np.zeros((28, 28), np.float32)).save(path, format="TIFF")
    message = one_line_error(load_sources, str(path), MNIST, (28, 28, 1))
    assert message == (
        f"image '{path}' has PIL mode 'F', which editing.source does not read: "
        "save it as 8-bit grayscale or RGB"
    )
