"""`--mode=eval`: sample-quality metrics of a score model's checkpoint (the latest, or --step).

Draws `eval.num_samples` samples in calls of `eval.batch_size` (each call's
samples saved under `workdir/eval/samples_<step>_<settings>/`, so an
interrupted evaluation resumes), measures them with the feature classifier
(FID against the reference and train splits with the test-vs-train floor,
classifier inception score, precision/recall, conditional accuracy), and
optionally bits/dim of test images through the probability-flow ODE and
InceptionV3 FID. Writes `workdir/eval/<step>.json` (`<step>_w<guidance>.json`
for a conditional model) and `workdir/eval/results.md` (every evaluation of
the run as a table row).
"""

import hashlib
import itertools
import json
import logging
import math
import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdiff import sampling
from jaxdiff.core import random
from jaxdiff.core.compiler import jit
from jaxdiff.core.errors import UserError
from jaxdiff.core.progress import Progress
from jaxdiff.data import datasets
from jaxdiff.data.batches import map_in_chunks
from jaxdiff.diffusion import likelihood
from jaxdiff.diffusion.preconditioning import make_score_fn
from jaxdiff.evaluation import metrics
from jaxdiff.experiment import Experiment
from jaxdiff.generation import SampleFile, defining_settings
from jaxdiff.pipeline import Pipeline, load
from jaxdiff.training.classifier import (
    TrainedClassifier,
    load_classifier,
    reference_features,
    same_data,
)

logger = logging.getLogger("jaxdiff")

EVAL_DIR = "eval"
RESULTS_TABLE = "results.md"
# The keys every evaluation record has, in this order (None where a metric does not apply).
RECORD_KEYS = (
    "step",
    "num_samples",
    "sampler",
    "nfe",
    "fid",
    "fid_floor",
    "inception_score",
    "precision",
    "recall",
    "hf_ratio",
    "cond_accuracy",
    "bits_per_dim",
    "seconds",
)
# Columns of results.md: (record key, heading, format).
_TABLE_COLUMNS = (
    ("step", "step", "{:d}"),
    ("guidance_scale", "w", "{:g}"),
    ("sampler", "sampler", "{}"),
    ("nfe", "NFE", "{:d}"),
    ("num_samples", "samples", "{:,}"),
    ("fid", "FID", "{:.3f}"),
    ("fid_train", "FID (train)", "{:.3f}"),
    ("fid_floor", "floor", "{:.3f}"),
    ("inception_score", "IS", "{:.3f}"),
    ("precision", "precision", "{:.3f}"),
    ("recall", "recall", "{:.3f}"),
    ("hf_ratio", "HF ratio", "{:.3f}"),
    ("cond_accuracy", "cond. acc.", "{:.4f}"),
    ("bits_per_dim", "bits/dim", "{:.3f}"),
    ("fid_inception", "FID (Inception)", "{:.2f}"),
    ("seconds", "seconds", "{:.0f}"),
)


def _check_eval_config(config: ml_collections.ConfigDict, experiment: Experiment) -> None:
    e = config.eval
    num_classes = experiment.num_classes
    for field in ("num_samples", "batch_size", "nearest_k", "bits_per_dim_steps"):
        if e[field] < 1:
            raise UserError(f"eval.{field} must be positive, got {e[field]}")
    if e.bits_per_dim_images < 0:
        raise UserError(f"eval.bits_per_dim_images must be >= 0, got {e.bits_per_dim_images}")
    if e.num_samples <= e.nearest_k:
        raise UserError(
            f"eval.num_samples={e.num_samples} must exceed eval.nearest_k={e.nearest_k}"
        )
    if num_classes and e.batch_size % num_classes:
        raise UserError(
            f"eval.batch_size={e.batch_size} must be a multiple of the {num_classes} classes "
            "(each call draws the same number of every class)"
        )
    if e.bits_per_dim_images and experiment.autoencoder is not None:
        raise UserError(
            "bits/dim needs a pixel-space model; this run is latent diffusion "
            "(set --config.eval.bits_per_dim_images=0)"
        )
    if e.inception_weights and not os.path.isfile(os.path.expanduser(e.inception_weights)):
        raise UserError(f"eval.inception_weights: no such file {e.inception_weights}")


def _check_classifier_fits(classifier: TrainedClassifier, experiment: Experiment) -> None:
    """A classifier of other data measures a run only with the same image shape and classes.

    Class names match up to case, punctuation and a numbering prefix ("7_Sneaker"
    is "Sneaker"), in the same order.
    """
    info = datasets.dataset_info(classifier.config.data)

    def names(classes):
        return [re.sub(r"[^0-9a-z]", "", re.sub(r"^\d+_", "", n.lower())) for n in classes]

    if info.image_shape != experiment.image_shape or names(info.class_names) != names(
        experiment.dataset.class_names
    ):
        raise UserError(
            f"the classifier in {classifier.workdir} was trained on {info.label}, "
            f"{'x'.join(map(str, info.image_shape))} images of the classes "
            f"{', '.join(info.class_names)}; this run's data ({experiment.dataset.label}) differs"
        )


def classifier_workdir(config: ml_collections.ConfigDict) -> str:
    """`eval.classifier_workdir`, or runs/classifier_<dataset> (a folder: its name) when empty."""
    c = config.data
    name = c.dataset
    if name == datasets.FOLDER:
        name = os.path.basename(os.path.normpath(os.path.expanduser(c.path))) or name
    return config.eval.classifier_workdir or os.path.join("runs", f"classifier_{name}")


def _sample_settings(pipeline: Pipeline) -> dict[str, Any]:
    """What decides the evaluation's samples, beside the index of the call.

    The evaluation chooses the number and the classes itself; an
    unconditional model ignores the guidance scale.
    """
    config = pipeline.config
    sampling = defining_settings(config.sampling, with_prompt=False)
    if not pipeline.experiment.num_classes:
        sampling.pop("guidance_scale", None)
    return {
        "step": pipeline.step,
        "seed": config.seed,
        "batch_size": config.eval.batch_size,
        "sampling": sampling,
    }


def draw_samples(pipeline: Pipeline, path: str) -> tuple[np.ndarray, np.ndarray]:
    """`eval.num_samples` samples and their classes (-1: unconditional), resumably.

    Call i draws `eval.batch_size` samples with seed `random.eval_call_seed(config.seed, i)`
    (a conditional model: the same number of each class). The samples drawn so
    far are kept in `path`, a `generation.SampleFile`, after each call; a rerun
    reads them back, so the samples do not depend on interruptions. Reports
    progress (samples, rate, time left) after each call it draws.
    """
    config = pipeline.config
    e = config.eval
    num_classes = pipeline.experiment.num_classes
    num_calls = math.ceil(e.num_samples / e.batch_size)
    is_main = jax.process_index() == 0
    store = SampleFile(path, _sample_settings(pipeline))
    saved = store.read()
    images, labels, first_call = (
        ([saved[0]], [saved[1]], saved[2]) if saved is not None else ([], [], 0)
    )
    done = min(e.num_samples, first_call * e.batch_size)
    progress = Progress(e.num_samples, "samples", "eval", initial=done)
    with progress:
        for call in range(first_call, num_calls):
            seed = random.eval_call_seed(config.seed, call)
            if num_classes:
                batch_images, batch_labels = pipeline.sample(
                    e.batch_size // num_classes, prompt=list(range(num_classes)), seed=seed
                )
            else:
                batch_images, batch_labels = pipeline.sample(e.batch_size, prompt="", seed=seed)
            images.append(batch_images)
            labels.append(batch_labels)
            if is_main:
                store.write(np.concatenate(images), np.concatenate(labels), call + 1)
            done = min(e.num_samples, (call + 1) * e.batch_size)
            progress.update(done)
    return (
        np.concatenate(images)[: e.num_samples],
        np.concatenate(labels)[: e.num_samples],
    )


def classifier_metrics(
    classifier: TrainedClassifier,
    images: np.ndarray,
    labels: np.ndarray,
    reference: dict[str, np.ndarray],
    train: dict[str, np.ndarray],
    nearest_k: int,
) -> dict[str, Any]:
    """FID (reference, train, floor), inception score, precision/recall, conditional accuracy.

    `reference` and `train` are `reference_features` of two real splits;
    `labels` are the requested classes (-1 where unconditional).
    """
    probs, features = classifier.outputs(images)
    score, score_std = metrics.inception_score(probs)
    precision, recall = metrics.precision_recall(reference["features"], features, nearest_k)
    result = {
        "fid": metrics.fid(features, reference["features"]),
        "fid_train": metrics.fid(features, train["features"]),
        "fid_floor": metrics.fid(reference["features"], train["features"]),
        "inception_score": score,
        "inception_score_std": score_std,
        "precision": precision,
        "recall": recall,
        "cond_accuracy": None,
        "cond_accuracy_per_class": None,
    }
    if (labels >= 0).all():
        overall, per_class = metrics.classifier_accuracy(probs, labels)
        result["cond_accuracy"] = overall
        result["cond_accuracy_per_class"] = [float(a) for a in per_class]
    return result


def record_stem(pipeline: Pipeline, tag: str) -> str:
    """`<step>_<sampler>_<NFE>nfe[_w<guidance>]_<N>samples_<tag>`: one record per setting.

    `tag` names the other settings that decide the samples (seed, sampler
    fields), so evaluations of one checkpoint with other samplers, seeds or
    sample counts each keep their record and row in results.md.
    """
    config = pipeline.config
    nfe = sampling.num_function_evals(config.sampling)
    stem = f"{pipeline.step:07d}_{config.sampling.sampler}_{nfe}nfe"
    if pipeline.experiment.num_classes:
        stem += f"_w{config.sampling.guidance_scale:g}"
    return f"{stem}_{config.eval.num_samples}samples_{tag}"


def evaluate(
    config: ml_collections.ConfigDict, workdir: str, step: int | None = None
) -> dict[str, Any]:
    """`--mode=eval`: evaluates checkpoint `step` of `workdir` (None: the latest); the record.

    Raises:
      UserError: no checkpoint, no trained classifier of the dataset, impossible settings.
    """
    start = time.perf_counter()
    pipeline = load(workdir, step=step, config=config)
    config = pipeline.config
    e = config.eval
    experiment = pipeline.experiment
    _check_eval_config(config, experiment)
    if not experiment.dataset.class_names:
        # No labels: no classifier to measure with; only Inception FID applies.
        if not e.inception_weights:
            raise UserError(
                f"{experiment.dataset.label} has no class labels, so no feature classifier can "
                "be trained on it: --mode=eval measures Inception FID only; set "
                "eval.inception_weights to pytorch-fid's weights (docs/evaluation.md)"
            )
        classifier = None
    else:
        # A classifier named explicitly may come from another copy of the same images
        # (a TFDS dataset exported as a folder): its input shape and classes must match.
        named = bool(e.classifier_workdir)
        classifier = load_classifier(
            classifier_workdir(config), config.data, same_data_required=not named
        )
        if named and not same_data(classifier.config.data, config.data):
            _check_classifier_fits(classifier, experiment)
    settings = json.dumps(_sample_settings(pipeline), sort_keys=True)
    tag = hashlib.sha1(settings.encode()).hexdigest()[:10]
    directory = os.path.join(pipeline.workdir, EVAL_DIR)
    images, labels = draw_samples(
        pipeline, os.path.join(directory, f"samples_{pipeline.step:07d}_{tag}.npz")
    )
    sampling_seconds = time.perf_counter() - start
    record: dict[str, Any] = {
        "step": pipeline.step,
        "num_samples": len(images),
        "sampler": config.sampling.sampler,
        "nfe": sampling.num_function_evals(config.sampling),
        "guidance_scale": config.sampling.guidance_scale if experiment.num_classes else None,
        "reference_split": e.reference_split,
        "classifier": None,
    }
    if classifier is not None:
        record["classifier"] = {"workdir": classifier.workdir, "step": classifier.step}
        reference = reference_features(classifier, e.reference_split)
        train = reference_features(classifier, config.data.train_split)
        record.update(classifier_metrics(classifier, images, labels, reference, train, e.nearest_k))
    # Grain and blur that the classifier's features miss (metrics.high_frequency_ratio).
    real_images, _ = datasets.read_split(config.data, e.reference_split)
    record["hf_ratio"] = metrics.high_frequency_ratio(images, real_images)
    record["bits_per_dim"] = None
    if e.bits_per_dim_images:
        record["bits_per_dim"] = bits_per_dim_of_split(pipeline, e.bits_per_dim_images)
        record["bits_per_dim_images"] = e.bits_per_dim_images
    record["fid_inception"] = None
    if e.inception_weights:
        record["fid_inception"] = inception_fid(e.inception_weights, images, config, directory)
    record["sampling_seconds"] = sampling_seconds
    record["seconds"] = time.perf_counter() - start
    record = {key: record.get(key) for key in RECORD_KEYS} | record
    if jax.process_index() == 0:
        path = os.path.join(directory, record_stem(pipeline, tag) + ".json")
        with open(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
        os.replace(path + ".tmp", path)
        write_results_table(directory)
        record["path"] = path
    return record


# Test images per compiled likelihood call.
_LIKELIHOOD_BATCH = 250


def bits_per_dim_of_split(pipeline: Pipeline, num_images: int, split: str = "test") -> float:
    """Mean bits/dim of the first `num_images` images of a split, by the probability-flow ODE.

    Uniform dequantization and Hutchinson's trace estimator (`jaxdiff.diffusion.likelihood`),
    `eval.bits_per_dim_steps` Heun steps from `training.eps` to 1. A
    conditional model is evaluated unconditionally (the null label).

    Raises:
      UserError: for latent diffusion, whose density is over latents, not pixels.
    """
    if pipeline.autoencoder is not None:
        raise UserError("bits/dim needs a pixel-space model; this run is latent diffusion")
    config = pipeline.config
    experiment = pipeline.experiment
    images, _ = datasets.read_split(config.data, f"{split}[:{num_images}]")
    batch = min(_LIKELIHOOD_BATCH, len(images))
    num_classes = experiment.num_classes

    @jit
    def per_example(params, key, batch_images):
        labels = None
        if num_classes:
            labels = jnp.full(batch_images.shape[:1], num_classes, jnp.int32)
        score_fn = make_score_fn(
            experiment.model, params, experiment.sde, config.model, labels=labels
        )
        return likelihood.bits_per_dim(
            key,
            score_fn,
            experiment.sde,
            batch_images,
            centered=config.data.centered,
            num_steps=config.eval.bits_per_dim_steps,
            eps=config.training.eps,
        )

    key = random.stream(config.seed, random.Stream.LIKELIHOOD)
    keys = (jax.random.fold_in(key, index) for index in itertools.count())
    logger.info("eval: bits/dim of %d images", len(images))
    bpd = map_in_chunks(
        lambda chunk: per_example(pipeline.params, next(keys), chunk), images, batch
    )
    return float(np.mean(bpd))


def inception_fid(
    weights: str, images: np.ndarray, config: ml_collections.ConfigDict, cache_dir: str
) -> float:
    """FID in InceptionV3 pool3 features (pytorch-fid's weights) against the reference split.

    The reference split's features are cached in `cache_dir`.
    """
    from jaxdiff.models.inception import (  # Only with weights.
        inception_features,
        load_inception_params,
    )

    variables = load_inception_params(os.path.expanduser(weights))
    split = config.eval.reference_split
    path = os.path.join(cache_dir, f"inception_{split.replace(':', '_')}.npz")
    if os.path.exists(path):
        with np.load(path) as cached:
            reference = cached["features"]
    else:
        real, _ = datasets.read_split(config.data, split)
        reference = inception_features(variables, real)
        if jax.process_index() == 0:
            with open(path + ".tmp", "wb") as f:
                np.savez(f, features=reference)
            os.replace(path + ".tmp", path)
    return metrics.fid(inception_features(variables, images), reference)


def read_records(directory: str) -> list[dict[str, Any]]:
    """Every evaluation record (`<step>*.json`) in an eval directory, by step then guidance."""
    records = []
    for name in sorted(os.listdir(directory)):
        if name.endswith(".json") and name[0].isdigit():
            with open(os.path.join(directory, name)) as f:
                records.append(json.load(f))
    return sorted(records, key=lambda r: (r["step"], r.get("guidance_scale") or 0.0))


def results_table(records: list[dict[str, Any]]) -> str:
    """Evaluation records as a markdown table (columns without any value are left out)."""
    columns = [c for c in _TABLE_COLUMNS if any(r.get(c[0]) is not None for r in records)]
    lines = [
        "| " + " | ".join(heading for _, heading, _ in columns) + " |",
        "|" + "---|" * len(columns),
    ]
    for r in records:
        cells = [fmt.format(r[key]) if r.get(key) is not None else "" for key, _, fmt in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_results_table(directory: str) -> str:
    """Rewrites `directory/results.md` from its records; returns its path."""
    path = os.path.join(directory, RESULTS_TABLE)
    with open(path + ".tmp", "w") as f:
        f.write(results_table(read_records(directory)))
    os.replace(path + ".tmp", path)
    return path


def summary_line(record: dict[str, Any]) -> str:
    """The one-line summary `--mode=eval` prints."""

    def value(key, fmt):
        return "n/a" if record.get(key) is None else fmt.format(record[key])

    guidance = record.get("guidance_scale")
    return (
        f"eval step {record['step']}: FID {value('fid', '{:.3f}')} "
        f"(vs train {value('fid_train', '{:.3f}')}, floor {value('fid_floor', '{:.3f}')})  "
        f"IS {value('inception_score', '{:.3f}')}  precision {value('precision', '{:.3f}')}  "
        f"recall {value('recall', '{:.3f}')}  HF ratio {value('hf_ratio', '{:.3f}')}  "
        f"cond. accuracy {value('cond_accuracy', '{:.4f}')}  "
        f"bits/dim {value('bits_per_dim', '{:.3f}')}"
        + (
            f"  FID (Inception) {record['fid_inception']:.2f}"
            if record.get("fid_inception")
            else ""
        )
        + f"  | {record['num_samples']:,} samples, {record['sampler']} {record['nfe']} NFE"
        + (f", w={guidance:g}" if guidance is not None else "")
        + f", {record['seconds']:.0f} s"
        + (f" -> {record['path']}" if record.get("path") else "")
    )
