"""FFJORDOutlierDetector: anomaly detection by low FFJORD log density."""

from __future__ import annotations

import warnings
from numbers import Real

import numpy as np
from numpy.typing import ArrayLike
from sklearn.base import OutlierMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import KFold
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._state import atomic_fit
from .density import FFJORDDensity
from .exceptions import ExtrapolationWarning
from .preprocessing import constant_columns

__all__ = ["FFJORDOutlierDetector"]

#: Share of new rows below the threshold when ``contamination='auto'``.
AUTO_CONTAMINATION = 0.01
#: Held-out rows that ``calibration='auto'`` wants below the threshold before it trusts the
#: validation split alone: the share flagged below the k-th lowest of n held-out scores has a
#: standard deviation of about 1/sqrt(k) of its mean (a fifth of it at 25).
MIN_ROWS_BEYOND_THRESHOLD = 25
#: Folds of ``calibration='cross_fit'``: each fold's flow trains on four fifths of the rows.
CALIBRATION_FOLDS = 5


class FFJORDOutlierDetector(OutlierMixin, FFJORDDensity):
    """Outlier detection with an FFJORD density: rows of low log density are outliers.

    The flow is fitted exactly as :class:`~skflow.FFJORDDensity` fits it (all its parameters
    apply, with the same defaults except ``preprocessing``). A threshold ``offset_`` on the log
    density is then set from rows held out from training (the validation split, or every row by
    cross-fitting when the split is small), so that ``predict`` labels about the share
    ``contamination`` of new rows from the training distribution as outliers. A flow scores
    the rows it trained on higher than new ones: a threshold taken from the training rows
    would flag several times that share of new inliers.

    Parameters
    ----------
    hidden_dims, preprocessing, activation, n_blocks, time_length, train_time_length, training, \
divergence, noise, solver, n_steps, atol, rtol, eval_atol, eval_rtol, eval_dtype, max_num_steps, \
adjoint, kinetic_energy, jacobian_frobenius, learning_rate, weight_decay, batch_size, max_iter, \
max_time, validation_fraction, n_iter_no_change, validation_interval, warm_start, device, \
n_threads, verbose, random_state
        As in :class:`~skflow.FFJORDDensity`, with the same defaults except
        ``preprocessing='standardize'``: the quantile map that ``'auto'`` picks for tabular
        data sharpens the density on repeated values, which raised the held-out likelihood but
        lowered the anomaly ranking on the ODDS sets (mean ROC-AUC 0.910 against 0.923; see
        ``benchmarks/results/odds.md``), and ``hidden_dims=(64, 64, 64)`` and ``n_blocks=1``:
        the wider network that ``'auto'`` picks from five features and the blocks it adds
        under flow matching were chosen for the likelihood, not measured for the
        ranking, and a default detector fits up to six flows (see ``calibration``).
    contamination : 'auto' or float in (0, 0.5], default='auto'
        Expected share of outliers; ``offset_`` is the ``100 * contamination`` percentile of the
        log densities of the calibration rows (see ``calibration``; the training rows when none
        are held out: ``validation_fraction=0`` or ``partial_fit``). ``'auto'`` uses
        ``contamination=0.01``. (scikit-learn's :class:`~sklearn.ensemble.IsolationForest` uses
        a fixed offset for ``'auto'``; a fixed value has no meaning for a log density, whose
        scale depends on the units and the dimension of the data.)
    calibration : {'auto', 'held_out', 'cross_fit', 'training'}, default='auto'
        The rows whose log densities set ``offset_``. ``'held_out'``: the validation split,
        which the flow did not train on, so that about ``contamination`` of new rows from the
        training distribution are flagged (on breast cancer, with ``contamination=0.01``, a
        threshold from the training rows flagged 11% of new benign rows; see
        ``benchmarks/results/odds.md``). ``'cross_fit'``: every training row, each scored by a
        flow fitted with the same parameters on the other four of five folds; five more fits,
        for a threshold from as many new rows as there are training rows. ``'auto'``:
        ``'held_out'`` when the validation split has at least 25 rows below the threshold
        (``validation_fraction * n_samples * contamination >= 25``), else ``'cross_fit'``: a
        threshold from a few dozen held-out rows flagged from 0.6 to 9 times the
        contamination on the benchmark sets (``benchmarks/README.md``). ``'training'``: all
        training rows, scikit-learn's convention (as :class:`~sklearn.ensemble.IsolationForest`),
        so that ``fit_predict`` flags that share of them: for finding the outliers in the data
        fitted on.

    Attributes
    ----------
    offset_ : float
        Log-density threshold: ``decision_function = score_samples - offset_``, and rows with a
        negative decision are outliers.
    calibration_ : {'held_out', 'cross_fit', 'training'}
        The rows ``offset_`` was set from (what ``'auto'`` chose; ``'training'`` whenever no
        row was held out; ``'held_out'`` when a cross-fit was asked for but is not possible:
        fewer than ten rows, or a column constant on some fold's training rows).
    input_map_, preprocessing_, flow_, n_features_in_, feature_names_in_, n_iter_, history_, \
best_validation_loss_, device_, world_size_
        As in :class:`~skflow.FFJORDDensity`.

    See Also
    --------
    skflow.FFJORDDensity : The density estimator underneath.
    sklearn.ensemble.IsolationForest : Outlier detection by random partitioning.
    sklearn.neighbors.LocalOutlierFactor : Outlier detection by local density.

    Notes
    -----
    ``fit`` scores every row once more after training (with the exact, per-row evaluation),
    which adds the cost of one ``score_samples`` call on the training data; a cross-fitted
    calibration adds five fits on four fifths of the rows. ``partial_fit``
    sets ``offset_`` from the chunk it was given. Calibrated on held-out rows, the share of
    training rows flagged is not exactly ``contamination`` (it is usually smaller).

    Examples
    --------
    >>> import numpy as np
    >>> from skflow import FFJORDOutlierDetector
    >>> X = np.random.RandomState(0).normal(size=(300, 2))
    >>> det = FFJORDOutlierDetector(hidden_dims=(16, 16), training="flow_matching", max_iter=50,
    ...                             contamination=0.1, random_state=0).fit(X)
    >>> bool(0.03 < (det.predict(X) == -1).mean() < 0.2)
    True
    >>> det.predict([[0.0, 0.0], [6.0, 6.0]])
    array([ 1, -1])
    """

    _warns_extrapolation = False  # rows far from the training data are what it looks for

    _parameter_constraints = {
        **FFJORDDensity._parameter_constraints,
        "contamination": [StrOptions({"auto"}), Interval(Real, 0, 0.5, closed="right")],
        "calibration": [StrOptions({"auto", "held_out", "cross_fit", "training"})],
    }

    def __init__(
        self, *, hidden_dims=(64, 64, 64), preprocessing="standardize", activation="silu",
        n_blocks=1, time_length=1.0, train_time_length=False, training="flow_matching",
        divergence="hutchinson", noise="rademacher", solver="dopri5", n_steps=8, atol=1e-5,
        rtol=1e-5, eval_atol=1e-6, eval_rtol=1e-6, eval_dtype="float32", max_num_steps=1000,
        adjoint=True, kinetic_energy=0.0, jacobian_frobenius=0.0, learning_rate="auto",
        weight_decay=0.0, batch_size="auto", max_iter="auto", max_time=None,
        validation_fraction=0.1, n_iter_no_change=10, validation_interval="auto", warm_start=False,
        device="auto", n_threads=None, verbose=0, random_state=None, contamination="auto",
        calibration="auto",
    ):
        super().__init__(
            hidden_dims=hidden_dims, preprocessing=preprocessing, activation=activation,
            n_blocks=n_blocks, time_length=time_length, train_time_length=train_time_length,
            training=training, divergence=divergence, noise=noise, solver=solver, n_steps=n_steps,
            atol=atol, rtol=rtol, eval_atol=eval_atol, eval_rtol=eval_rtol, eval_dtype=eval_dtype,
            max_num_steps=max_num_steps, adjoint=adjoint, kinetic_energy=kinetic_energy,
            jacobian_frobenius=jacobian_frobenius, learning_rate=learning_rate,
            weight_decay=weight_decay, batch_size=batch_size, max_iter=max_iter, max_time=max_time,
            validation_fraction=validation_fraction, n_iter_no_change=n_iter_no_change,
            validation_interval=validation_interval, warm_start=warm_start, device=device,
            n_threads=n_threads, verbose=verbose, random_state=random_state)
        self.contamination = contamination
        self.calibration = calibration

    # ------------------------------------------------------------------ fitting
    def _fit_and_threshold(self, X, partial):
        """Train, then set ``offset_`` from the log densities of rows that the flow scoring
        them did not train on (see ``calibration``), and return the log densities of ``X``; if
        anything fails (training, the calibration fits or scoring), the fitted state is
        restored as it was."""
        with atomic_fit(self):
            X, result = self._fit(X, partial=partial)
            scores = self._log_density(X)
            share = AUTO_CONTAMINATION if self.contamination == "auto" else self.contamination
            self.calibration_, folds = self._calibration_plan(X, result.validation_rows, share)
            if self.calibration_ == "training":
                calibration_scores = scores
            elif self.calibration_ == "held_out":
                calibration_scores = scores[result.validation_rows]
            else:
                calibration_scores = self._cross_fitted_log_density(X, folds)
            # For new rows, the Weibull plotting position: below the k-th lowest of n held-out
            # scores lies on average the share k / (n + 1) of new rows. For the training rows,
            # scikit-learn's percentile: that share of those very rows.
            method = "linear" if self.calibration_ == "training" else "weibull"
            offset = float(np.percentile(calibration_scores, 100.0 * share, method=method))
            if not np.isfinite(offset):
                raise FloatingPointError(
                    f"The log densities of the calibration rows gave a non-finite threshold "
                    f"({offset}); the flow did not fit these data.")
            self.offset_ = offset
        return scores

    def _calibration_plan(self, X, validation_rows, share):
        """What ``calibration`` resolves to for this fit, and the cross-fit's folds if any."""
        if self.calibration == "training" or validation_rows is None:
            return "training", None  # partial_fit or validation_fraction=0: none held out
        rule = self.calibration
        if rule == "auto":
            enough = len(validation_rows) * share >= MIN_ROWS_BEYOND_THRESHOLD
            rule = "held_out" if enough else "cross_fit"
        folds = None
        if rule == "cross_fit" and len(X) >= 2 * CALIBRATION_FOLDS:
            folds = self._calibration_folds(X)
        return ("cross_fit", folds) if folds is not None else ("held_out", None)

    def _calibration_folds(self, X):
        """``(seed, train, held_out)`` for each fold of the cross-fit, or None when the
        training rows of some fold hold a column constant (a feature whose other values all
        fall in one fold): no flow can be fitted on them."""
        seed = check_random_state(self.random_state).randint(np.iinfo(np.int32).max)
        folds = [(seed + fold, train, held_out) for fold, (train, held_out) in enumerate(
            KFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed).split(X))]
        if any(constant_columns(X[train]).any() for _, train, _ in folds):
            return None
        return folds

    def _cross_fitted_log_density(self, X, folds):
        """The log density of every row of ``X`` under a flow fitted, with this detector's
        parameters, on the other ``folds``: new rows for the flow that scores them, as many as
        there are training rows."""
        params = {name: value for name, value in self.get_params().items()
                  if name in FFJORDDensity._parameter_constraints}
        params.update(warm_start=False, verbose=0)
        scores = np.empty(len(X))
        for fold, (seed, train, held_out) in enumerate(folds):
            if self.verbose:
                print(f"calibration: fold {fold + 1} of {len(folds)}", flush=True)
            with warnings.catch_warnings():
                # The detector's own fit has warned about convergence already; far rows are
                # what it looks for.
                warnings.simplefilter("ignore", ConvergenceWarning)
                warnings.simplefilter("ignore", ExtrapolationWarning)
                density = FFJORDDensity(**{**params, "random_state": seed})
                scores[held_out] = density.fit(X[train]).score_samples(X[held_out])
        return scores

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: ArrayLike, y: None = None) -> FFJORDOutlierDetector:
        """Fit the flow to ``X`` and set the outlier threshold ``offset_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data: at least two rows, no constant column.
        y : None
            Ignored.

        Returns
        -------
        self : FFJORDOutlierDetector
            The fitted detector.
        """
        self._fit_and_threshold(X, partial=False)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: ArrayLike, y: None = None) -> FFJORDOutlierDetector:
        """One pass over the chunk ``X``, then ``offset_`` from the chunk's log densities.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One chunk of training data.
        y : None
            Ignored.

        Returns
        -------
        self : FFJORDOutlierDetector
            The updated detector.
        """
        self._fit_and_threshold(X, partial=True)
        return self

    def fit_predict(self, X: ArrayLike, y: None = None) -> np.ndarray:
        """``fit(X).predict(X)``, scoring ``X`` only once.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            1 for inliers, -1 for outliers.
        """
        self._validate_params()
        scores = self._fit_and_threshold(X, partial=False)
        return np.where(scores - self.offset_ >= 0, 1, -1)

    # --------------------------------------------------------------- prediction
    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """Log density minus ``offset_``: negative for outliers, positive for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
            ``score_samples(X) - offset_``.
        """
        check_is_fitted(self)
        return self.score_samples(X) - self.offset_

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Label each row of ``X``: 1 for an inlier, -1 for an outlier.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to label.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            1 where ``decision_function(X) >= 0``, else -1 (int).
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)
