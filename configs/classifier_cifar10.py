"""The CIFAR-10 feature classifier that --mode=eval measures samples with.

    python main.py --config=configs/classifier_cifar10.py --workdir=runs/classifier_cifar10

Sized for an accelerator (a wider residual CNN, bf16, flips and 4-pixel translations).
"""

from jaxdiff.configs import default


def get_config():
    config = default.get_config()
    config.task = "classifier"
    config.data.dataset = "cifar10"
    config.data.random_flip = True
    config.data.centered = True
    config.classifier.channels = (32, 64, 128, 256)
    config.classifier.num_res_blocks = 2
    config.classifier.random_crop = 4
    config.classifier.label_smoothing = 0.1
    config.classifier.half_precision = True
    config.classifier.batch_size = 512
    config.classifier.num_steps = 3000
    config.classifier.learning_rate = 2e-3
    config.classifier.warmup_steps = 300
    config.classifier.weight_decay = 5e-2
    config.classifier.checkpoint_every = 1000
    return config
