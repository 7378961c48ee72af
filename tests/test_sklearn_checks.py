"""scikit-learn's own estimator checks, on a configuration that trains in a fraction of a second."""

import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from skflow import FFJORDDensity


def _fast(**kw):
    return FFJORDDensity(hidden_dims=(8,), max_iter=5, validation_interval=5, random_state=0, **kw)


@parametrize_with_checks([
    _fast(training="flow_matching"),
    _fast(training="likelihood", solver="rk4", n_steps=2),
    _fast(training="flow_matching", preprocessing="quantile"),
])
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # Five optimizer steps do not converge, and are not meant to.
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
