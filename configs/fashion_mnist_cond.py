"""Fashion-MNIST, conditional: the residual U-Net with spatial transformers at 7x7.

    python main.py --config=configs/fashion_mnist_cond.py --workdir=runs/fashion_mnist_cond

Sized for an accelerator: 3,834,209 parameters. Measured on 2 CPU cores, only a
short run (300 steps of batch 64, README "Results"): 9 min 21 s wall, 44-47
images/s, loss 117.4 at step 50 and 27.5 at step 300; in its guided class grid
(probability-flow ODE, 50 steps) every row already has its class's silhouette
(trousers, footwear, tops), blurry.
"""

from jaxdiff.configs import fashion_mnist
from jaxdiff.configs.mnist_cond import set_conditional


def get_config():
    return set_conditional(fashion_mnist.get_config())
