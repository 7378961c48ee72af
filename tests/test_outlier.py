"""FFJORDOutlierDetector: the threshold, the outlier API and scikit-learn's estimator checks."""

import inspect
import pickle
import warnings

import numpy as np
import pytest
from sklearn.exceptions import ConvergenceWarning, NotFittedError
from sklearn.metrics import roc_auc_score
from sklearn.utils.estimator_checks import parametrize_with_checks

from skflow import FFJORDDensity, FFJORDOutlierDetector
from skflow.outlier import AUTO_CONTAMINATION

from .conftest import FAST
from .test_sklearn_checks import float32_rounding


def _fast(**kw):
    return FFJORDOutlierDetector(hidden_dims=(8,), training="flow_matching", max_iter=5,
                                 validation_interval=5, eval_atol=1e-4, eval_rtol=1e-4,
                                 random_state=0, **kw)


def expected_failures(detector):
    """float32 rounding, and the two checks that the share flagged among the training rows is
    contamination, which a threshold calibrated on held-out rows does not promise."""
    failures = float32_rounding(detector)
    if detector.calibration != "training":
        reason = "the threshold is calibrated on held-out rows, not on the training rows"
        failures.update(check_outliers_train=reason, check_outliers_fit_predict=reason)
    return failures


# The outlier checks set contamination=0.1 themselves.
@parametrize_with_checks([_fast(), _fast(eval_dtype="float64", calibration="training")],
                         expected_failed_checks=expected_failures)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        # Five optimizer steps do not converge, and are not meant to.
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)


@pytest.fixture(scope="module")
def blob():
    rng = np.random.RandomState(0)
    return rng.normal([0.0, 3.0], [1.0, 0.5], size=(400, 2))


def _detector(**kw):
    params = {**FAST, "max_iter": 60, "n_iter_no_change": None, **kw}
    return FFJORDOutlierDetector(**params)


def test_signature_repeats_every_density_parameter_with_its_default():
    density = inspect.signature(FFJORDDensity.__init__).parameters
    detector = inspect.signature(FFJORDOutlierDetector.__init__).parameters
    assert list(detector)[:-2] == list(density)
    for name, parameter in density.items():
        if name not in ("preprocessing", "hidden_dims", "n_blocks"):  # kept for the ranking
            assert detector[name].default == parameter.default, name
    assert detector["preprocessing"].default == "standardize"
    assert detector["hidden_dims"].default == (64, 64, 64)
    assert detector["n_blocks"].default == 1
    assert detector["contamination"].default == "auto"
    assert detector["calibration"].default == "auto"
    assert FFJORDOutlierDetector().get_params()["contamination"] == "auto"


@pytest.mark.parametrize("contamination", [0.05, 0.1, 0.25])
def test_contamination_is_the_share_flagged_on_the_training_rows(blob, contamination):
    det = _detector(contamination=contamination, calibration="training").fit(blob)
    scores = det.score_samples(blob)
    assert det.offset_ == pytest.approx(np.percentile(scores, 100 * contamination))
    labels = det.predict(blob)
    assert labels.dtype.kind == "i" and set(np.unique(labels)) == {-1, 1}
    assert (labels == -1).sum() == int(round(contamination * len(blob)))
    np.testing.assert_array_equal(det.decision_function(blob), scores - det.offset_)


def test_auto_threshold_is_the_first_percentile_of_the_training_log_densities(blob):
    det = _detector(calibration="training").fit(blob)
    assert AUTO_CONTAMINATION == 0.01
    assert det.offset_ == pytest.approx(np.percentile(det.score_samples(blob), 1.0))
    assert (det.predict(blob) == -1).sum() == 4  # 1% of 400


def test_lower_density_is_more_abnormal_and_far_points_are_outliers(blob):
    det = _detector(contamination=0.05).fit(blob)
    centre, far = np.array([[0.0, 3.0]]), np.array([[8.0, -6.0]])
    assert det.score_samples(centre)[0] > det.score_samples(far)[0]
    np.testing.assert_array_equal(det.predict(np.r_[centre, far]), [1, -1])
    assert det.decision_function(centre)[0] > 0 > det.decision_function(far)[0]


def test_detects_injected_outliers():
    rng = np.random.RandomState(1)
    inliers = np.concatenate([rng.normal(-2, 0.4, (300, 2)), rng.normal(2, 0.4, (300, 2))])
    outliers = rng.uniform(-5, 5, (200, 2))
    centres = np.array([[-2.0, -2.0], [2.0, 2.0]])
    distance = np.linalg.norm(outliers[:, None] - centres, axis=2).min(1)
    outliers = outliers[distance > 2.5][:40]  # six standard deviations off both modes
    det = _detector(max_iter=150, learning_rate=3e-3, contamination=0.05).fit(inliers)
    X = np.r_[inliers, outliers]
    y = np.r_[np.zeros(len(inliers)), np.ones(len(outliers))]
    assert roc_auc_score(y, -det.score_samples(X)) > 0.95
    assert (det.predict(outliers) == -1).mean() > 0.8


def test_fit_predict_equals_fit_then_predict(blob):
    det = _detector(contamination=0.1, calibration="training")
    labels = det.fit_predict(blob)
    refit = _detector(contamination=0.1, calibration="training").fit(blob)
    np.testing.assert_array_equal(labels, refit.predict(blob))
    assert (labels == -1).sum() == 40
    held_out = _detector(contamination=0.1)  # the default calibration: the same equality
    np.testing.assert_array_equal(held_out.fit_predict(blob),
                                  _detector(contamination=0.1).fit(blob).predict(blob))


@pytest.mark.parametrize("bad", [0.0, 0.6, -0.1, "most", None])
def test_invalid_contamination_is_named(blob, bad):
    with pytest.raises(ValueError, match="contamination"):
        _detector(contamination=bad).fit(blob)


def test_unfitted_detector_refuses_to_predict(blob):
    for method in ("predict", "decision_function", "score_samples"):
        with pytest.raises(NotFittedError):
            getattr(_detector(), method)(blob)


def test_failed_threshold_leaves_a_fresh_detector_unfitted(blob, monkeypatch):
    det = _detector()
    monkeypatch.setattr(FFJORDDensity, "_log_density",  # what the threshold scores
                        lambda self, X, warn=True: np.full(len(X), np.nan))
    with pytest.raises(FloatingPointError, match="threshold"):
        det.fit(blob)
    assert not [k for k in vars(det) if k.endswith("_") or k.startswith("_o")]
    with pytest.raises(NotFittedError):
        det.predict(blob)


def test_failed_refit_leaves_the_fitted_detector_untouched(blob, monkeypatch):
    det = _detector(contamination=0.1).fit(blob)
    before = det.decision_function(blob[:10]), det.offset_, det.n_iter_
    with pytest.raises(ValueError, match="constant"):  # training fails
        det.fit(np.c_[blob, np.ones(len(blob))])

    def broken(self, X, warn=True):
        raise RuntimeError("scoring failed")

    with monkeypatch.context() as patch:  # training succeeds, the threshold fails
        patch.setattr(FFJORDOutlierDetector, "_log_density", broken)
        with pytest.raises(RuntimeError, match="scoring failed"):
            det.set_params(max_iter=3).fit(blob[:200] * 3)
    assert (det.offset_, det.n_iter_) == before[1:]
    assert det.n_features_in_ == 2
    np.testing.assert_array_equal(det.decision_function(blob[:10]), before[0])


def test_partial_fit_sets_the_threshold_from_the_chunk(blob):
    det = _detector(batch_size=100, contamination=0.1)
    chunks = np.array_split(blob, 2)
    det.partial_fit(chunks[0])
    first = det.offset_
    det.partial_fit(chunks[1])
    assert det.n_iter_ == 4
    assert det.offset_ != first
    assert det.offset_ == pytest.approx(np.percentile(det.score_samples(chunks[1]), 10))


def test_pickle_round_trip_keeps_labels(blob):
    det = _detector(contamination=0.1).fit(blob)
    again = pickle.loads(pickle.dumps(det))
    assert again.offset_ == det.offset_
    np.testing.assert_array_equal(again.decision_function(blob), det.decision_function(blob))


def test_detector_standardizes_where_the_density_gaussianizes_marginals():
    # Measured on the ODDS sets: the quantile map that 'auto' picks for skewed tabular data
    # raises the likelihood but lowers the anomaly ranking, so the detector standardizes.
    X = np.random.RandomState(0).exponential(size=(400, 2))
    small = dict(hidden_dims=(8,), max_iter=5, validation_interval=5, random_state=0)
    assert FFJORDOutlierDetector(**small).fit(X).preprocessing_ == "standardize"
    assert FFJORDDensity(**small).fit(X).preprocessing_ == "quantile"


def test_held_out_calibration_flags_about_contamination_of_new_inliers():
    # A flexible flow scores its training rows higher than new rows from the same density: a
    # threshold from the training rows flags several times the contamination among new rows,
    # one from the held-out rows about the contamination.
    rng = np.random.RandomState(0)
    X, X_new = rng.standard_t(3, size=(1200, 4)), rng.standard_t(3, size=(20000, 4))
    params = dict(hidden_dims=(128, 128), max_iter=600, validation_interval=100,
                  learning_rate=1e-2, validation_fraction=0.3, n_iter_no_change=None,
                  contamination=0.05, random_state=0)
    flagged = {calibration: (FFJORDOutlierDetector(**params, calibration=calibration).fit(X)
                             .predict(X_new) == -1).mean()
               for calibration in ("held_out", "training")}
    assert 0.05 / 1.5 < flagged["held_out"] < 0.05 * 1.5
    assert flagged["training"] > flagged["held_out"]


def test_auto_calibration_cross_fits_when_the_split_has_too_few_rows_beyond_the_threshold(blob):
    # 40 validation rows hold 2 rows below a 5% threshold: too few, so every row is scored by
    # a flow fitted on the other folds; 200 validation rows at 25% hold 50: enough.
    assert _detector(contamination=0.05).fit(blob).calibration_ == "cross_fit"
    assert _detector(contamination=0.25, validation_fraction=0.5).fit(blob).calibration_ == (
        "held_out")
    assert _detector(validation_fraction=0.0).fit(blob).calibration_ == "training"
    assert _detector().partial_fit(blob).calibration_ == "training"


def test_cross_fit_falls_back_to_the_held_out_rows_when_a_fold_loses_a_column(blob):
    # A flag set on one row only: the four folds without that row see a constant column, on
    # which no flow can be fitted; the threshold then comes from the validation split.
    X = np.c_[blob, np.zeros(len(blob))]
    X[7, 2] = 1.0
    det = _detector(contamination=0.1, calibration="cross_fit").fit(X)
    assert det.calibration_ == "held_out"
    assert np.isfinite(det.offset_)


def test_cross_fitted_threshold_is_the_percentile_of_out_of_fold_log_densities(blob):
    # Recomputed by hand: five flows, each fitted on four folds, score the fifth.
    from sklearn.model_selection import KFold
    from sklearn.utils import check_random_state

    from skflow.outlier import CALIBRATION_FOLDS
    det = _detector(contamination=0.1, calibration="cross_fit").fit(blob)
    seed = check_random_state(det.random_state).randint(np.iinfo(np.int32).max)
    params = {k: v for k, v in det.get_params().items()
              if k not in ("contamination", "calibration")}
    scores = np.empty(len(blob))
    folds = KFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed).split(blob)
    for fold, (train, held_out) in enumerate(folds):
        density = FFJORDDensity(**{**params, "random_state": seed + fold}).fit(blob[train])
        scores[held_out] = density.score_samples(blob[held_out])
    assert det.offset_ == pytest.approx(np.percentile(scores, 10.0, method="weibull"))


def test_cross_fitted_calibration_flags_about_contamination_of_new_inliers():
    # 400 rows with a 10% validation split leave 2 held-out rows below a 5% threshold; the
    # cross-fitted threshold comes from all 400, each scored by a flow that did not train on it.
    rng = np.random.RandomState(1)
    X, X_new = rng.standard_t(3, size=(400, 3)), rng.standard_t(3, size=(20000, 3))
    det = FFJORDOutlierDetector(hidden_dims=(64, 64), max_iter=400, validation_interval=100,
                                learning_rate=1e-2, n_iter_no_change=None, contamination=0.05,
                                random_state=0).fit(X)
    assert det.calibration_ == "cross_fit"
    assert 0.05 / 1.5 < (det.predict(X_new) == -1).mean() < 0.05 * 1.5


def test_the_detector_scores_far_rows_without_an_extrapolation_warning(blob):
    # Rows far from the training data are what a detector looks for: no warning about them.
    det = _detector(contamination=0.05).fit(blob)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert det.predict([[80.0, -60.0]])[0] == -1
