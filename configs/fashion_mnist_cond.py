"""Fashion-MNIST, conditional: the residual U-Net with spatial transformers at 7x7.

    python main.py --config=configs/fashion_mnist_cond.py --workdir=runs/fashion_mnist_cond

Sized for an accelerator: 3,834,209 parameters. Measured results, speeds
included: docs/results.md, docs/benchmarks_configs.md.
"""

from jaxdiff.configs import fashion_mnist
from jaxdiff.configs.mnist_cond import set_conditional


def get_config():
    return set_conditional(fashion_mnist.get_config())
