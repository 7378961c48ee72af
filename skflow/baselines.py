"""Classical density estimators tuned on a validation split: the yardsticks for a flow."""

import numpy as np
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import KernelDensity


def _refit_best(make, candidates, X_train, X_val):
    # Mean log-likelihood via score_samples: KernelDensity.score is a sum, GaussianMixture's a mean.
    scores = {c: np.mean(make(c).fit(X_train).score_samples(X_val)) for c in candidates}
    best = max(scores, key=scores.get)
    return make(best).fit(np.concatenate([X_train, X_val]))


def tuned_gaussian_mixture(X_train, X_val, n_components=(1, 2, 5, 10, 20, 40), random_state=0):
    """The full-covariance GaussianMixture with the best validation log-likelihood, refitted on
    training and validation rows."""
    candidates = [k for k in n_components if k <= len(X_train)]
    return _refit_best(lambda k: GaussianMixture(k, reg_covar=1e-5, random_state=random_state),
                       candidates, X_train, X_val)


def tuned_kernel_density(X_train, X_val, bandwidths=None):
    """A Gaussian KernelDensity on standardized data with the bandwidth that scores best on the
    validation rows, refitted on both. Standardization is part of the model: its ``score``
    includes the log-Jacobian, so densities refer to the original units."""
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0
    if bandwidths is None:
        bandwidths = np.geomspace(0.02, 2.0, 16)

    def standardized(A):
        return (A - mean) / std

    best = _refit_best(lambda b: KernelDensity(bandwidth=b), list(bandwidths),
                       standardized(X_train), standardized(X_val))
    return _StandardizedKDE(best, mean, std)


class _StandardizedKDE:
    def __init__(self, kde, mean, std):
        self.kde, self.mean, self.std = kde, mean, std
        self.bandwidth = kde.bandwidth

    def score_samples(self, X):
        return self.kde.score_samples((X - self.mean) / self.std) - np.log(self.std).sum()

    def score(self, X):
        return float(np.mean(self.score_samples(X)))
