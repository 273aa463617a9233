"""Image folders and other TFDS datasets: files, classes, fitting, the cache, and bad input."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from jaxdiff.core.errors import UserError
from jaxdiff.data import datasets, image_folder, tfds_reader
from jaxdiff.data.datasets import data_config, dataset_info, read_split


def write_image(path, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)


def gray(value: int, height: int = 8, width: int = 8) -> np.ndarray:
    return np.full((height, width, 1), value, np.uint8)


def folder_config(path, tmp_path, **fields):
    return data_config("folder", path=str(path), cache_dir=str(tmp_path / "cache"), **fields)


def one_line_error(fn, *args) -> str:
    with pytest.raises(UserError) as error:
        fn(*args)
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def pets(tmp_path):
    """cat/ (two images, one nested a level deeper) and dog/ (one), 8x8 grayscale."""
    root = tmp_path / "pets"
    write_image(str(root / "dog" / "d.png"), gray(30))
    write_image(str(root / "cat" / "b.png"), gray(20))
    write_image(str(root / "cat" / "indoor" / "a.png"), gray(10))
    return root


def test_class_folders_are_the_classes_in_sorted_order(pets, tmp_path):
    config = folder_config(pets, tmp_path)
    info = dataset_info(config, need_labels=True)
    assert info.class_names == ("cat", "dog")
    assert info.image_shape == (8, 8, 1)  # the images' own size, and gray
    images, labels = read_split(config, "train")
    # Each image with its class: cat/b.png (20), cat/indoor/a.png (10), dog/d.png (30).
    pairs = sorted(zip(images[:, 0, 0, 0].tolist(), labels.tolist(), strict=True))
    assert pairs == [(10, 0), (20, 0), (30, 1)]
    # A prompt names the folders.
    from jaxdiff.diffusion.conditioning import parse_prompt

    assert parse_prompt("dog,cat", info) == [1, 0]


def test_flat_folder_has_no_labels_and_refuses_a_conditional_model(tmp_path):
    root = tmp_path / "flat"
    for i in range(3):
        write_image(str(root / f"{i}.png"), gray(i))
    config = folder_config(root, tmp_path)
    info = dataset_info(config)
    assert info.class_names == () and info.image_shape == (8, 8, 1)
    assert read_split(config, "train")[1].tolist() == [0, 0, 0]
    message = one_line_error(lambda: dataset_info(config, need_labels=True))
    assert "has no class labels" in message and "subfolders" in message


def test_mixed_sizes_and_colours(tmp_path):
    root = tmp_path / "mixed"
    rng = np.random.default_rng(0)
    colour = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
    write_image(str(root / "a.png"), colour)
    write_image(str(root / "b.jpg"), gray(77, 10, 10))
    config = folder_config(root, tmp_path)
    message = one_line_error(lambda: dataset_info(config))
    assert "2 different sizes" in message and "data.image_size" in message
    config.image_size = 4
    info = dataset_info(config)
    assert info.image_shape == (4, 4, 3)  # one colour image: RGB
    images, _ = read_split(config, "train")
    listing = image_folder.list_split(str(root))
    fitted, grey = (images[listing.files.index(name)] for name in ("a.png", "b.jpg"))
    np.testing.assert_array_equal(fitted, image_folder.fit_array(colour, 4, 3))
    # The gray JPEG becomes three equal channels.
    assert (grey == grey[..., :1]).all() and abs(int(grey.mean()) - 77) <= 2


def box_reference(image: np.ndarray, size: int) -> np.ndarray:
    """Center crop, then each output pixel the mean of the input pixels whose centers it covers.

    That is the box filter (PIL's): output pixel i covers (i s, (i + 1) s] of the
    crop, s = side / size; an integer s averages s x s blocks.
    """
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = image[top : top + side, left : left + side].astype(np.float64)
    scale = side / size
    centers = np.arange(side) + 0.5
    weights = np.stack(
        [(centers > i * scale) & (centers <= (i + 1) * scale) for i in range(size)]
    ).astype(np.float64)
    weights /= weights.sum(1, keepdims=True)
    return np.einsum("ij,jkc,lk->ilc", weights, crop, weights)


@pytest.mark.parametrize("shape, size", [((24, 36, 3), 8), ((30, 20, 1), 7), ((9, 9, 3), 9)])
def test_crop_and_resize_match_a_numpy_reference(shape, size):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    fitted = image_folder.fit_array(image, size, shape[-1])
    assert fitted.shape == (size, size, shape[-1]) and fitted.dtype == np.uint8
    # Rounding: PIL works in fixed point.
    assert np.abs(fitted - box_reference(image, size)).max() <= 1.0


def test_a_slice_of_a_class_sorted_folder_mixes_the_classes(tmp_path):
    # Files named so that every "a" sorts before every "b": a sorted listing would put
    # all of class a first, and train[:20] would hold one class.
    for i in range(40):
        write_image(str(tmp_path / "ab" / ("a" if i < 20 else "b") / f"{i:02d}.png"), gray(i))
    config = folder_config(tmp_path / "ab", tmp_path)
    _, labels = read_split(config, "train[:20]")
    assert 5 <= labels.sum() <= 15
    # The order is the same for a second listing, and adding a file moves no other.
    before = image_folder.list_split(str(tmp_path / "ab")).files
    write_image(str(tmp_path / "ab" / "a" / "new.png"), gray(99))
    after = [f for f in image_folder.list_split(str(tmp_path / "ab")).files if f != "a/new.png"]
    assert list(before) == after


def test_corrupt_files_are_counted_and_named_and_nothing_is_cached(tmp_path):
    root = tmp_path / "broken"
    write_image(str(root / "good.png"), gray(1))
    (root / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "worse.jpg").write_bytes(b"not a jpeg")
    config = folder_config(root, tmp_path, image_size=8, channels=1)
    message = one_line_error(read_split, config, "train")
    assert message.startswith(f"cannot read 2 of 3 images in {root}: bad.png (")
    assert "worse.jpg" in message
    leftovers = [f for _, _, files in os.walk(tmp_path / "cache") for f in files]
    assert leftovers == []


def test_empty_and_malformed_folders_are_one_line_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    message = one_line_error(dataset_info, folder_config(tmp_path / "empty", tmp_path))
    assert "holds no images" in message
    message = one_line_error(dataset_info, folder_config(tmp_path / "missing", tmp_path))
    assert "is not a folder" in message
    message = one_line_error(dataset_info, folder_config("", tmp_path))
    assert "needs data.path" in message
    write_image(str(tmp_path / "loose" / "cat" / "a.png"), gray(1))
    write_image(str(tmp_path / "loose" / "stray.png"), gray(1))
    message = one_line_error(dataset_info, folder_config(tmp_path / "loose", tmp_path))
    assert "beside its class folders" in message and "stray.png" in message
    (tmp_path / "loose" / "stray.png").unlink()
    (tmp_path / "loose" / "dog").mkdir()
    message = one_line_error(dataset_info, folder_config(tmp_path / "loose", tmp_path))
    assert "class folder" in message and "dog holds no images" in message


def test_the_cache_is_reused_and_rebuilt_when_the_folder_changes(pets, tmp_path, monkeypatch):
    config = folder_config(pets, tmp_path, image_size=4)
    first, _ = read_split(config, "train")
    assert isinstance(first, np.memmap) or isinstance(first.base, np.memmap)

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again")

    with monkeypatch.context() as patch:
        patch.setattr(image_folder, "decode_split", no_decoding)
        again, _ = read_split(config, "train")
    np.testing.assert_array_equal(again, first)
    # A new image: the next read decodes the folder anew.
    write_image(str(pets / "dog" / "e.png"), gray(40))
    images, labels = read_split(config, "train")
    assert len(images) == 4 and sorted(labels.tolist()) == [0, 0, 1, 1]
    assert 40 in images[:, 0, 0, 0]
    # A changed image (same name, other bytes): rebuilt too.
    write_image(str(pets / "dog" / "e.png"), gray(90))
    images, _ = read_split(config, "train")
    assert 90 in images[:, 0, 0, 0] and 40 not in images[:, 0, 0, 0]
    # One cache per source and split: the rebuilt one replaced the old.
    (source,) = os.listdir(datasets.cache_root(config))
    assert os.listdir(os.path.join(datasets.cache_root(config), source)) == ["train-4x4x1"]


def test_the_default_cache_is_the_users_not_the_data_directory(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    config = data_config("mnist", data_dir=str(tmp_path / "tfds"))
    assert datasets.cache_root(config) == str(tmp_path / "xdg" / "jaxdiff" / "datasets")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert datasets.cache_root(config) == str(tmp_path / "home" / ".cache" / "jaxdiff" / "datasets")


def test_split_folders_and_slices(tmp_path):
    root = tmp_path / "split"
    for split, count in (("train", 4), ("test", 3)):
        for i in range(count):
            write_image(str(root / split / ("even" if i % 2 == 0 else "odd") / f"{i}.png"), gray(i))
    config = folder_config(root, tmp_path)
    assert dataset_info(config).class_names == ("even", "odd")
    test_images, test_labels = read_split(config, "test")
    # Image i of the test split is gray i, in class i % 2.
    np.testing.assert_array_equal(test_labels, test_images[:, 0, 0, 0] % 2)
    assert sorted(test_images[:, 0, 0, 0].tolist()) == [0, 1, 2]
    train = read_split(config, "train")[0][:, 0, 0, 0]
    assert sorted(train.tolist()) == [0, 1, 2, 3]
    np.testing.assert_array_equal(read_split(config, "train[1:3]")[0][:, 0, 0, 0], train[1:3])
    np.testing.assert_array_equal(read_split(config, "train[50%:]")[0][:, 0, 0, 0], train[2:])
    message = one_line_error(read_split, config, "validation")
    assert "no split 'validation'" in message and "test, train" in message


def test_a_builtin_dataset_at_another_size_is_its_images_fitted(tmp_path):
    native, labels = tfds_reader.load_split("mnist", "test")
    config = data_config("mnist", image_size=14, cache_dir=str(tmp_path))
    info = dataset_info(config)
    assert info.image_shape == (14, 14, 1) and info.class_names == dataset_info("mnist").class_names
    images, fitted_labels = read_split(config, "test[:50]")
    np.testing.assert_array_equal(fitted_labels, labels[:50])
    # 2x2 block means of the 28x28 originals.
    blocks = native[:50].reshape(50, 14, 2, 14, 2, 1).mean((2, 4))
    assert np.abs(images - blocks).max() <= 1.0


def write_unlabelled_tfds(data_dir: str) -> None:
    """A small TFDS dataset with images of varying sizes and no label, as TFDS writes it."""
    import tensorflow_datasets as tfds

    class JaxdiffTestBlobs(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            image = tfds.features.Image(shape=(None, None, 3))
            return tfds.core.DatasetInfo(
                builder=self, features=tfds.features.FeaturesDict({"image": image})
            )

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                buffer = io.BytesIO()
                Image.fromarray(np.full((10 + i, 12, 3), 50 * i, np.uint8)).save(buffer, "PNG")
                yield i, {"image": buffer.getvalue()}

    JaxdiffTestBlobs(data_dir=data_dir, file_format="array_record").download_and_prepare()


def test_another_tfds_dataset_by_name_without_labels(tmp_path):
    write_unlabelled_tfds(str(tmp_path / "tfds"))
    config = data_config(
        "jaxdiff_test_blobs", data_dir=str(tmp_path / "tfds"), cache_dir=str(tmp_path / "cache")
    )
    message = one_line_error(dataset_info, config)
    assert "no fixed size" in message and "data.image_size" in message
    config.image_size = 6
    info = dataset_info(config)
    assert info.image_shape == (6, 6, 3) and info.class_names == ()
    images, labels = read_split(config, "train")
    assert images.shape == (5, 6, 6, 3) and labels.tolist() == [0] * 5
    assert sorted(images[:, 0, 0, 0].tolist()) == [0, 50, 100, 150, 200]
    message = one_line_error(lambda: dataset_info(config, need_labels=True))
    assert "jaxdiff_test_blobs has no class labels" in message


def test_unknown_and_unprepared_tfds_names(tmp_path):
    message = one_line_error(dataset_info, data_config("no_such_dataset"))
    assert "unknown data.dataset 'no_such_dataset'" in message and "'folder'" in message
    message = one_line_error(dataset_info, data_config("svhn_cropped", data_dir=str(tmp_path)))
    assert "'svhn_cropped' is not prepared in" in message and "array_record" in message


def test_a_run_records_what_it_found_so_sampling_needs_no_folder(pets, tmp_path):
    from jaxdiff.configs import get_config

    from jaxdiff.experiment import create_experiment

    config = get_config("mnist_cond")
    config.data.update(
        dataset="folder", path=str(pets), cache_dir=str(tmp_path / "cache"), image_size=20
    )
    config.model.channels = (8, 16, 16, 16)
    config.model.attention_resolutions = (8,)  # sides of a 20x20 input: 18, 8, 3, 1
    config.sampling.prompt = "dog"
    experiment = create_experiment(config)
    recorded = experiment.config.data
    assert (recorded.image_size, recorded.channels) == (20, 1)
    assert tuple(recorded.class_names) == ("cat", "dog") and experiment.prompt_labels == (1,)
    # The folder gone, the recorded config still builds the same experiment.
    os.rename(pets, tmp_path / "moved")
    again = create_experiment(experiment.config)
    assert again.dataset.class_names == ("cat", "dog") and again.image_shape == (20, 20, 1)


@pytest.mark.slow  # trains a tiny model
def test_a_flat_folder_trains_samples_without_the_folder_and_eval_says_what_applies(
    tmp_path,
):
    from jaxdiff.configs import get_config

    import jaxdiff
    from jaxdiff.evaluation.evaluate import evaluate

    from .conftest import apply_overrides, tiny_overrides

    rng = np.random.default_rng(0)
    for i in range(32):
        write_image(
            str(tmp_path / "faces" / f"{i}.png"), rng.integers(0, 256, (28, 28, 1)).astype(np.uint8)
        )
    config = apply_overrides(get_config("mnist"), tiny_overrides())
    config.data.update(
        dataset="folder", path=str(tmp_path / "faces"), cache_dir=str(tmp_path / "cache")
    )
    config.data.train_split = "train"
    workdir = str(tmp_path / "run")
    jaxdiff.train(config, workdir)
    os.rename(tmp_path / "faces", tmp_path / "gone")
    # The command line's config (no size, no path) is completed from the run's config.json.
    sampling_config = apply_overrides(get_config("mnist"), tiny_overrides())
    sampling_config.data.dataset = "folder"
    images, _ = jaxdiff.load(workdir, config=sampling_config).sample(3)
    assert images.shape == (3, 28, 28, 1)
    with pytest.raises(
        UserError, match=r"has no class labels.*Inception FID only.*inception_weights"
    ):
        evaluate(sampling_config, workdir)
