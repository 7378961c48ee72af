"""Tests for the FFJORD 2-D toy densities, ``skflow.datasets.make_toy``."""

import numpy as np
import pytest

from skflow.datasets import TOY_DATASETS, make_toy

N = 4000  # large enough for the statistical checks, still fast


def _polar(X):
    return np.hypot(X[:, 0], X[:, 1]), np.arctan2(X[:, 1], X[:, 0])


def _resultant(angles):
    """Length of the mean unit vector: 1 when concentrated, ~0 when uniform."""
    return np.abs(np.exp(1j * angles).mean())


def test_toy_datasets_names():
    assert set(TOY_DATASETS) == {
        "swissroll",
        "circles",
        "rings",
        "moons",
        "8gaussians",
        "pinwheel",
        "2spirals",
        "checkerboard",
    }
    assert isinstance(TOY_DATASETS, tuple)


@pytest.mark.parametrize("name", TOY_DATASETS)
@pytest.mark.parametrize("n_samples", [1, 2, 7, 101, 1000])
def test_shape_and_dtype(name, n_samples):
    X = make_toy(name, n_samples=n_samples, random_state=0)
    assert isinstance(X, np.ndarray)
    assert X.shape == (n_samples, 2)
    assert X.dtype == np.float64
    assert np.all(np.isfinite(X))


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_default_n_samples(name):
    assert make_toy(name, random_state=0).shape == (1000, 2)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_reproducible_with_seed(name):
    X1 = make_toy(name, n_samples=101, random_state=3)
    X2 = make_toy(name, n_samples=101, random_state=3)
    X3 = make_toy(name, n_samples=101, random_state=4)
    np.testing.assert_array_equal(X1, X2)
    assert not np.allclose(X1, X3)


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_accepts_random_state_instance(name):
    X1 = make_toy(name, n_samples=50, random_state=np.random.RandomState(5))
    X2 = make_toy(name, n_samples=50, random_state=np.random.RandomState(5))
    np.testing.assert_array_equal(X1, X2)
    # A shared generator advances: two draws from it differ.
    rng = np.random.RandomState(5)
    assert not np.allclose(
        make_toy(name, n_samples=50, random_state=rng),
        make_toy(name, n_samples=50, random_state=rng),
    )


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_global_random_state_untouched(name):
    np.random.seed(1234)
    before = np.random.get_state()
    make_toy(name, n_samples=100, random_state=0)
    make_toy(name, n_samples=100, random_state=np.random.RandomState(1))
    after = np.random.get_state()
    assert before[0] == after[0]
    np.testing.assert_array_equal(before[1], after[1])
    assert before[2:] == after[2:]


@pytest.mark.parametrize("name", ["gaussians", "8Gaussians", "", None, 3])
def test_unknown_name(name):
    with pytest.raises(ValueError, match="Unknown toy dataset.*'checkerboard'"):
        make_toy(name, n_samples=10)


@pytest.mark.parametrize("n_samples", [0, -1, 2.0, 10.5, "10", None, True])
def test_bad_n_samples(n_samples):
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        make_toy("moons", n_samples=n_samples)


def test_numpy_integer_n_samples():
    assert make_toy("rings", n_samples=np.int64(9), random_state=0).shape == (9, 2)


def test_circles_radii():
    r, _ = _polar(make_toy("circles", n_samples=N, random_state=0))
    outer, inner = r[r > 2.25], r[r <= 2.25]
    # Two circles of radius 3 and 1.5, with half of the points each.
    assert abs(len(outer) - N / 2) < 0.02 * N
    assert abs(np.median(outer) - 3.0) < 0.05
    assert abs(np.median(inner) - 1.5) < 0.05
    # Noise of std 0.08 * 3 around each circle.
    assert 0.18 < np.std(outer) < 0.3


def test_8gaussians_clusters():
    X = make_toy("8gaussians", n_samples=N, random_state=0)
    r, theta = _polar(X)
    cluster = np.round(theta / (np.pi / 4)).astype(int) % 8
    assert np.all(np.bincount(cluster, minlength=8) > 0.8 * N / 8)
    for k in range(8):
        center = 4 / 1.414 * np.array([np.cos(k * np.pi / 4), np.sin(k * np.pi / 4)])
        members = X[cluster == k]
        np.testing.assert_allclose(members.mean(axis=0), center, atol=0.06)
        # Isotropic noise of std 0.5 / 1.414 in each direction.
        np.testing.assert_allclose(members.std(axis=0), 0.5 / 1.414, rtol=0.15)
    assert abs(np.median(r) - 4 / 1.414) < 0.05


def test_checkerboard_occupied_squares_only():
    X = make_toy("checkerboard", n_samples=N, random_state=0)
    assert np.all(X >= -4) and np.all(X < 4)
    cells = np.floor(X / 2).astype(int)
    # Only the squares of one colour of the 4x4 board hold points...
    assert np.all((cells[:, 0] + cells[:, 1]) % 2 == 0)
    # ...and all eight of them do, about equally.
    square = (cells[:, 0] + 2) * 4 + (cells[:, 1] + 2)
    counts = np.bincount(square, minlength=16)
    occupied = counts[counts > 0]
    assert len(occupied) == 8
    assert np.all(np.abs(occupied - N / 8) < 0.2 * N / 8)


@pytest.mark.parametrize("n_samples", [N, N + 3])
def test_rings_radii(n_samples):
    r, _ = _polar(make_toy("rings", n_samples=n_samples, random_state=0))
    radii = 3 * np.array([1.0, 0.75, 0.5, 0.25])
    nearest = np.argmin(np.abs(r[:, None] - radii), axis=1)
    assert np.all(np.abs(r - radii[nearest]) < 0.4)
    # The points are split over the four rings, the outer one taking the
    # remainder.
    counts = np.bincount(nearest, minlength=4)
    expected = np.full(4, n_samples // 4)
    expected[0] += n_samples % 4
    assert np.all(np.abs(counts - expected) <= 2)


def test_rings_evenly_spread_in_angle():
    X = make_toy("rings", n_samples=N, random_state=0)
    r, theta = _polar(X)
    outer = theta[r > 2.6]
    hist, _ = np.histogram(outer, bins=8, range=(-np.pi, np.pi))
    # Evenly placed in angle: much flatter than a uniform random draw.
    assert hist.max() - hist.min() <= 0.05 * len(outer)


def test_moons():
    X = make_toy("moons", n_samples=N, random_state=0)
    assert np.all(X[:, 0] > -4) and np.all(X[:, 0] < 4)
    assert np.all(X[:, 1] > -2.2) and np.all(X[:, 1] < 2.8)
    # The two moons are point-symmetric about (0, 0.3).
    np.testing.assert_allclose(X.mean(axis=0), [0.0, 0.3], atol=0.05)
    # Every point lies near one of the two noiseless arcs of radius 2:
    # centred at (-1, -0.2) (upper moon) and at (1, 0.8) (lower moon).
    upper = np.abs(np.hypot(X[:, 0] + 1, X[:, 1] + 0.2) - 2)
    lower = np.abs(np.hypot(X[:, 0] - 1, X[:, 1] - 0.8) - 2)
    assert np.all(np.minimum(upper, lower) < 1.0)
    assert np.mean(np.minimum(upper, lower) < 0.4) > 0.9


def test_swissroll():
    X = make_toy("swissroll", n_samples=N, random_state=0)
    assert np.all(np.abs(X) < 4.5)
    r, _ = _polar(X)
    # Roll parameter t ~ U(1.5 pi, 4.5 pi), radius t / 5 (plus noise).
    assert abs(np.median(r) - 3 * np.pi / 5) < 0.1
    lo, hi = np.quantile(r, [0.01, 0.99])
    assert 1.5 * np.pi / 5 - 0.4 < lo and hi < 4.5 * np.pi / 5 + 0.4


def test_pinwheel_five_arms():
    X = make_toy("pinwheel", n_samples=N, random_state=0)
    assert np.all(np.abs(X) < 6)
    r, theta = _polar(X)
    assert abs(np.median(r) - 2.0) < 0.1
    # Five arms: the angles have a strong 5-fold symmetry only.
    assert _resultant(5 * theta) > 0.4
    assert _resultant(4 * theta) < 0.1
    assert _resultant(6 * theta) < 0.1


def test_2spirals():
    X = make_toy("2spirals", n_samples=N, random_state=0)
    assert np.all(np.abs(X) < 4.5)
    np.testing.assert_allclose(X.mean(axis=0), [0.0, 0.0], atol=0.1)
    r, theta = _polar(X)
    far = r > 1
    # Both arms satisfy theta + 3 r = 0 (mod pi); the mirrored chirality does
    # not.
    assert _resultant(2 * (theta[far] + 3 * r[far])) > 0.5
    assert _resultant(2 * (theta[far] - 3 * r[far])) < 0.2
    # Half of the points on each arm: angle + 3 r near pi or near 0.
    arm = np.cos(theta[far] + 3 * r[far]) > 0
    assert abs(arm.mean() - 0.5) < 0.05
