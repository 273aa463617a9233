"""Image folders as datasets: which files, which classes, and each image fitted to the model.

A folder is read as follows:
- every PNG/JPEG (also BMP, GIF, WebP) file under it, at any depth, is an example;
  the examples are in an order fixed by a hash of their paths, so that a slice
  (`train[:1000]`) holds a mix of the classes, and adding a file moves no other;
- the first level of subfolders, when there are any, are the classes, in
  sorted order, and their names are the class names (the prompts);
- a folder whose first level holds a `train` folder is split: each first-level
  folder (`train`, `test`, `validation`, ...) is a split, and the first level
  inside each split holds the classes (the same names in every split).

Images are center-cropped to a square and resized to the model's size
(area-averaged when shrinking, bicubic when enlarging), then converted to one
(grayscale) or three (RGB) channels.
"""

import dataclasses
import hashlib
import os
from collections.abc import Callable

import numpy as np
from PIL import Image

from jaxdiff.core.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# The split every unsplit folder has, and the folder name that marks a split folder.
DEFAULT_SPLIT = "train"
# PIL modes that hold no colour.
_GRAYSCALE_MODES = ("1", "L", "LA", "I", "I;16", "F")


@dataclasses.dataclass(frozen=True)
class FolderSplit:
    """The image files of one split of a folder, with their class ids."""

    root: str
    # Paths relative to `root`, in the order of the examples (see `_shuffled`).
    files: tuple[str, ...]
    # (N,) int32 class ids (all 0 when the folder has no classes).
    labels: np.ndarray
    # Class names in id order; () when the folder has no class subfolders.
    class_names: tuple[str, ...]

    def fingerprint(self) -> list[tuple[str, int, int]]:
        """(path, size in bytes, modification time in ns) of every file: changes when any does."""
        stats = []
        for name in self.files:
            st = os.stat(os.path.join(self.root, name))
            stats.append((name, st.st_size, st.st_mtime_ns))
        return stats


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _images_under(directory: str) -> list[str]:
    """Image files under `directory` at any depth, relative to it, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        relative = os.path.relpath(dirpath, directory)
        for name in filenames:
            if _is_image(name):
                found.append(os.path.normpath(os.path.join(relative, name)))
    return sorted(found)


def _subfolders(directory: str) -> list[str]:
    return sorted(
        entry.name
        for entry in os.scandir(directory)
        if entry.is_dir() and not entry.name.startswith(".")
    )


def is_split(path: str) -> bool:
    """Whether the folder is split: its first level holds a `train` folder."""
    _check_folder(path)
    return os.path.isdir(os.path.join(path, DEFAULT_SPLIT))


def split_names(path: str) -> tuple[str, ...]:
    """The splits of a folder: its first-level folders if one is `train`, else ("train",)."""
    return tuple(_subfolders(path)) if is_split(path) else (DEFAULT_SPLIT,)


def list_split(path: str, split: str = DEFAULT_SPLIT) -> FolderSplit:
    """The files and classes of `split` of the folder at `path`.

    Raises:
      UserError: a missing or empty folder, an unknown split, images beside class
        folders, or a class folder without images.
    """
    splits = split_names(path)
    if split not in splits:
        raise UserError(
            f"folder {path} has no split {split!r}; its splits: {', '.join(splits)} "
            f"(a folder is split when its first level holds a '{DEFAULT_SPLIT}' folder)"
        )
    root = os.path.join(path, split) if is_split(path) else path
    class_names = tuple(_subfolders(root))
    if not class_names:
        files = _images_under(root)
        if not files:
            raise UserError(f"folder {root} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return _shuffled(root, files, [0] * len(files), ())
    loose = [name for name in os.listdir(root) if _is_image(name)]
    if loose:
        raise UserError(
            f"folder {root} holds {len(loose)} image(s) (e.g. {loose[0]}) beside its class "
            f"folders ({', '.join(class_names[:5])}{', ...' if len(class_names) > 5 else ''}): "
            "move them into a class folder"
        )
    files, labels = [], []
    for label, name in enumerate(class_names):
        in_class = _images_under(os.path.join(root, name))
        if not in_class:
            raise UserError(f"class folder {os.path.join(root, name)} holds no images")
        files += [os.path.join(name, f) for f in in_class]
        labels += [label] * len(in_class)
    return _shuffled(root, files, labels, class_names)


def _shuffled(root: str, files: list[str], labels: list[int], class_names) -> FolderSplit:
    """The split with its examples ordered by a hash of their paths: classes mixed, stable."""
    order = sorted(range(len(files)), key=lambda i: hashlib.sha1(files[i].encode()).digest())
    return FolderSplit(
        root,
        tuple(files[i] for i in order),
        np.asarray([labels[i] for i in order], np.int32),
        tuple(class_names),
    )


def _check_folder(path: str) -> None:
    if not path:
        raise UserError("data.dataset=folder needs data.path, the folder of images")
    if not os.path.isdir(path):
        raise UserError(f"data.path {path} is not a folder")


def survey(split: FolderSplit) -> tuple[set[tuple[int, int]], bool]:
    """The (height, width) sizes of the split's images and whether all are grayscale.

    Reads only the files' headers.
    """
    sizes, grayscale = set(), True
    for name in split.files:
        try:
            with Image.open(os.path.join(split.root, name)) as image:
                sizes.add(image.size[::-1])
                grayscale &= image.mode in _GRAYSCALE_MODES
        except (OSError, ValueError):
            continue  # Unreadable files are reported, all together, when decoded.
    return sizes, grayscale


def fit_image(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """Center-crops to a square, resizes to size x size, converts to `channels` (1 or 3).

    Shrinking averages over each output pixel's area (PIL's box filter);
    enlarging is bicubic.

    Returns:
      (size, size, channels) uint8.
    """
    image = image.convert("L" if channels == 1 else "RGB")
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != size:
        resample = Image.Resampling.BOX if side > size else Image.Resampling.BICUBIC
        image = image.resize((size, size), resample)
    array = np.asarray(image, np.uint8)
    return array[..., None] if channels == 1 else array


def fit_array(image: np.ndarray, size: int, channels: int) -> np.ndarray:
    """`fit_image` for an (H, W, C) uint8 array (C = 1, 3 or 4)."""
    if image.shape[-1] == 1:
        return fit_image(Image.fromarray(image[..., 0]), size, channels)
    return fit_image(Image.fromarray(image), size, channels)


def decode_split(
    split: FolderSplit,
    size: int,
    channels: int,
    out: np.ndarray,
    progress: Callable[[int], None] | None = None,
    num_threads: int | None = None,
) -> None:
    """Decodes and fits every image of `split` into `out` (N, size, size, channels) uint8.

    Threads decode in parallel (PIL releases the GIL while decoding and resizing).

    Raises:
      UserError: naming (up to five of) the files that could not be read, and their count.
    """
    from concurrent.futures import ThreadPoolExecutor

    def load(index: int) -> str | None:
        name = split.files[index]
        try:
            with Image.open(os.path.join(split.root, name)) as image:
                out[index] = fit_image(image, size, channels)
        except (OSError, ValueError, Image.DecompressionBombError) as e:
            return f"{name} ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
        return None

    failures = []
    threads = num_threads or min(16, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        for done, failure in enumerate(pool.map(load, range(len(split.files))), 1):
            if failure:
                failures.append(failure)
            if progress is not None:
                progress(done)
    if failures:
        shown = "; ".join(failures[:5])
        raise UserError(
            f"cannot read {len(failures)} of {len(split.files)} images in {split.root}: {shown}"
            + (f"; and {len(failures) - 5} more" if len(failures) > 5 else "")
            + " (remove or replace them)"
        )
