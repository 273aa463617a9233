"""The feature classifier and --mode=eval, end to end on tiny real runs."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jaxdiff.configs import get_config

from jaxdiff.core.errors import UserError
from jaxdiff.evaluation import metrics
from jaxdiff.evaluation.evaluate import (
    RECORD_KEYS,
    draw_samples,
    evaluate,
    read_records,
    results_table,
    summary_line,
)
from jaxdiff.pipeline import Pipeline
from jaxdiff.training.classifier import load_classifier, random_translate
from jaxdiff.training.workdir import config_changes, read_config, write_config

from .conftest import apply_overrides


def test_random_translate_crops_the_reflect_padded_image_at_the_drawn_offset():
    images = jnp.arange(2 * 5 * 6 * 1, dtype=jnp.float32).reshape(2, 5, 6, 1)
    key = jax.random.key(3)
    shifted = np.asarray(random_translate(key, images, 2))
    offsets = np.asarray(jax.random.randint(key, (2, 2), 0, 5))
    padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    for i, (dy, dx) in enumerate(offsets):
        np.testing.assert_array_equal(shifted[i], padded[i, dy : dy + 5, dx : dx + 6])
    assert shifted.shape == images.shape


def test_tiny_classifier_learns_mnist_and_logs_its_accuracy(tiny_classifier):
    _, workdir, state = tiny_classifier
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    accuracy = records[-1]["accuracy"]
    # Chance is 0.1 (+-0.013 on 500 images); 300 steps of a tiny pooled CNN
    # are far from converged on MNIST (the real config reaches 99%) but clearly above it.
    assert accuracy > 0.2
    classifier = load_classifier(str(workdir), "mnist")
    assert classifier.step == int(state.step) == 300
    measured, count = classifier.accuracy("test[:500]")
    assert count == 500 and measured == pytest.approx(accuracy)
    assert (workdir / "loss.png").exists()


def test_classifier_outputs_are_probabilities_and_penultimate_features(tiny_classifier):
    _, workdir, _ = tiny_classifier
    classifier = load_classifier(str(workdir))
    images = np.random.default_rng(0).integers(0, 256, (7, 28, 28, 1), dtype=np.uint8)
    probs, features = classifier.outputs(images)
    assert probs.shape == (7, 10) and features.shape == (7, 16)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)
    # The logits are the dense layer on the features: the features are the penultimate layer.
    dense = classifier.params["Dense_0"]
    logits = features @ np.asarray(dense["kernel"]) + np.asarray(dense["bias"])
    expected = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(probs, expected / expected.sum(1, keepdims=True), atol=1e-5)


def test_load_classifier_errors_name_the_way_out(tiny_classifier, tiny_run, tmp_path):
    _, classifier_dir, _ = tiny_classifier
    with pytest.raises(UserError, match=r"no trained classifier in .*configs/classifier_mnist\.py"):
        load_classifier(str(tmp_path / "missing"), "mnist")
    with pytest.raises(UserError, match="trained on mnist, not cifar10"):
        load_classifier(str(classifier_dir), "cifar10")
    with pytest.raises(UserError, match="holds a diffusion run, not a classifier"):
        load_classifier(str(tiny_run[1]), "mnist")


def _eval_config(run_config, classifier_dir, **eval_fields):
    config = run_config.copy_and_resolve_references()
    config.eval.classifier_workdir = str(classifier_dir)
    config.eval.num_samples = 20
    config.eval.batch_size = 10
    config.eval.reference_split = "test[:100]"
    for name, value in eval_fields.items():
        config.eval[name] = value
    return config


def test_eval_writes_every_metric_and_they_agree_with_the_metric_functions(
    tiny_run, tiny_classifier, monkeypatch
):
    run_config, workdir, _ = tiny_run
    config = _eval_config(run_config, tiny_classifier[1], bits_per_dim_images=4)
    config.eval.bits_per_dim_steps = 3
    record = evaluate(config, str(workdir))

    (path,) = (workdir / "eval").glob("0000004_euler_maruyama_5nfe_*.json")
    saved = json.loads(path.read_text())
    assert list(saved)[: len(RECORD_KEYS)] == list(RECORD_KEYS)
    assert saved["step"] == 4 and saved["num_samples"] == 20 and saved["nfe"] == 5
    assert saved["sampler"] == "euler_maruyama" and saved["cond_accuracy"] is None
    assert saved["bits_per_dim"] > 0 and np.isfinite(saved["bits_per_dim"])
    assert saved["fid_inception"] is None

    # The same numbers from the saved samples and the metric functions directly.
    classifier = load_classifier(str(tiny_classifier[1]))
    (sample_file,) = (workdir / "eval").glob("samples_*.npz")
    with np.load(sample_file) as samples:  # Two calls of 10, kept in one file.
        assert int(samples["batches"]) == 2
        images = samples["images"]
    _, features = classifier.outputs(images)
    _, test_features = classifier.outputs(_split("test[:100]"))
    _, train_features = classifier.outputs(_split("train[:256]"))
    assert saved["fid"] == pytest.approx(metrics.fid(features, test_features), rel=1e-6)
    assert saved["fid_train"] == pytest.approx(metrics.fid(features, train_features), rel=1e-6)
    assert saved["fid_floor"] == pytest.approx(metrics.fid(test_features, train_features), rel=1e-6)
    assert (saved["precision"], saved["recall"]) == pytest.approx(
        metrics.precision_recall(test_features, features, 3)
    )
    hf_ratio = metrics.high_frequency_ratio(images, _split("test[:100]"))
    assert saved["hf_ratio"] == pytest.approx(hf_ratio, rel=1e-9)
    assert "| step |" in (workdir / "eval" / "results.md").read_text()
    line = summary_line(record)
    assert line.startswith("eval step 4: FID ") and str(path) in line

    # Interrupted or not, the saved calls are reused: a rerun samples nothing.
    monkeypatch.setattr(
        Pipeline, "sample", lambda *a, **k: pytest.fail("sampled although the calls are saved")
    )
    config.eval.bits_per_dim_images = 0
    again = evaluate(config, str(workdir))
    assert again["fid"] == pytest.approx(saved["fid"])


def _split(split):
    from jaxdiff.data import tfds_reader

    return tfds_reader.load_split("mnist", split)[0]


def test_conditional_eval_measures_how_often_samples_are_of_the_requested_class(
    tiny_cond_run, tiny_classifier
):
    run_config, workdir, _ = tiny_cond_run
    config = _eval_config(run_config, tiny_classifier[1])
    config.sampling.guidance_scale = 1.0
    record = evaluate(config, str(workdir))
    (path,) = (workdir / "eval").glob("0000004_euler_maruyama_5nfe_w1_*.json")
    saved = json.loads(path.read_text())
    assert saved["guidance_scale"] == 1.0
    # Two calls of 10: one sample of each class per call, so two per class.
    (sample_file,) = (workdir / "eval").glob("samples_*.npz")
    with np.load(sample_file) as samples:
        labels, images = samples["labels"], samples["images"]
    np.testing.assert_array_equal(np.bincount(labels), np.full(10, 2))
    predicted = load_classifier(str(tiny_classifier[1])).predict(images)
    assert saved["cond_accuracy"] == pytest.approx(np.mean(predicted == labels))
    per_class = saved["cond_accuracy_per_class"]
    assert len(per_class) == 10
    assert np.mean(per_class) == pytest.approx(record["cond_accuracy"])


def test_eval_refuses_impossible_settings_before_sampling(
    tiny_run, tiny_cond_run, tiny_latent_run, tiny_classifier, tmp_path
):
    run_config, workdir, _ = tiny_run
    with pytest.raises(UserError, match="no trained classifier"):
        evaluate(_eval_config(run_config, tmp_path / "none"), str(workdir))
    with pytest.raises(UserError, match=r"eval\.num_samples=3 must exceed eval\.nearest_k=3"):
        evaluate(_eval_config(run_config, tiny_classifier[1], num_samples=3), str(workdir))
    cond_config, cond_dir, _ = tiny_cond_run
    with pytest.raises(UserError, match="multiple of the 10 classes"):
        evaluate(_eval_config(cond_config, tiny_classifier[1], batch_size=15), str(cond_dir))
    latent_config, latent_dir, _ = tiny_latent_run
    with pytest.raises(UserError, match="bits/dim needs a pixel-space model"):
        evaluate(
            _eval_config(latent_config, tiny_classifier[1], bits_per_dim_images=2),
            str(latent_dir),
        )


def test_results_table_has_a_row_per_record_and_only_filled_columns(tmp_path):
    records = [
        {"step": 4, "sampler": "ode", "nfe": 10, "num_samples": 100, "fid": 1.5, "seconds": 3.0},
        {"step": 8, "sampler": "ode", "nfe": 10, "num_samples": 100, "fid": 0.5, "seconds": 2.0},
    ]
    for record in records:
        (tmp_path / f"{record['step']:07d}.json").write_text(json.dumps(record))
    table = results_table(read_records(str(tmp_path)))
    lines = table.strip().splitlines()
    assert lines[0] == "| step | sampler | NFE | samples | FID | seconds |"
    assert lines[2] == "| 4 | ode | 10 | 100 | 1.500 | 3 |"
    assert lines[3] == "| 8 | ode | 10 | 100 | 0.500 | 2 |"


def test_resuming_ignores_fields_added_since_at_their_defaults_and_other_tasks_groups(
    tiny_run, tmp_path
):
    config = read_config(str(tiny_run[1]))
    write_config(config, str(tmp_path))
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["eval"], saved["classifier"]["label_smoothing"]
    saved["sampling"].pop("trajectory_frames")
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert config_changes(config, str(tmp_path)) == []
    config.sampling.trajectory_frames = 5  # Safe anyway (sampling.*).
    config.classifier.num_steps = 1  # Not read by a diffusion run.
    assert config_changes(config, str(tmp_path)) == []
    config.model.embed_dim = 32
    assert [c[0] for c in config_changes(config, str(tmp_path))] == ["model.embed_dim"]
    classifier_config = apply_overrides(get_config("classifier_mnist"), {})
    write_config(classifier_config, str(tmp_path))
    classifier_config.model.embed_dim = 8  # A classifier run does not read model.*.
    classifier_config.classifier.label_smoothing = 0.2
    changes = config_changes(classifier_config, str(tmp_path))
    assert [c[0] for c in changes] == ["classifier.label_smoothing"]


class _CountingPipeline:
    """Stands in for a Pipeline: images that encode their seed, and a count of sampler calls."""

    def __init__(self, num_classes: int = 0, fail_at_call: int | None = None):
        self.config = get_config("mnist_cond" if num_classes else "mnist")
        self.config.eval.num_samples, self.config.eval.batch_size = 25, 10
        self.experiment = type("Experiment", (), {"num_classes": num_classes})()
        self.step, self.calls, self.fail_at_call = 7, 0, fail_at_call

    def sample(self, num, prompt, seed):
        if self.calls == self.fail_at_call:
            raise KeyboardInterrupt  # An interruption between two calls.
        self.calls += 1
        classes = len(prompt) if isinstance(prompt, list) else 1
        images = np.full((num * classes, 2, 2, 1), seed, np.uint8)
        labels = np.repeat(prompt if classes > 1 else [-1], num).astype(np.int32)
        return images, labels


def test_eval_samples_resume_after_an_interruption_and_equal_an_uninterrupted_draw(tmp_path):
    whole = draw_samples(_CountingPipeline(), str(tmp_path / "whole.npz"))
    seed = get_config("mnist").seed
    # Three calls of 10 (the last cut to 5), each with the seed of its index.
    assert [int(v) for v in whole[0][::10, 0, 0, 0]] == [seed + 1, seed + 2, seed + 3]
    assert len(whole[0]) == 25 and (whole[1] == -1).all()

    path = str(tmp_path / "interrupted.npz")
    with pytest.raises(KeyboardInterrupt):
        draw_samples(_CountingPipeline(fail_at_call=2), path)
    resumed = _CountingPipeline()
    again = draw_samples(resumed, path)
    assert resumed.calls == 1  # Only the call that was missing.
    np.testing.assert_array_equal(again[0], whole[0])
    np.testing.assert_array_equal(again[1], whole[1])

    # Other settings (here another seed) do not reuse the file.
    other = _CountingPipeline()
    other.config.seed += 1
    draw_samples(other, path)
    assert other.calls == 3


def test_conditional_eval_samples_draw_every_class_per_call(tmp_path):
    images, labels = draw_samples(_CountingPipeline(num_classes=10), str(tmp_path / "s.npz"))
    assert len(images) == 25
    np.testing.assert_array_equal(labels[:20], np.tile(np.repeat(np.arange(10), 1), 2))
