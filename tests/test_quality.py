"""A trained flow must model a non-Gaussian density far better than a Gaussian does."""

import warnings

import numpy as np
import pytest
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


@pytest.mark.slow
@pytest.mark.parametrize("name", ["pinwheel", "iris", "wine", "breast_cancer", "diabetes"])
def test_a_default_fit_on_the_demo_data_and_the_bundled_tables_warns_nothing(name):
    # A warning that always fires teaches users to ignore warnings: the defaults must fit the
    # data a user tries first without one (scoring new rows from the same data included).
    from sklearn import datasets
    from sklearn.model_selection import train_test_split
    if name == "pinwheel":
        X = make_toy(name, 10000, random_state=0)
    else:
        X = getattr(datasets, f"load_{name}")().data
    X_train, X_test = train_test_split(X, test_size=0.3, random_state=0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est = FFJORDDensity(random_state=0).fit(X_train)
        score = est.score(X_test)
    assert [str(w.message) for w in caught] == [] and np.isfinite(score)
