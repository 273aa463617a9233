"""Sample-quality metrics on host arrays: FID, inception score, precision/recall, accuracy.

Everything here is plain numpy/scipy in float64 on features or class probabilities that
a classifier has already produced; no JAX, so the numbers do not depend on the device.
"""

import numpy as np

# Relative size below which a negative eigenvalue of a PSD matrix is rounding error.
_PSD_TOLERANCE = 1e-6
# Keeps log(0) finite in the inception score; a zero probability contributes 0 * log(eps).
_LOG_EPSILON = 1e-12


def _as_float64_matrix(array: np.ndarray, name: str) -> np.ndarray:
    """Returns `array` as a 2-D float64 array, or raises if it is not 2-D."""
    matrix = np.asarray(array, dtype=np.float64)
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples, dims); got shape {matrix.shape}")
    return matrix


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of a set of feature vectors, as FID compares them.

    Args:
      features: (N, D) features, N >= 2.

    Returns:
      (mu, sigma): the (D,) mean and the (D, D) unbiased (ddof=1) covariance, float64,
      the same estimator as the reference FID implementation.
    """
    features = _as_float64_matrix(features, "features")
    if features.shape[0] < 2:
        raise ValueError(f"need at least 2 samples for a covariance; got {features.shape[0]}")
    mu = features.mean(axis=0)
    sigma = np.cov(features, rowvar=False, ddof=1)
    # np.cov returns a 0-d array for a single feature dimension.
    return mu, np.atleast_2d(sigma)


def _psd_eigenvalues(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigen-decomposition of a symmetric PSD matrix with rounding-level negatives set to 0.

    Raises:
      ValueError: if the matrix is not square, not symmetric or clearly indefinite.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise ValueError(f"expected a square matrix; got shape {matrix.shape}")
    scale = np.max(np.abs(matrix)) if matrix.size else 0.0
    if not np.allclose(matrix, matrix.T, rtol=0.0, atol=_PSD_TOLERANCE * scale):
        raise ValueError("expected a symmetric matrix")
    # eigh reads one triangle only; symmetrising first makes the result use both.
    eigenvalues, eigenvectors = np.linalg.eigh((matrix + matrix.T) / 2)
    largest = np.max(np.abs(eigenvalues)) if eigenvalues.size else 0.0
    if eigenvalues.size and eigenvalues.min() < -_PSD_TOLERANCE * largest:
        raise ValueError(f"matrix is not positive semi-definite: eigenvalue {eigenvalues.min()}")
    return np.clip(eigenvalues, 0.0, None), eigenvectors


def sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
    """Principal square root of a symmetric positive semi-definite matrix.

    Uses the eigen-decomposition V diag(w) V^T -> V diag(sqrt(w)) V^T: symmetric in and
    out, real, and well defined for singular matrices, where a general-purpose sqrtm
    can return complex values or fail.

    Args:
      matrix: (D, D) symmetric PSD matrix. Negative eigenvalues at rounding level
        (relative size below 1e-6) are treated as 0.

    Returns:
      The (D, D) symmetric PSD matrix S with S @ S == matrix.

    Raises:
      ValueError: if `matrix` is not square, not symmetric or clearly indefinite.
    """
    eigenvalues, eigenvectors = _psd_eigenvalues(matrix)
    root = (eigenvectors * np.sqrt(eigenvalues)) @ eigenvectors.T
    # The product is symmetric only up to rounding; callers multiply by it and expect
    # products like S A S to be symmetric as well.
    return (root + root.T) / 2


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between the Gaussians N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^{1/2}).

    sigma1 sigma2 is not symmetric, but it is similar to sqrt(sigma1) sigma2 sqrt(sigma1),
    which is symmetric PSD and so has the same (non-negative) eigenvalues; the trace of
    the square root is therefore the sum of square roots of its eigenvalues. This avoids
    the non-symmetric sqrtm of the reference code, its complex round-off and the diagonal
    offset it needs when a covariance is singular (fewer samples than dimensions).

    Args:
      mu1: (D,) mean of the first Gaussian.
      sigma1: (D, D) covariance of the first Gaussian.
      mu2: (D,) mean of the second Gaussian.
      sigma2: (D, D) covariance of the second Gaussian.

    Returns:
      The squared Fréchet distance (what is reported as FID), >= 0.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    dim = mu1.shape[0]
    if mu1.shape != (dim,) or mu2.shape != (dim,):
        raise ValueError(f"means must be vectors of one length; got {mu1.shape}, {mu2.shape}")
    if sigma1.shape != (dim, dim) or sigma2.shape != (dim, dim):
        raise ValueError(f"covariances must be ({dim}, {dim}); got {sigma1.shape}, {sigma2.shape}")
    sqrt_sigma1 = sqrtm_psd(sigma1)
    inner = sqrt_sigma1 @ sigma2 @ sqrt_sigma1
    # Only the eigenvalues are needed for the trace. The product is symmetric in exact
    # arithmetic; symmetrising removes the asymmetry that rounding leaves.
    inner_eigenvalues, _ = _psd_eigenvalues((inner + inner.T) / 2)
    trace_sqrt_product = np.sum(np.sqrt(inner_eigenvalues))
    mean_term = np.sum((mu1 - mu2) ** 2)
    distance = mean_term + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product
    # The distance is >= 0; a negative value is round-off of identical distributions.
    return float(max(distance, 0.0))


def fid(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between the Gaussian fits of two feature sets.

    Args:
      features_a: (N, D) features of one set, e.g. generated samples.
      features_b: (M, D) features of the other, e.g. the test split.

    Returns:
      The FID between the two sets in this feature space.
    """
    return frechet_distance(*feature_statistics(features_a), *feature_statistics(features_b))


def inception_score(probs: np.ndarray, splits: int = 1) -> tuple[float, float]:
    """Inception score exp(E_x KL(p(y|x) || p(y))) of a classifier's predictions.

    p(y) is the marginal over the samples of a split. As in the reference code the
    samples are cut into `splits` consecutive parts, scored separately, and the mean and
    (population) standard deviation of the per-part scores are returned.

    Args:
      probs: (N, K) class probabilities p(y|x), rows summing to 1.
      splits: number of parts, 1 <= splits <= N.

    Returns:
      (mean, std) of the score over the splits; the score lies in [1, K].

    Raises:
      ValueError: if `probs` are not probabilities (e.g. logits) or `splits` is invalid.
    """
    probs = _as_float64_matrix(probs, "probs")
    if not 1 <= splits <= probs.shape[0]:
        raise ValueError(f"splits must be in [1, {probs.shape[0]}]; got {splits}")
    if probs.min() < 0 or not np.allclose(probs.sum(axis=1), 1.0, atol=1e-3):
        raise ValueError("probs must be non-negative with rows summing to 1 (not logits)")
    scores = []
    for part in np.array_split(probs, splits):
        marginal = part.mean(axis=0, keepdims=True)
        kl = np.sum(part * (np.log(part + _LOG_EPSILON) - np.log(marginal + _LOG_EPSILON)), 1)
        scores.append(np.exp(kl.mean()))
    return float(np.mean(scores)), float(np.std(scores))


def _pairwise_squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances via ||a||^2 + ||b||^2 - 2 a.b."""
    # In place: the (len(a), len(b)) block is the only large array, and it is made once.
    squared = a @ b.T
    squared *= -2.0
    squared += np.sum(a**2, axis=1)[:, None]
    squared += np.sum(b**2, axis=1)[None, :]
    # The expansion can go slightly negative by cancellation; distances cannot.
    return np.maximum(squared, 0.0, out=squared)


def _kth_neighbour_squared_radii(features: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    """Squared distance from each point to its k-th nearest other point of the same set."""
    radii = np.empty(features.shape[0])
    for start in range(0, features.shape[0], batch_size):
        distances = _pairwise_squared_distances(features[start : start + batch_size], features)
        # Index k, not k - 1: the point itself is the nearest at distance 0. A duplicate
        # of the point is another neighbour at distance 0, as in the reference code.
        radii[start : start + batch_size] = np.partition(distances, k, axis=1)[:, k]
    return radii


def _fraction_inside_balls(
    points: np.ndarray, centres: np.ndarray, squared_radii: np.ndarray, batch_size: int
) -> float:
    """Fraction of `points` within at least one ball around `centres` (closed balls)."""
    inside = np.empty(points.shape[0], dtype=bool)
    for start in range(0, points.shape[0], batch_size):
        distances = _pairwise_squared_distances(points[start : start + batch_size], centres)
        inside[start : start + batch_size] = np.any(distances <= squared_radii[None, :], axis=1)
    return float(inside.mean())


def precision_recall(
    real_features: np.ndarray,
    fake_features: np.ndarray,
    k: int = 3,
    batch_size: int = 1024,
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al., 2019) in feature space.

    Each set's manifold is the union of balls around its points, each ball's radius
    being the distance to that point's k-th nearest neighbour in the same set. Precision
    is the fraction of fake points inside the real manifold (are samples realistic?);
    recall is the fraction of real points inside the fake manifold (is the data covered?).

    Pairwise distances are computed `batch_size` rows at a time, so memory grows as
    batch_size * max(N, M) rather than N * M: 10,000 x 10,000 needs about 100 MB.

    Args:
      real_features: (N, D) features of real data, N > k.
      fake_features: (M, D) features of generated samples, M > k.
      k: neighbourhood size; the paper uses 3.
      batch_size: rows of the distance matrix held at once.

    Returns:
      (precision, recall), each in [0, 1].
    """
    real = _as_float64_matrix(real_features, "real_features")
    fake = _as_float64_matrix(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"feature sizes differ: {real.shape[1]} vs {fake.shape[1]}")
    if k < 1 or k >= min(real.shape[0], fake.shape[0]):
        raise ValueError(f"need 1 <= k < number of points in each set; got k={k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive; got {batch_size}")
    real_radii = _kth_neighbour_squared_radii(real, k, batch_size)
    fake_radii = _kth_neighbour_squared_radii(fake, k, batch_size)
    precision = _fraction_inside_balls(fake, real, real_radii, batch_size)
    recall = _fraction_inside_balls(real, fake, fake_radii, batch_size)
    return precision, recall


def classifier_accuracy(probs: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """How often a classifier assigns samples to their requested class.

    For a class-conditional model, `labels` are the classes the samples were generated
    for; the result is the conditional accuracy, overall and per class.

    Args:
      probs: (N, K) class probabilities or logits; only the argmax is used.
      labels: (N,) integer classes in [0, K).

    Returns:
      (overall, per_class): the fraction of all samples classified as their label, and a
      (K,) array with that fraction among the samples of each class, NaN for classes
      with no samples (so that a mean over classes can skip them with np.nanmean).
    """
    probs = _as_float64_matrix(probs, "probs")
    labels = np.asarray(labels)
    num_classes = probs.shape[1]
    if labels.shape != (probs.shape[0],):
        raise ValueError(f"labels must have shape ({probs.shape[0]},); got {labels.shape}")
    if labels.size == 0:
        raise ValueError("need at least one sample")
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise ValueError("labels must be non-negative integers")
    if labels.max() >= num_classes:
        raise ValueError(f"labels must be < {num_classes}; got {labels.max()}")
    correct = np.argmax(probs, axis=1) == labels
    counts = np.bincount(labels, minlength=num_classes)
    hits = np.bincount(labels, weights=correct, minlength=num_classes)
    per_class = np.full(num_classes, np.nan)
    present = counts > 0
    per_class[present] = hits[present] / counts[present]
    return float(correct.mean()), per_class


def mean_abs_laplacian(images: np.ndarray) -> np.ndarray:
    """Per-image mean |Laplacian| (4-neighbour, interior pixels) of NHWC images.

    uint8 images are scaled to [0, 1]; float images are taken as they are. On
    an image with additive white noise of std s on flat regions, each such
    pixel adds E|N(0, 20 s^2)| = s sqrt(40 / pi): the statistic sees grain
    and speckle that classifier features average away.
    """
    x = images.astype(np.float64)
    if images.dtype == np.uint8:
        x /= 255.0
    laplacian = (
        x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4 * x[:, 1:-1, 1:-1]
    )
    return np.abs(laplacian).mean(axis=(1, 2, 3))


def high_frequency_ratio(samples: np.ndarray, reference: np.ndarray) -> float:
    """Mean |Laplacian| of the samples over that of real images: 1 is the data's texture.

    Above 1: residual noise (grain, speckled backgrounds); below 1: blur.
    """
    return float(mean_abs_laplacian(samples).mean() / mean_abs_laplacian(reference).mean())
