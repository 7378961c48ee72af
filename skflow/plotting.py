"""Plots for 2-D densities and training curves (needs matplotlib: ``pip install skflow[plot]``).

matplotlib is imported inside the functions, so ``import skflow.plotting`` works without it and
only a call to a plotting function asks for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.utils.validation import check_array, check_is_fitted

if TYPE_CHECKING:  # matplotlib is optional: only type checkers import it here
    from matplotlib.axes import Axes
    from matplotlib.colors import Colormap
    from matplotlib.figure import Figure
    from numpy.typing import ArrayLike
    from sklearn.base import BaseEstimator

    from .density import FFJORDDensity

__all__ = ["density_grid", "plot_density_2d", "plot_grid", "plot_history", "plot_samples"]

#: A plotted region, ``((xmin, xmax), (ymin, ymax))``.
Bounds = tuple[tuple[float, float], tuple[float, float]]


def _pyplot() -> ModuleType:
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "skflow.plotting needs matplotlib, which is not installed. Install it with "
            "`pip install skflow[plot]` (or `pip install matplotlib`).") from error
    return plt


def _check_2d_estimator(estimator: BaseEstimator) -> None:
    check_is_fitted(estimator)
    n_features = getattr(estimator, "n_features_in_", None)
    if n_features != 2:
        raise ValueError(f"Density plots need a model of 2 features; this one was fitted on "
                         f"{n_features}.")


def _check_bounds(bounds: Bounds) -> Bounds:
    try:
        (x0, x1), (y0, y1) = bounds
        x0, x1, y0, y1 = (float(v) for v in (x0, x1, y0, y1))
    except (TypeError, ValueError):
        raise ValueError(f"bounds must be ((xmin, xmax), (ymin, ymax)), got {bounds!r}.") from None
    if not (np.isfinite([x0, x1, y0, y1]).all() and x0 < x1 and y0 < y1):
        raise ValueError(f"bounds must be finite with xmin < xmax and ymin < ymax, got {bounds!r}.")
    return (x0, x1), (y0, y1)


def _bounds_from(points: np.ndarray, margin: float = 0.1) -> Bounds:
    low, high = points.min(axis=0), points.max(axis=0)
    pad = margin * np.maximum(high - low, 1e-12)
    return (low[0] - pad[0], high[0] + pad[0]), (low[1] - pad[1], high[1] + pad[1])


def density_grid(estimator: BaseEstimator, X: ArrayLike | None = None,
                 bounds: Bounds | None = None,
                 resolution: int = 100) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Evaluate the log density of a 2-D model on a regular grid.

    Parameters
    ----------
    estimator : fitted density estimator with ``score_samples`` and 2 features
        For example :class:`~skflow.FFJORDDensity`.
    X : array-like of shape (n_samples, 2), default=None
        Data whose range (plus 10% on each side) sets the grid when ``bounds`` is None. Without
        ``X`` either, 1000 samples of the model (``random_state=0``) set it.
    bounds : ((xmin, xmax), (ymin, ymax)), default=None
        The region, cut into ``resolution x resolution`` equal cells.
    resolution : int, default=100
        Cells along each axis.

    Returns
    -------
    xs : ndarray of shape (resolution,)
        Grid coordinates along the first feature: the cell centres
        ``xmin + (k + 1/2) (xmax - xmin) / resolution``.
    ys : ndarray of shape (resolution,)
        Grid coordinates along the second feature.
    log_density : ndarray of shape (resolution, resolution)
        ``log_density[i, j]`` is the log density at ``(xs[j], ys[i])`` (image layout).

    Examples
    --------
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> from skflow.plotting import density_grid
    >>> X = make_toy("moons", 300, random_state=0)
    >>> est = FFJORDDensity(hidden_dims=(8,), max_iter=5, random_state=0).fit(X)
    >>> xs, ys, log_density = density_grid(est, bounds=((-4, 4), (-2, 2)), resolution=4)
    >>> xs.tolist(), ys.tolist(), log_density.shape
    ([-3.0, -1.0, 1.0, 3.0], [-1.5, -0.5, 0.5, 1.5], (4, 4))
    """
    _check_2d_estimator(estimator)
    if int(resolution) != resolution or resolution < 2:
        raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}.")
    resolution = int(resolution)
    if bounds is None:
        points = (check_array(X, dtype=np.float64) if X is not None
                  else estimator.sample(1000, random_state=0))
        bounds = _bounds_from(points)
    (x0, x1), (y0, y1) = _check_bounds(bounds)
    centres = (np.arange(resolution) + 0.5) / resolution
    xs, ys = x0 + centres * (x1 - x0), y0 + centres * (y1 - y0)
    gx, gy = np.meshgrid(xs, ys)
    log_density = estimator.score_samples(np.c_[gx.ravel(), gy.ravel()])
    return xs, ys, log_density.reshape(resolution, resolution)


# plot_density_2d and plot_samples take their arguments alike: what to draw, then ``ax``;
# ``bounds`` and the drawing options by keyword only.
def plot_density_2d(estimator: BaseEstimator, X: ArrayLike | None = None,
                    ax: Axes | None = None, *, bounds: Bounds | None = None,
                    resolution: int = 100, log: bool = False,
                    cmap: str | Colormap = "viridis") -> Axes:
    """Heat map of the density (or log density) of a 2-D model.

    Parameters
    ----------
    estimator : fitted density estimator with ``score_samples`` and 2 features
        For example :class:`~skflow.FFJORDDensity` or a pipeline ending in one.
    X : array-like of shape (n_samples, 2), default=None
        Data whose range sets the plotted region when ``bounds`` is None (see
        :func:`density_grid`). The data are not drawn; use :func:`plot_samples` for that.
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.
    bounds : ((xmin, xmax), (ymin, ymax)), default=None
        The region shown; the model is evaluated at the pixel centres. Keyword only.
    resolution : int, default=100
        Pixels along each axis; the model is evaluated ``resolution ** 2`` times.
    log : bool, default=False
        Show the log density instead of the density.
    cmap : str or Colormap, default='viridis'
        Colour map.

    Returns
    -------
    ax : matplotlib Axes
        The axes, holding one image whose array is the plotted grid: ``exp(log_density)``
        (or ``log_density``) in the layout of :func:`density_grid`, drawn with
        ``origin='lower'`` over exactly the region ``bounds``.

    Examples
    --------
    The density of a model fitted briefly to ``8gaussians``, on a coarse grid:

    >>> import matplotlib
    >>> matplotlib.use("Agg")  # draw off screen
    >>> import matplotlib.pyplot as plt
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> from skflow.plotting import plot_density_2d
    >>> X = make_toy("8gaussians", 300, random_state=0)
    >>> est = FFJORDDensity(hidden_dims=(8,), max_iter=5, random_state=0).fit(X)
    >>> fig, ax = plt.subplots()
    >>> ax = plot_density_2d(est, X, ax, resolution=10)
    >>> ax.get_images()[0].get_array().shape  # one image: the density on a 10 x 10 grid
    (10, 10)
    """
    plt = _pyplot()
    xs, ys, log_density = density_grid(estimator, X, bounds=bounds, resolution=resolution)
    ax = plt.gca() if ax is None else ax
    values = log_density if log else np.exp(log_density)
    # Half a cell beyond the outer centres: the edges of the region.
    dx, dy = xs[1] - xs[0], ys[1] - ys[0]
    extent = (xs[0] - dx / 2, xs[-1] + dx / 2, ys[0] - dy / 2, ys[-1] + dy / 2)
    ax.imshow(values, origin="lower", cmap=cmap, aspect="auto", interpolation="nearest",
              extent=extent)
    ax.set_xlim(extent[:2])
    ax.set_ylim(extent[2:])
    return ax


def plot_samples(X: ArrayLike, ax: Axes | None = None, *, bounds: Bounds | None = None,
                 s: float = 2, alpha: float = 0.5, color: Any = "C0",
                 **scatter_kws: Any) -> Axes:
    """Scatter plot of 2-D points.

    Parameters
    ----------
    X : array-like of shape (n_samples, 2)
        Points.
    ax : matplotlib Axes, default=None
        Where to draw; the current axes when None.
    bounds : ((xmin, xmax), (ymin, ymax)), default=None
        Axis limits; matplotlib's automatic limits when None. Keyword only.
    s, alpha, color
        Marker size, opacity and colour, passed to ``Axes.scatter``. Keyword only.
    **scatter_kws
        Further arguments of ``Axes.scatter``.

    Returns
    -------
    ax : matplotlib Axes
        The axes, holding the scatter (a ``PathCollection`` whose offsets are ``X``).

    Examples
    --------
    >>> import matplotlib
    >>> matplotlib.use("Agg")  # draw off screen
    >>> import matplotlib.pyplot as plt
    >>> from skflow.datasets import make_toy
    >>> from skflow.plotting import plot_samples
    >>> fig, ax = plt.subplots()
    >>> ax = plot_samples(make_toy("pinwheel", 300, random_state=0), ax, bounds=((-4, 4), (-4, 4)))
    >>> ax.collections[0].get_offsets().shape, ax.get_xlim() == (-4, 4)
    ((300, 2), True)
    """
    plt = _pyplot()
    X = check_array(X, dtype=np.float64)
    if X.shape[1] != 2:
        raise ValueError(f"plot_samples draws 2-D points; X has {X.shape[1]} columns.")
    ax = plt.gca() if ax is None else ax
    ax.scatter(X[:, 0], X[:, 1], s=s, alpha=alpha, color=color, linewidths=0, **scatter_kws)
    if bounds is not None:
        (x0, x1), (y0, y1) = _check_bounds(bounds)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    return ax


def _three_axes(axes: Sequence[Axes] | None) -> tuple[Figure, list[Axes]]:
    """The figure and three panels to draw into: ``axes``, or a new 1 x 3 figure."""
    if axes is None:
        fig, axes = _pyplot().subplots(1, 3, figsize=(9, 3))
        return fig, list(axes)
    axes = list(axes)
    if len(axes) != 3:
        raise ValueError(f"axes must hold 3 Axes, got {len(axes)}.")
    return axes[0].figure, axes


def plot_grid(estimator: BaseEstimator, X: ArrayLike, n_samples: int | None = None,
              axes: Sequence[Axes] | None = None, bounds: Bounds | None = None,
              resolution: int = 100, log: bool = False,
              random_state: int | np.random.RandomState | None = 0,
              titles: Sequence[str] | None = ("Data", "Density", "Samples")) -> Figure:
    """The FFJORD paper's row of panels: data | model density | model samples.

    Parameters
    ----------
    estimator : fitted density estimator with ``score_samples``, ``sample`` and 2 features
        For example :class:`~skflow.FFJORDDensity`.
    X : array-like of shape (n_samples, 2)
        The data (left panel); its range sets the common region of the three panels when
        ``bounds`` is None.
    n_samples : int, default=None
        Samples drawn from the model (right panel); as many as ``X`` has rows when None.
    axes : sequence of 3 matplotlib Axes, default=None
        Where to draw (for instance one row of a larger figure); a new 1 x 3 figure when None.
    bounds : ((xmin, xmax), (ymin, ymax)), default=None
        Common region of the three panels.
    resolution : int, default=100
        Pixels along each axis of the density panel.
    log : bool, default=False
        Show the log density instead of the density.
    random_state : int, RandomState instance or None, default=0
        Seeds the model samples.
    titles : tuple of 3 str or None, default=('Data', 'Density', 'Samples')
        Panel titles; None for none.

    Returns
    -------
    fig : matplotlib Figure
        The figure holding the three panels.

    Examples
    --------
    The three panels for a model fitted briefly to ``circles``:

    >>> import matplotlib
    >>> matplotlib.use("Agg")  # draw off screen
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> from skflow.plotting import plot_grid
    >>> X = make_toy("circles", 300, random_state=0)
    >>> fig = plot_grid(FFJORDDensity(hidden_dims=(8,), max_iter=5, random_state=0).fit(X),
    ...                 X, n_samples=100, resolution=10)
    >>> [ax.get_title() for ax in fig.axes]
    ['Data', 'Density', 'Samples']
    """
    _pyplot()  # the missing-matplotlib error comes before any work
    _check_2d_estimator(estimator)
    X = check_array(X, dtype=np.float64)
    bounds = _check_bounds(bounds) if bounds is not None else _bounds_from(X)
    fig, axes = _three_axes(axes)
    samples = estimator.sample(len(X) if n_samples is None else n_samples,
                               random_state=random_state)
    plot_samples(X, axes[0], bounds=bounds)
    plot_density_2d(estimator, ax=axes[1], bounds=bounds, resolution=resolution, log=log)
    plot_samples(samples, axes[2], bounds=bounds, color="C1")
    for ax, title in zip(axes, titles or (None,) * 3):
        ax.set_xticks([])
        ax.set_yticks([])
        if title:
            ax.set_title(title)
    return fig


def _plot_nfe(ax: Axes, iteration: np.ndarray, forward: np.ndarray,
              backward: np.ndarray) -> Axes:
    """Function evaluations per step on a second y axis of ``ax``."""
    nfe = ax.twinx()
    nfe.plot(iteration, forward, color="C2", linestyle="--", label="NFE forward")
    nfe.plot(iteration, backward, color="C3", linestyle=":", label="NFE backward")
    nfe.set_ylabel("function evaluations per step")
    return nfe


def plot_history(estimator: FFJORDDensity, ax: Axes | None = None) -> Axes:
    """Training curves of a fitted :class:`~skflow.FFJORDDensity`, from its ``history_``.

    The validation negative log-likelihood (nats per row, in the flow's standardized units)
    against the iteration on ``ax``, with the training negative log-likelihood under likelihood
    training. Flow matching's training loss is a regression loss in other units: it gets a
    second y axis of its own (``ax.train_axes``). When function evaluations were counted
    (likelihood training), the forward and backward NFE per step go on a second y axis
    (``ax.nfe_axes``).

    Parameters
    ----------
    estimator : fitted FFJORDDensity
        An estimator with a ``history_`` list of dicts (keys ``iteration``, ``train_loss``,
        ``val_loss``, ``nfe_forward``, ``nfe_backward``).
    ax : matplotlib Axes, default=None
        Where to draw the losses; the current axes when None.

    Returns
    -------
    ax : matplotlib Axes
        The negative log-likelihood axes (``'train NLL'`` under likelihood training, then
        ``'validation NLL'``); ``ax.train_axes`` holds the ``'train flow-matching loss'`` line
        under flow matching (else None); ``ax.nfe_axes`` the lines ``'NFE forward'`` and
        ``'NFE backward'`` when drawn (else None).

    Examples
    --------
    A model trained by flow matching solves no ODE while training, so no NFE are drawn; its
    training loss has an axis of its own:

    >>> import matplotlib
    >>> matplotlib.use("Agg")  # draw off screen
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> from skflow.plotting import plot_history
    >>> est = FFJORDDensity(hidden_dims=(8,), max_iter=5, random_state=0)
    >>> ax = plot_history(est.fit(make_toy("2spirals", 300, random_state=0)))
    >>> [line.get_label() for line in ax.get_lines()], ax.nfe_axes
    (['validation NLL'], None)
    >>> [line.get_label() for line in ax.train_axes.get_lines()]
    ['train flow-matching loss']
    """
    plt = _pyplot()
    history = getattr(estimator, "history_", None)
    if history is None:
        check_is_fitted(estimator)
        raise ValueError(f"{type(estimator).__name__} has no history_ to plot.")
    ax = plt.gca() if ax is None else ax
    ax.nfe_axes = ax.train_axes = None
    if not history:
        return ax
    iteration = np.array([h["iteration"] for h in history])
    def column(key):
        return np.array([h[key] for h in history], dtype=float)
    likelihood = getattr(estimator, "training", "likelihood") == "likelihood"
    if likelihood:
        ax.plot(iteration, column("train_loss"), marker=".", label="train NLL")
    ax.plot(iteration, column("val_loss"), marker=".", color="C1", label="validation NLL")
    ax.set_xlabel("iteration")
    ax.set_ylabel("negative log-likelihood (nats per row, standardized units)")
    handles, labels = ax.get_legend_handles_labels()
    if not likelihood:  # a regression loss: not comparable with the NLL, so its own axis
        ax.train_axes = ax.twinx()
        ax.train_axes.plot(iteration, column("train_loss"), marker=".", color="C0",
                           linestyle="--", label="train flow-matching loss")
        ax.train_axes.set_ylabel("flow-matching loss")
        more_handles, more_labels = ax.train_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    forward, backward = column("nfe_forward"), column("nfe_backward")
    if np.any(forward > 0) or np.any(backward > 0):
        ax.nfe_axes = _plot_nfe(ax, iteration, forward, backward)
        more_handles, more_labels = ax.nfe_axes.get_legend_handles_labels()
        handles, labels = handles + more_handles, labels + more_labels
    ax.legend(handles, labels, loc="upper right")
    return ax
