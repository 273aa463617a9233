"""InceptionV3 pool3 features for FID, the network of pytorch-fid's `FIDInceptionV3`.

The architecture is the port of the TF-FID graph that pytorch-fid computes FID with
(its "FID" variants of the InceptionA/C/E blocks), in Flax Linen and NHWC. The weights
are not shipped or downloaded: the user supplies pytorch-fid's
`pt_inception-2015-12-05-6726825d.pth` (needs torch to read) or an `.npz` holding the
same state-dict keys (see `convert_pth_to_npz`).

    variables = load_inception_params("pt_inception.npz")
    features = inception_features(variables, images_uint8)   # (N, 2048) float32
"""

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError

FEATURE_DIM = 2048
# The input side pytorch-fid resizes to; the smallest the network accepts is 75.
DEFAULT_RESIZE = 299
MIN_RESIZE = 75
# Classifier head in the state dict: checked and dropped, the features come before it.
_FC_SHAPES = {"fc.weight": (1008, FEATURE_DIM), "fc.bias": (1008,)}
# Exact float32 convolutions everywhere: TF32 on recent GPUs would move the features
# (and so FID) by more than the rounding of the reference implementation.
_PRECISION = jax.lax.Precision.HIGHEST


class BasicConv2d(nn.Module):
    """Convolution without bias, inference-mode BatchNorm (eps 0.001), ReLU."""

    features: int
    kernel: tuple[int, int]
    stride: int = 1
    padding: tuple[int, int] = (0, 0)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = nn.Conv(
            self.features,
            self.kernel,
            strides=self.stride,
            padding=[(self.padding[0], self.padding[0]), (self.padding[1], self.padding[1])],
            use_bias=False,
            precision=_PRECISION,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_3x3_same(x: jax.Array) -> jax.Array:
    # TF's average pool divides by the number of real (unpadded) inputs in the window.
    return nn.avg_pool(x, (3, 3), (1, 1), ((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3(x: jax.Array, stride: int, pad: int) -> jax.Array:
    return nn.max_pool(x, (3, 3), (stride, stride), ((pad, pad), (pad, pad)))


class FIDInceptionA(nn.Module):
    """Mixed_5b/5c/5d: 1x1, 5x5, double 3x3 and avg-pool branches."""

    pool_features: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(64, (1, 1), name="branch1x1")(x)
        b5 = BasicConv2d(48, (1, 1), name="branch5x5_1")(x)
        b5 = BasicConv2d(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = BasicConv2d(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    """Mixed_6a: grid reduction 35 -> 17."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(384, (3, 3), stride=2, name="branch3x3")(x)
        bd = BasicConv2d(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = BasicConv2d(96, (3, 3), stride=2, name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 branches and an avg-pool branch."""

    channels_7x7: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c7 = self.channels_7x7
        b1 = BasicConv2d(192, (1, 1), name="branch1x1")(x)
        b7 = BasicConv2d(c7, (1, 1), name="branch7x7_1")(x)
        b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = BasicConv2d(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(_avg_pool_3x3_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    """Mixed_7a: grid reduction 17 -> 8."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b3 = BasicConv2d(192, (1, 1), name="branch3x3_1")(x)
        b3 = BasicConv2d(320, (3, 3), stride=2, name="branch3x3_2")(b3)
        b7 = BasicConv2d(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = BasicConv2d(192, (3, 3), stride=2, name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_3x3(x, 2, 0)], axis=-1)


class FIDInceptionE(nn.Module):
    """Mixed_7b (`max_pool=False`, FIDInceptionE_1) and Mixed_7c (`max_pool=True`, _2)."""

    # The TF graph's last block max-pools where the paper average-pools; pytorch-fid keeps it.
    max_pool: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        b1 = BasicConv2d(320, (1, 1), name="branch1x1")(x)
        b3 = BasicConv2d(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3),
            ],
            axis=-1,
        )
        bd = BasicConv2d(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = BasicConv2d(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate(
            [
                BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd),
            ],
            axis=-1,
        )
        pooled = _max_pool_3x3(x, 1, 1) if self.max_pool else _avg_pool_3x3_same(x)
        bp = BasicConv2d(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """InceptionV3 up to the pool3 features: (B, H, W, 3) in [-1, 1] -> (B, 2048)."""

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = BasicConv2d(32, (3, 3), stride=2, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_3x3(x, 2, 0)
        x = BasicConv2d(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_3x3(x, 2, 0)
        x = FIDInceptionA(32, name="Mixed_5b")(x)
        x = FIDInceptionA(64, name="Mixed_5c")(x)
        x = FIDInceptionA(64, name="Mixed_5d")(x)
        x = InceptionB(name="Mixed_6a")(x)
        x = FIDInceptionC(128, name="Mixed_6b")(x)
        x = FIDInceptionC(160, name="Mixed_6c")(x)
        x = FIDInceptionC(160, name="Mixed_6d")(x)
        x = FIDInceptionC(192, name="Mixed_6e")(x)
        x = InceptionD(name="Mixed_7a")(x)
        x = FIDInceptionE(max_pool=False, name="Mixed_7b")(x)
        x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


# --- input pipeline --------------------------------------------------------------------


def _bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) weights of torch's bilinear interpolation with align_corners=False.

    Half-pixel centres, source coordinates below 0 clamped to 0 and no antialiasing when
    shrinking, exactly as `F.interpolate(mode="bilinear", align_corners=False)`.
    """
    scale = in_size / out_size
    source = np.maximum((np.arange(out_size) + 0.5) * scale - 0.5, 0.0)
    lower = np.minimum(np.floor(source).astype(np.int64), in_size - 1)
    upper = np.minimum(lower + 1, in_size - 1)
    frac = source - lower
    matrix = np.zeros((out_size, in_size), dtype=np.float64)
    rows = np.arange(out_size)
    np.add.at(matrix, (rows, lower), 1.0 - frac)
    np.add.at(matrix, (rows, upper), frac)
    return matrix


def resize_bilinear(images: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of (B, H, W, C) float images as torch's align_corners=False does it.

    jax.image.resize antialiases when shrinking, which pytorch-fid's resize does not, so
    the resize is spelled out as one interpolation matrix per axis.
    """
    rows = jnp.asarray(_bilinear_matrix(images.shape[1], size[0]), dtype=images.dtype)
    cols = jnp.asarray(_bilinear_matrix(images.shape[2], size[1]), dtype=images.dtype)
    images = jnp.einsum("oh,bhwc->bowc", rows, images, precision=_PRECISION)
    return jnp.einsum("pw,bowc->bopc", cols, images, precision=_PRECISION)


def preprocess(images_uint8: jax.Array, resize_to: int | tuple[int, int]) -> jax.Array:
    """uint8 (B, H, W, 1 or 3) -> float32 (B, size, size, 3) in [-1, 1], as pytorch-fid."""
    size = _resize_shape(resize_to)
    x = images_uint8.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    x = resize_bilinear(x, size)
    return 2.0 * x - 1.0


def _resize_shape(resize_to: int | Sequence[int]) -> tuple[int, int]:
    size = (resize_to, resize_to) if isinstance(resize_to, int) else tuple(resize_to)
    if len(size) != 2 or min(size) < MIN_RESIZE:
        raise ValueError(f"resize_to must be >= {MIN_RESIZE} (or two such sides); got {resize_to}")
    return size


# --- features --------------------------------------------------------------------------


def _features(variables: Any, images_uint8: jax.Array, resize_to: tuple[int, int]) -> jax.Array:
    return FIDInceptionV3().apply(variables, preprocess(images_uint8, resize_to))


# One compilation per (batch shape, resize): inception_features pads to a fixed batch.
@functools.cache
def _features_jit():
    # Jitted at first use, not at import: `jit` starts JAX's backend.
    return jit(_features, static_argnames="resize_to")


def inception_features(
    variables: Any,
    images_uint8: np.ndarray,
    batch_size: int = 50,
    resize_to: int | tuple[int, int] = DEFAULT_RESIZE,
) -> np.ndarray:
    """The 2048-d pool3 features of pytorch-fid's InceptionV3 for a set of images.

    Args:
      variables: from `load_inception_params`.
      images_uint8: (N, H, W, C) uint8 images, C = 1 (repeated to RGB) or 3.
      batch_size: images per device call; the last batch is padded, so every call has
        one shape and compiles once.
      resize_to: side the images are bilinearly resized to; 299 matches FID as published.

    Returns:
      (N, 2048) float32 features.
    """
    images = np.asarray(images_uint8)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"expected uint8 images (N, H, W, 1 or 3); got {images.dtype} {images.shape}"
        )
    size = _resize_shape(resize_to)
    count = images.shape[0]
    if count == 0:
        return np.zeros((0, FEATURE_DIM), dtype=np.float32)
    batch_size = min(batch_size, count)
    outputs = []
    for start in range(0, count, batch_size):
        batch = images[start : start + batch_size]
        real = batch.shape[0]
        if real < batch_size:
            padding = np.zeros((batch_size - real, *batch.shape[1:]), dtype=np.uint8)
            batch = np.concatenate([batch, padding])
        outputs.append(np.asarray(_features_jit()(variables, batch, resize_to=size))[:real])
    return np.concatenate(outputs).astype(np.float32)


# --- weights ---------------------------------------------------------------------------


@functools.cache
def _variable_shapes() -> Any:
    """Shapes of the Flax variables, traced once without computing anything."""
    return jax.eval_shape(
        lambda: FIDInceptionV3().init(
            jax.random.PRNGKey(0), jnp.zeros((1, MIN_RESIZE, MIN_RESIZE, 3))
        )
    )


def expected_state_dict_shapes() -> dict[str, tuple[int, ...]]:
    """Every key of pytorch-fid's FID Inception state dict and its (torch-layout) shape."""
    shapes = _variable_shapes()
    expected = {}
    for key, (collection, path) in _key_to_flax_path(shapes).items():
        shape = _get(shapes[collection], path).shape
        if path[-1] == "kernel":  # HWIO -> OIHW
            shape = (shape[3], shape[2], shape[0], shape[1])
        expected[key] = tuple(shape)
    expected.update(_FC_SHAPES)
    return expected


# Torch BasicConv2d leaf -> (flax collection, leaf name).
_LEAVES = {
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}


def _key_to_flax_path(variables: Any) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Torch state-dict key -> (collection, path) for every BasicConv2d under `variables`."""
    mapping = {}

    def walk(tree: Any, prefix: tuple[str, ...]) -> None:
        if "conv" in tree and "bn" in tree:
            for (torch_layer, torch_leaf), (collection, leaf) in _LEAVES.items():
                key = ".".join((*prefix, torch_layer, torch_leaf))
                mapping[key] = (collection, (*prefix, torch_layer, leaf))
            return
        for name, child in tree.items():
            walk(child, (*prefix, name))

    walk(variables["params"], ())
    return mapping


def _get(tree: Any, path: tuple[str, ...]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _read_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                return {key: archive[key] for key in archive.files}
        except (OSError, ValueError) as error:
            raise UserError(f"cannot read Inception weights {path}: {error}") from error
    try:
        import torch
    except ImportError:
        raise UserError(
            f"reading {path} needs torch; convert it once where torch is installed: "
            'python -c "import sys, numpy, torch; numpy.savez(sys.argv[2], **{k: v.numpy() '
            "for k, v in torch.load(sys.argv[1], map_location='cpu').items()})\" "
            f"{path.name} {path.stem}.npz"
        ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise UserError(f"cannot read Inception weights {path}: {error}") from error
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise UserError(f"{path} is not a state dict of tensors (pytorch-fid's .pth is one)")
    return {key: value.detach().cpu().numpy() for key, value in state.items()}


def load_inception_params(path: str | Path) -> dict[str, Any]:
    """Flax variables of the FID InceptionV3 from pytorch-fid's weights.

    Args:
      path: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (read with torch) or an
        `.npz` with the same state-dict keys and shapes.

    Returns:
      {"params": ..., "batch_stats": ...} for `inception_features`.

    Raises:
      UserError: the file is missing or unreadable, or a key is missing, unexpected or
        of the wrong shape.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"Inception weights not found: {path}")
    state = _read_state_dict(path)
    # BatchNorm's step counter is training bookkeeping; older torch did not save it.
    state = {k: v for k, v in state.items() if not k.endswith(".num_batches_tracked")}
    expected = expected_state_dict_shapes()
    for key, shape in expected.items():
        if key not in state:
            raise UserError(f"{path}: missing key {key} (expected shape {shape})")
        if tuple(state[key].shape) != shape:
            raise UserError(
                f"{path}: key {key} has shape {tuple(state[key].shape)}, expected {shape}"
            )
    for key in state:
        if key not in expected:
            raise UserError(f"{path}: unexpected key {key}")
    shapes = _variable_shapes()
    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for key, (collection, flax_path) in _key_to_flax_path(shapes).items():
        value = np.asarray(state[key], dtype=np.float32)
        if flax_path[-1] == "kernel":  # OIHW -> HWIO
            value = value.transpose(2, 3, 1, 0)
        node = variables[collection]
        for name in flax_path[:-1]:
            node = node.setdefault(name, {})
        node[flax_path[-1]] = jnp.asarray(value)
    return variables


def convert_pth_to_npz(pth_path: str | Path, npz_path: str | Path) -> None:
    """Writes pytorch-fid's .pth state dict as an .npz that loads without torch.

    Raises:
      UserError: torch is not installed, or the file is missing or unreadable.
    """
    pth_path = Path(pth_path)
    if not pth_path.is_file():
        raise UserError(f"Inception weights not found: {pth_path}")
    state = _read_state_dict(pth_path)
    np.savez(npz_path, **state)
