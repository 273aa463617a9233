"""Fashion-MNIST, conditional: the residual U-Net with spatial transformers at 7x7.

    python main.py --config=configs/fashion_mnist_cond.py --workdir=runs/fashion_mnist_cond
    python main.py --config=configs/fashion_mnist_cond.py:cpu --workdir=runs/fashion_mnist_cond_cpu

The default is sized for an accelerator (3,834,209 parameters). The `:cpu`
variant is configs/mnist_cond.py's smaller, faster net and recipe on
Fashion-MNIST, with steps sized for 2 CPU cores. Measured results,
speeds included: docs/results.md, docs/benchmarks_configs.md.
"""

from jaxdiff.configs import fashion_mnist, mnist_cond


def get_config(variant: str = "accelerator"):
    if variant == "cpu":
        config = mnist_cond.get_config()
        config.data.dataset = "fashion_mnist"
        config.data.random_flip = True
        config.training.num_steps = 6000
        return config
    if variant != "accelerator":
        raise ValueError(f"unknown variant {variant!r}: use the config file alone or ':cpu'")
    return mnist_cond.set_conditional(fashion_mnist.get_config())
