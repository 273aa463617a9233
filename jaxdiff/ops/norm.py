"""Group normalisation as a function, in the two forms XLA runs at different speeds.

`flax.linen.GroupNorm` computes the statistics through a (batch, pixels,
groups, channels per group) view of the map and normalises with
(x - mean) * multiplier + bias per channel. The same function can be computed
by reducing each channel over its pixels first, combining those means into
group statistics, and normalising with one multiply-add per element,
x * multiplier + shift. On the CPU the second form evaluates faster, but
training steps that differentiated it ran slower than with flax's form
(docs/design.md; the figures are in docs/performance.md). So
`group_norm` evaluates the per-channel form and differentiates the grouped
one: sampling, which only evaluates the networks, gets the fast value, and
training, which differentiates them, computes what flax's GroupNorm computes.
"""

import functools

import jax
import jax.numpy as jnp
from jax.custom_derivatives import SymbolicZero


def _check_groups(x: jax.Array, num_groups: int) -> None:
    if x.shape[-1] % num_groups:
        raise ValueError(f"{x.shape[-1]} channels do not split into {num_groups} groups")


def _to_channels(group_values: jax.Array, x: jax.Array) -> jax.Array:
    """(N, groups) -> (N, 1, ..., 1, channels), each group's value on its channels."""
    values = jnp.repeat(group_values, x.shape[-1] // group_values.shape[1], axis=1)
    return values.reshape(x.shape[0], *(1,) * (x.ndim - 2), x.shape[-1])


def group_norm_grouped(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float = 1e-6
) -> jax.Array:
    """Group normalisation of `x` over all axes but the first and last, as flax computes it.

    Statistics in float32 over a (batch, pixels, groups, channels per group)
    view, the variance as E[x^2] - E[x]^2, then (x - mean) * multiplier + bias
    per channel, with multiplier = scale / sqrt(variance + epsilon). `scale`
    and `bias` have one value per channel. Returns float32. This is the form
    `group_norm` differentiates.
    """
    _check_groups(x, num_groups)
    # Both forms are named, so that jaxprs and profiles show which one ran.
    with jax.named_scope("group_norm_grouped"):
        x32 = x.astype(jnp.float32)
        scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
        grouped = x32.reshape(x.shape[0], -1, num_groups, x.shape[-1] // num_groups)
        mean = jnp.mean(grouped, axis=(1, 3))
        mean_of_squares = jnp.mean(jnp.square(grouped), axis=(1, 3))
        inv_std = jax.lax.rsqrt(jnp.maximum(mean_of_squares - mean**2, 0.0) + epsilon)
        multiplier = _to_channels(inv_std, x) * scale
        return (x32 - _to_channels(mean, x)) * multiplier + bias


def group_norm_per_channel(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float = 1e-6
) -> jax.Array:
    """`group_norm_grouped`'s function, computed per channel first.

    Each channel's mean and mean of squares over its pixels, combined into
    group statistics, then one multiply-add per element:
    x * multiplier + (bias - mean * multiplier). This is the form `group_norm`
    evaluates when no derivative is taken.
    """
    _check_groups(x, num_groups)
    pixels = tuple(range(1, x.ndim - 1))

    def group_mean(per_channel: jax.Array) -> jax.Array:
        return per_channel.reshape(x.shape[0], num_groups, -1).mean(-1)

    with jax.named_scope("group_norm_per_channel"):
        x32 = x.astype(jnp.float32)
        scale, bias = scale.astype(jnp.float32), bias.astype(jnp.float32)
        mean = group_mean(jnp.mean(x32, axis=pixels))
        mean_of_squares = group_mean(jnp.mean(jnp.square(x32), axis=pixels))
        inv_std = jax.lax.rsqrt(jnp.maximum(mean_of_squares - mean**2, 0.0) + epsilon)
        multiplier = _to_channels(inv_std, x) * scale
        return x32 * multiplier + (bias - _to_channels(mean, x) * multiplier)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def group_norm(
    x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int, epsilon: float = 1e-6
) -> jax.Array:
    """Group normalisation of `x` over all axes but the first and last, in float32.

    The function `flax.linen.GroupNorm(num_groups, epsilon)` computes, with
    its `scale` and `bias` (one value per channel); returns float32. Evaluated
    as `group_norm_per_channel`; its derivative rule is the derivative of
    `group_norm_grouped`. Under `jax.grad`, `jax.vjp` or `jax.jvp` JAX runs the
    rule, whose value is `group_norm_grouped`'s too, so a differentiated
    computation (a training step, the likelihood's jvp) runs flax's form
    throughout and a plain evaluation (sampling) runs the per-channel form.
    The two forms differ only in rounding.
    """
    return group_norm_per_channel(x, scale, bias, num_groups, epsilon)


def _group_norm_jvp(num_groups, epsilon, primals, tangents):
    # Differentiates only in the arguments with a tangent (a parameter-free
    # jvp, as the likelihood takes, adds no work for `scale` and `bias`).
    live = [i for i, t in enumerate(tangents) if not isinstance(t, SymbolicZero)]

    def grouped(*live_args):
        args = list(primals)
        for i, arg in zip(live, live_args, strict=True):
            args[i] = arg
        return group_norm_grouped(*args, num_groups, epsilon)

    if not live:
        y = grouped()
        return y, jnp.zeros_like(y)
    return jax.jvp(grouped, [primals[i] for i in live], [tangents[i] for i in live])


group_norm.defjvp(_group_norm_jvp, symbolic_zeros=True)
