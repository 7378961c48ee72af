"""skflow.plotting with the Agg backend: the drawn arrays are the model's values."""

import sys

import numpy as np
import pytest

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from skflow import FFJORDDensity  # noqa: E402
from skflow.datasets import make_toy  # noqa: E402
from skflow.plotting import density_grid, plot_density_2d, plot_grid, plot_history, plot_samples  # noqa: E402

from .conftest import FAST  # noqa: E402

BOUNDS = ((-2.0, 3.0), (-1.5, 2.0))


@pytest.fixture(scope="module")
def moons():
    X = make_toy("moons", 300, random_state=0)
    est = FFJORDDensity(**{**FAST, "n_iter_no_change": None}).fit(X)
    return est, X


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _grid_points(resolution, bounds=BOUNDS):
    (x0, x1), (y0, y1) = bounds
    cells = (np.arange(resolution) + 0.5) / resolution
    xs, ys = x0 + cells * (x1 - x0), y0 + cells * (y1 - y0)
    gx, gy = np.meshgrid(xs, ys)
    return xs, ys, np.c_[gx.ravel(), gy.ravel()]


def _padded_bounds(points):
    """The range of ``points`` plus 10% on each side."""
    span = points.max(0) - points.min(0)
    return ((points[:, 0].min() - 0.1 * span[0], points[:, 0].max() + 0.1 * span[0]),
            (points[:, 1].min() - 0.1 * span[1], points[:, 1].max() + 0.1 * span[1]))


@pytest.mark.parametrize("log", [False, True])
def test_heat_map_holds_the_model_density_on_the_grid(moons, log):
    est, _ = moons
    fig, ax = plt.subplots()
    assert plot_density_2d(est, ax=ax, bounds=BOUNDS, resolution=12, log=log) is ax
    (image,) = ax.get_images()
    values = np.asarray(image.get_array())
    xs, ys, points = _grid_points(12)
    log_p = est.score_samples(points).reshape(12, 12)
    np.testing.assert_allclose(values, log_p if log else np.exp(log_p), rtol=1e-12)
    # The image covers the region exactly, pixel centres on the grid points, row 0 at the bottom.
    np.testing.assert_allclose(image.get_extent(), [*BOUNDS[0], *BOUNDS[1]])
    np.testing.assert_allclose(ax.get_xlim(), BOUNDS[0])
    assert xs[0] - BOUNDS[0][0] == pytest.approx((xs[1] - xs[0]) / 2)
    assert image.origin == "lower"


def test_density_grid_layout_and_default_bounds_from_data(moons):
    est, X = moons
    xs, ys, log_p = density_grid(est, X=X, resolution=5)
    expected_xs, expected_ys, _ = _grid_points(5, _padded_bounds(X))
    np.testing.assert_allclose(xs, expected_xs)
    np.testing.assert_allclose(ys, expected_ys)
    assert log_p[1, 3] == pytest.approx(est.score_samples([[xs[3], ys[1]]])[0], abs=1e-5)  # float32
    # Without data, the model's own samples set the region.
    xs2, ys2, _ = density_grid(est, resolution=4)
    S = est.sample(1000, random_state=0)
    expected_xs, expected_ys, _ = _grid_points(4, _padded_bounds(S))
    np.testing.assert_allclose(xs2, expected_xs)
    np.testing.assert_allclose(ys2, expected_ys)


def test_plot_samples_draws_the_points(moons):
    _, X = moons
    fig, ax = plt.subplots()
    plot_samples(X, ax=ax, bounds=BOUNDS)
    (scatter,) = ax.collections
    np.testing.assert_array_equal(scatter.get_offsets(), X)
    assert ax.get_xlim() == BOUNDS[0] and ax.get_ylim() == BOUNDS[1]
    with pytest.raises(ValueError, match="2-D"):
        plot_samples(np.c_[X, X], ax=ax)


def test_plot_grid_is_data_density_samples(moons):
    est, X = moons
    fig = plot_grid(est, X, n_samples=50, resolution=8, random_state=3)
    assert len(fig.axes) == 3
    data_ax, density_ax, samples_ax = fig.axes
    assert [a.get_title() for a in fig.axes] == ["Data", "Density", "Samples"]
    np.testing.assert_array_equal(data_ax.collections[0].get_offsets(), X)
    np.testing.assert_array_equal(samples_ax.collections[0].get_offsets(),
                                  est.sample(50, random_state=3))
    (image,) = density_ax.get_images()
    _, _, log_p = density_grid(est, X=X, resolution=8)
    np.testing.assert_allclose(np.asarray(image.get_array()), np.exp(log_p), rtol=1e-12)
    # All three panels show the same region.
    for ax in (density_ax, samples_ax):
        np.testing.assert_allclose(ax.get_xlim(), data_ax.get_xlim())
        np.testing.assert_allclose(ax.get_ylim(), data_ax.get_ylim())


def test_plot_grid_draws_into_given_axes(moons):
    est, X = moons
    fig, axes = plt.subplots(2, 3)
    assert plot_grid(est, X, n_samples=20, axes=axes[1], resolution=4, titles=None) is fig
    assert all(not a.collections and not a.images for a in axes[0])
    assert len(axes[1][1].get_images()) == 1 and axes[1][0].get_title() == ""
    with pytest.raises(ValueError, match="3 Axes"):
        plot_grid(est, X, axes=axes[0][:2])


def test_plot_history_draws_the_recorded_curves(moons):
    est, _ = moons
    fig, ax = plt.subplots()
    plot_history(est, ax=ax)
    (val,), (train,) = ax.get_lines(), ax.train_axes.get_lines()  # the losses on their own axes
    iterations = [h["iteration"] for h in est.history_]
    np.testing.assert_array_equal(train.get_xdata(), iterations)
    np.testing.assert_array_equal(train.get_ydata(), [h["train_loss"] for h in est.history_])
    np.testing.assert_array_equal(val.get_ydata(), [h["val_loss"] for h in est.history_])
    assert val.get_label() == "validation NLL"
    assert ax.nfe_axes is None  # flow matching solves no ODE while training


def test_plot_history_shows_nfe_for_likelihood_training():
    X = make_toy("8gaussians", 200, random_state=0)
    est = FFJORDDensity(hidden_dims=(8,), training="likelihood", max_iter=4,
                        validation_interval=2, atol=1e-3, rtol=1e-3, n_iter_no_change=None,
                        random_state=0).fit(X)
    fig, ax = plt.subplots()
    plot_history(est, ax=ax)
    forward, backward = ax.nfe_axes.get_lines()
    np.testing.assert_array_equal(forward.get_ydata(), [h["nfe_forward"] for h in est.history_])
    np.testing.assert_array_equal(backward.get_ydata(), [h["nfe_backward"] for h in est.history_])
    assert min(forward.get_ydata()) > 0 and min(backward.get_ydata()) > 0
    assert ax.get_lines()[0].get_label() == "train NLL"


def test_density_plots_need_a_fitted_2d_model(moons):
    _, X = moons
    with pytest.raises(NotFittedError):
        plot_density_2d(FFJORDDensity(), bounds=BOUNDS)
    X3 = np.c_[X, X[:, 0] * X[:, 1]]
    est3 = FFJORDDensity(**{**FAST, "max_iter": 2, "n_iter_no_change": None}).fit(X3)
    with pytest.raises(ValueError, match="2 features"):
        plot_density_2d(est3)
    with pytest.raises(ValueError, match="bounds"):
        density_grid(moons[0], bounds=((1, 0), (0, 1)))


def test_missing_matplotlib_names_the_extra(moons, monkeypatch):
    est, X = moons
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    for call in (lambda: plot_samples(X), lambda: plot_density_2d(est, bounds=BOUNDS),
                 lambda: plot_history(est), lambda: plot_grid(est, X)):
        with pytest.raises(ImportError, match=r"pip install skflow\[plot\]"):
            call()
