"""Preconditioning: how a backbone's output F(x, t) becomes a score s(x, t).

A preconditioning wraps any backbone, a function `network(x, t) -> F` shaped
like x, into a `ScoreFn`; the config names it (`model.preconditioning`). The
networks of `jaxdiff.models` know nothing of it, so every backbone works with
every preconditioning, as EDM's `*Precond` wrappers do.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from jaxdiff.core.common import ScoreFn, per_example
from jaxdiff.core.registry import Registry
from jaxdiff.diffusion.sde import SDE

Backbone = Callable[[jax.Array, jax.Array], jax.Array]

# A builder takes (backbone, sde, model_config) and returns the score function.
PRECONDITIONINGS = Registry("model.preconditioning")


@PRECONDITIONINGS.register("none")
def plain(backbone: Backbone, sde: SDE, model_config) -> ScoreFn:
    """The original parametrisation: s = F(x, t) / std(t) (the network predicts -z)."""
    return lambda x, t: backbone(x, t) / per_example(sde.marginal_std(t), x)


@PRECONDITIONINGS.register("edm", fields=("sigma_data",))
def edm(backbone: Backbone, sde: SDE, model_config) -> ScoreFn:
    """Karras et al.'s (2022) preconditioning, written for any SDE.

    Through sigma = std / alpha and x~ = x / alpha: D = c_skip x~ + c_out F(c_in x~, t),
    s = (D - x~) / (sigma^2 alpha), with c_in = 1 / sqrt(sigma^2 + sd^2),
    c_skip = sd^2 / (sigma^2 + sd^2), c_out = sigma sd / sqrt(sigma^2 + sd^2),
    sd = `model_config.sigma_data`. The backbone's input then has unit scale and
    its target is O(1) at every noise level; with F = 0 the score is exactly that
    of N(0, sd^2) data.
    """
    sigma_data = model_config.sigma_data

    def score_fn(x, t):
        alpha = per_example(sde.mean_coeff(t), x)
        sigma = per_example(sde.marginal_std(t), x) / alpha
        total = sigma**2 + sigma_data**2
        x_scaled = x / alpha
        out = backbone(x_scaled * jax.lax.rsqrt(total), t)
        # (D - x~) / sigma^2 with c_skip - 1 = -sigma^2 / total cancelled by hand:
        # subtracting D - x~ directly loses float32 precision at small sigma.
        return (sigma_data * jax.lax.rsqrt(total) * out / sigma - x_scaled / total) / alpha

    return score_fn


def precondition(backbone: Backbone, sde: SDE, model_config) -> ScoreFn:
    """Wraps `backbone` as `model_config.preconditioning` says.

    Raises:
      UserError: an unknown preconditioning, listing the registered ones.
    """
    return PRECONDITIONINGS.get(model_config.preconditioning).build(backbone, sde, model_config)


def make_score_fn(
    model: nn.Module,
    params: Any,
    sde: SDE,
    model_config,
    train: bool = False,
    dropout_key: jax.Array | None = None,
    labels: jax.Array | None = None,
) -> ScoreFn:
    """The score function s(x, t) of a Linen network with its parameters.

    A conditional network is evaluated at the class `labels` (B,); with
    `train`, dropout draws from `dropout_key`.
    """

    def backbone(x, t):
        rngs = {"dropout": dropout_key} if train else None
        return model.apply({"params": params}, x, t, labels, train=train, rngs=rngs)

    return precondition(backbone, sde, model_config)
