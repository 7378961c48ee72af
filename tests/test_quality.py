"""A trained flow must model a non-Gaussian density far better than a Gaussian does."""

import numpy as np
from sklearn.mixture import GaussianMixture

from skflow import FFJORDDensity
from skflow.datasets import make_toy


def test_flow_beats_a_gaussian_on_held_out_pinwheel():
    X = make_toy("pinwheel", 3000, random_state=0)
    X_test = make_toy("pinwheel", 3000, random_state=1)
    est = FFJORDDensity(hidden_dims=(64, 64), max_iter=1500, random_state=0).fit(X)
    gaussian = GaussianMixture(1).fit(X).score(X_test)
    # A single Gaussian scores about -3.6 nats here; the true density is near -2.3.
    assert est.score(X_test) > gaussian + 0.5
    # Samples land where the data are: their median log density under a Gaussian mixture fitted
    # to the data is nearer that of held-out data than that of samples from a Gaussian.
    reference = GaussianMixture(20, random_state=0).fit(X)
    def median(A):
        return np.median(reference.score_samples(A))
    samples = est.sample(2000, random_state=0)
    gaussian_samples = GaussianMixture(1).fit(X).sample(2000)[0]
    assert median(samples) - median(gaussian_samples) > median(X_test) - median(samples)
