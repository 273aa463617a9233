"""Memory levers: gradient accumulation, rematerialisation, and the compiled-call memory summary."""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jaxdiff.configs import mnist, mnist_cond

from jaxdiff.core import compiler, parallel
from jaxdiff.core.errors import UserError
from jaxdiff.data import batches
from jaxdiff.diffusion.losses import dsm_loss, dsm_loss_given_noise, dsm_noise
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.diffusion.sde import VESDE
from jaxdiff.experiment import create_experiment
from jaxdiff.models import create_model
from jaxdiff.training.score import loss_and_grads, make_train_step
from jaxdiff.training.state import init_state

from .conftest import apply_overrides, run_script_on_devices, tiny_cond_overrides, tiny_overrides

BATCH = 8


def tiny_config(conditional: bool = False, **overrides):
    base = (mnist_cond, tiny_cond_overrides()) if conditional else (mnist, tiny_overrides())
    config = apply_overrides(base[0].get_config(), {**base[1], "training.batch_size": BATCH})
    return apply_overrides(config, overrides)


def tiny_batch(num_classes: int):
    x0 = jax.random.uniform(jax.random.key(10), (BATCH, 28, 28, 1))
    labels = jnp.arange(BATCH) % (num_classes + 1) if num_classes else None
    return x0, labels


def max_abs(tree) -> float:
    return max(float(jnp.abs(leaf).max()) for leaf in jax.tree.leaves(tree))


def assert_trees_close(actual, expected, rtol=1e-4):
    """Leaf by leaf, to float32 rounding relative to the largest entry of `expected`."""
    atol = 1e-6 * max_abs(expected)
    for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol, err_msg=jax.tree_util.keystr(path))


# --- the loss, split into its noise and the loss at given noise ----------------------------


def test_dsm_loss_is_bit_identical_to_the_given_noise_form_and_draws_as_before():
    sde = VESDE()
    x0 = jax.random.normal(jax.random.key(0), (6, 4, 4, 2))

    def score_fn(x, t):
        return -x / (1.0 + sde.marginal_std(t)[:, None, None, None] ** 2)

    key = jax.random.key(3)
    t, z = dsm_noise(key, x0, 1e-5)
    # dsm_loss's draws before the split: t and z from the two halves of the key.
    t_key, z_key = jax.random.split(key)
    np.testing.assert_array_equal(t, jax.random.uniform(t_key, (6,), minval=1e-5, maxval=1.0))
    np.testing.assert_array_equal(z, jax.random.normal(z_key, x0.shape))
    loss = dsm_loss(score_fn, sde, x0, key, 1e-5)
    assert loss == dsm_loss_given_noise(score_fn, sde, x0, t, z)
    # ... and that loss is the formula's.
    std = sde.marginal_std(t)[:, None, None, None]
    residual = std * score_fn(x0 + std * z, t) + z
    np.testing.assert_allclose(loss, jnp.mean(jnp.sum(residual**2, axis=(1, 2, 3))), rtol=1e-6)


# --- gradient accumulation -----------------------------------------------------------------


def grads_for(config, params, model, loss_key):
    mesh = parallel.create_mesh()
    x0, labels = tiny_batch(getattr(model, "num_classes", 0))
    fn = jax.jit(
        lambda params, loss_key: loss_and_grads(
            params,
            x0,
            labels,
            loss_key,
            jax.random.key(5),
            model=model,
            sde=VESDE(config.sde.sigma),
            config=config,
            batch_sharding=parallel.batch_sharded(mesh),
        )
    )
    return fn(params, loss_key)


@pytest.mark.slow  # real networks' gradients, ~20 s on 2 cores: not the fast tier's
def test_accumulated_gradient_is_the_big_batch_gradient():
    # The conditional net: its labels are split into the micro-batches too.
    config = tiny_config(conditional=True)
    model = create_model(config.model, (28, 28, 1), num_classes=10)
    x0, labels = tiny_batch(10)
    params = model.init(jax.random.key(1), x0[:1], jnp.ones(1), labels[:1])["params"]
    loss_key = jax.random.key(4)
    loss, grads = grads_for(config, params, model, loss_key)
    config.training.grad_accum_steps = 4
    loss_4, grads_4 = grads_for(config, params, model, loss_key)
    np.testing.assert_allclose(loss_4, loss, rtol=1e-5)
    assert_trees_close(grads_4, grads)
    # The tolerance tells noises apart: other noise (as fresh noise per micro-batch
    # would give) is far outside it.
    other_loss, other_grads = grads_for(config, params, model, jax.random.key(6))
    assert abs(float(other_loss - loss)) > 1e-3 * float(loss)
    with pytest.raises(AssertionError):
        assert_trees_close(other_grads, grads)


@pytest.mark.slow  # real train steps, ~10 s: the full suite's, not the fast tier's
def test_train_step_with_accumulation_gives_the_big_batch_step_and_metrics():
    config = tiny_config()
    experiment = create_experiment(config)
    rng = np.random.default_rng(0)
    dataset = batches.to_device(
        rng.integers(0, 256, (32, 28, 28, 1), dtype=np.uint8),
        rng.integers(0, 10, 32).astype(np.int32),
        experiment.mesh,
    )
    # Plain SGD: the update is -0.1 x the gradient (Adam's first step is sign-like).
    tx = optax.sgd(0.1)
    params = experiment.model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), jnp.ones(1))
    state = init_state(params["params"], tx)
    results = {}
    for k in (1, 4):
        config.training.grad_accum_steps = k
        step = jax.jit(
            make_train_step(experiment.model, experiment.sde, tx, config, experiment.mesh)
        )
        results[k] = step(state, jax.random.key(7), dataset)
    (state_1, metrics_1), (state_4, metrics_4) = results[1], results[4]
    np.testing.assert_allclose(metrics_4["loss"], metrics_1["loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_4["grad_norm"], metrics_1["grad_norm"], rtol=1e-4)
    assert_trees_close(state_4.params, state_1.params)
    # The step moved the parameters by the big batch's gradient, not by 1/k of it.
    update_1 = jax.tree.map(jnp.subtract, state_1.params, state.params)
    update_4 = jax.tree.map(jnp.subtract, state_4.params, state.params)
    np.testing.assert_allclose(optax.tree.norm(update_4), 0.1 * metrics_1["grad_norm"], rtol=1e-3)
    np.testing.assert_allclose(optax.tree.norm(update_4), optax.tree.norm(update_1), rtol=1e-4)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"training.grad_accum_steps": 3}, r"batch_size=8 .*training\.grad_accum_steps=3"),
        ({"training.grad_accum_steps": 0}, r"training\.grad_accum_steps must be positive"),
    ],
)
def test_grad_accum_steps_that_do_not_divide_the_batch_are_refused(overrides, message):
    with pytest.raises(UserError, match=message):
        create_experiment(tiny_config(**overrides))


MICRO_BATCH_SHARDING_SCRIPT = """
import json, re, sys
import jax, jax.numpy as jnp
sys.path.insert(0, ".")
from tests.test_memory import tiny_batch, tiny_config
from jaxdiff.core import parallel
from jaxdiff.models import create_model
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.diffusion.sde import VESDE
from jaxdiff.training.score import loss_and_grads

config = tiny_config()
model = create_model(config.model, (28, 28, 1))
params = model.init(jax.random.key(1), jnp.zeros((1, 28, 28, 1)), jnp.ones(1))["params"]
mesh = parallel.create_mesh()
x0 = jax.device_put(tiny_batch(0)[0], parallel.batch_sharded(mesh))
out = {"devices": jax.device_count()}
for k in (1, 2):
    config.training.grad_accum_steps = k
    fn = jax.jit(lambda params, x0: loss_and_grads(
        params, x0, None, jax.random.key(4), jax.random.key(5), model=model, sde=VESDE(),
        config=config, batch_sharding=parallel.batch_sharded(mesh)))
    compiled = fn.lower(params, x0).compile()
    out[f"loss_{k}"] = float(compiled(params, x0)[0])
    # Collectives that move activations (the gradient's all-reduce is expected).
    out[f"collectives_{k}"] = sorted(set(re.findall(
        r"\\b(all-gather|all-to-all|collective-permute|reduce-scatter)(?:-start)?\\(",
        compiled.as_text())))
print(json.dumps(out))
"""


@pytest.mark.slow  # a subprocess on 4 CPU devices: compiles on 2 cores for ~30 s
def test_micro_batches_stay_on_their_devices():
    """Micro-batch i takes rows i, i + k, ...: every device keeps its block, nothing moves.

    (Contiguous micro-batches, rows i B/k to (i + 1) B/k, compile to an all-gather
    and a collective-permute of the batch here.)
    """
    out = run_script_on_devices(MICRO_BATCH_SHARDING_SCRIPT, 4)
    assert out["devices"] == 4
    assert out["collectives_1"] == out["collectives_2"] == []
    np.testing.assert_allclose(out["loss_2"], out["loss_1"], rtol=1e-5)


# --- rematerialisation ---------------------------------------------------------------------


def primitive_names(jaxpr, names=None) -> set[str]:
    """Every primitive in a jaxpr, sub-jaxprs (jit, scan, remat...) included."""
    names = set() if names is None else names
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else (param,):
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    primitive_names(sub, names)
    return names


REMAT_CASES = {
    # The small U-Net's levels, with spatial transformers at sides 5 and 2.
    "small_unet_cond": (True, {}),
    # Residual blocks with dropout (train is a static argument) and self-attention at side 14.
    "unet": (
        False,
        {
            "model.name": "unet",
            "model.channels": (8, 16),
            "model.num_res_blocks": 1,
            "model.attention_resolutions": (14,),
            "model.dropout": 0.5,
        },
    ),
}


@pytest.mark.slow  # two networks' gradients each, ~15-20 s: the full suite's, not the fast tier's
@pytest.mark.parametrize("case", list(REMAT_CASES))
def test_remat_keeps_parameters_loss_and_gradients(case):
    conditional, overrides = REMAT_CASES[case]
    num_classes = 10 if conditional else 0
    x0, labels = tiny_batch(num_classes)
    results = {}
    for remat in (False, True):
        config = tiny_config(conditional, **overrides, **{"model.remat": remat})
        model = create_model(config.model, (28, 28, 1), num_classes=num_classes)
        params = model.init(
            jax.random.key(1), x0[:1], jnp.ones(1), None if labels is None else labels[:1]
        )
        params = params["params"]

        def loss_fn(params, model=model, config=config):
            score_fn = make_score_fn(
                model,
                params,
                VESDE(),
                config.model,
                train=True,
                dropout_key=jax.random.key(2),
                labels=labels,
            )
            return dsm_loss(score_fn, VESDE(), x0, jax.random.key(3), 1e-5)

        grad_fn = jax.value_and_grad(loss_fn)
        names = primitive_names(jax.make_jaxpr(grad_fn)(params).jaxpr)
        results[remat] = params, jax.jit(grad_fn)(params), names
    (params_off, (loss_off, grads_off), names_off) = results[False]
    (params_on, (loss_on, grads_on), names_on) = results[True]
    # Same names, shapes and even values (init keys follow the names): checkpoints carry over.
    assert jax.tree.structure(params_on) == jax.tree.structure(params_off)
    for a, b in zip(jax.tree.leaves(params_on), jax.tree.leaves(params_off), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(loss_on, loss_off, rtol=1e-5)
    assert_trees_close(grads_on, grads_off)
    # Remat is really there (jax.checkpoint's primitive, "remat2" in jax 0.10), and only when on.
    is_remat = lambda name: "remat" in name or "checkpoint" in name  # noqa: E731
    assert any(map(is_remat, names_on)), sorted(names_on)
    assert not any(map(is_remat, names_off)), sorted(names_off)


# --- memory summary ------------------------------------------------------------------------

MIB = 2**20


def test_memory_summary_reports_the_argument_output_and_donated_bytes():
    x = jnp.ones((512, 512), jnp.float32)  # 1 MiB
    plain = compiler.call_memory_summary(jax.jit(lambda x: x * 2), x, name="double call")
    assert (plain.argument_bytes, plain.output_bytes, plain.alias_bytes) == (MIB, MIB, 0)
    assert plain.total_bytes == 2 * MIB + plain.temp_bytes
    donated = compiler.memory_summary(
        jax.jit(lambda x: x * 2, donate_argnums=0).lower(x).compile(), name="double call"
    )
    assert (donated.argument_bytes, donated.output_bytes, donated.alias_bytes) == (MIB, MIB, MIB)
    assert donated.total_bytes == MIB + donated.temp_bytes
    line = str(donated)
    assert line.startswith("double call: 1.0 MiB per device (arguments 1.0 MiB + outputs 1.0 MiB")
    assert "- donated 1.0 MiB" in line and "\n" not in line
    assert f"of {compiler.format_bytes(donated.capacity_bytes)} {donated.capacity_source}" in line


def test_memory_summary_compares_with_the_device_limit_or_else_host_memory():
    compiled = jax.jit(lambda x: x + 1).lower(jnp.ones((256, 1024), jnp.float32)).compile()

    class Device:
        def __init__(self, stats):
            self.stats = stats

        def memory_stats(self):
            return self.stats

    gpu = compiler.memory_summary(compiled, "f", Device({"bytes_limit": 80 * 2**30}))
    assert (gpu.capacity_bytes, gpu.capacity_source) == (80 * 2**30, "device")
    assert str(gpu).endswith("of 80.00 GiB device memory (0.0%)")
    cpu = compiler.memory_summary(compiled, "f", Device(None))
    host = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert (cpu.capacity_bytes, cpu.capacity_source) == (host, "host")
    assert f"of {compiler.format_bytes(host)} host memory" in str(cpu)


def test_memory_summary_without_an_analysis_says_so():
    class Compiled:
        def memory_analysis(self):
            return None

    summary = compiler.memory_summary(Compiled(), "train call")
    assert summary.total_bytes is None and summary.temp_bytes is None
    assert str(summary).startswith("train call: memory not reported by this backend (")


def test_format_bytes():
    assert [compiler.format_bytes(n) for n in (512, 1536, 3 * MIB, int(1.234 * 2**30))] == [
        "512 B",
        "1.5 KiB",
        "3.0 MiB",
        "1.23 GiB",
    ]


def test_accumulation_shrinks_the_temp_memory_of_the_gradient():
    """The point of accumulation: temp memory of the gradient falls with the micro-batch."""
    config = tiny_config(**{"training.batch_size": 32})
    model = create_model(config.model, (28, 28, 1))
    params = jax.eval_shape(model.init, jax.random.key(1), jnp.zeros((1, 28, 28, 1)), jnp.ones(1))
    mesh = parallel.create_mesh()
    x0 = jax.ShapeDtypeStruct((32, 28, 28, 1), jnp.float32)
    temps = {}
    for k in (1, 4):
        config.training.grad_accum_steps = k
        fn = functools.partial(
            loss_and_grads,
            labels=None,
            loss_key=jax.random.key(0),
            dropout_key=jax.random.key(1),
            model=model,
            sde=VESDE(),
            config=config.copy_and_resolve_references(),
            batch_sharding=parallel.batch_sharded(mesh),
        )
        temps[k] = compiler.call_memory_summary(jax.jit(fn), params["params"], x0).temp_bytes
    assert temps[4] < 0.6 * temps[1], temps
