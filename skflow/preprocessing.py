"""The input map: the invertible map from data to the space the flow sees.

:class:`InputMap` owns all of preprocessing and its log-Jacobian: an optional rotation onto
whitened principal components (:class:`PCAWhitening`), an optional quantile map of each
feature to a normal marginal (:class:`QuantileGaussianizer`), then standardization;
:func:`choose_input_map` picks among them for ``'auto'``. The flow sees only mapped rows, so
that ``log p(x) = log p_flow(z) + log |det dz/dx|``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import kurtosis, norm, skew

__all__ = ["InputMap", "PCAWhitening", "QuantileGaussianizer", "choose_input_map",
           "constant_columns", "has_repeated_values", "marginals_need_gaussianizing"]

# Thresholds of marginals_need_gaussianizing. The 2-D toy densities and smooth synthetic data
# stay below |skewness| 0.3 and excess kurtosis 0; every real tabular set measured (MINIBOONE,
# the ODDS sets) has a feature with |skewness| > 9 or excess kurtosis > 150 and most have
# values repeated in over 5% of rows.
_SKEWNESS, _EXCESS_KURTOSIS, _ATOM_SHARE = 1.0, 3.0, 0.05
# Below this many rows 'auto' standardizes: the quantile map's knots then follow the sample's
# noise. Fitted on 120 and 142 rows (iris, wine) the map lost 1.5 and 2.1 nats to
# standardization; on 353, 455 and 824 rows (diabetes, breast cancer, concrete) it gained 1.6,
# lost 0.1 and gained 9.2 (benchmarks/results/: the map in quality_baseline.md, standardization
# in quality_small_data_rules.md, which standardized below 1,000 rows).
MIN_ROWS_FOR_QUANTILE = 300
# Nats per row that a more elaborate input map must gain, in choose_input_map, over a simpler
# one, when no marginal is skewed, heavy-tailed or repeated (marginals_need_gaussianizing):
# the flow then removes much of what a Gaussian leaves in either space. On the 2-D toy
# densities the quantile map gained 0.3-0.7 nats for a Gaussian and lost 0.05-0.25 for the
# flow; on puma32h (33 bounded, light-tailed features) it gained 5.1 for a Gaussian and 4.9 for
# the flow. With such marginals a hundredth of a nat suffices: a flow started at the identity
# cannot make a point mass or a heavy tail by itself.
MIN_GAIN_FOR_A_MAP = 1.0
MIN_GAIN_FOR_A_MAP_NON_GAUSSIAN_MARGINALS = 0.01


def marginals_need_gaussianizing(X: np.ndarray) -> bool:
    """Whether some feature of ``X`` is strongly skewed, heavy-tailed or has a repeated value.

    A CNF with Lipschitz dynamics started at the identity maps a Gaussian to light-tailed
    densities only (Jaini et al. 2020, "Tails of Lipschitz triangular flows"), and a value
    repeated in many rows is a near point mass: such marginals are better handled by the
    quantile map in front of the flow. :func:`choose_input_map` then takes a map that gains
    even a little over standardization.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import marginals_need_gaussianizing
    >>> rng = np.random.RandomState(0)
    >>> marginals_need_gaussianizing(rng.normal(size=(500, 3)))
    False
    >>> marginals_need_gaussianizing(rng.lognormal(size=(500, 3)))
    True
    """
    X = np.asarray(X, dtype=np.float64)
    with np.errstate(all="ignore"):
        if (np.abs(skew(X, axis=0)) > _SKEWNESS).any() or (
                kurtosis(X, axis=0) > _EXCESS_KURTOSIS).any():
            return True
    return has_repeated_values(X)


def has_repeated_values(X: np.ndarray) -> bool:
    """Whether some feature of ``X`` repeats one value in over 5% of the rows: a near point
    mass, which a flow started at the identity cannot make by itself.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import has_repeated_values
    >>> rng = np.random.RandomState(0)
    >>> has_repeated_values(rng.normal(size=(500, 2)))
    False
    >>> has_repeated_values(rng.poisson(size=(500, 2)))  # counts: each value in many rows
    True
    """
    for column in np.asarray(X).T:
        counts = np.unique(column, return_counts=True)[1]
        if counts.max() > _ATOM_SHARE * len(column):
            return True
    return False


def constant_columns(X: np.ndarray) -> np.ndarray:
    """Which columns of ``X`` are constant, relative to the column's own magnitude (whatever
    the units): no density is defined along them.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import constant_columns
    >>> constant_columns(np.array([[1.0, 5.0], [2.0, 5.0]]))
    array([False,  True])
    """
    X = np.asarray(X, dtype=np.float64)
    return _column_mean_std(X)[2] <= 10 * np.finfo(np.float64).eps


def _column_mean_std(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of float64 ``X``, computed on each column divided
    by its largest magnitude so that squaring neither overflows (data near 1e200) nor
    underflows (data near 1e-200). Also returns that standard deviation relative to the
    column's magnitude, which does not depend on the units."""
    magnitude = np.abs(X).max(axis=0)
    magnitude[magnitude == 0] = 1.0
    unit = X / magnitude
    relative_std = unit.std(axis=0)
    return unit.mean(axis=0) * magnitude, relative_std * magnitude, relative_std


class InputMap:
    """Data to flow space and back: optional decorrelation and quantile maps, then
    standardization.

    Fitted once on the training rows, in float64 (casting raw data centred at 1e3 with a spread
    of 1e-3 to float32 would lose the signal before standardization could rescue it).

    Parameters
    ----------
    kind : {'auto', 'standardize', 'quantile', 'pca', 'pca_quantile'}, default='auto'
        ``'standardize'``: mean and standard deviation per feature. ``'quantile'``: each
        feature first through a :class:`QuantileGaussianizer`. ``'pca'``: the rows rotated
        onto their whitened principal components (:class:`PCAWhitening`): for strongly
        correlated features, whose covariance the flow then need not learn.
        ``'pca_quantile'``: the whitened components, then the quantile map of each.
        ``'auto'``: the map that :func:`choose_input_map` picks.

    Attributes
    ----------
    kind_ : {'standardize', 'quantile', 'pca', 'pca_quantile'}
        The map used (``'auto'`` resolved on the training rows).
    whitening_ : PCAWhitening or None
        The fitted rotation, when ``kind_`` is ``'pca'`` or ``'pca_quantile'``.
    quantile_ : QuantileGaussianizer or None
        The fitted marginal map, when ``kind_`` is ``'quantile'`` or ``'pca_quantile'``.
    shift_, scale_ : ndarray of shape (n_features,)
        The standardization ``(u - shift_) / scale_`` of the mapped features ``u``.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import InputMap
    >>> X = np.random.RandomState(0).normal(5.0, 2.0, size=(400, 2))
    >>> input_map = InputMap().fit(X)
    >>> input_map.kind_
    'standardize'
    >>> Z, log_det = input_map.forward(X)
    >>> bool(np.allclose(Z.std(axis=0), 1.0) and np.allclose(log_det, -np.log(X.std(0)).sum()))
    True
    >>> bool(np.allclose(input_map.inverse(Z), X))
    True
    """

    def __init__(self, kind: str = "auto"):
        self.kind = kind

    def fit(self, X: np.ndarray, feature_names: Sequence[str] | None = None) -> InputMap:
        """Fit the map to the rows of ``X`` (float64, no constant column).

        ``feature_names`` only name the offending columns in the error for a constant one.
        """
        X = np.asarray(X, dtype=np.float64)
        constant = constant_columns(X)
        if constant.any():
            columns = [str(feature_names[i]) if feature_names is not None else str(i)
                       for i in np.flatnonzero(constant)]
            raise ValueError(
                f"Column(s) {', '.join(columns)} of X are constant: a continuous density is "
                "not defined along a constant feature. Drop them (e.g. with "
                "sklearn.feature_selection.VarianceThreshold) before fitting.")
        self.kind_ = choose_input_map(X) if self.kind == "auto" else self.kind
        self.whitening_ = PCAWhitening().fit(X) if self.kind_.startswith("pca") else None
        R = self.whitening_.forward(X)[0] if self.whitening_ is not None else X
        self.quantile_ = QuantileGaussianizer().fit(R) if self.kind_.endswith("quantile") else None
        U = self.quantile_.forward(R)[0] if self.quantile_ is not None else R
        self.shift_, self.scale_ = _column_mean_std(U)[:2]
        return self

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Z, log_det)``: the rows in flow space and ``log |det dZ/dX|`` of each row."""
        U = np.asarray(X, dtype=np.float64)
        log_det = np.zeros(U.shape[0])
        for step in (self.whitening_, self.quantile_):
            if step is not None:
                U, step_log_det = step.forward(U)
                log_det += step_log_det
        return (U - self.shift_) / self.scale_, log_det - np.log(self.scale_).sum()

    def inverse(self, Z: np.ndarray) -> np.ndarray:
        """The data rows that :meth:`forward` maps to ``Z``."""
        U = np.asarray(Z, dtype=np.float64) * self.scale_ + self.shift_
        for step in (self.quantile_, self.whitening_):
            if step is not None:
                U = step.inverse(U)
        return U


def _gaussian_log_likelihood(Z_fit: np.ndarray, Z: np.ndarray) -> np.ndarray:
    """Log density of the rows ``Z`` under the Gaussian (full covariance, a 1e-6 ridge)
    fitted to ``Z_fit``."""
    mean = Z_fit.mean(axis=0)
    covariance = np.atleast_2d(np.cov(Z_fit, rowvar=False)) + 1e-6 * np.eye(Z_fit.shape[1])
    factor = np.linalg.cholesky(covariance)
    solved = np.linalg.solve(factor, (Z - mean).T)
    return (-0.5 * (solved ** 2).sum(axis=0) - np.log(np.diag(factor)).sum()
            - 0.5 * Z.shape[1] * np.log(2 * np.pi))


def choose_input_map(X: np.ndarray, validation_share: float = 0.2, seed: int = 0) -> str:
    """The input map under which a Gaussian fits ``X`` best: what ``kind='auto'`` uses.

    Each candidate map ('standardize', 'quantile', 'pca_quantile') is fitted on a random
    ``1 - validation_share`` of the rows, a Gaussian (full covariance) is fitted to the mapped
    rows, and the others are scored in data units (with the map's log-Jacobian); the best
    held-out score wins, a more elaborate map only by ``MIN_GAIN_FOR_A_MAP`` (1 nat per row)
    over a simpler one, or by a hundredth of a nat when some marginal is skewed, heavy-tailed
    or has a repeated value (:func:`marginals_need_gaussianizing`). The map that leaves the
    most Gaussian-like rows leaves the flow the least to learn: where the flow was fitted
    with more than one map (puma32h, treasury, electrical_grid, cardio, mammography, the 2-D
    toys; ``benchmarks/README.md``), this choice was the best of the maps tried, but for one
    rule: a rotation chosen for rows without repeated values (:func:`has_repeated_values`)
    is kept without the quantile map, as 'pca'. Below ``MIN_ROWS_FOR_QUANTILE`` rows it is
    'standardize'.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import choose_input_map
    >>> rng = np.random.RandomState(0)
    >>> choose_input_map(rng.normal(size=(500, 3))), choose_input_map(rng.lognormal(size=(500, 3)))
    ('standardize', 'quantile')
    """
    X = np.asarray(X, dtype=np.float64)
    if len(X) < MIN_ROWS_FOR_QUANTILE:
        return "standardize"
    order = np.random.RandomState(seed).permutation(len(X))
    n_validation = int(round(validation_share * len(X)))
    fit_rows, validation_rows = X[order[n_validation:]], X[order[:n_validation]]
    scores = {}
    for kind in ("standardize", "quantile", "pca_quantile"):
        try:
            input_map = InputMap(kind).fit(fit_rows)
            Z, log_det = input_map.forward(validation_rows)
            score = np.mean(_gaussian_log_likelihood(input_map.forward(fit_rows)[0], Z) + log_det)
        except (ValueError, np.linalg.LinAlgError):  # e.g. a column constant on these rows
            score = -np.inf
        scores[kind] = score if np.isfinite(score) else -np.inf
    margin = (MIN_GAIN_FOR_A_MAP_NON_GAUSSIAN_MARGINALS if marginals_need_gaussianizing(X)
              else MIN_GAIN_FOR_A_MAP)
    best = "standardize"
    for kind in ("quantile", "pca_quantile"):
        if scores[kind] > scores[best] + margin:
            best = kind
    if best == "pca_quantile" and not has_repeated_values(X):
        # The quantile map after the rotation is for the point masses that the rotation
        # smears; on smooth components the flow shapes the marginals better itself
        # (benchmarks/README.md: treasury -18.50 against -21.22, electrical_grid 26.04
        # against 25.79 nats per row, alike on a second seed). A Gaussian cannot tell 'pca'
        # from 'standardize' (its covariance absorbs any linear map), hence the rule.
        best = "pca"
    return best


class PCAWhitening:
    """The rows rotated onto their principal components, each scaled to unit variance.

    Computed on the standardized features; a principal variance below a millionth of the
    largest is floored there, so that exactly collinear features (a total next to its parts)
    still give an invertible map. A fixed linear map: its log-Jacobian is the same for every
    row.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import PCAWhitening
    >>> rng = np.random.RandomState(0)
    >>> X = rng.normal(size=(2000, 1)) @ [[1.0, 1.0]] + 0.1 * rng.normal(size=(2000, 2))
    >>> w = PCAWhitening().fit(X)
    >>> Y, log_det = w.forward(X)
    >>> bool(np.allclose(np.cov(Y, rowvar=False), np.eye(2)))
    True
    >>> bool(np.allclose(w.inverse(Y), X))
    True
    """

    def fit(self, X: np.ndarray) -> PCAWhitening:
        """The mean, scale and principal components of ``X``."""
        self.mean_, self.scale_ = _column_mean_std(X)[:2]
        covariance = np.atleast_2d(np.cov((X - self.mean_) / self.scale_, rowvar=False))
        variances, components = np.linalg.eigh(covariance)
        variances = np.maximum(variances, 1e-6 * variances.max())
        self.components_ = components / np.sqrt(variances)  # columns: whitened directions
        self.log_det_ = -np.log(self.scale_).sum() - 0.5 * np.log(variances).sum()
        return self

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Y, log_det)``: the whitened rows and ``log |det dY/dX|`` (one value) per row."""
        Y = ((X - self.mean_) / self.scale_) @ self.components_
        return Y, np.full(X.shape[0], self.log_det_)

    def inverse(self, Y: np.ndarray) -> np.ndarray:
        """The rows that :meth:`forward` maps to ``Y``."""
        return np.linalg.solve(self.components_.T, Y.T).T * self.scale_ + self.mean_


class QuantileGaussianizer:
    """A monotone piecewise-linear map of each feature to a standard-normal marginal.

    Knots sit at ``n_quantiles`` empirical quantiles of the training data, at the mid-point
    empirical CDF ``(#{x < q} + #{x <= q}) / 2n``, mapped through the normal quantile function.
    A value repeated in more than ``n / n_quantiles`` rows (an atom: a lab value recorded at a
    fixed resolution, a zero-inflated count) gets its own steep segment ``v +- delta`` carrying
    its share of the rows, ``delta`` being half the gap to the nearest other value seen; the
    quantile knots stay sparse elsewhere, so continuous stretches keep a smooth, low-noise
    map. Beyond the outer knots the map continues linearly with the end segment's slope, or
    with the average slope when the end segment is an atom (a point mass says nothing about
    the tail). The log-Jacobian is the sum over features of the log slope at each value.

    Tabular features are often skewed, heavy-tailed or concentrated on a few values; mapping the
    marginals to normal first leaves the flow only the dependence between features to learn.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.preprocessing import QuantileGaussianizer
    >>> X = np.random.RandomState(0).exponential(size=(1000, 2))
    >>> q = QuantileGaussianizer().fit(X)
    >>> Z, log_det = q.forward(X)
    >>> bool(abs(Z.mean()) < 0.05 and abs(Z.std() - 1) < 0.05)
    True
    >>> bool(np.allclose(q.inverse(Z), X))
    True
    """

    def __init__(self, n_quantiles: int = 128):
        self.n_quantiles = n_quantiles

    def fit(self, X: np.ndarray) -> QuantileGaussianizer:
        """Place the knots at the quantiles (and atoms) of each column of ``X``."""
        n = X.shape[0]
        levels = np.linspace(0.0, 1.0, min(self.n_quantiles, n))
        self.knots_x_, self.knots_z_, self.slopes_ = [], [], []
        for column in X.T:
            xs, cdf = self._knots(np.sort(column), levels)
            zs = norm.ppf(np.clip(cdf, 0.5 / n, 1 - 0.5 / n))
            keep = np.r_[True, np.diff(zs) > 0]  # clipping may flatten the ends
            xs, zs = xs[keep], zs[keep]
            inner = np.diff(zs) / np.diff(xs)
            average = (zs[-1] - zs[0]) / (xs[-1] - xs[0])
            # An end segment steeper than average is an atom at the extreme value.
            tails = [min(inner[0], average), min(inner[-1], average)]
            self.knots_x_.append(xs)
            self.knots_z_.append(zs)
            self.slopes_.append(np.r_[tails[0], inner, tails[1]])
        return self

    def _knots(self, column, levels):
        """Knot positions and their CDF levels for one sorted column."""
        n = len(column)
        values, counts = np.unique(column, return_counts=True)
        below = np.cumsum(counts) - counts  # rows strictly below each distinct value
        atom = (counts >= 2) & (counts > n / self.n_quantiles)
        gaps = np.diff(values)
        half_gap = 0.5 * np.minimum(np.r_[np.inf, gaps], np.r_[gaps, np.inf])
        if len(values) == 1:  # not reached through the estimator (constant columns are refused)
            half_gap[:] = 0.5
        xs = [values[atom] - half_gap[atom], values[atom] + half_gap[atom]]
        cdf = [below[atom] / n, (below[atom] + counts[atom]) / n]
        quantiles = np.quantile(column, levels)
        # Quantiles inside an atom's segment are replaced by the segment's two ends.
        index = np.clip(np.searchsorted(values, quantiles), 0, len(values) - 1)
        nearest_atom = atom[index] & (np.abs(quantiles - values[index]) <= half_gap[index])
        previous = np.clip(index - 1, 0, len(values) - 1)
        nearest_atom |= atom[previous] & (quantiles - values[previous] <= half_gap[previous])
        quantiles = quantiles[~nearest_atom]
        mid_cdf = (np.searchsorted(column, quantiles, side="left")
                   + np.searchsorted(column, quantiles, side="right")) / (2 * n)
        xs, cdf = np.concatenate(xs + [quantiles]), np.concatenate(cdf + [mid_cdf])
        order = np.lexsort((cdf, xs))
        xs, cdf = xs[order], cdf[order]
        # Strictly increasing in both coordinates: a repeated position or level adds nothing.
        keep = np.r_[True, (np.diff(xs) > 0) & (np.diff(cdf) > 0)]
        return xs[keep], cdf[keep]

    @staticmethod
    def _piecewise_linear(values, xs, ys, slopes):
        """The map through knots (xs, ys) with ``slopes`` (left tail, segments, right tail)."""
        segment = np.searchsorted(xs, values, side="right")  # 0 .. len(xs)
        anchor = np.maximum(segment - 1, 0)
        return ys[anchor] + (values - xs[anchor]) * slopes[segment], slopes[segment]

    def forward(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(Z, log_det)``: mapped rows and ``log |det dZ/dX|`` per row."""
        Z = np.empty_like(X, dtype=np.float64)
        log_det = np.zeros(X.shape[0])
        for j, (xs, zs, slopes) in enumerate(zip(self.knots_x_, self.knots_z_, self.slopes_)):
            Z[:, j], slope = self._piecewise_linear(X[:, j], xs, zs, slopes)
            log_det += np.log(slope)
        return Z, log_det

    def inverse(self, Z: np.ndarray) -> np.ndarray:
        """The rows ``X`` that :meth:`forward` maps to ``Z``."""
        X = np.empty_like(Z, dtype=np.float64)
        for j, (xs, zs, slopes) in enumerate(zip(self.knots_x_, self.knots_z_, self.slopes_)):
            X[:, j] = self._piecewise_linear(Z[:, j], zs, xs, 1.0 / slopes)[0]
        return X
