"""Classical density estimators tuned on a validation split: the yardsticks for a flow."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity

__all__ = ["tuned_gaussian_mixture", "tuned_kernel_density"]


def _refit_best(make: Callable[[Any], Any], candidates: Sequence[Any], X_train: np.ndarray,
                X_val: np.ndarray) -> Any:
    # Mean log-likelihood via score_samples: KernelDensity.score is a sum, GaussianMixture's a mean.
    scores = {c: np.mean(make(c).fit(X_train).score_samples(X_val)) for c in candidates}
    best = max(scores, key=scores.get)
    return make(best).fit(np.concatenate([X_train, X_val]))


def tuned_gaussian_mixture(X_train: np.ndarray, X_val: np.ndarray,
                           n_components: Sequence[int] = (1, 2, 5, 10, 20, 40),
                           random_state: int | np.random.RandomState | None = 0
                           ) -> GaussianMixture:
    """Fit the full-covariance GaussianMixture that scores best on a validation split.

    Each candidate is fitted on the training rows; the one with the best mean validation
    log-likelihood is refitted on training and validation rows together.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
        Rows each candidate is fitted on.
    X_val : ndarray of shape (n_val, n_features)
        Rows the candidates are compared on, by mean log-likelihood.
    n_components : sequence of int, default=(1, 2, 5, 10, 20, 40)
        Candidate numbers of components; those above ``len(X_train)`` are skipped.
    random_state : int, RandomState instance or None, default=0
        Seeds the initialization of every fit.

    Returns
    -------
    gmm : GaussianMixture
        The best candidate (``reg_covar=1e-5``), refitted on ``X_train`` and ``X_val``
        together.

    Examples
    --------
    >>> from skflow.baselines import tuned_gaussian_mixture
    >>> from skflow.datasets import make_toy
    >>> X = make_toy("8gaussians", 300, random_state=0)
    >>> gmm = tuned_gaussian_mixture(X[:200], X[200:], n_components=(1, 4, 8))
    >>> gmm.n_components  # one component per mode
    8
    """
    candidates = [k for k in n_components if k <= len(X_train)]
    return _refit_best(lambda k: GaussianMixture(k, reg_covar=1e-5, random_state=random_state),
                       candidates, X_train, X_val)


def tuned_kernel_density(X_train: np.ndarray, X_val: np.ndarray,
                         bandwidths: Sequence[float] | np.ndarray | None = None
                         ) -> _StandardizedKDE:
    """Fit a Gaussian KernelDensity with the bandwidth that scores best on a validation split.

    The kernel density is estimated on standardized data, and the best bandwidth refitted on
    the training and validation rows together. Standardization is part of the model: its
    ``score`` includes the log-Jacobian, so densities refer to the original units.

    Parameters
    ----------
    X_train : ndarray of shape (n_train, n_features)
        Rows each candidate is fitted on; their mean and standard deviation standardize all
        rows.
    X_val : ndarray of shape (n_val, n_features)
        Rows the candidates are compared on, by mean log-likelihood.
    bandwidths : sequence of float, default=None
        Candidate bandwidths, in standardized units; 16 values from 0.02 to 2 spaced evenly
        on a log scale when None.

    Returns
    -------
    kde : object
        The best KernelDensity with the standardization, refitted on ``X_train`` and ``X_val``
        together. It has ``score_samples(X)`` (log density of each row of ``X``, in its
        original units), ``score(X)`` (their mean) and ``bandwidth``.

    Examples
    --------
    >>> from skflow.baselines import tuned_kernel_density
    >>> from skflow.datasets import make_toy
    >>> X = make_toy("moons", 300, random_state=0)
    >>> kde = tuned_kernel_density(X[:200], X[200:], bandwidths=[0.03, 0.1, 0.3, 1.0])
    >>> kde.bandwidth, kde.score_samples(X[:5]).shape
    (0.1, (5,))
    """
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    if bandwidths is None:
        bandwidths = np.geomspace(0.02, 2.0, 16)

    def standardized(A: np.ndarray) -> np.ndarray:
        return (A - mean) / std

    best = _refit_best(lambda b: KernelDensity(bandwidth=b), list(bandwidths),
                       standardized(X_train), standardized(X_val))
    return _StandardizedKDE(best, mean, std)


class _StandardizedKDE:
    """A KernelDensity fitted on ``(X - mean) / std``, scoring rows in their original units."""

    def __init__(self, kde: KernelDensity, mean: np.ndarray, std: np.ndarray) -> None:
        self.kde, self.mean, self.std = kde, mean, std
        self.bandwidth = kde.bandwidth

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Log density of each row of ``X``: the KernelDensity's, plus the log-Jacobian."""
        return self.kde.score_samples((X - self.mean) / self.std) - np.log(self.std).sum()

    def score(self, X: np.ndarray) -> float:
        """Mean log density of the rows of ``X``."""
        return float(np.mean(self.score_samples(X)))
