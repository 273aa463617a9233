"""Your own images at 64x64: the folder data.path, cropped and resized (docs/your_own_data.md).

    python main.py --config=configs/folder64.py --workdir=runs/flowers \
        --config.data.path=~/pictures/flowers
    python main.py --config=configs/folder64.py:cond --workdir=runs/pets \
        --config.data.path=~/pictures/pets --config.sampling.prompt="cat,dog"
    python main.py --config=configs/folder64.py:classifier --workdir=runs/classifier_pets \
        --config.data.path=~/pictures/pets

The variants: unconditional (default); `cond`, conditioned on the first-level
subfolders (the classes) with classifier-free guidance; `classifier`, the
feature classifier --mode=eval measures a conditional run's samples with
(its default --config.eval.classifier_workdir is runs/classifier_<folder name>).
Sized for an accelerator: a residual U-Net with attention at 16x16 and 8x8.
"""

from jaxdiff.configs import default
from jaxdiff.configs.mnist_cond import set_conditional


def get_config(variant: str = "uncond"):
    config = default.get_config()
    config.data.dataset = "folder"
    config.data.image_size = 64
    config.data.random_flip = True
    config.data.centered = True  # [-1, 1]: roughly zero-mean, as the EDM scalings assume.
    if variant == "classifier":
        config.task = "classifier"
        c = config.classifier
        c.channels = (32, 64, 128, 256)
        c.num_res_blocks = 2
        c.random_crop = 8
        c.label_smoothing = 0.1
        c.batch_size = 128
        c.num_steps = 5000
        c.learning_rate = 2e-3
        c.warmup_steps = 300
        c.weight_decay = 5e-2
        return config
    config.model.name = "unet"
    config.model.channels = (64, 128, 256, 256)
    config.model.num_res_blocks = 2
    config.model.attention_resolutions = (16, 8)
    config.model.num_heads = 4
    config.training.batch_size = 64
    config.training.learning_rate = 2e-4
    config.training.warmup_steps = 1000
    config.training.num_steps = 200_000
    config.training.checkpoint_every = 5000
    config.sampling.num_samples = 36
    if variant == "cond":
        set_conditional(config)
        config.sampling.samples_per_class = 6
    return config
