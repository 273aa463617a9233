"""Fashion-MNIST, unconditional: the residual U-Net with attention at 7x7, VE SDE.

    python main.py --config=configs/fashion_mnist.py --workdir=runs/fashion_mnist

Sized for an accelerator: 2,898,785 parameters. Measured results, speeds
included: docs/results.md, docs/benchmarks_configs.md.
"""

from jaxdiff.configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "fashion_mnist"
    config.data.random_flip = True
    config.model.name = "unet"
    config.model.channels = (32, 64, 128)
    config.model.num_res_blocks = 1
    config.model.attention_resolutions = (7,)
    config.training.learning_rate = 5e-4
    return config
