"""The FID InceptionV3 against an independent numpy forward pass on random weights.

The reference below is written from pytorch-fid's FIDInceptionV3 (NCHW, as torch
computes it) and shares nothing with jaxdiff.models.inception but the state-dict key names:
its own layer table, convolution, BatchNorm, pooling and bilinear resize.
"""

import sys

import numpy as np
import pytest

from jaxdiff.core.errors import UserError
from jaxdiff.models.inception import (
    inception_features,
    load_inception_params,
    preprocess,
    resize_bilinear,
)

# Not 299, to keep the test fast; 107 x 115 is the smallest size at which the last
# blocks still see a 2 x 2 grid, so their padding and pool type change the output.
RESIZE = (107, 115)


# --- the reference network -------------------------------------------------------------


def reference_conv_shapes():
    """name -> (out, in, kh, kw) of every BasicConv2d, from torchvision's InceptionV3."""
    shapes = {}

    def conv(name, cin, cout, kh, kw=None):
        shapes[name] = (cout, cin, kh, kh if kw is None else kw)

    conv("Conv2d_1a_3x3", 3, 32, 3)
    conv("Conv2d_2a_3x3", 32, 32, 3)
    conv("Conv2d_2b_3x3", 32, 64, 3)
    conv("Conv2d_3b_1x1", 64, 80, 1)
    conv("Conv2d_4a_3x3", 80, 192, 3)
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        conv(f"{name}.branch1x1", cin, 64, 1)
        conv(f"{name}.branch5x5_1", cin, 48, 1)
        conv(f"{name}.branch5x5_2", 48, 64, 5)
        conv(f"{name}.branch3x3dbl_1", cin, 64, 1)
        conv(f"{name}.branch3x3dbl_2", 64, 96, 3)
        conv(f"{name}.branch3x3dbl_3", 96, 96, 3)
        conv(f"{name}.branch_pool", cin, pool, 1)
    conv("Mixed_6a.branch3x3", 288, 384, 3)
    conv("Mixed_6a.branch3x3dbl_1", 288, 64, 1)
    conv("Mixed_6a.branch3x3dbl_2", 64, 96, 3)
    conv("Mixed_6a.branch3x3dbl_3", 96, 96, 3)
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        conv(f"{name}.branch1x1", 768, 192, 1)
        conv(f"{name}.branch7x7_1", 768, c7, 1)
        conv(f"{name}.branch7x7_2", c7, c7, 1, 7)
        conv(f"{name}.branch7x7_3", c7, 192, 7, 1)
        conv(f"{name}.branch7x7dbl_1", 768, c7, 1)
        conv(f"{name}.branch7x7dbl_2", c7, c7, 7, 1)
        conv(f"{name}.branch7x7dbl_3", c7, c7, 1, 7)
        conv(f"{name}.branch7x7dbl_4", c7, c7, 7, 1)
        conv(f"{name}.branch7x7dbl_5", c7, 192, 1, 7)
        conv(f"{name}.branch_pool", 768, 192, 1)
    conv("Mixed_7a.branch3x3_1", 768, 192, 1)
    conv("Mixed_7a.branch3x3_2", 192, 320, 3)
    conv("Mixed_7a.branch7x7x3_1", 768, 192, 1)
    conv("Mixed_7a.branch7x7x3_2", 192, 192, 1, 7)
    conv("Mixed_7a.branch7x7x3_3", 192, 192, 7, 1)
    conv("Mixed_7a.branch7x7x3_4", 192, 192, 3)
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        conv(f"{name}.branch1x1", cin, 320, 1)
        conv(f"{name}.branch3x3_1", cin, 384, 1)
        conv(f"{name}.branch3x3_2a", 384, 384, 1, 3)
        conv(f"{name}.branch3x3_2b", 384, 384, 3, 1)
        conv(f"{name}.branch3x3dbl_1", cin, 448, 1)
        conv(f"{name}.branch3x3dbl_2", 448, 384, 3)
        conv(f"{name}.branch3x3dbl_3a", 384, 384, 1, 3)
        conv(f"{name}.branch3x3dbl_3b", 384, 384, 3, 1)
        conv(f"{name}.branch_pool", cin, 192, 1)
    return shapes


def random_state_dict(seed=0):
    """A full FID Inception state dict (numpy, torch layout) that keeps activations O(1)."""
    rng = np.random.default_rng(seed)
    state = {}
    for name, (cout, cin, kh, kw) in reference_conv_shapes().items():
        fan_in = cin * kh * kw
        state[f"{name}.conv.weight"] = rng.normal(0, np.sqrt(2 / fan_in), (cout, cin, kh, kw))
        state[f"{name}.bn.weight"] = rng.uniform(0.8, 1.2, cout)
        state[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout)
        state[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout)
        state[f"{name}.bn.running_var"] = rng.uniform(0.5, 1.5, cout)
    state["fc.weight"] = rng.normal(0, 0.01, (1008, 2048))
    state["fc.bias"] = np.zeros(1008)
    return {key: value.astype(np.float32) for key, value in state.items()}


def np_conv(x, weight, stride=1, pad=(0, 0)):
    """Cross-correlation of NCHW `x` with OIHW `weight`, zero padding, no bias."""
    x = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    kh, kw = weight.shape[2:]
    windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(2, 3))
    windows = windows[:, :, ::stride, ::stride]  # (N, C, Ho, Wo, kh, kw)
    return np.tensordot(windows, weight, axes=([1, 4, 5], [1, 2, 3])).transpose(0, 3, 1, 2)


def np_pool(x, kind, stride, pad):
    """3x3 pooling of NCHW `x`: "max", or "avg" averaging only the unpadded inputs."""
    widths = ((0, 0), (0, 0), (pad, pad), (pad, pad))
    if kind == "max":
        padded = np.pad(x, widths, constant_values=-np.inf)
        windows = np.lib.stride_tricks.sliding_window_view(padded, (3, 3), axis=(2, 3))
        return windows[:, :, ::stride, ::stride].max(axis=(4, 5))
    total = np.lib.stride_tricks.sliding_window_view(np.pad(x, widths), (3, 3), axis=(2, 3))
    ones = np.pad(np.ones(x.shape[2:]), widths[2:])
    count = np.lib.stride_tricks.sliding_window_view(ones, (3, 3))
    return (total.sum(axis=(4, 5)) / count.sum(axis=(2, 3)))[:, :, ::stride, ::stride]


def reference_features(state, x):
    """pool3 features of NCHW float64 input `x` in [-1, 1]."""

    def basic(name, x, stride=1, pad=(0, 0)):
        y = np_conv(x, state[f"{name}.conv.weight"], stride, pad)
        mean, var = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
        gamma, beta = state[f"{name}.bn.weight"], state[f"{name}.bn.bias"]
        scale = gamma / np.sqrt(var + 0.001)
        y = (y - mean[:, None, None]) * scale[:, None, None] + beta[:, None, None]
        return np.maximum(y, 0.0)

    def cat(*parts):
        return np.concatenate(parts, axis=1)

    x = basic("Conv2d_1a_3x3", x, stride=2)
    x = basic("Conv2d_2a_3x3", x)
    x = basic("Conv2d_2b_3x3", x, pad=(1, 1))
    x = np_pool(x, "max", 2, 0)
    x = basic("Conv2d_3b_1x1", x)
    x = basic("Conv2d_4a_3x3", x)
    x = np_pool(x, "max", 2, 0)
    for m in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
        b5 = basic(f"{m}.branch5x5_2", basic(f"{m}.branch5x5_1", x), pad=(2, 2))
        b3 = basic(f"{m}.branch3x3dbl_1", x)
        b3 = basic(f"{m}.branch3x3dbl_2", b3, pad=(1, 1))
        b3 = basic(f"{m}.branch3x3dbl_3", b3, pad=(1, 1))
        bp = basic(f"{m}.branch_pool", np_pool(x, "avg", 1, 1))
        x = cat(basic(f"{m}.branch1x1", x), b5, b3, bp)
    b3 = basic("Mixed_6a.branch3x3", x, stride=2)
    bd = basic("Mixed_6a.branch3x3dbl_1", x)
    bd = basic("Mixed_6a.branch3x3dbl_2", bd, pad=(1, 1))
    bd = basic("Mixed_6a.branch3x3dbl_3", bd, stride=2)
    x = cat(b3, bd, np_pool(x, "max", 2, 0))
    for m in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
        b7 = basic(f"{m}.branch7x7_1", x)
        b7 = basic(f"{m}.branch7x7_2", b7, pad=(0, 3))
        b7 = basic(f"{m}.branch7x7_3", b7, pad=(3, 0))
        bd = basic(f"{m}.branch7x7dbl_1", x)
        bd = basic(f"{m}.branch7x7dbl_2", bd, pad=(3, 0))
        bd = basic(f"{m}.branch7x7dbl_3", bd, pad=(0, 3))
        bd = basic(f"{m}.branch7x7dbl_4", bd, pad=(3, 0))
        bd = basic(f"{m}.branch7x7dbl_5", bd, pad=(0, 3))
        bp = basic(f"{m}.branch_pool", np_pool(x, "avg", 1, 1))
        x = cat(basic(f"{m}.branch1x1", x), b7, bd, bp)
    b3 = basic("Mixed_7a.branch3x3_2", basic("Mixed_7a.branch3x3_1", x), stride=2)
    b7 = basic("Mixed_7a.branch7x7x3_1", x)
    b7 = basic("Mixed_7a.branch7x7x3_2", b7, pad=(0, 3))
    b7 = basic("Mixed_7a.branch7x7x3_3", b7, pad=(3, 0))
    b7 = basic("Mixed_7a.branch7x7x3_4", b7, stride=2)
    x = cat(b3, b7, np_pool(x, "max", 2, 0))
    # FIDInceptionE_1 average-pools (without the padding), FIDInceptionE_2 max-pools.
    for m, pool in (("Mixed_7b", "avg"), ("Mixed_7c", "max")):
        b3 = basic(f"{m}.branch3x3_1", x)
        b3 = cat(
            basic(f"{m}.branch3x3_2a", b3, pad=(0, 1)), basic(f"{m}.branch3x3_2b", b3, pad=(1, 0))
        )
        bd = basic(f"{m}.branch3x3dbl_1", x)
        bd = basic(f"{m}.branch3x3dbl_2", bd, pad=(1, 1))
        bd = cat(
            basic(f"{m}.branch3x3dbl_3a", bd, pad=(0, 1)),
            basic(f"{m}.branch3x3dbl_3b", bd, pad=(1, 0)),
        )
        bp = basic(f"{m}.branch_pool", np_pool(x, pool, 1, 1))
        x = cat(basic(f"{m}.branch1x1", x), b3, bd, bp)
    return x.mean(axis=(2, 3))


def np_resize_bilinear(image, out_h, out_w):
    """torch's F.interpolate(bilinear, align_corners=False) of one HWC image, pixel by pixel."""

    def source(index, in_size, out_size):
        position = (index + 0.5) * in_size / out_size - 0.5
        position = max(position, 0.0)  # torch clamps only below, for align_corners=False
        low = min(int(np.floor(position)), in_size - 1)
        high = low + 1 if low < in_size - 1 else low
        return low, high, position - low

    in_h, in_w = image.shape[:2]
    out = np.zeros((out_h, out_w, image.shape[2]))
    for i in range(out_h):
        y0, y1, fy = source(i, in_h, out_h)
        for j in range(out_w):
            x0, x1, fx = source(j, in_w, out_w)
            top = (1 - fx) * image[y0, x0] + fx * image[y0, x1]
            bottom = (1 - fx) * image[y1, x0] + fx * image[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bottom
    return out


# --- tests -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    state = random_state_dict()
    path = tmp_path_factory.mktemp("inception") / "weights.npz"
    # Newer torch saves BatchNorm step counters; the loader must accept them.
    np.savez(path, **state, **{"Mixed_5b.branch1x1.bn.num_batches_tracked": np.array(0)})
    return state, path


@pytest.mark.slow  # over 8 s on 2 cores: the full suite's, not the fast tier's
def test_features_match_the_numpy_reference(weights):
    state, path = weights
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (3, 40, 50, 3), dtype=np.uint8)
    variables = load_inception_params(path)
    # 3 images in batches of 2: the last batch is padded and must not leak into the result.
    features = inception_features(variables, images, batch_size=2, resize_to=RESIZE)
    assert features.shape == (3, 2048)
    resized = np.stack([np_resize_bilinear(im / 255.0, *RESIZE) for im in images])
    state64 = {key: value.astype(np.float64) for key, value in state.items()}
    expected = reference_features(state64, (2 * resized - 1).transpose(0, 3, 1, 2))
    assert np.abs(expected).max() > 0.1  # the random network has not collapsed
    np.testing.assert_allclose(features, expected, rtol=1e-4, atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize(("in_size", "out_size"), [((20, 30), (75, 45)), ((37, 29), (11, 29))])
def test_resize_is_torch_bilinear_without_antialiasing(in_size, out_size):
    rng = np.random.default_rng(2)
    images = rng.uniform(size=(2, *in_size, 3)).astype(np.float32)
    resized = np.asarray(resize_bilinear(images, out_size))
    expected = np.stack([np_resize_bilinear(im.astype(np.float64), *out_size) for im in images])
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-6)


def test_preprocess_scales_to_unit_range_and_repeats_grayscale():
    rng = np.random.default_rng(3)
    gray = rng.integers(0, 256, (2, 30, 30, 1), dtype=np.uint8)
    x = np.asarray(preprocess(gray, 80))
    np.testing.assert_allclose(x, np.asarray(preprocess(np.repeat(gray, 3, axis=-1), 80)))
    expected = 2 * np_resize_bilinear(gray[0] / 255.0, 80, 80) - 1
    np.testing.assert_allclose(x[0], np.repeat(expected, 3, axis=-1), atol=1e-6)
    corners = np.asarray(preprocess(np.array([[[[0], [255]]]], dtype=np.uint8), 75))
    assert corners.min() == -1.0 and corners.max() == 1.0


def test_missing_key_is_named(weights, tmp_path):
    state, _ = weights
    state = dict(state)
    del state["Mixed_6c.branch7x7dbl_3.bn.running_var"]
    np.savez(tmp_path / "w.npz", **state)
    with pytest.raises(UserError, match=r"missing key Mixed_6c\.branch7x7dbl_3\.bn\.running_var"):
        load_inception_params(tmp_path / "w.npz")


def test_wrong_shape_is_named_with_the_expected_shape(weights, tmp_path):
    state, _ = weights
    state = dict(state)
    state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
    np.savez(tmp_path / "w.npz", **state)
    with pytest.raises(
        UserError, match=r"Mixed_7c\.branch_pool\.conv\.weight.*\(192, 2048, 1, 1\)"
    ):
        load_inception_params(tmp_path / "w.npz")


def test_unexpected_key_is_named(weights, tmp_path):
    state, _ = weights
    np.savez(tmp_path / "w.npz", **state, **{"AuxLogits.fc.weight": np.zeros((1000, 768))})
    with pytest.raises(UserError, match=r"unexpected key AuxLogits\.fc\.weight"):
        load_inception_params(tmp_path / "w.npz")


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="not found"):
        load_inception_params(tmp_path / "pt_inception-2015-12-05-6726825d.pth")


def test_pth_without_torch_says_how_to_convert(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    path.write_bytes(b"not read")
    with pytest.raises(UserError, match=r"needs torch.*numpy\.savez") as error:
        load_inception_params(path)
    assert "\n" not in str(error.value)
