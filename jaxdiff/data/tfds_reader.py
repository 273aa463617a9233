"""Reading TFDS data directories without TensorFlow (`tfds.data_source`).

The datasets jaxdiff prepares itself (`jaxdiff.data.prepare`) are prepared on
first use unless `data.download` is False; any other TFDS dataset must already
be prepared in the array_record format. `jaxdiff.data.datasets` decides which
images a run reads and calls this module for the TFDS ones.
"""

import os

import numpy as np

from jaxdiff.core.errors import UserError, shell_command
from jaxdiff.data import image_folder, prepare
from jaxdiff.data.prepare import resolve_data_dir


def load_split(
    name: str, split: str, data_dir: str = "", download: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Reads a whole split of a TFDS dataset's `image` and `label` with `tfds.data_source`.

    No TensorFlow is needed. Used for the datasets jaxdiff prepares (see
    `datasets.read_split` for the others). A dataset missing from the data
    directory is first prepared there
    (`jaxdiff.data.prepare`: downloaded, or taken from `<data_dir>/downloads/manual/`)
    unless `download` is False.

    Returns:
      images (N, H, W, C) uint8 and labels (N,) int32.

    Raises:
      UserError: dataset not prepared and not preparable, bad split.
    """
    directory = resolve_data_dir(data_dir)
    ensure_prepared(name, directory, download)
    import tensorflow_datasets as tfds  # Imported here: it is slow to import.

    try:
        source = tfds.data_source(name, split=split, data_dir=directory, download=False)
        examples = source.__getitems__(range(len(source)))
    except Exception as e:  # TFDS raises many types; the user needs one line.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read {name!r} split {split!r} from {directory}: {first_line}"
        ) from None
    if not examples:
        raise UserError(f"split {split!r} of {name!r} is empty")
    images = np.stack([ex["image"] for ex in examples]).astype(np.uint8)
    labels = np.asarray([ex["label"] for ex in examples], np.int32)
    return images, labels


def ensure_prepared(name: str, directory: str, download: bool) -> None:
    """Prepares a dataset jaxdiff knows (`jaxdiff.data.prepare`) missing from `directory`.

    Raises:
      UserError: it is missing and `download` is False, or it cannot be prepared.
    """
    if prepare.is_prepared(name, directory) or name not in prepare.DATASET_NAMES:
        return
    if not download:
        raise UserError(
            f"dataset {name!r} not found in {directory}: run "
            f"`{shell_command('python', '-m', 'jaxdiff.prepare', name, f'--data_dir={directory}')}`"
            ", or point TFDS_DATA_DIR or "
            f"--config.data.data_dir at a directory where it is prepared"
        )
    prepare.prepare(name, directory)


def builder(name: str, data_dir: str, download: bool, choices: str):
    """The TFDS builder of a dataset prepared in the data directory.

    `choices` completes the error for an unknown name (what else may be named).

    Raises:
      UserError: an unknown or unprepared dataset.
    """
    import tensorflow_datasets as tfds  # Imported here: it is slow to import.

    directory = resolve_data_dir(data_dir)
    ensure_prepared(name, directory, download)  # One jaxdiff prepares, at another size.
    try:
        found = tfds.builder(name, data_dir=directory)
    except Exception:  # TFDS raises several types for a name it does not know.
        raise UserError(
            f"unknown data.dataset {name!r}: not a TFDS dataset; choose {choices.format(directory)}"
        ) from None
    if not _is_prepared(found):
        raise UserError(
            f"TFDS dataset {name!r} is not prepared in {directory}: prepare it there "
            f"in the array_record format (`tfds build {name} --file_format=array_record "
            f"--data_dir={directory}`, which needs TensorFlow) or point data.data_dir at it"
        )
    return found


def _is_prepared(builder) -> bool:
    return os.path.isfile(os.path.join(os.fspath(builder.data_dir), "dataset_info.json"))


def features(builder) -> tuple[str, str | None]:
    """The names of the dataset's image feature and of its class label (None without one)."""
    import tensorflow_datasets as tfds

    features = builder.info.features
    images = [k for k, f in features.items() if isinstance(f, tfds.features.Image)]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not images:
        raise UserError(f"TFDS dataset {builder.name!r} has no image feature")
    image = "image" if "image" in images else images[0]
    label = "label" if "label" in labels else (labels[0] if len(labels) == 1 else None)
    return image, label


def read_fitted(builder, data_dir, split, keys, size_channels, out, progress) -> None:
    """Reads a TFDS split in chunks, fitting the images and labels into `out` (two arrays).

    `keys` are the image and label features (label None: left as they are),
    `size_channels` the side and channels to fit to; `progress(done)` is
    called after each chunk.
    """
    import tensorflow_datasets as tfds

    (image_key, label_key), (size, channels), (images, labels) = keys, size_channels, out
    try:
        source = tfds.data_source(
            builder.name, split=split, data_dir=resolve_data_dir(data_dir), download=False
        )
    except Exception as e:  # TFDS raises many types; the user needs one line.
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(
            f"cannot read {builder.name!r} split {split!r}: {first_line} (jaxdiff reads TFDS "
            "datasets prepared in the array_record format, without TensorFlow)"
        ) from None
    chunk = 1024
    for start in range(0, len(source), chunk):
        rows = range(start, min(len(source), start + chunk))
        for i, example in zip(rows, source.__getitems__(rows), strict=True):
            images[i] = image_folder.fit_array(np.asarray(example[image_key]), size, channels)
            if label_key:
                labels[i] = int(example[label_key])
        progress(rows.stop)
