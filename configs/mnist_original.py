"""MNIST with the original project's nets: the twin of benchmarks/torch_reference.py.

    python main.py --config=configs/mnist_original.py --workdir=runs/mnist_original
    python main.py --config=configs/mnist_original.py:cond --workdir=runs/mnist_original_cond

`small_unet` with the transposed-convolution decoder and the original project's
parametrisation (network output / std(t), no EDM preconditioning); `:cond`
adds the original's conditioning: one 256-d learned token per class, one
attention head, a feed-forward 3x wide. `benchmarks/run.py` times these
against the same nets in PyTorch. For training quality prefer configs/mnist.py
and configs/mnist_cond.py (the same net with EDM preconditioning; conditional:
four heads, four condition tokens per class).
"""

from jaxdiff.configs import mnist
from jaxdiff.configs.mnist_cond import set_conditional

VARIANTS = ("uncond", "cond")


def get_config(variant: str = "uncond"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}: use the config file alone or ':cond'")
    config = mnist.get_config()
    config.model.name = "small_unet"
    config.model.preconditioning = "none"
    if variant == "cond":
        set_conditional(config)
        config.model.attention_resolutions = (5, 2)
        config.model.num_heads = 1
        config.model.context_tokens = 1
        config.model.ff_mult = 3
    return config
