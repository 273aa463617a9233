"""How well inpainting and editing work on trained MNIST runs, judged by the run's own classifier.

    python benchmarks/editing_quality.py --uncond=runs/mnist --cond=runs/mnist_cond \
        --classifier=runs/classifier_mnist --num=1000

Prints a table and writes it, with the settings, to benchmarks/results/editing_quality.json:
- inpainting the lower half of `num` test digits (unconditional run, with and
  without RePaint resampling): classifier accuracy of the completed digits
  against their true labels, beside the same classifier on the half-masked
  inputs (zeros) and on the originals;
- the conditional run completing the lower half toward its true class and
  toward another class, and SDEdit toward another class at strengths 0.3, 0.5
  and 0.7: how often the classifier reads the prompted class;
- the wall time of each row (sampling only; programs compiled beforehand on a
  small batch are not counted).
"""

import argparse
import json
import os
import time

import numpy as np

import jaxdiff
from jaxdiff.data import tfds_reader
from jaxdiff.editing.inputs import make_masks
from jaxdiff.training.classifier import load_classifier
from jaxdiff.training.workdir import read_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--uncond", required=True, help="workdir of an unconditional run")
    parser.add_argument("--cond", required=True, help="workdir of a conditional run")
    parser.add_argument("--classifier", required=True, help="workdir of the feature classifier")
    parser.add_argument("--num", type=int, default=1000, help="test images")
    parser.add_argument("--guidance", type=float, default=2.0)
    parser.add_argument("--sampler", default="edm", help="with its default steps")
    parser.add_argument("--resample_steps", type=int, default=5)
    parser.add_argument("--jump_length", type=int, default=1)
    parser.add_argument(
        "--out", default=os.path.join("benchmarks", "results", "editing_quality.json")
    )
    args = parser.parse_args()

    def load(workdir):
        config = read_config(workdir)
        # The sampler with its own steps (num_steps = 0), whatever the run was trained with.
        config.sampling.sampler, config.sampling.num_steps = args.sampler, 0
        return jaxdiff.load(workdir, config=config)

    uncond, cond = load(args.uncond), load(args.cond)
    classifier = load_classifier(args.classifier)
    c = uncond.config.data
    images, labels = tfds_reader.load_split(c.dataset, f"test[:{args.num}]", c.data_dir, c.download)
    height, width = images.shape[1:3]
    masks = make_masks("lower_half", len(images), height, width)
    # Another class for every image: its label plus 1..9, drawn once.
    others = (labels + np.random.default_rng(0).integers(1, 10, len(labels))) % 10
    rows = []

    def row(name, targets, make, nfe):
        make(images[:8], targets[:8])  # Compiles the programs (the full run reuses them).
        start = time.perf_counter()
        out = make(images, targets)
        seconds = time.perf_counter() - start
        accuracy = float(np.mean(classifier.predict(out) == targets))
        rows.append(dict(name=name, accuracy=accuracy, seconds=seconds, nfe=nfe))
        nfe_text = f"{nfe:>4} NFE" if nfe else " " * 8
        print(f"{name:66s} {accuracy:7.2%}  {nfe_text}  {seconds:7.1f} s", flush=True)
        return out

    holes = np.where(masks.astype(bool), images, 0).astype(np.uint8)
    for name, shown in (("originals", images), ("half-masked inputs (zeros)", holes)):
        accuracy = float(np.mean(classifier.predict(shown) == labels))
        rows.append(dict(name=name, accuracy=accuracy, seconds=0.0, nfe=0))
        print(f"{name:66s} {accuracy:7.2%}", flush=True)

    nfe = jaxdiff.sampling.num_function_evals(uncond.config.sampling)
    r, j, w = args.resample_steps, args.jump_length, args.guidance
    resample = dict(resample_steps=r, jump_length=j)

    def inpaint(pipeline, prompted: bool = False, **kwargs):
        """(images, targets) -> the lower halves filled in, toward the targets if `prompted`."""

        def make(x, y):
            prompt = dict(prompt=list(y), guidance_scale=w) if prompted else {}
            return pipeline.inpaint(x, masks[: len(x)], **prompt, **kwargs)

        return make

    row("inpaint lower half, unconditional", labels, inpaint(uncond), nfe)
    row(
        f"inpaint lower half, unconditional, resample {r} jump {j}",
        labels,
        inpaint(uncond, **resample),
        None,
    )
    row("conditional run, inpaint, no prompt", labels, inpaint(cond), nfe)
    row(
        f"conditional run, inpaint toward the true class, w={w:g}", labels, inpaint(cond, True), nfe
    )
    row(f"conditional run, inpaint toward another class, w={w:g}", others, inpaint(cond, True), nfe)
    row(
        f"conditional run, inpaint toward another class, w={w:g}, resample {r} jump {j}",
        others,
        inpaint(cond, True, **resample),
        None,
    )
    for strength in (0.3, 0.5, 0.7):
        row(
            f"conditional run, edit toward another class, strength {strength}, w={w:g}",
            others,
            lambda x, y, s=strength: cond.edit(x, s, prompt=list(y), guidance_scale=w),
            None,
        )
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(dict(settings=vars(args), rows=rows), f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
