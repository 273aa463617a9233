"""Does a flattened optimizer compile faster? cifar10_cond's update and train step, both ways.

    python benchmarks/probes/flat_optimizer.py

AdamW, clipping and the EMA act on every parameter array (300-odd), which is
more than half of the train step's StableHLO. `optax.flatten` runs the same
chain on one concatenated vector. Prints the XLA compile seconds and the
program's StableHLO lines of the update alone and of the whole step, both
ways. (Under `optax.flatten` the decay mask sees one 1-D vector, so no weight
decay is applied: a measurement of compile time, not a drop-in change.)
"""

import os
import sys
import time

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import jaxdiff.configs as configs

from jaxdiff.data import batches
from jaxdiff.experiment import create_experiment
from jaxdiff.training.loop import apply_update
from jaxdiff.training.score import make_train_step
from jaxdiff.training.state import create_optimizer, init_state


def main() -> None:
    config = configs.get_config("cifar10_cond")
    config.training.batch_size = 128
    config.training.half_precision = True
    experiment = create_experiment(config)
    config = experiment.config
    images = jnp.zeros((1024, *experiment.image_shape), jnp.uint8)
    dataset = batches.to_device(images, jnp.zeros((1024,), jnp.int32), experiment.mesh)
    key = jax.random.key(0)
    dummy = (jnp.zeros((1, *experiment.data_shape)), jnp.ones((1,)), jnp.zeros((1,), jnp.int32))
    params = jax.eval_shape(lambda: experiment.model.init(key, *dummy)["params"])
    txs = {
        "per array (jaxdiff's)": create_optimizer(config.training),
        "optax.flatten": optax.flatten(create_optimizer(config.training)),
    }
    for name, tx in txs.items():
        state = jax.eval_shape(lambda tx=tx: init_state(jax.tree.map(jnp.zeros_like, params), tx))

        def update(state, grads, tx=tx):
            return apply_update(state, grads, tx, config.training.ema_decay)

        def step(state, key, tx=tx):
            train_step = make_train_step(
                experiment.model, experiment.sde, tx, config, experiment.mesh
            )
            return train_step(state, key, dataset)

        for part, fn, args in (("update", update, (state, params)), ("step", step, (state, key))):
            lowered = jax.jit(fn).trace(*args).lower()
            start = time.perf_counter()
            lowered.compile()
            seconds = time.perf_counter() - start
            lines = lowered.as_text().count("\n")
            print(f"{name:22s} {part:6s} compile {seconds:5.1f} s  {lines:6d} StableHLO lines")


if __name__ == "__main__":
    main()
