"""MNIST, conditional: the seed's net plus cross-attention to the digit, classifier-free guidance.

    python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond
    python main.py --config=configs/mnist_cond.py --workdir=runs/mnist_cond --mode=sample \
        --config.sampling.prompt="3,seven,8" --config.sampling.guidance_scale=2

Measured on 2 CPU cores: (filled in below).
"""

from configs import mnist


def get_config():
    config = mnist.get_config()
    config.model.conditional = True
    # Spatial transformers after the 5x5 and 2x2 encoder levels and the 5x5 decoder level.
    config.model.attention_resolutions = (5, 2)
    config.model.num_heads = 4
    config.training.weight_decay = 0.01
    config.sampling.prompt = "all"
    config.sampling.guidance_scale = 2.0
    return config
