"""DensityEnsemble: the mixture's density, its samples, and the estimator contract."""

import pickle

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.neighbors import KernelDensity

from skflow import DensityEnsemble, FFJORDDensity

# The copies train for a few dozen steps only: they are not meant to converge.
pytestmark = pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")


def _member(**kw):
    return FFJORDDensity(hidden_dims=(16, 16), max_iter=60, validation_interval=20, **kw)


@pytest.fixture(scope="module")
def bimodal_1d():
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(-2, 0.5, 200), rng.normal(1.5, 0.7, 200)])[:, None]
    return DensityEnsemble(_member(), n_estimators=3, random_state=0).fit(X), X


def test_the_mixture_is_the_mean_of_the_copies_densities(bimodal_1d):
    ensemble, X = bimodal_1d
    members = np.stack([m.score_samples(X[:20]) for m in ensemble.estimators_])
    mixture = ensemble.score_samples(X[:20])
    np.testing.assert_allclose(np.exp(mixture), np.exp(members).mean(axis=0), rtol=1e-10)
    # The copies differ (their own seeds), so by Jensen's inequality the mixture's mean
    # log-likelihood is strictly above the copies' mean.
    assert len({m.random_state for m in ensemble.estimators_}) == 3
    assert np.ptp(members, axis=0).max() > 1e-3
    assert ensemble.score(X) > np.mean([m.score(X) for m in ensemble.estimators_])


def test_the_mixture_integrates_to_one(bimodal_1d):
    ensemble, _ = bimodal_1d
    xs = np.linspace(-12, 12, 2401)
    assert abs(np.trapezoid(np.exp(ensemble.score_samples(xs[:, None])), xs) - 1) < 0.01


def test_samples_follow_the_mixture(bimodal_1d):
    ensemble, X = bimodal_1d
    draws = ensemble.sample(4000, random_state=0)
    assert draws.shape == (4000, 1)
    np.testing.assert_array_equal(draws, ensemble.sample(4000, random_state=0))
    # Both modes, in about the data's proportions (half the rows below -0.25).
    assert abs(np.mean(draws < -0.25) - np.mean(X < -0.25)) < 0.05
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        ensemble.sample(0)


def test_each_copy_draws_its_share_in_random_order(bimodal_1d, monkeypatch):
    ensemble, _ = bimodal_1d
    for k, member in enumerate(ensemble.estimators_):  # copy k draws the value k
        monkeypatch.setattr(member, "sample", lambda n, random_state, k=k: np.full((n, 1), k))
    labels = ensemble.sample(3000, random_state=0)[:, 0]
    assert np.all(np.abs(np.bincount(labels.astype(int)) / 3000 - 1 / 3) < 0.03)
    assert np.mean(labels[1:] != labels[:-1]) > 0.6  # not in blocks, one copy after another


def test_copies_fit_in_parallel_as_they_do_one_at_a_time():
    X = np.random.RandomState(1).normal(size=(200, 2))
    alone = DensityEnsemble(_member(), n_estimators=2, random_state=3).fit(X)
    parallel = clone(alone).set_params(n_jobs=2).fit(X)
    assert ([m.random_state for m in alone.estimators_]
            == [m.random_state for m in parallel.estimators_])
    np.testing.assert_allclose(alone.score_samples(X[:10]), parallel.score_samples(X[:10]),
                               atol=1e-6)


def test_pickling_keeps_the_density(bimodal_1d):
    ensemble, X = bimodal_1d
    loaded = pickle.loads(pickle.dumps(ensemble))
    np.testing.assert_array_equal(loaded.score_samples(X[:5]), ensemble.score_samples(X[:5]))


def test_an_estimator_without_a_seed_is_refused():
    with pytest.raises(ValueError, match="random_state parameter"):
        DensityEnsemble(KernelDensity()).fit(np.random.RandomState(0).normal(size=(50, 2)))


def test_a_failed_fit_keeps_the_previous_fit(bimodal_1d):
    ensemble, X = bimodal_1d
    refit = pickle.loads(pickle.dumps(ensemble))
    before = refit.score_samples(X[:5])
    bad = np.c_[X, X]
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        refit.fit(bad)
    assert refit.n_features_in_ == 1
    np.testing.assert_array_equal(refit.score_samples(X[:5]), before)
    with pytest.raises(NotFittedError):
        DensityEnsemble(_member()).score_samples(X)


def test_the_default_copies_ffjord_density():
    ensemble = DensityEnsemble(n_estimators=2, random_state=0)
    assert ensemble._template().get_params() == FFJORDDensity().get_params()
