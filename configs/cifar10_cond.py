"""CIFAR-10, conditional: the residual U-Net with spatial transformers at 8x8.

    python main.py --config=configs/cifar10_cond.py --workdir=runs/cifar10_cond

Measured: (filled in below).
"""

from configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.model.conditional = True
    config.model.num_heads = 4
    config.training.weight_decay = 0.01
    config.sampling.prompt = "all"
    config.sampling.guidance_scale = 2.0
    return config
