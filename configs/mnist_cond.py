"""MNIST, conditional: the small U-Net plus cross-attention to the digit, classifier-free guidance.

    python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond
    python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond --mode=sample \
        --config.sampling.prompt="3,seven,8" --config.sampling.guidance_scale=2

The guided 100-sample class grids drawn at each checkpoint take a good share
of a CPU run's time; --config.training.sample_at_checkpoints=False skips them.
Measured results: docs/results.md.
"""

from jaxdiff.configs import mnist


def get_config():
    config = set_conditional(mnist.get_config())
    # Spatial transformers after the 5x5 and 2x2 encoder levels and the 5x5 decoder level.
    config.model.attention_resolutions = (5, 2)
    return config


def set_conditional(config):
    """The fields that make a config conditional (shared by every *_cond and :cond config)."""
    config.model.conditional = True
    config.model.num_heads = 4
    config.training.weight_decay = 0.01  # AdamW's decoupled decay, on kernels only
    config.sampling.prompt = "all"
    config.sampling.guidance_scale = 2.0
    return config
