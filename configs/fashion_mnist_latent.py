"""Fashion-MNIST, latent diffusion: a VAE to 7x7x4 latents, then a residual U-Net on them.

    python main.py --config=configs/fashion_mnist_latent.py --workdir=runs/fashion_mnist_latent
    python main.py --config=configs/fashion_mnist_latent.py:cond --workdir=runs/fmnist_latent_cond

Measured results: docs/results.md.
"""

from jaxdiff.configs import default
from jaxdiff.configs.mnist_latent import set_latent


def get_config(variant: str = "uncond"):
    config = default.get_config()
    config.data.dataset = "fashion_mnist"
    set_latent(config, variant, autoencoder_channels=(16, 32, 64))
    # Sized for a CPU: the full-resolution convolutions dominate the cost.
    config.autoencoder.batch_size = 64
    config.autoencoder.num_steps = 2000
    config.training.learning_rate = 5e-4
    return config
