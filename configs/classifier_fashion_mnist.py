"""The Fashion-MNIST feature classifier that --mode=eval measures samples with.

    python main.py --config=configs/classifier_fashion_mnist.py \
        --workdir=runs/classifier_fashion_mnist
"""

from jaxdiff.configs import default


def get_config():
    config = default.get_config()
    config.task = "classifier"
    config.data.dataset = "fashion_mnist"
    config.data.random_flip = True
    config.classifier.channels = (16, 32, 64)
    # Several channels per group (the default 32 groups would normalise 16 channels
    # one by one, which measured worse: docs/results.md).
    config.classifier.norm_groups = 8
    config.classifier.random_crop = 2
    config.classifier.num_steps = 5000
    return config
