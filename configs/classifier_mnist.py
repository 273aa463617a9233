"""The MNIST feature classifier that --mode=eval measures samples with.

python main.py --config=configs/classifier_mnist.py --workdir=runs/classifier_mnist
"""

from jaxdiff.configs import default


def get_config():
    config = default.get_config()
    config.task = "classifier"
    config.data.dataset = "mnist"
    config.classifier.channels = (16, 32, 64)
    config.classifier.random_crop = 2
    config.classifier.num_steps = 2000
    return config
