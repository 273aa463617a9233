"""CIFAR-10, unconditional: the residual U-Net with attention at 8x8, VE SDE, flips.

    python main.py --config=configs/cifar10.py --workdir=runs/cifar10

Sized for an accelerator: 8,935,427 parameters. Measured results, speeds
included: docs/results.md, docs/benchmarks_configs.md.
"""

from jaxdiff.configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "cifar10"
    config.data.random_flip = True
    config.data.centered = True  # [-1, 1]: roughly zero-mean, as the EDM scalings assume.
    config.model.name = "unet"
    config.model.channels = (64, 128, 128, 128)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (8,)
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 1000
    config.training.num_steps = 200_000
    config.training.checkpoint_every = 5000
    return config
