"""MNIST, unconditional: the seed's score U-Net and VE SDE (sigma = 25), sized for a CPU.

    python main.py --config=configs/mnist.py --workdir=runs/mnist

Measured on 2 CPU cores (README "Results"): 17 min 21 s for the 2,000 steps of
batch 128, sample grids included; loss 32.4; about half the samples are clearly
recognisable digits. On an accelerator, train longer:
--config.training.num_steps=20000.
"""

from configs import default


def get_config():
    config = default.get_config()
    config.data.dataset = "mnist"
    config.training.num_steps = 2000
    config.training.learning_rate = 2e-3
    config.training.warmup_steps = 100
    config.training.ema_decay = 0.995
    config.training.checkpoint_every = 500
    return config
