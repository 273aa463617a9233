"""Low-level operations of the networks, behind plain signatures.

Each computes the function of a flax layer (or of flax's layers in a row) in a
form XLA runs faster on some platform, with derivative rules where
differentiating the plain form would be slow; the docstrings say why, and
docs/performance.md what was measured. `jaxdiff.models` builds its layers on
them and keeps flax's parameters, so checkpoints load either way.

- `conv.py`: the small U-Net's transposed and strided convolutions, and
  nearest-resize-then-conv (2x upsampling as one convolution of the small map);
- `norm.py`: group normalisation, evaluated in one form and differentiated in
  flax's.
"""

from jaxdiff.ops.conv import (
    conv_transpose,
    resize_conv_general_dilated,
    strided_conv,
    strided_conv_general_dilated,
    upsample2x_conv,
    upsample2x_conv_general_dilated,
)
from jaxdiff.ops.norm import group_norm, group_norm_grouped, group_norm_per_channel

__all__ = [
    "conv_transpose",
    "group_norm",
    "group_norm_grouped",
    "group_norm_per_channel",
    "resize_conv_general_dilated",
    "strided_conv",
    "strided_conv_general_dilated",
    "upsample2x_conv",
    "upsample2x_conv_general_dilated",
]
