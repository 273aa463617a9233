"""CIFAR-10, latent diffusion: a VAE to 8x8x4 latents, then a residual U-Net on them.

    python main.py --config=configs/cifar10_latent.py --workdir=runs/cifar10_latent
    python main.py --config=configs/cifar10_latent.py:cond --workdir=runs/cifar10_latent_cond

Sized for an accelerator. Measured results: docs/results.md.
"""

from jaxdiff.configs import default
from jaxdiff.configs.mnist_latent import set_latent


def get_config(variant: str = "uncond"):
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.centered = True
    set_latent(config, variant, autoencoder_channels=(64, 128, 128))
    config.autoencoder.num_steps = 20_000
    config.model.channels = (128, 256)
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 1000
    config.training.num_steps = 100_000
    config.training.checkpoint_every = 5000
    return config
