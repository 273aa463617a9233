"""MNIST, latent diffusion: a VAE to 7x7x4 latents, then a residual U-Net on them.

    python main.py --config=configs/mnist_latent.py --workdir=runs/mnist_latent
    python main.py --config=configs/mnist_latent.py:cond --workdir=runs/mnist_latent_cond

The `:cond` variant makes the latent score model conditional (cross-attention,
classifier-free guidance, a class grid with every digit).

Measured results, including the training recipe's comparison: docs/results.md.
"""

from jaxdiff.configs import default
from jaxdiff.configs.mnist_cond import set_conditional


def get_config(variant: str = "uncond"):
    config = default.get_config()
    config.data.dataset = "mnist"
    set_latent(config, variant, autoencoder_channels=(16, 32, 64))
    # Sized for a CPU: the full-resolution convolutions dominate the cost.
    config.autoencoder.batch_size = 64
    config.autoencoder.num_steps = 2000
    config.training.batch_size = 64
    config.training.num_steps = 4000
    config.training.learning_rate = 1e-3
    config.training.warmup_steps = 200
    config.training.ema_decay = 0.995
    # Log-normal noise levels with min-SNR weighting beat the default recipe on
    # every sampler for these latents, at the same steps (docs/results.md).
    config.training.noise_distribution = "log_normal"
    config.training.loss_weighting = "min_snr"
    return config


def set_latent(config, variant: str, autoencoder_channels):
    """The latent-diffusion fields the three *_latent configs share."""
    if variant not in ("uncond", "cond"):
        raise ValueError(f"unknown variant {variant!r}: use the config file alone or ':cond'")
    config.autoencoder.enabled = True
    config.autoencoder.channels = autoencoder_channels
    # Latents are encoded once, unflipped.
    config.data.random_flip = False
    # 7x7 or 8x8 latents: two levels (7 -> 4, 8 -> 4), attention at the 4x4 level.
    # Small: the point of the latent space is a cheaper score model.
    config.model.name = "unet"
    config.model.channels = (32, 64)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (4,)
    # The latents are scaled to unit variance.
    config.model.sigma_data = 1.0
    if variant == "cond":
        set_conditional(config)
