"""Writes a dataset's splits as a folder of PNGs, one subfolder per class (for folder runs).

    python benchmarks/export_folder.py fashion_mnist runs/fashion_mnist_png
    python benchmarks/export_folder.py cifar10 runs/cifar10_test64 --splits=test --size=64

The result is what `data.dataset=folder` reads: <out>/<split>/<class>/<index>.png.
"""

import argparse
import os
import re

from PIL import Image

from jaxdiff.data import datasets, image_folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dataset")
    parser.add_argument("out")
    parser.add_argument("--splits", default="train,test")
    parser.add_argument("--size", type=int, default=0, help="resize to this side (0: as is)")
    args = parser.parse_args()
    info = datasets.dataset_info(args.dataset)
    # Class names as folder names: "T-shirt/top" -> "T-shirt_top"; sorted order kept by a prefix.
    folders = [f"{i}_{re.sub(r'[^0-9A-Za-z-]+', '_', n)}" for i, n in enumerate(info.class_names)]
    for split in args.splits.split(","):
        images, labels = datasets.read_split(datasets.data_config(args.dataset), split)
        for folder in folders:
            os.makedirs(os.path.join(args.out, split, folder), exist_ok=True)
        for index, (image, label) in enumerate(zip(images, labels, strict=True)):
            if args.size:
                image = image_folder.fit_array(image, args.size, image.shape[-1])
            pixels = image[..., 0] if image.shape[-1] == 1 else image
            Image.fromarray(pixels).save(
                os.path.join(args.out, split, folders[label], f"{index:05d}.png")
            )
        print(f"{split}: {len(images)} images in {os.path.join(args.out, split)}")


if __name__ == "__main__":
    main()
