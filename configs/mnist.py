"""MNIST, unconditional: the seed's score U-Net and VE SDE (sigma = 25), sized for a CPU.

    python main.py --config=configs/mnist.py --workdir=runs/mnist

2,000 steps of batch 128 take about 20 minutes on 2 CPU cores; see README
("Results") for the measured run. On an accelerator, train longer:
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
