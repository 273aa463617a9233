"""Writes small versions of every network's parameters and outputs, for the
checkpoint-compatibility test (tests/test_ops.py,
test_checkpoints_written_before_ops_load_and_give_the_same_outputs).

    python tests/data/checkpoint_before_ops/make_checkpoint.py

`checkpoint.npz` was written by this script run on the code of commit 060e78f
(jaxdiff/models as at 2f6d9dc), the last before `jaxdiff.ops`, as README.md
says: GroupNorm's form was then chosen by `per_channel=not train` in the
networks, and the autoencoder ran its residual blocks with train=True. Run on
the current code it writes what that code computes, which is what the test
compares against; rerun it that way only if the networks are meant to change.

For each network: its parameters (drawn by `init`, plus N(0, 0.2^2) noise so
that no zero-initialised layer hides a difference), its input images (both
float32 values exactly representable in float16, and stored as float16 to keep
the file small), and what the code computed from them, in float32.
"""

import json
import math
import os
import pathlib
import subprocess
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

import jaxdiff
from jaxdiff.models import create_autoencoder, create_model
from jaxdiff.models.classifier import Classifier

HERE = pathlib.Path(__file__).resolve().parent
CHECKPOINT = HERE / "checkpoint.npz"
BATCH = 2


def model_config(**overrides) -> ml_collections.ConfigDict:
    """Every field `create_model` reads, spelled out (config defaults may change)."""
    fields = dict(
        name="unet",
        preconditioning="edm",
        sigma_data=0.5,
        channels=(4, 8, 8),
        embed_dim=8,
        fourier_scale=30.0,
        num_res_blocks=1,
        attention_resolutions=(7,),
        num_heads=1,
        dropout=0.1,
        conditional=False,
        context_tokens=2,
        context_dim=8,
        ff_mult=2,
        remat=False,
    )
    return ml_collections.ConfigDict(fields | overrides)


# name: (model config overrides, image shape, classes). Small widths. The small
# U-Nets' 28x28 images reach their 2x2 level (where their convolutions take CPU
# forms) and their first GroupNorm has groups of 2 channels; the residual U-Nets'
# 14x14 images give an exact 2x upsampling (7 -> 14) and an inexact one (4 -> 7),
# and their decoders' 12-channel concatenations groups of 3 channels. The small
# U-Nets go by their former model.name, seed_unet(_resize), which is also their
# name in checkpoint.npz: the current code takes it as an alias, and the code
# that wrote the file knew no other.
SMALL_UNET = dict(name="seed_unet", channels=(8, 8, 8, 8), embed_dim=8)
CONDITIONAL = dict(conditional=True, num_heads=2)
NETWORKS = {
    "seed_unet": (dict(SMALL_UNET, channels=(8, 16, 16, 16)), (28, 28, 1), 0),
    "seed_unet_resize": (dict(SMALL_UNET, name="seed_unet_resize"), (28, 28, 1), 0),
    "seed_unet_cond": (
        dict(SMALL_UNET, attention_resolutions=(5, 2), **CONDITIONAL),
        (28, 28, 1),
        10,
    ),
    "unet": (dict(), (14, 14, 3), 0),
    "unet_cond": (CONDITIONAL, (14, 14, 1), 10),
}
AUTOENCODER_SHAPE = (14, 14, 1)
CLASSIFIER_SHAPE = (14, 14, 1)


def as_float16_values(x: jax.Array) -> jax.Array:
    return x.astype(jnp.float16).astype(jnp.float32)


def build_network(name: str):
    """(model, inputs (x, t, labels or None)) of one of NETWORKS."""
    overrides, image_shape, classes = NETWORKS[name]
    model = create_model(model_config(**overrides), image_shape, num_classes=classes)
    x = as_float16_values(jax.random.normal(jax.random.key(1), (BATCH, *image_shape)))
    t = jnp.asarray([0.3, 0.9])
    labels = jnp.asarray([3, classes], jnp.int32) if classes else None  # a class, the null one
    return model, (x, t, labels)


def build_autoencoder():
    """(model, images) of the autoencoder: groups of 1 channel (4, 8) and of 3 (12)."""
    config = ml_collections.ConfigDict(
        dict(
            channels=(4, 8, 12),
            num_res_blocks=1,
            latent_channels=2,
            variational=True,
            reconstruction_loss="l1",
            kl_weight=1e-6,
        )
    )
    model = create_autoencoder(config, AUTOENCODER_SHAPE)
    x = as_float16_values(jax.random.normal(jax.random.key(2), (BATCH, *AUTOENCODER_SHAPE)))
    return model, x


def build_classifier():
    """(model, images) of the feature classifier: groups of 2 channels (norm_groups=4)."""
    model = Classifier(num_classes=10, channels=(8, 12), norm_groups=4)
    x = as_float16_values(jax.random.normal(jax.random.key(6), (BATCH, *CLASSIFIER_SHAPE)))
    return model, x


def perturbed(params):
    """init's parameters plus noise, as float32 values exactly representable in float16."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(3), len(leaves))
    noisy = [p + 0.2 * jax.random.normal(k, p.shape) for p, k in zip(leaves, keys, strict=True)]
    return jax.tree.unflatten(tree, [as_float16_values(p) for p in noisy])


def manifest(tree) -> list[tuple[str, tuple[int, ...]]]:
    """(path, shape) of each leaf in flattening order, the paths as jax.tree_util.keystr writes."""
    return [
        (jax.tree_util.keystr(path), tuple(leaf.shape))
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    ]


def load(name: str, arrays) -> tuple[list[tuple[str, tuple[int, ...]]], list[np.ndarray]]:
    """The manifest and float32 leaves of `name`'s stored parameters."""
    entries = [(path, tuple(shape)) for path, shape in json.loads(str(arrays[f"{name}/manifest"]))]
    flat = arrays[f"{name}/params"].astype(np.float32)
    sizes = [math.prod(shape) for _, shape in entries]
    chunks = np.split(flat, np.cumsum(sizes)[:-1])
    return entries, [c.reshape(s) for c, (_, s) in zip(chunks, entries, strict=True)]


DROPOUT_KEY = 4


def _grad_dot_params(grads, params) -> jax.Array:
    """One number per parameter: the gradient's component along the parameter itself."""
    pairs = zip(jax.tree.leaves(grads), jax.tree.leaves(params), strict=True)
    return jnp.stack([jnp.vdot(g, p) for g, p in pairs])


def network_outputs(model, params, inputs) -> dict[str, jax.Array]:
    """Outputs (train=False and True), and derivatives as training and the likelihood take them."""
    x, t, labels = inputs
    rngs = {"dropout": jax.random.key(DROPOUT_KEY)}

    def apply(params, x, train):
        return model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)

    cotangent = jax.random.normal(jax.random.key(5), x.shape)
    # A training step's: reverse mode, train=True.
    grads = jax.grad(lambda p, x: jnp.vdot(apply(p, x, True), cotangent), (0, 1))(params, x)
    # The likelihood's: forward mode, train=False.
    _, jvp_x = jax.jvp(lambda x: apply(params, x, False), (x,), (cotangent,))
    return {
        "eval": apply(params, x, False),
        "train": apply(params, x, True),
        "grad_x": grads[1],
        "jvp_x": jvp_x,
        "grad_dot_params": _grad_dot_params(grads[0], params),
    }


def autoencoder_outputs(model, params, x) -> dict[str, jax.Array]:
    """Both halves' outputs, a sampled reconstruction, and its gradients (stage one's training)."""

    def sampled(params, x):
        return model.apply({"params": params}, x, jax.random.key(DROPOUT_KEY))[0]

    cotangent = jax.random.normal(jax.random.key(5), x.shape)
    grads = jax.grad(lambda p, x: jnp.vdot(sampled(p, x), cotangent), (0, 1))(params, x)
    reconstruction, mean, log_var = model.apply({"params": params}, x)
    return {
        "reconstruction": reconstruction,
        "mean": mean,
        "log_var": log_var,
        "sampled_reconstruction": sampled(params, x),
        "grad_x": grads[1],
        "grad_dot_params": _grad_dot_params(grads[0], params),
    }


def classifier_outputs(model, params, x) -> dict[str, jax.Array]:
    """Logits and features, and the logits' gradients (the classifier's training)."""
    cotangent = jax.random.normal(jax.random.key(5), (x.shape[0], model.num_classes))
    loss = lambda p, x: jnp.vdot(model.apply({"params": p}, x)[0], cotangent)  # noqa: E731
    grads = jax.grad(loss, (0, 1))(params, x)
    logits, features = model.apply({"params": params}, x)
    return {
        "logits": logits,
        "features": features,
        "grad_x": grads[1],
        "grad_dot_params": _grad_dot_params(grads[0], params),
    }


OTHERS = {
    "autoencoder": (build_autoencoder, autoencoder_outputs),
    "classifier": (build_classifier, classifier_outputs),
}


def build(name: str):
    """(model, its `init` inputs) of a name of NETWORKS ((x, t, labels)) or OTHERS ((x,))."""
    if name in OTHERS:
        model, x = OTHERS[name][0]()
        return model, (x,)
    return build_network(name)


def compute(name: str, params=None):
    """(params, inputs, outputs) of a name of NETWORKS or OTHERS; params drawn if not given."""
    model, inputs = build(name)
    if params is None:
        params = perturbed(jax.jit(model.init)(jax.random.key(0), *inputs)["params"])
    outputs = OTHERS[name][1] if name in OTHERS else network_outputs
    if name in OTHERS:
        inputs = inputs[0]
    with jax.default_matmul_precision("highest"):
        return params, inputs, jax.jit(lambda p, i: outputs(model, p, i))(params, inputs)


def source() -> str:
    """The commit of the jaxdiff this script imported: $SOURCE_COMMIT, else its git HEAD."""
    if os.environ.get("SOURCE_COMMIT"):
        return os.environ["SOURCE_COMMIT"]
    where = pathlib.Path(jaxdiff.__file__).parent
    git = ["git", "rev-parse", "--short", "HEAD"]
    done = subprocess.run(git, capture_output=True, text=True, cwd=where, check=False)
    return done.stdout.strip() or "an unknown commit"


def main() -> None:
    arrays = {}
    for name in [*NETWORKS, *OTHERS]:
        start = time.perf_counter()
        params, inputs, outputs = compute(name)
        print(f"{name}: {time.perf_counter() - start:.1f} s")
        x = inputs if name in OTHERS else inputs[0]
        arrays[f"{name}/x"] = np.asarray(x, np.float16)
        # One array per network (a zip entry per parameter would double the file).
        arrays[f"{name}/manifest"] = np.asarray(json.dumps(manifest(params)))
        leaves = [np.ravel(leaf) for leaf in jax.tree.leaves(params)]
        arrays[f"{name}/params"] = np.concatenate(leaves).astype(np.float16)
        for key, value in outputs.items():
            arrays[f"{name}/out/{key}"] = np.asarray(value)
    arrays["written_with"] = np.asarray(f"jaxdiff.models of {source()}, jax {jax.__version__}")
    np.savez_compressed(CHECKPOINT, **arrays)


if __name__ == "__main__":
    main()
