"""Fashion-MNIST, conditional: the residual U-Net with spatial transformers at 7x7.

    python main.py --config=configs/fashion_mnist_cond.py --workdir=runs/fashion_mnist_cond

Measured on 2 CPU cores: (filled in below).
"""

from configs import fashion_mnist


def get_config():
    config = fashion_mnist.get_config()
    config.model.conditional = True
    config.model.num_heads = 4
    config.training.weight_decay = 0.01
    config.sampling.prompt = "all"
    config.sampling.guidance_scale = 2.0
    return config
