"""The quantile map in front of the flow: invertible, with the right log-Jacobian."""

import numpy as np
import pytest

from skflow import FFJORDDensity
from skflow.preprocessing import QuantileGaussianizer


@pytest.fixture
def skewed_with_ties():
    rng = np.random.RandomState(0)
    # an exponential feature with a spike of repeated values, and a uniform one
    return np.c_[np.r_[rng.exponential(2.0, 400), np.full(100, 3.0)],
                 rng.uniform(-1, 1, 500)]


def test_map_is_monotone_invertible_and_gaussianizes(skewed_with_ties):
    X = skewed_with_ties
    q = QuantileGaussianizer().fit(X)
    grid = np.linspace(-20, 40, 2001)
    Z, _ = q.transform(np.c_[grid, grid])
    assert (np.diff(Z, axis=0) > 0).all()  # strictly increasing, tails included
    np.testing.assert_allclose(q.inverse_transform(Z), np.c_[grid, grid], atol=1e-9)
    Z_train = q.transform(X)[0]
    assert abs(np.median(Z_train[:, 1])) < 0.1 and 0.8 < Z_train[:, 1].std() < 1.2


def test_log_det_is_the_log_slope(skewed_with_ties):
    q = QuantileGaussianizer().fit(skewed_with_ties)
    x = np.random.RandomState(1).uniform(-1, 10, size=(50, 2))
    _, log_det = q.transform(x)
    h = 1e-7
    numeric = sum(np.log((q.transform(x + h * np.eye(2)[j])[0][:, j]
                          - q.transform(x - h * np.eye(2)[j])[0][:, j]) / (2 * h))
                  for j in range(2))
    # away from knots the central difference is exact for a piecewise-linear map
    assert np.median(np.abs(log_det - numeric)) < 1e-6


def test_quantile_flow_integrates_to_one_and_inverts():
    rng = np.random.RandomState(0)
    X = np.r_[rng.exponential(2.0, 400), np.full(100, 3.0)][:, None]
    est = FFJORDDensity(preprocessing="quantile", hidden_dims=(16,), max_iter=100,
                        random_state=0).fit(X)
    xs = np.linspace(-30, 60, 200001)
    density = np.exp(est.score_samples(xs[:, None]))
    assert abs(np.trapezoid(density, xs) - 1) < 0.01
    assert density[np.argmin(np.abs(xs - 3.0))] > 5 * density[np.argmin(np.abs(xs - 5.0))]
    np.testing.assert_allclose(est.inverse_transform(est.transform(X[:20])), X[:20], atol=1e-5)
    assert est.marginal_ is not None
    assert FFJORDDensity(hidden_dims=(8,), max_iter=5).fit(X).marginal_ is None
