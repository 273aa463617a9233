"""The feature classifier: training (config.task = "classifier") and use by the evaluation.

Trained on the train split with the machinery of the score models (the same
loop, optimizer, checkpoints, lock and stop handling); its EMA parameters
classify. `load_classifier` gives the evaluation a trained one, and
`reference_features` the features of a real split, cached in the
classifier's workdir (they depend only on the classifier).
"""

import contextlib
import dataclasses
import functools
import logging
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxdiff.core import parallel, random
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError, shell_command
from jaxdiff.data import batches, datasets, streaming
from jaxdiff.experiment import check_optimization
from jaxdiff.models.classifier import Classifier
from jaxdiff.training.checkpoint import Checkpointer
from jaxdiff.training.loop import TrainCall, TrainData, apply_update
from jaxdiff.training.loss_curve import write_loss_curves
from jaxdiff.training.reporting import MetricsLog
from jaxdiff.training.state import TrainState, abstract_state, create_optimizer, init_state
from jaxdiff.training.trainer import Trainer
from jaxdiff.training.workdir import read_config, training_workdir

logger = logging.getLogger("jaxdiff")

# The split --mode=eval measures a classifier's accuracy on.
TEST_SPLIT = "test"


def create_classifier(config: ml_collections.ConfigDict) -> Classifier:
    """Builds the classifier of `config.classifier` for `config.data.dataset`.

    What the dataset's metadata tells (image shape, class names) is recorded in
    `config.data` (see `datasets.record`).

    Raises:
      UserError: an unknown dataset, one without labels, or impossible sizes.
    """
    c = config.classifier
    dataset = datasets.dataset_info(config.data, need_labels=True)
    datasets.record(config.data, dataset)
    image_shape, num_classes = dataset.image_shape, dataset.num_classes
    channels = tuple(c.channels)
    if not channels or min(channels) < 1:
        raise UserError(f"classifier.channels must be positive widths, got {channels}")
    if c.norm_groups < 1:
        raise UserError(f"classifier.norm_groups must be positive, got {c.norm_groups}")
    if c.num_res_blocks < 1:
        raise UserError(f"classifier.num_res_blocks must be positive, got {c.num_res_blocks}")
    if min(image_shape[:2]) < 2 ** (len(channels) - 1):
        raise UserError(
            f"classifier.channels={channels} has more stages than {dataset.label}'s "
            f"{image_shape[0]}x{image_shape[1]} images can halve into"
        )
    if not 0.0 <= c.label_smoothing < 1.0:
        raise UserError(f"classifier.label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if not 0 <= c.random_crop < min(image_shape[:2]):
        raise UserError(f"classifier.random_crop must be in [0, image side), got {c.random_crop}")
    return Classifier(
        num_classes=num_classes,
        channels=channels,
        num_res_blocks=c.num_res_blocks,
        norm_groups=c.norm_groups,
        dtype=jnp.bfloat16 if c.half_precision else jnp.float32,
    )


def _create_state(key, model: Classifier, image_shape, tx) -> TrainState:
    return init_state(model.init(key, jnp.zeros((1, *image_shape)))["params"], tx)


def random_translate(key: jax.Array, images: jax.Array, pad: int) -> jax.Array:
    """Shifts each image by up to `pad` pixels each way (reflect-padded, cropped back)."""
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect")
    offsets = jax.random.randint(key, (batch, 2), 0, 2 * pad + 1)

    def crop(image, offset):
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def classifier_step(
    state: TrainState,
    key: jax.Array,
    dataset: TrainData,
    *,
    model: Classifier,
    tx: optax.GradientTransformation,
    config: ml_collections.ConfigDict,
    batch_sharding: jax.sharding.NamedSharding,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step of the classifier on an augmented batch drawn on device. Pure."""
    c = config.classifier
    batch_key, crop_key = random.step_keys(key, state.step)
    x, labels = batches.draw_batch(
        batch_key,
        dataset,
        c.batch_size,
        batch_sharding,
        config.data.random_flip,
        config.data.centered,
    )
    if c.random_crop:
        x = random_translate(crop_key, x, c.random_crop)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, model.num_classes), c.label_smoothing)

    def loss_fn(params):
        logits, _ = model.apply({"params": params}, x)
        loss = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == labels)

    (loss, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_update(state, grads, tx, c.ema_decay, c.on_nonfinite == "skip")
    return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), "accuracy": accuracy}


def check_classifier_config(config: ml_collections.ConfigDict) -> tuple[Classifier, Any]:
    """Validates a classifier config (resolving steps_per_call); returns (model, mesh)."""
    model = create_classifier(config)
    mesh = parallel.create_mesh()
    check_optimization(config.classifier, "classifier", mesh.size)
    return model, mesh


def train_classifier(
    config: ml_collections.ConfigDict,
    workdir: str,
    allow_config_change: bool = False,
    config_name: str | None = None,
) -> TrainState:
    """Trains (or resumes) the feature classifier in `workdir`, then measures test accuracy.

    The workdir holds what a score model's does: `config.json`,
    `metrics.jsonl` (the last record: the accuracy on `classifier.eval_split`), `checkpoints/`,
    `loss.png`, `summary.json` (recording `config_name` if given); it is locked
    while training and a stop signal saves a checkpoint, as in `train_and_evaluate`.

    Returns:
      The final train state.
    """
    config = config.copy_and_resolve_references()
    model, mesh = check_classifier_config(config)
    images, labels = datasets.read_split(config.data, config.data.train_split)
    with training_workdir(config, workdir, allow_config_change) as workdir:
        trainer = ClassifierTrainer(config, model, mesh, workdir, images, labels, config_name)
        return trainer.train()


class ClassifierTrainer(Trainer):
    """The feature classifier's training in its workdir, then its accuracy on `eval_split`."""

    name = "classifier"
    group_name = "classifier"
    init_stream = random.Stream.CLASSIFIER_INIT
    train_stream = random.Stream.CLASSIFIER_TRAINING

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        model: Classifier,
        mesh: jax.sharding.Mesh,
        workdir: str,
        images: np.ndarray,
        labels: np.ndarray,
        config_name: str | None = None,
    ):
        super().__init__(config, mesh, workdir, config_name=config_name)
        self.model = model
        self.images, self.labels = images, labels

    def create_state(self, key: jax.Array) -> TrainState:
        return _create_state(key, self.model, self.images.shape[1:], self.tx)

    def train_call(self) -> TrainCall:
        return self.compile_steps(classifier_step, model=self.model)

    def training_data(self) -> batches.DeviceDataset | streaming.HostStream:
        return self.place_data(self.images, self.labels, random.step_batch_key, "classifier data")

    def resume(self, state: TrainState, checkpoint_dir: str) -> bool:
        logger.info("Classifier: resumed from step %d", int(state.step))
        return True

    def on_checkpoint(self, step: int, state: TrainState, metrics_log: MetricsLog) -> None:
        if self.is_main:
            write_loss_curves(self.directory, "classifier")

    def evaluate(self, state: TrainState, metrics_log: MetricsLog) -> None:
        """Writes the accuracy on `classifier.eval_split` as the last metrics record."""
        split, step = self.group.eval_split, int(state.step)
        trained = TrainedClassifier(self.config, self.model, state.ema_params, self.directory, step)
        accuracy, count = trained.accuracy(split)
        metrics_log.write(step, {"accuracy": accuracy})
        logger.info("Classifier on %s (%d images): accuracy %.2f%%", split, count, 100 * accuracy)


@dataclasses.dataclass
class TrainedClassifier:
    """A trained feature classifier's EMA parameters, ready to classify uint8 images."""

    config: ml_collections.ConfigDict
    model: Classifier
    params: Any
    workdir: str
    step: int
    _apply: Any = dataclasses.field(default=None, repr=False)

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 images (N, H, W, C) -> class probabilities (N, K) and features (N, D)."""
        if self._apply is None:
            centered = self.config.data.centered

            @jit
            def apply(params, batch):
                logits, features = self.model.apply(
                    {"params": params}, batches.to_model_range(batch, centered)
                )
                return jax.nn.softmax(logits.astype(jnp.float32)), features

            self._apply = apply
        return batches.map_in_chunks(functools.partial(self._apply, self.params), images)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """The most probable class of each uint8 image."""
        return np.argmax(self.outputs(images)[0], axis=-1)

    def accuracy(self, split: str = TEST_SPLIT) -> tuple[float, int]:
        """(accuracy, number of images) on a split of the dataset."""
        images, labels = datasets.read_split(self.config.data, split)
        return float(np.mean(self.predict(images) == labels)), len(labels)


def load_classifier(
    workdir: str,
    data_config: ml_collections.ConfigDict | str | None = None,
    same_data_required: bool = True,
) -> TrainedClassifier:
    """The trained classifier in `workdir` (its latest checkpoint's EMA parameters).

    Args:
      workdir: the classifier's run.
      data_config: the data the caller measures (a `data` config group or a
        dataset name); None: any.
      same_data_required: refuse a classifier of other data than `data_config`
        (else `data_config` only shapes the messages).

    Raises:
      UserError: no such workdir or checkpoint, not a classifier run, or a
        classifier of another dataset than `data_config` describes.
    """
    if data_config is not None:
        data_config = datasets.data_config(data_config)
    workdir = os.path.abspath(workdir)
    hint = f"train one with: {_training_command(data_config, workdir)}"
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
        raise UserError(f"no trained classifier in {workdir}; {hint}")
    config = read_config(workdir)
    if config.task != "classifier":
        raise UserError(f"{workdir} holds a {config.task} run, not a classifier; {hint}")
    if same_data_required and data_config is not None and not same_data(config.data, data_config):
        raise UserError(
            f"the classifier in {workdir} was trained on {_describe(config.data)}, "
            f"not {_describe(data_config)}; {hint}"
        )
    model, mesh = check_classifier_config(config)
    image_shape = datasets.dataset_info(config.data).image_shape
    tx = create_optimizer(config.classifier)
    abstract = abstract_state(
        functools.partial(_create_state, jax.random.key(0), model, image_shape, tx), mesh
    )
    checkpointer = Checkpointer(workdir, create=False)
    try:
        if checkpointer.latest_step() is None:
            raise UserError(f"no classifier checkpoint in {checkpointer.directory}; {hint}")
        state = checkpointer.restore(abstract)
    finally:
        checkpointer.close()
    if int(state.step) < config.classifier.num_steps:
        logger.warning(
            "The classifier in %s stopped at step %d of %d: its metrics are not final",
            workdir,
            int(state.step),
            config.classifier.num_steps,
        )
    return TrainedClassifier(config, model, state.ema_params, workdir, int(state.step))


def same_data(a: ml_collections.ConfigDict, b: ml_collections.ConfigDict) -> bool:
    """Whether two data configs name the same images at the same size (a folder: the same path)."""
    fields = ("dataset", "image_size", "channels")
    paths = [os.path.abspath(os.path.expanduser(c.path)) for c in (a, b)]
    if a.dataset == datasets.FOLDER and paths[0] != paths[1]:
        return False
    return all(a[f] == b[f] or 0 in (a[f], b[f]) for f in fields)


def _training_command(data_config: ml_collections.ConfigDict | None, workdir: str) -> str:
    """The command that trains a classifier of `data_config`'s data into `workdir`."""
    dataset = "<dataset>" if data_config is None else data_config.dataset
    if dataset in datasets.BUILTIN_SHAPES or dataset == "<dataset>":
        config, data = f"configs/classifier_{dataset}.py", []
    elif dataset == datasets.FOLDER:
        config, data = "configs/folder64.py:classifier", [f"--config.data.path={data_config.path}"]
    else:
        config, data = "configs/classifier_cifar10.py", [f"--config.data.dataset={dataset}"]
    if data_config is not None and data_config.image_size:
        data.append(f"--config.data.image_size={data_config.image_size}")
    return shell_command("python", "main.py", f"--config={config}", *data, f"--workdir={workdir}")


def _describe(data_config: ml_collections.ConfigDict) -> str:
    c = data_config
    name = f"folder {c.path}" if c.dataset == datasets.FOLDER else c.dataset
    return name + (f" at {c.image_size}x{c.image_size}" if c.image_size else "")


def test_accuracy_line(workdir: str, config: ml_collections.ConfigDict) -> str:
    """`--mode=eval` of a classifier run: its test accuracy, as one line."""
    classifier = load_classifier(workdir, config.data)
    accuracy, count = classifier.accuracy(TEST_SPLIT)
    return (
        f"classifier step {classifier.step}: {_describe(config.data)} {TEST_SPLIT} accuracy "
        f"{100 * accuracy:.2f}% ({count:,} images)"
    )


def reference_features(classifier: TrainedClassifier, split: str) -> dict[str, np.ndarray]:
    """Probabilities, features and labels of a real split, cached in the classifier's workdir.

    The cache (`features/<split>_<step>.npz`) is written atomically and only
    by process 0; an unwritable classifier workdir just means no cache.
    """
    directory = os.path.join(classifier.workdir, "features")
    path = os.path.join(directory, f"{split.replace(':', '_')}_{classifier.step:07d}.npz")
    if os.path.exists(path):
        with np.load(path) as cached:
            return dict(cached)
    images, labels = datasets.read_split(classifier.config.data, split)
    probs, features = classifier.outputs(images)
    result = {"probs": probs, "features": features, "labels": labels}
    if jax.process_index() == 0:
        with contextlib.suppress(OSError):
            os.makedirs(directory, exist_ok=True)
            with open(path + ".tmp", "wb") as f:
                np.savez(f, **result)
            os.replace(path + ".tmp", path)
    return result
