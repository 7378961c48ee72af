"""The input map in front of the flow: invertible, with the right log-Jacobian, and the map
that 'auto' picks."""

import numpy as np
import pytest
from scipy.stats import norm

from skflow import FFJORDDensity
from skflow.datasets import make_toy
from skflow.preprocessing import (
    MIN_GAIN_FOR_A_MAP_NON_GAUSSIAN_MARGINALS,
    MIN_ROWS_FOR_QUANTILE,
    InputMap,
    PCAWhitening,
    QuantileGaussianizer,
    choose_input_map,
    marginals_need_gaussianizing,
)


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
    Z, _ = q.forward(np.c_[grid, grid])
    assert (np.diff(Z, axis=0) > 0).all()  # strictly increasing, tails included
    np.testing.assert_allclose(q.inverse(Z), np.c_[grid, grid], atol=1e-9)
    Z_train = q.forward(X)[0]
    assert abs(np.median(Z_train[:, 1])) < 0.1 and 0.8 < Z_train[:, 1].std() < 1.2


def test_log_det_is_the_log_slope(skewed_with_ties):
    q = QuantileGaussianizer().fit(skewed_with_ties)
    x = np.random.RandomState(1).uniform(-1, 10, size=(50, 2))
    _, log_det = q.forward(x)
    h = 1e-7
    numeric = sum(np.log((q.forward(x + h * np.eye(2)[j])[0][:, j]
                          - q.forward(x - h * np.eye(2)[j])[0][:, j]) / (2 * h))
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
    # The round trip carries the solver's tolerance (1e-6), magnified by the quantile map's
    # slope in the exponential tail; with tight float64 solves it is exact to far less.
    np.testing.assert_allclose(est.inverse_transform(est.transform(X[:20])), X[:20], rtol=1e-4)
    est.set_params(eval_dtype="float64", eval_atol=1e-9, eval_rtol=1e-9)
    np.testing.assert_allclose(est.inverse_transform(est.transform(X[:20])), X[:20], atol=1e-6)
    assert est.input_map_.quantile_ is not None and est.preprocessing_ == "quantile"
    plain = FFJORDDensity(preprocessing="standardize", hidden_dims=(8,), max_iter=5).fit(X)
    assert plain.input_map_.quantile_ is None and plain.preprocessing_ == "standardize"


def test_auto_picks_the_map_under_which_a_gaussian_fits_held_out_rows_best():
    rng = np.random.RandomState(0)
    normal = rng.normal(size=(2000, 3))
    assert choose_input_map(normal) == "standardize"
    # Smooth marginals: the quantile map gains under a Gaussian (0.3 nats here), but less than
    # MIN_GAIN_FOR_A_MAP, and the flow models such densities better without it.
    pinwheel = make_toy("pinwheel", 2000, random_state=0)
    assert not marginals_need_gaussianizing(pinwheel)
    assert choose_input_map(pinwheel) == "standardize"
    skewed = normal.copy()
    skewed[:, 1] = rng.exponential(size=2000)  # skewness 2
    repeated = normal.copy()
    repeated[:300, 0] = 0.25  # one value in 15% of the rows
    for X in (skewed, repeated):
        assert choose_input_map(X) == "quantile"
    # Three lognormal features driven by one factor: correlated and skewed. Rotated onto the
    # principal components first, the quantile map leaves nearly independent normal columns.
    factor = rng.normal(size=(2000, 1))
    correlated = np.exp(factor @ [[1.0, 0.8, 0.6]] + 0.05 * rng.normal(size=(2000, 3)))
    assert choose_input_map(np.log(correlated)) == "standardize"  # Gaussian already
    assert choose_input_map(correlated @ [[1, 1, 0], [0, 1, 1], [1, 0, 1]]) != "standardize"
    small = dict(hidden_dims=(8,), max_iter=5, random_state=0)
    assert FFJORDDensity(**small).fit(skewed).preprocessing_ == "quantile"
    est = FFJORDDensity(**small).fit(normal)
    assert est.preprocessing_ == "standardize" and est.input_map_.quantile_ is None
    rotated = FFJORDDensity(preprocessing="pca", **small).fit(correlated)
    assert rotated.preprocessing_ == "pca" and rotated.input_map_.quantile_ is None
    Z = rotated.input_map_.forward(correlated)[0]
    np.testing.assert_allclose(np.cov(Z, rowvar=False, bias=True), np.eye(3), atol=1e-6)
    assert est.get_params()["preprocessing"] == "auto"  # the parameter itself is untouched


def _lognormal_rows():
    rng = np.random.RandomState(1)
    return np.exp(rng.normal(size=(1000, 2)) @ [[1.0, 0.5], [0.0, 0.5]])


def _correlated_heavy_tailed_rows(repeated_values: bool):
    # Four copies of one feature, each plus heavy-tailed noise: the rotation isolates the
    # noise, which the quantile map then gaussianizes. The fifth feature is whole numbers.
    rng = np.random.RandomState(0)
    z = rng.normal(size=(1000, 1))
    X = z + 0.3 * rng.standard_t(2, size=(1000, 4))
    if repeated_values:
        X = np.c_[X, np.round(z[:, 0] + 0.3 * rng.normal(size=1000))]
    return X


@pytest.mark.parametrize("rows, expected", [
    (_lognormal_rows, "quantile"),
    (lambda: _correlated_heavy_tailed_rows(False), "pca"),
    (lambda: _correlated_heavy_tailed_rows(True), "pca_quantile"),
])
def test_the_chosen_map_scores_best_by_its_own_criterion(rows, expected):
    # choose_input_map's score, recomputed by hand for each candidate on the same split; a
    # rotation keeps its quantile map only where a feature repeats a value.
    from skflow.preprocessing import _gaussian_log_likelihood, has_repeated_values
    X = rows()
    rng = np.random.RandomState(1)
    order = np.random.RandomState(0).permutation(len(X))
    fit_rows, held_out = X[order[200:]], X[order[:200]]
    scores = {}
    for kind in ("standardize", "quantile", "pca_quantile"):
        input_map = InputMap(kind).fit(fit_rows)
        Z, log_det = input_map.forward(held_out)
        scores[kind] = np.mean(_gaussian_log_likelihood(input_map.forward(fit_rows)[0], Z)
                               + log_det)
    assert marginals_need_gaussianizing(X)  # a hundredth of a nat is gain enough
    best = "standardize"
    for kind in ("quantile", "pca_quantile"):
        if scores[kind] > scores[best] + MIN_GAIN_FOR_A_MAP_NON_GAUSSIAN_MARGINALS:
            best = kind
    if best == "pca_quantile" and not has_repeated_values(X):
        best = "pca"
    assert choose_input_map(X) == best == expected
    # The Gaussian's log density is scipy's.
    from scipy.stats import multivariate_normal
    Z = rng.normal(size=(50, X.shape[1]))
    by_scipy = multivariate_normal(fit_rows.mean(0), np.cov(fit_rows, rowvar=False)
                                   + 1e-6 * np.eye(X.shape[1])).logpdf(Z)
    np.testing.assert_allclose(_gaussian_log_likelihood(fit_rows, Z), by_scipy, rtol=1e-10)


def test_pca_whitening_decorrelates_and_its_log_det_is_the_jacobian():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(3000, 1)) @ [[100.0, 101.0, 99.0]] + rng.normal(size=(3000, 3))
    whitening = PCAWhitening().fit(X)
    Y, log_det = whitening.forward(X)
    np.testing.assert_allclose(np.cov(Y, rowvar=False), np.eye(3), atol=0.05)
    np.testing.assert_allclose(whitening.inverse(Y), X, rtol=1e-10, atol=1e-8)
    jacobian = whitening.components_.T / whitening.scale_  # dY/dX, the same for every row
    assert log_det[0] == pytest.approx(np.linalg.slogdet(jacobian)[1], rel=1e-10)


def _marginal_density(q, grid):
    Z, log_det = q.forward(grid[:, None])
    return np.exp(norm.logpdf(Z[:, 0]) + log_det)


def test_repeated_values_get_their_own_segment_with_their_share():
    rng = np.random.RandomState(1)
    # a zero-inflated feature: 30% exact zeros (the minimum), the rest spread out, plus an
    # atom at 2.0 holding 10%
    column = np.r_[np.zeros(300), np.full(100, 2.0), rng.gamma(2.0, 1.5, 600) + 0.01]
    q = QuantileGaussianizer().fit(column[:, None])
    xs, zs = q.knots_x_[0], q.knots_z_[0]
    values = np.unique(column)
    for atom, share in ((0.0, 0.3), (2.0, 0.1)):
        k = np.searchsorted(values, atom)
        gaps = np.diff(values)[max(k - 1, 0):k + 1]
        delta = 0.5 * gaps.min()
        lo, hi = np.searchsorted(xs, [atom - delta, atom + delta])
        assert np.isclose(xs[lo], atom - delta) and np.isclose(xs[hi], atom + delta)
        assert hi == lo + 1  # one steep segment, no knot inside
        assert norm.cdf(zs[hi]) - norm.cdf(zs[lo]) == pytest.approx(share, abs=0.002)
    # The left tail (below the zero atom) continues with the average slope, not the atom's.
    slopes = q.slopes_[0]
    assert slopes[0] == pytest.approx((zs[-1] - zs[0]) / (xs[-1] - xs[0]))
    assert slopes[0] < slopes[1] / 100


@pytest.mark.parametrize("kind", ["zero_inflated", "binary", "continuous"])
def test_marginal_density_of_the_map_integrates_to_one(kind):
    rng = np.random.RandomState(2)
    column = {"zero_inflated": np.r_[np.zeros(300), rng.exponential(1.0, 700)],
              "binary": rng.randint(0, 2, 500).astype(float),
              "continuous": rng.standard_t(4, 2000)}[kind]
    q = QuantileGaussianizer().fit(column[:, None])
    # Quadrature segment by segment: the density is smooth between knots, and the steep atom
    # segments are far narrower than any uniform grid.
    edges = np.r_[column.min() - 60, q.knots_x_[0], column.max() + 60]
    total = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        grid = np.linspace(a, b, 2001)[1:-1]
        total += np.trapezoid(_marginal_density(q, grid), grid) * (b - a) / (grid[-1] - grid[0])
    assert total == pytest.approx(1.0, abs=2e-3)


def test_auto_standardizes_small_samples_whatever_their_marginals():
    # Below MIN_ROWS_FOR_QUANTILE rows the quantile map's knots follow the sample's noise.
    rng = np.random.RandomState(0)
    skewed = rng.exponential(size=(2 * MIN_ROWS_FOR_QUANTILE, 2))
    assert InputMap().fit(skewed[:MIN_ROWS_FOR_QUANTILE - 1]).kind_ == "standardize"
    assert InputMap().fit(skewed[:MIN_ROWS_FOR_QUANTILE]).kind_ == "quantile"
