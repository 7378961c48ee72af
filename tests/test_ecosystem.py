"""FFJORDDensity among scikit-learn's tools: pipelines, model selection, joblib workers, cloning,
nested parameters, pickling, incremental fitting, progress output and convergence warnings."""

import pickle
import re
import warnings

import numpy as np
import pytest
from joblib import parallel_backend
from scipy.stats import loguniform
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import GridSearchCV, KFold, RandomizedSearchCV, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from skflow import FFJORDDensity, FFJORDOutlierDetector

from .conftest import FAST

# Trains for a fixed number of steps, with no early stopping and so no ConvergenceWarning;
# loose validation tolerances (flow matching uses them only to validate) keep it cheap.
FIXED = {**FAST, "max_iter": 20, "validation_interval": 10, "n_iter_no_change": None,
         "learning_rate": 1e-2, "atol": 1e-3, "rtol": 1e-3}
# Long enough to learn that the data have two modes.
LONGER = {**FIXED, "max_iter": 100, "validation_interval": 50}


def _bimodal(n, seed=0, dim=2):
    rng = np.random.RandomState(seed)
    centres = rng.choice([-2.0, 2.0], size=(n, 1))
    X = centres + rng.normal(0, 0.5, (n, dim))
    X[:, 0] *= 3.0
    return X


@pytest.fixture(scope="module")
def X():
    return _bimodal(300)


def _widths(est):
    return [layer.linear.out_features for layer in est.flow_.blocks[0].net.layers[:-1]]


# ------------------------------------------------------------------------------- pipelines
def test_pipeline_with_scaler_scores_in_the_units_it_was_given(X):
    pipe = make_pipeline(StandardScaler(), FFJORDDensity(**FIXED)).fit(X)
    scaler, est = pipe.named_steps["standardscaler"], pipe.named_steps["ffjorddensity"]
    inner = est.score_samples(scaler.transform(X[:20]))
    np.testing.assert_array_equal(pipe.score_samples(X[:20]), inner)
    assert pipe.score(X[:20]) == pytest.approx(inner.mean())
    # The scaler is not a density transform: the pipeline's densities are in scaled units, which
    # differ from densities in the units of X by exactly log|det| of the scaling.
    direct = FFJORDDensity(**FIXED).fit(X)
    np.testing.assert_allclose(inner - np.log(scaler.scale_).sum(), direct.score_samples(X[:20]),
                               atol=1e-3)


def test_pipeline_with_pca_reduces_the_dimension_first():
    X3 = _bimodal(300, dim=3)
    pipe = Pipeline([("pca", PCA(n_components=2)), ("flow", FFJORDDensity(**FIXED))]).fit(X3)
    assert pipe.named_steps["flow"].n_features_in_ == 2
    scores = pipe.score_samples(X3[:10])
    np.testing.assert_array_equal(
        scores, pipe.named_steps["flow"].score_samples(pipe.named_steps["pca"].transform(X3[:10])))
    assert pipe.score(X3) == pytest.approx(pipe.score_samples(X3).mean())


def test_outlier_detector_in_a_pipeline(X):
    pipe = make_pipeline(StandardScaler(), FFJORDOutlierDetector(**FIXED, contamination=0.1,
                                                                 calibration="training"))
    labels = pipe.fit_predict(X)
    assert (labels == -1).sum() == 30
    np.testing.assert_array_equal(pipe.predict(X), labels)
    det = pipe.named_steps["ffjordoutlierdetector"]
    np.testing.assert_array_equal(pipe.decision_function(X[:10]),
                                  det.score_samples(pipe[:-1].transform(X[:10])) - det.offset_)
    assert pipe.predict([[40.0, -30.0]])[0] == -1


# -------------------------------------------------------------------------- model selection
def test_grid_search_default_scoring_is_the_held_out_log_likelihood(X):
    # The identity flow (learning rate ~0) is the Gaussian of the data; on bimodal data a trained
    # flow must have a higher held-out likelihood, and the search must prefer it.
    search = GridSearchCV(FFJORDDensity(**LONGER), {"learning_rate": [1e-12, 1e-2]}, cv=3).fit(X)
    assert search.best_params_ == {"learning_rate": 1e-2}
    means = search.cv_results_["mean_test_score"]
    assert means[1] > means[0] + 0.1
    # Each split score is the estimator's score (mean log density) on the held-out fold.
    train, test = next(KFold(3).split(X))
    fold0 = clone(search.estimator).set_params(learning_rate=1e-2).fit(X[train]).score(X[test])
    assert search.cv_results_["split0_test_score"][1] == pytest.approx(fold0, abs=1e-10)
    assert search.best_estimator_.n_features_in_ == 2
    assert search.score(X) == pytest.approx(search.best_estimator_.score(X))


def test_cross_val_score_matches_manual_folds(X):
    est = FFJORDDensity(**FIXED)
    scores = cross_val_score(est, X, cv=3)
    manual = [clone(est).fit(X[tr]).score(X[te]) for tr, te in KFold(3).split(X)]
    np.testing.assert_allclose(scores, manual, rtol=0, atol=1e-10)


def test_process_workers_give_the_sequential_results(X):
    est = FFJORDDensity(**FIXED)
    with parallel_backend("loky"):
        parallel = cross_val_score(est, X, cv=3, n_jobs=2)
        grid = GridSearchCV(est, {"hidden_dims": [(8,), (16, 16)]}, cv=2, n_jobs=2).fit(X)
    np.testing.assert_allclose(parallel, cross_val_score(est, X, cv=3), rtol=1e-6)
    sequential = GridSearchCV(est, {"hidden_dims": [(8,), (16, 16)]}, cv=2).fit(X)
    np.testing.assert_allclose(grid.cv_results_["mean_test_score"],
                               sequential.cv_results_["mean_test_score"], rtol=1e-6)


def test_randomized_search_in_a_pipeline_with_workers(X):
    pipe = make_pipeline(StandardScaler(), FFJORDDensity(**FIXED))
    distributions = {"ffjorddensity__learning_rate": loguniform(1e-3, 1e-2),
                     "ffjorddensity__hidden_dims": [(8,), (16, 16)]}
    with parallel_backend("loky"):
        search = RandomizedSearchCV(pipe, distributions, n_iter=3, cv=2, n_jobs=2,
                                    random_state=0).fit(X)
    assert len(search.cv_results_["params"]) == 3
    assert np.isfinite(search.cv_results_["mean_test_score"]).all()
    best = search.cv_results_["mean_test_score"].argmax()
    assert search.best_index_ == best
    lr = search.best_params_["ffjorddensity__learning_rate"]
    assert 1e-3 <= lr <= 1e-2
    assert search.best_estimator_.named_steps["ffjorddensity"].learning_rate == lr


# ---------------------------------------------------------------- clone, params and pickle
def test_clone_is_unfitted_with_equal_parameters(X):
    pipe = make_pipeline(StandardScaler(), FFJORDDensity(**FIXED)).fit(X)
    copy = clone(pipe)
    assert copy.get_params()["ffjorddensity__hidden_dims"] == FIXED["hidden_dims"]
    assert not hasattr(copy.named_steps["ffjorddensity"], "flow_")
    assert hasattr(pipe.named_steps["ffjorddensity"], "flow_")
    np.testing.assert_array_equal(copy.fit(X).score_samples(X[:5]), pipe.score_samples(X[:5]))


def test_nested_set_params_reaches_the_flow(X):
    pipe = make_pipeline(StandardScaler(), FFJORDDensity(**FIXED))
    pipe.set_params(ffjorddensity__hidden_dims=(8,), ffjorddensity__max_iter=5)
    est = pipe.named_steps["ffjorddensity"]
    assert est.hidden_dims == (8,) and est.max_iter == 5
    pipe.fit(X)
    assert _widths(est) == [8] and est.n_iter_ == 5


def test_pickle_before_fit_gives_the_same_model(X):
    est = FFJORDDensity(**FIXED)
    again = pickle.loads(pickle.dumps(est))
    assert again.get_params() == est.get_params() and not hasattr(again, "flow_")
    np.testing.assert_array_equal(again.fit(X).score_samples(X[:10]),
                                  est.fit(X).score_samples(X[:10]))


def test_pickle_after_fit_scores_and_samples_identically(X):
    pipe = make_pipeline(StandardScaler(), FFJORDDensity(**FIXED)).fit(X)
    again = pickle.loads(pickle.dumps(pipe))
    np.testing.assert_array_equal(again.score_samples(X[:10]), pipe.score_samples(X[:10]))
    est, est2 = pipe.named_steps["ffjorddensity"], again.named_steps["ffjorddensity"]
    np.testing.assert_array_equal(est2.sample(5, random_state=0), est.sample(5, random_state=0))
    assert est2.history_ == est.history_


# ------------------------------------------------------------------- incremental training
def test_partial_fit_over_more_chunks_beats_one_chunk():
    X, held_out = _bimodal(2000, seed=1), _bimodal(300, seed=2)
    chunks = np.array_split(X, 8)
    params = {**FIXED, "batch_size": 25, "learning_rate": 2e-2}
    one = FFJORDDensity(**params).partial_fit(chunks[0])
    many = FFJORDDensity(**params)
    for chunk in chunks:
        many.partial_fit(chunk)
    assert (one.n_iter_, many.n_iter_) == (10, 80)  # ten minibatches per chunk of 250
    assert len(many.history_) == 8
    assert many.score(held_out) > one.score(held_out) + 0.05
    # A stream has no known length: the rate stays put instead of decaying within each chunk.
    assert [entry["learning_rate"] for entry in many.history_] == [2e-2] * 8


def test_fit_decays_the_learning_rate_partial_fit_does_not():
    X = _bimodal(400, seed=3)
    params = {**FIXED, "batch_size": 50, "max_iter": 40, "validation_interval": 40}
    fitted = FFJORDDensity(**params).fit(X)
    streamed = FFJORDDensity(**params).partial_fit(X)
    assert fitted.history_[-1]["learning_rate"] < 0.2 * 1e-2  # cosine decay to a tenth
    assert streamed.history_[-1]["learning_rate"] == 1e-2


# ------------------------------------------------------------------- progress and warnings
def test_verbose_0_prints_nothing(X, capsys):
    FFJORDDensity(**FIXED, verbose=0).fit(X)
    out, err = capsys.readouterr()
    assert out == "" and err == ""


def test_verbose_2_prints_a_line_per_validation(X, capsys):
    est = FFJORDDensity(**FIXED, verbose=2).fit(X)
    out, _ = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == len(est.history_) == 2
    for line, entry in zip(lines, est.history_):
        # Flow matching solves no ODE while training: no function evaluations to show.
        assert re.match(rf"iter\s+{entry['iteration']}\s+train\s+\S+\s+val\s+\S+\s+\S+s$",
                        line)
        assert f"{entry['val_loss']:.4f}" in line and "nfe" not in line
    likelihood = FFJORDDensity(**{**FIXED, "training": "likelihood", "solver": "rk4",
                                  "n_steps": 2}, verbose=2).fit(X)
    lines = [line for line in capsys.readouterr()[0].splitlines() if line.strip()]
    for line, entry in zip(lines, likelihood.history_):
        nfe = re.escape(f"nfe {entry['nfe_forward']:.0f}+{entry['nfe_backward']:.0f}")
        assert re.match(rf"iter\s+{entry['iteration']}\s+train\s+\S+\s+val\s+\S+\s+{nfe}",
                        line)


def test_verbose_1_shows_a_progress_bar_on_stderr(X, capsys):
    pytest.importorskip("tqdm")
    FFJORDDensity(**FIXED, verbose=1).fit(X)
    out, err = capsys.readouterr()
    assert out == ""
    assert "fit" in err and f"/{FIXED['max_iter']}" in err and "%|" in err


def test_convergence_warning_when_max_iter_ends_training(X):
    with pytest.warns(ConvergenceWarning, match="max_iter=40"):
        est = FFJORDDensity(**FAST).fit(X)  # patience 10 validations, only 2 happen
    assert est.n_iter_ == 40


def test_no_convergence_warning_when_early_stopping_triggers(X):
    # At a negligible learning rate the second validation cannot improve on the first.
    est = FFJORDDensity(**{**FAST, "learning_rate": 1e-12, "n_iter_no_change": 1,
                           "validation_interval": 2, "max_iter": 200})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X)
    assert est.n_iter_ == 4 < est.max_iter
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
