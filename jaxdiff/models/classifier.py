"""The feature classifier: the yardstick network of the sample-quality metrics.

A small residual CNN (GroupNorm, so its state is only parameters and it
trains with the same machinery as the score models). Its penultimate layer,
the global average of the last stage, is the feature space of FID,
precision/recall; its softmax gives the "inception score" and conditional
accuracy of samples.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdiff.models.layers import GroupNorm, group_count


class _Block(nn.Module):
    """Pre-activation residual block: (GN-ReLU-conv) x 2, a 1x1 skip where the shape changes."""

    channels: int
    stride: int
    norm_groups: int
    dtype: jnp.dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        groups = self.norm_groups
        h = nn.relu(GroupNorm(group_count(x.shape[-1], groups), dtype=self.dtype)(x))
        skip = x
        if self.stride != 1 or x.shape[-1] != self.channels:
            # From the normalised input, as pre-activation ResNets do: the raw
            # stream's scale grows with depth.
            skip = nn.Conv(self.channels, (1, 1), self.stride, use_bias=False, dtype=self.dtype)(h)
        h = nn.Conv(self.channels, (3, 3), self.stride, use_bias=False, dtype=self.dtype)(h)
        h = nn.relu(GroupNorm(group_count(self.channels, groups), dtype=self.dtype)(h))
        h = nn.Conv(self.channels, (3, 3), use_bias=False, dtype=self.dtype)(h)
        return skip + h


class Classifier(nn.Module):
    """Stem conv, then per width a stage of residual blocks (stride 2 after the first).

    `__call__` returns (logits, features): features are the penultimate layer
    (GN-ReLU, then the global average), float32, of size `channels[-1]`.
    """

    num_classes: int
    channels: tuple[int, ...] = (32, 64, 128)
    num_res_blocks: int = 1
    # GroupNorm groups (at most). One channel per group is instance norm, which
    # makes the spatial mean of every normalised map the same for every image:
    # the pooled features then carry little, so narrow nets need fewer groups.
    norm_groups: int = 32
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = nn.Conv(self.channels[0], (3, 3), use_bias=False, dtype=self.dtype)(x)
        for level, width in enumerate(self.channels):
            for block in range(self.num_res_blocks):
                stride = 2 if level > 0 and block == 0 else 1
                h = _Block(width, stride, self.norm_groups, self.dtype)(h)
        groups = group_count(h.shape[-1], self.norm_groups)
        h = nn.relu(GroupNorm(groups, dtype=self.dtype)(h))
        features = jnp.mean(h.astype(jnp.float32), axis=(1, 2))
        logits = nn.Dense(self.num_classes)(features)
        return logits, features
