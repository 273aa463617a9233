"""CIFAR-10, conditional: the residual U-Net with spatial transformers at 8x8.

    python main.py --config=configs/cifar10_cond.py --workdir=runs/cifar10_cond

Sized for an accelerator: 10,332,931 parameters. Measured results (one H100
and the CPU): docs/results.md, docs/benchmarks_configs.md.
"""

from jaxdiff.configs import cifar10
from jaxdiff.configs.mnist_cond import set_conditional


def get_config():
    return set_conditional(cifar10.get_config())
