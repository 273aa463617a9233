"""Which images a run learns from, at the size its model takes.

`data.dataset` is one of:
- `mnist`, `fashion_mnist`, `cifar10`: prepared by jaxdiff itself
  (`jaxdiff.data.prepare`) and read whole into memory at their own size;
- any other TFDS image dataset prepared in the data directory in the
  array_record format (`celeb_a`, `svhn_cropped`, `oxford_flowers102`, ...): its
  image feature, and its class label when it has one, are found in its metadata;
- `folder`: the images under `data.path` (`jaxdiff.data.image_folder`).

Other TFDS datasets, folders, and the three above at another `data.image_size`
or `data.channels` are fitted once (center crop, resize, channels) into a cache
(`data.cache_dir`, else ~/.cache/jaxdiff/datasets), a uint8 `.npy` array per
split that later runs memory-map instead of decoding again. A cache is rebuilt
when its source changes (files added, removed or modified; another dataset
version) and is written under a temporary name and renamed, so an interrupted
build leaves none behind.

`dataset_info` answers what a run needs to know before reading any pixel:
image shape and class names. A run records them in its config
(`data.image_size`, `data.channels`, `data.class_names`), so sampling from it
later needs neither the folder nor the dataset.
"""

import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Mapping

import ml_collections
import numpy as np

from jaxdiff.core.errors import UserError
from jaxdiff.data import image_folder, tfds_reader

logger = logging.getLogger("jaxdiff")

FOLDER = "folder"
# Image shape (H, W, C) of the datasets jaxdiff prepares itself, known before
# any data is read; their class names are CLASS_NAMES.
BUILTIN_SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
}
# What else data.dataset may name, for the error on an unknown one ({} is the data directory).
_BUILTIN_HINT = (
    f"{', '.join(sorted(BUILTIN_SHAPES))}, another TFDS image dataset prepared in {{}}, "
    f"or '{FOLDER}' with data.path"
)
# The TFDS label names of the datasets jaxdiff prepares, in label order (tests check
# them against the TFDS metadata). Other datasets' names are read from their data.
CLASS_NAMES = {
    "mnist": ("0", "1", "2", "3", "4", "5", "6", "7", "8", "9"),
    "fashion_mnist": (
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    "cifar10": (
        "airplane",
        "automobile",
        "bird",
        "cat",
        "deer",
        "dog",
        "frog",
        "horse",
        "ship",
        "truck",
    ),
}

# Other words users type for a class, per dataset: word -> label.
ALIASES = {
    "mnist": {
        word: i
        for i, word in enumerate(
            ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
        )
    },
    "fashion_mnist": {
        "t-shirt": 0,
        "tshirt": 0,
        "top": 0,
        "trousers": 1,
        "pants": 1,
        "sweater": 2,
        "jumper": 2,
        "sandals": 5,
        "sneakers": 7,
        "trainer": 7,
        "handbag": 8,
        "boot": 9,
        "ankle boots": 9,
    },
    "cifar10": {
        "plane": 0,
        "aeroplane": 0,
        "car": 1,
        "lorry": 9,
        "boat": 8,
    },
}

# Bumped when the cache's layout or the fitting changes: older caches are rebuilt.
_CACHE_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a run needs to know of its dataset before reading it."""

    # data.dataset: a TFDS name or "folder".
    name: str
    # The images as the model sees them (H, W, C).
    image_shape: tuple[int, int, int]
    # Class names in label order; () for a dataset without labels.
    class_names: tuple[str, ...] = ()
    # Other words a prompt may use for a class: word -> label.
    aliases: Mapping[str, int] = dataclasses.field(default_factory=dict)
    # How messages name the dataset ("mnist", "folder /data/flowers").
    label: str = ""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


def data_config(spec: ml_collections.ConfigDict | str, **fields) -> ml_collections.ConfigDict:
    """The `data` config group of a dataset name (other fields: defaults, or `fields`).

    A config group passes through unchanged.
    """
    if not isinstance(spec, str):
        return spec
    from jaxdiff.configs import default

    config = default.get_config().data
    config.dataset = spec
    config.update(fields)
    return config


def is_builtin_native(data_config: ml_collections.ConfigDict) -> bool:
    """A dataset jaxdiff prepares, at its own size and channels: read directly, no cache."""
    native = BUILTIN_SHAPES.get(data_config.dataset)
    return (
        native is not None
        and data_config.image_size in (0, native[0])
        and (data_config.channels in (0, native[2]))
    )


def dataset_info(spec: ml_collections.ConfigDict | str, need_labels: bool = False) -> DatasetInfo:
    """Image shape and class names of `data.dataset` at `data.image_size` and `data.channels`.

    Reads the folder's listing (and, where the size or channels are 0, its images'
    headers) or the TFDS dataset's metadata, unless the config already records
    all of it (a trained run's config does).

    Args:
      spec: the `data` config group, or a dataset name (default fields).
      need_labels: the caller trains or samples a conditional model, or a classifier.

    Raises:
      UserError: an unknown or unprepared dataset, a missing or empty folder,
        impossible sizes, or labels needed from a dataset without any.
    """
    c = data_config(spec)
    if c.image_size < 0 or c.channels not in (0, 1, 3):
        raise UserError(
            f"data.image_size must be >= 0 (0: the images' own) and data.channels 0, 1 or 3; "
            f"got {c.image_size} and {c.channels}"
        )
    if c.dataset in BUILTIN_SHAPES:
        height, _, channels = BUILTIN_SHAPES[c.dataset]
        info = DatasetInfo(
            c.dataset,
            (c.image_size or height, c.image_size or height, c.channels or channels),
            CLASS_NAMES[c.dataset],
            ALIASES.get(c.dataset, {}),
            c.dataset,
        )
    elif c.image_size and c.channels and (tuple(c.class_names) or not need_labels):
        info = DatasetInfo(
            c.dataset,
            (c.image_size, c.image_size, c.channels),
            tuple(c.class_names),
            label=_label(c),
        )
    elif c.dataset == FOLDER:
        info = _folder_info(c)
    else:
        info = _tfds_info(c)
    if need_labels and not info.class_names:
        raise UserError(
            f"{info.label} has no class labels: a conditional model or a classifier needs them "
            "(train with model.conditional=False; a folder's classes are its subfolders)"
        )
    return info


def record(data_config: ml_collections.ConfigDict, info: DatasetInfo) -> None:
    """Writes what `dataset_info` found into the config, so the run's config.json holds it.

    The built-in datasets' fields are left at 0: their shapes are constants.
    """
    if data_config.dataset in BUILTIN_SHAPES:
        return
    data_config.image_size = info.image_shape[0]
    data_config.channels = info.image_shape[2]
    data_config.class_names = tuple(info.class_names)


def adopt_recorded(
    data_config: ml_collections.ConfigDict, recorded: ml_collections.ConfigDict
) -> None:
    """Fills the fields a run recorded (`record`) into a config that leaves them unset.

    So `--mode=sample` with the config file a run was trained with needs neither
    the folder nor the dataset's metadata. Only for the same dataset (and path).
    """
    c = data_config
    same_source = c.dataset == recorded.dataset and (
        c.dataset != FOLDER or not c.path or c.path == recorded.path
    )
    if not same_source or c.dataset in BUILTIN_SHAPES:
        return
    if c.dataset == FOLDER and not c.path:
        c.path = recorded.path
    for field in ("image_size", "channels"):
        c[field] = c[field] or recorded[field]
    c.class_names = tuple(c.class_names) or tuple(recorded.class_names)


def _label(c: ml_collections.ConfigDict) -> str:
    return f"folder {c.path}" if c.dataset == FOLDER else c.dataset


def _folder_info(c: ml_collections.ConfigDict) -> DatasetInfo:
    split = image_folder.list_split(os.path.expanduser(c.path), parse_split(c.train_split)[0])
    size, channels = c.image_size, c.channels
    if not size or not channels:
        sizes, grayscale = image_folder.survey(split)
        channels = channels or (1 if grayscale else 3)
        if not size:
            sides = {min(hw) for hw in sizes}
            if len(sides) != 1:
                examples = ", ".join(f"{w}x{h}" for h, w in sorted(sizes)[:3])
                raise UserError(
                    f"the images in {c.path} have {len(sizes)} different sizes ({examples}, ...): "
                    "set data.image_size, the side they are cropped and resized to"
                )
            size = sides.pop()
    return DatasetInfo(FOLDER, (size, size, channels), split.class_names, label=_label(c))


def _tfds_info(c: ml_collections.ConfigDict) -> DatasetInfo:
    builder = tfds_reader.builder(c.dataset, c.data_dir, c.download, _BUILTIN_HINT)
    image_key, label_key = tfds_reader.features(builder)
    height, width, channels = builder.info.features[image_key].shape
    size = c.image_size
    if not size:
        if height is None or width is None:
            raise UserError(
                f"the images of {c.dataset!r} have no fixed size: set data.image_size, the "
                "side they are cropped and resized to"
            )
        size = min(height, width)
    names = tuple(builder.info.features[label_key].names) if label_key else ()
    return DatasetInfo(
        c.dataset, (size, size, c.channels or (1 if channels == 1 else 3)), names, label=c.dataset
    )


_SPLIT = re.compile(r"^(\w+)(?:\[(-?\d+%?)?:(-?\d+%?)?\])?$")


def parse_split(spec: str) -> tuple[str, slice]:
    """ "train[:90%]" -> ("train", the slice of its examples); TFDS's slicing syntax, one range."""
    match = _SPLIT.match(spec.replace(" ", ""))
    if not match:
        raise UserError(
            f"cannot read split {spec!r}: write e.g. 'train', 'train[:1000]', 'test[10%:]'"
        )
    return match.group(1), slice(match.group(2), match.group(3))


def _resolve_slice(bounds: slice, num: int) -> slice:
    def position(bound: str | None) -> int | None:
        if bound is None:
            return None
        if bound.endswith("%"):
            return round(int(bound[:-1]) * num / 100)
        return int(bound)

    return slice(position(bounds.start), position(bounds.stop))


def read_split(data_config: ml_collections.ConfigDict, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, H, W, C) uint8 and labels (N,) int32 of a split, as the model sees them.

    The built-in datasets at their own size come whole into memory; everything
    else is a memory-mapped cache (built on first use), so a split larger than
    memory is read from disk as batches need it. Labels are 0 for a dataset
    without them.

    Raises:
      UserError: anything `dataset_info` refuses, an unknown split, unreadable images.
    """
    c = data_config
    if is_builtin_native(c):
        return tfds_reader.load_split(c.dataset, split, c.data_dir, c.download)
    info = dataset_info(c)
    base, bounds = parse_split(split)
    images, labels = _cached_split(c, info, base)
    rows = _resolve_slice(bounds, len(images))
    if not len(images[rows]):
        raise UserError(f"split {split!r} of {info.label} is empty")
    return images[rows], labels[rows]


def cache_root(data_config: ml_collections.ConfigDict) -> str:
    """Where fitted datasets are cached: data.cache_dir, else the user's cache folder.

    That is $XDG_CACHE_HOME/jaxdiff/datasets, else ~/.cache/jaxdiff/datasets: a
    shared, possibly read-only TFDS data directory is never written to.
    """
    if data_config.cache_dir:
        return os.path.abspath(os.path.expanduser(data_config.cache_dir))
    user_cache = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(user_cache, "jaxdiff", "datasets")


def _cached_split(
    c: ml_collections.ConfigDict, info: DatasetInfo, split: str
) -> tuple[np.ndarray, np.ndarray]:
    """The split fitted to `info.image_shape`, from the cache, (re)built when stale."""
    size, _, channels = info.image_shape
    if c.dataset == FOLDER:
        path = os.path.abspath(os.path.expanduser(c.path))
        listing = image_folder.list_split(path, split)
        if info.class_names and listing.class_names != info.class_names:
            raise UserError(
                f"the class folders of {listing.root} ({', '.join(listing.class_names)}) are "
                f"not the run's classes ({', '.join(info.class_names)})"
            )
        source = f"folder-{_slug(os.path.basename(path))}-{_digest(path)[:10]}"
        fingerprint = listing.fingerprint()
        count = len(listing.files)

        def build(images: np.ndarray, labels: np.ndarray) -> None:
            labels[:] = listing.labels
            image_folder.decode_split(listing, size, channels, images, _progress(count))
    else:
        builder = tfds_reader.builder(c.dataset, c.data_dir, c.download, _BUILTIN_HINT)
        image_key, label_key = tfds_reader.features(builder)
        if split not in builder.info.splits:
            raise UserError(
                f"{c.dataset!r} has no split {split!r}; its splits: "
                + ", ".join(builder.info.splits)
            )
        source = f"tfds-{_slug(c.dataset)}-{builder.info.version}"
        count = builder.info.splits[split].num_examples
        fingerprint = [c.dataset, str(builder.info.version), count]

        def build(images: np.ndarray, labels: np.ndarray) -> None:
            tfds_reader.read_fitted(
                builder,
                c.data_dir,
                split,
                (image_key, label_key),
                (size, channels),
                (images, labels),
                _progress(count),
            )

    directory = os.path.join(cache_root(c), source, f"{split}-{size}x{size}x{channels}")
    key = _digest(json.dumps([_CACHE_FORMAT, fingerprint]))
    cached = _open_cache(directory, key, count)
    if cached is None:
        logger.info(
            "Fitting %d images of %s (%s) to %dx%dx%d into %s",
            count,
            info.label,
            split,
            size,
            size,
            channels,
            directory,
        )
        _write_cache(directory, key, (count, size, size, channels), build)
        cached = _open_cache(directory, key, count)
    return cached


def _open_cache(directory: str, key: str, count: int) -> tuple[np.ndarray, np.ndarray] | None:
    try:
        with open(os.path.join(directory, "meta.json")) as f:
            meta = json.load(f)
        if meta["key"] != key or meta["count"] != count:
            return None
        images = np.load(os.path.join(directory, "images.npy"), mmap_mode="r")
        labels = np.load(os.path.join(directory, "labels.npy"))
    except (OSError, ValueError, KeyError):
        return None
    return images, labels


def _write_cache(directory: str, key: str, shape: tuple[int, ...], build) -> None:
    """Builds a cache in a temporary folder, then renames it over `directory`."""
    parent = os.path.dirname(directory)
    try:
        os.makedirs(parent, exist_ok=True)
        staging = f"{directory}.partial-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        os.makedirs(staging)
    except OSError as e:
        raise UserError(
            f"cannot write the dataset cache in {parent}: {e}; set data.cache_dir"
        ) from None
    try:
        images = np.lib.format.open_memmap(
            os.path.join(staging, "images.npy"), mode="w+", dtype=np.uint8, shape=shape
        )
        labels = np.zeros(shape[0], np.int32)
        build(images, labels)
        images.flush()
        del images
        np.save(os.path.join(staging, "labels.npy"), labels)
        with open(os.path.join(staging, "meta.json"), "w") as f:
            json.dump({"key": key, "count": shape[0], "shape": list(shape[1:])}, f)
        stale = f"{directory}.stale-{os.getpid()}"
        if os.path.exists(directory):
            os.replace(directory, stale)
        os.replace(staging, directory)
        shutil.rmtree(stale, ignore_errors=True)
    except OSError as e:  # A full disk, a quota: one line, and no partial cache.
        raise UserError(f"cannot write the dataset cache {directory}: {e}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _progress(total: int):
    """A callback that logs each further tenth of a long build."""
    next_report = [max(total // 10, 1)]

    def report(done: int) -> None:
        if total >= 5000 and done >= next_report[0]:
            logger.info("  %d/%d images", done, total)
            next_report[0] = done + max(total // 10, 1)

    return report


def _slug(name: str) -> str:
    return re.sub(r"[^0-9A-Za-z_.-]+", "_", name)[:40] or "data"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
