"""The former name of configs/mnist_original.py, kept so that command lines and
`get_config("mnist_seed")` that still say it work: the same config.
"""

from jaxdiff.configs.mnist_original import VARIANTS, get_config

__all__ = ["VARIANTS", "get_config"]
