"""Sample-quality metrics against closed forms, scipy references and hand-computed cases."""

import tracemalloc

import numpy as np
import pytest
import scipy.linalg
from scipy.spatial.distance import cdist
from scipy.stats import ortho_group

from jaxdiff.evaluation import metrics
from jaxdiff.evaluation.metrics import (
    classifier_accuracy,
    feature_statistics,
    fid,
    frechet_distance,
    inception_score,
    precision_recall,
    sqrtm_psd,
)


def random_spd(dim, seed):
    """A random symmetric positive-definite matrix with a spread of eigenvalues."""
    rng = np.random.default_rng(seed)
    factor = rng.normal(size=(dim, dim))
    return factor @ factor.T / dim + 0.1 * np.eye(dim)


def scipy_frechet_distance(mu1, sigma1, mu2, sigma2):
    """The reference FID formula, with scipy's general (non-symmetric) matrix square root."""
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    return np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * np.real(covmean))


# --- feature statistics and FID -------------------------------------------------------


def test_feature_statistics_are_the_mean_and_unbiased_covariance():
    features = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 8.0]])
    mu, sigma = feature_statistics(features.astype(np.float32))
    assert mu.dtype == sigma.dtype == np.float64
    np.testing.assert_allclose(mu, [2.0, 4.0])
    # Deviations (-2, -3), (0, -1), (2, 4); sums of products divided by N - 1 = 2.
    np.testing.assert_allclose(sigma, [[4.0, 7.0], [7.0, 13.0]])


@pytest.mark.parametrize(("num_samples", "dim"), [(500, 64), (40, 64), (2000, 1)])
@pytest.mark.parametrize("scale", [1.0, 300.0])
def test_fid_of_a_set_against_itself_is_zero(num_samples, dim, scale):
    rng = np.random.default_rng(num_samples + dim)
    # Correlated features; 40 samples in 64 dims give a singular covariance.
    features = scale * rng.normal(size=(num_samples, dim)) @ rng.normal(size=(dim, dim))
    _, sigma = feature_statistics(features)
    assert abs(fid(features, features)) < 1e-6 * np.trace(sigma)


def test_frechet_distance_of_diagonal_gaussians_matches_closed_form():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.5])
    var1, var2 = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    # For commuting covariances: ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    expected = (1.0 + 0.0 + 6.25) + (4.0 + 1.0 + 0.0)
    distance = frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2))
    np.testing.assert_allclose(distance, expected, rtol=1e-12)


def test_frechet_distance_of_commuting_gaussians_matches_closed_form():
    dim = 6
    rotation = ortho_group.rvs(dim, random_state=3)
    rng = np.random.default_rng(3)
    eig1, eig2 = rng.uniform(0.1, 5.0, dim), rng.uniform(0.1, 5.0, dim)
    sigma1 = rotation @ np.diag(eig1) @ rotation.T
    sigma2 = rotation @ np.diag(eig2) @ rotation.T
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(eig1) - np.sqrt(eig2)) ** 2)
    np.testing.assert_allclose(frechet_distance(mu1, sigma1, mu2, sigma2), expected, rtol=1e-10)


@pytest.mark.parametrize(("dim", "seed"), [(2, 0), (8, 1), (64, 2)])
def test_frechet_distance_of_non_commuting_gaussians_matches_scipy_reference(dim, seed):
    sigma1, sigma2 = random_spd(dim, seed), random_spd(dim, seed + 100)
    assert not np.allclose(sigma1 @ sigma2, sigma2 @ sigma1)
    rng = np.random.default_rng(seed)
    mu1, mu2 = rng.normal(size=dim), rng.normal(size=dim)
    np.testing.assert_allclose(
        frechet_distance(mu1, sigma1, mu2, sigma2),
        scipy_frechet_distance(mu1, sigma1, mu2, sigma2),
        rtol=1e-9,
    )


def test_frechet_distance_is_symmetric_and_positive_for_different_gaussians():
    sigma1, sigma2 = random_spd(5, 7), random_spd(5, 8)
    mu = np.zeros(5)
    forward = frechet_distance(mu, sigma1, mu, sigma2)
    assert forward > 0.01
    np.testing.assert_allclose(frechet_distance(mu, sigma2, mu, sigma1), forward, rtol=1e-10)


def test_fid_of_large_gaussian_samples_approaches_the_population_distance():
    dim, num_samples = 4, 100_000
    sigma1, sigma2 = random_spd(dim, 11), random_spd(dim, 12)
    mu1, mu2 = np.zeros(dim), np.array([1.0, 0.0, -0.5, 0.25])
    expected = scipy_frechet_distance(mu1, sigma1, mu2, sigma2)
    rng = np.random.default_rng(0)
    samples1 = rng.multivariate_normal(mu1, sigma1, num_samples)
    samples2 = rng.multivariate_normal(mu2, sigma2, num_samples)
    # Sampling error of the means and covariances is O(1/sqrt(N)) ~ 0.3% here.
    np.testing.assert_allclose(fid(samples1, samples2), expected, rtol=0.03)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="covariances"):
        frechet_distance(np.zeros(2), np.eye(2), np.zeros(2), np.eye(3))


# --- matrix square root ---------------------------------------------------------------


@pytest.mark.parametrize("dim", [1, 3, 16, 100])
@pytest.mark.parametrize("seed", [0, 1])
def test_sqrtm_psd_matches_scipy_on_random_spd_matrices(dim, seed):
    matrix = random_spd(dim, seed)
    root = sqrtm_psd(matrix)
    np.testing.assert_allclose(root, scipy.linalg.sqrtm(matrix).real, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(root @ root, matrix, rtol=1e-8, atol=1e-10)
    np.testing.assert_array_equal(root, root.T)


def test_sqrtm_psd_of_a_singular_matrix_is_its_exact_root():
    rotation = ortho_group.rvs(5, random_state=0)
    matrix = rotation @ np.diag([4.0, 0.0, 9.0, 0.0, 1.0]) @ rotation.T
    expected = rotation @ np.diag([2.0, 0.0, 3.0, 0.0, 1.0]) @ rotation.T
    root = sqrtm_psd(matrix)
    # The zero eigenvalues come out as +-1e-15 and their roots as ~3e-8: sqrt(eps) scale.
    np.testing.assert_allclose(root, expected, atol=1e-6)
    np.testing.assert_allclose(root @ root, matrix, atol=1e-12)
    assert np.all(np.isfinite(root))


def test_sqrtm_psd_of_a_low_rank_covariance_is_finite_and_squares_back():
    rng = np.random.default_rng(0)
    factor = rng.normal(size=(50, 10))
    matrix = factor @ factor.T
    root = sqrtm_psd(matrix)
    assert np.all(np.isfinite(root))
    assert np.linalg.eigvalsh(root).min() > -1e-10
    np.testing.assert_allclose(root @ root, matrix, atol=1e-9 * np.abs(matrix).max())


def test_sqrtm_psd_rejects_indefinite_and_non_symmetric_matrices():
    with pytest.raises(ValueError, match="positive semi-definite"):
        sqrtm_psd(np.diag([1.0, -0.5]))
    with pytest.raises(ValueError, match="symmetric"):
        sqrtm_psd(np.array([[1.0, 0.5], [0.0, 1.0]]))


# --- inception score ------------------------------------------------------------------


def test_inception_score_of_uniform_predictions_is_one():
    mean, std = inception_score(np.full((100, 10), 0.1))
    np.testing.assert_allclose(mean, 1.0, rtol=1e-9)
    assert std == 0.0


@pytest.mark.parametrize("num_classes", [2, 10, 37])
def test_inception_score_of_confident_evenly_spread_predictions_is_the_class_count(num_classes):
    probs = np.tile(np.eye(num_classes), (5, 1))
    mean, _ = inception_score(probs)
    np.testing.assert_allclose(mean, num_classes, rtol=1e-9)


def test_inception_score_of_one_class_for_everything_is_one():
    probs = np.zeros((50, 10))
    probs[:, 3] = 1.0
    mean, _ = inception_score(probs)
    np.testing.assert_allclose(mean, 1.0, rtol=1e-9)


def test_inception_score_of_a_hand_computed_example():
    probs = np.array([[0.9, 0.1], [0.1, 0.9]])
    # p(y) = (0.5, 0.5); each row's KL is 0.9 log(0.9 / 0.5) + 0.1 log(0.1 / 0.5).
    expected = np.exp(0.9 * np.log(1.8) + 0.1 * np.log(0.2))
    np.testing.assert_allclose(inception_score(probs)[0], expected, rtol=1e-9)


def test_inception_score_splits_score_consecutive_parts():
    confident = np.eye(2)[[0, 1, 0, 1]]  # score 2
    single_class = np.eye(2)[[0, 0, 0, 0]]  # score 1
    mean, std = inception_score(np.concatenate([confident, single_class]), splits=2)
    np.testing.assert_allclose([mean, std], [1.5, 0.5], rtol=1e-9)


def test_inception_score_rejects_logits():
    with pytest.raises(ValueError, match="logits"):
        inception_score(np.array([[2.0, -1.0], [0.5, 3.0]]))


# --- precision and recall -------------------------------------------------------------


def brute_force_precision_recall(real, fake, k):
    """The definition, written directly with full distance matrices."""
    real_radii = np.sort(cdist(real, real), axis=1)[:, k]
    fake_radii = np.sort(cdist(fake, fake), axis=1)[:, k]
    precision = np.mean(np.any(cdist(fake, real) <= real_radii[None, :], axis=1))
    recall = np.mean(np.any(cdist(real, fake) <= fake_radii[None, :], axis=1))
    return precision, recall


def test_precision_recall_of_identical_sets_is_one():
    features = np.random.default_rng(0).normal(size=(300, 16))
    assert precision_recall(features, features.copy()) == (1.0, 1.0)


def test_precision_recall_of_disjoint_far_apart_sets_is_zero():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    fake = rng.normal(size=(200, 8)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_precision_recall_of_a_one_dimensional_hand_computed_example():
    real = np.array([[0.0], [1.0], [3.0], [7.0]])  # k=1 radii: 1, 1, 2, 4
    fake = np.array([[0.1], [0.4], [20.0], [21.0]])  # k=1 radii: 0.3, 0.3, 1, 1
    # Fake 0.1 and 0.4 lie in real 0's ball, 20 and 21 in none; only real 0 is in a
    # fake ball (0.1's).
    assert precision_recall(real, fake, k=1) == (0.5, 0.25)


def test_precision_recall_balls_are_closed():
    real = np.array([[0.0], [2.0]])  # k=1 radii: 2, 2
    fake = np.array([[4.0], [-2.0], [5.0]])  # on real 2's ball, on real 0's ball, outside
    assert precision_recall(real, fake, k=1) == (pytest.approx(2 / 3), 1.0)


def test_precision_recall_of_a_generator_that_misses_half_the_modes():
    rng = np.random.default_rng(0)
    centres = 50.0 * np.array([[1, 0], [-1, 0], [0, 1], [0, -1]])
    real = np.concatenate([c + rng.normal(size=(500, 2)) for c in centres])
    fake = np.concatenate([c + rng.normal(size=(1000, 2)) for c in centres[:2]])
    precision, recall = precision_recall(real, fake)
    # Samples lie on the data (up to the k-NN balls' gaps in the tails)...
    assert precision > 0.95
    # ... but only the two covered modes' real points lie in the fake manifold.
    assert 0.45 < recall <= 0.5


@pytest.mark.parametrize("k", [1, 3, 5])
def test_precision_recall_matches_the_brute_force_definition(k):
    rng = np.random.default_rng(k)
    real = rng.normal(size=(150, 5))
    fake = 1.3 * rng.normal(size=(120, 5)) + 1.0
    # Duplicated points have a neighbour at distance 0; both sides must agree on that.
    real[10] = real[11]
    expected = brute_force_precision_recall(real, fake, k)
    assert 0.1 < expected[0] < 0.99 and 0.1 < expected[1] < 0.99
    for batch_size in (7, 1024):
        np.testing.assert_allclose(
            precision_recall(real, fake, k=k, batch_size=batch_size), expected, rtol=0, atol=0
        )


def test_precision_recall_holds_one_block_of_distances_at_a_time():
    num_points, batch_size = 4000, 200
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(num_points, 8)), rng.normal(size=(num_points, 8))
    tracemalloc.start()
    try:
        precision_recall(real, fake, batch_size=batch_size)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    full_matrix = num_points * num_points * 8
    block = batch_size * num_points * 8
    # A few blocks (distances, np.partition's copy) and O(N) vectors; the full matrix
    # would be 128 MB. At 10,000 points and the default batch size a block is ~80 MB.
    assert peak < 4 * block < full_matrix / 4


def test_precision_recall_rejects_k_not_below_the_set_size():
    features = np.zeros((3, 2))
    with pytest.raises(ValueError, match="k"):
        precision_recall(features, features, k=3)


# --- classifier accuracy --------------------------------------------------------------


def test_classifier_accuracy_of_a_hand_computed_example():
    probs = np.array(
        [
            [0.8, 0.1, 0.1, 0.0],  # predicted 0
            [0.2, 0.7, 0.1, 0.0],  # predicted 1
            [0.1, 0.6, 0.3, 0.0],  # predicted 1
            [0.1, 0.2, 0.7, 0.0],  # predicted 2
            [0.6, 0.2, 0.2, 0.0],  # predicted 0
        ]
    )
    labels = np.array([0, 0, 1, 1, 2])  # class 3 requested by no sample
    overall, per_class = classifier_accuracy(probs, labels)
    # Correct: sample 0 (class 0) and sample 2 (class 1).
    assert overall == pytest.approx(2 / 5)
    np.testing.assert_allclose(per_class, [0.5, 0.5, 0.0, np.nan])


def test_classifier_accuracy_rejects_labels_outside_the_classes():
    with pytest.raises(ValueError, match="labels"):
        classifier_accuracy(np.eye(3), np.array([0, 1, 3]))


def test_mean_abs_laplacian_of_noise_on_a_flat_image_is_its_closed_form():
    # On a flat image the Laplacian of white noise is N(0, 20 s^2): E|.| = s sqrt(40 / pi).
    s = 0.05
    images = 0.5 + s * np.random.default_rng(0).standard_normal((64, 32, 32, 1))
    measured = metrics.mean_abs_laplacian(images).mean()
    assert measured == pytest.approx(s * np.sqrt(40 / np.pi), rel=0.01)
    # uint8 input is scaled to [0, 1]; a constant or linear ramp image has none.
    ramp = np.tile(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 1, 1))[None]
    assert metrics.mean_abs_laplacian(ramp) == pytest.approx([0.0])
    assert metrics.mean_abs_laplacian(np.full((1, 8, 8, 3), 200, np.uint8)) == pytest.approx([0])


def test_high_frequency_ratio_sees_grain_and_blur_on_digit_like_images():
    rng = np.random.default_rng(1)
    # Strokes on a black background, as MNIST: bright 3-pixel-wide bars.
    images = np.zeros((200, 28, 28, 1))
    for image, column in zip(images, rng.integers(4, 22, 200), strict=True):
        image[4:24, column : column + 3] = 1.0
    clean, reference = images[:100], images[100:]
    as_uint8 = lambda x: np.clip(np.round(x * 255), 0, 255).astype(np.uint8)  # noqa: E731
    assert metrics.high_frequency_ratio(as_uint8(clean), as_uint8(reference)) == pytest.approx(
        1.0, abs=0.02
    )
    # Grain of 8 grey levels (std 0.03), clipped at black as a sampler's would be.
    grainy = as_uint8(clean + 0.03 * rng.standard_normal(clean.shape))
    assert metrics.high_frequency_ratio(grainy, as_uint8(reference)) > 1.3
    blurred = (clean + np.roll(clean, 1, axis=2) + np.roll(clean, -1, axis=2)) / 3
    assert metrics.high_frequency_ratio(as_uint8(blurred), as_uint8(reference)) < 0.8
