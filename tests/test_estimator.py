"""The scikit-learn surface of FFJORDDensity: shapes, determinism, standardization, persistence."""

import copy
import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from scipy.stats import norm
from sklearn.base import clone
from sklearn.exceptions import NotFittedError

from skflow import FFJORDDensity
from skflow.datasets import make_toy

from .conftest import FAST


def test_outputs_have_the_documented_shapes_and_types(fitted_2d):
    est, X = fitted_2d
    log_p = est.score_samples(X[:7])
    assert log_p.shape == (7,) and log_p.dtype == np.float64 and np.isfinite(log_p).all()
    assert est.score(X[:7]) == pytest.approx(log_p.mean())
    assert est.sample(5, random_state=0).shape == (5, 2)
    assert est.transform(X[:3]).shape == (3, 2)
    assert est.n_features_in_ == 2 and est.n_iter_ == 400
    entry = est.history_[-1]
    assert {"iteration", "train_loss", "val_loss", "nfe_forward", "nfe_backward"} <= set(entry)


@pytest.mark.parametrize("eval_dtype, atol", [("float64", 1e-9), ("float32", 1e-5)])
def test_log_density_ignores_batch_mates_and_order(fitted_2d, eval_dtype, atol):
    # Each row keeps its own solver steps; only rounding in the matrix products (which may
    # depend on the batch size) can differ, far below the solver's own error.
    est, X = fitted_2d
    est = copy.deepcopy(est).set_params(eval_dtype=eval_dtype)
    X = X[:60]
    full = est.score_samples(X)
    pieces = np.concatenate([est.score_samples(X[:1]), est.score_samples(X[1:17]),
                             est.score_samples(X[17:])])
    np.testing.assert_allclose(pieces, full, rtol=0, atol=atol)
    order = np.random.RandomState(0).permutation(len(X))
    np.testing.assert_allclose(est.score_samples(X[order]), full[order], rtol=0, atol=atol)
    np.testing.assert_array_equal(est.score_samples(X), full)


def test_float32_and_float64_evaluation_agree_to_the_solver_tolerance(fitted_2d):
    est, X = fitted_2d
    X = X[::20]
    float32 = copy.deepcopy(est).set_params(eval_dtype="float32")
    float64 = copy.deepcopy(est).set_params(eval_dtype="float64", eval_atol=1e-10, eval_rtol=1e-10)
    np.testing.assert_allclose(float32.score_samples(X), float64.score_samples(X), atol=1e-4)
    np.testing.assert_allclose(float32.transform(X), float64.transform(X), atol=1e-4)
    # The fitted flow itself stays float64.
    assert next(float32.flow_.parameters()).dtype == torch.float64


def test_fit_and_sample_are_repeatable_with_random_state():
    X = make_toy("moons", 300, random_state=0)
    a = FFJORDDensity(**FAST).fit(X)
    b = FFJORDDensity(**FAST).fit(X)
    np.testing.assert_array_equal(a.score_samples(X[:20]), b.score_samples(X[:20]))
    np.testing.assert_array_equal(a.sample(10, random_state=1), b.sample(10, random_state=1))
    assert not np.array_equal(a.sample(10, random_state=1), a.sample(10, random_state=2))
    c = FFJORDDensity(**{**FAST, "random_state": 1}).fit(X)
    assert not np.allclose(a.score_samples(X[:20]), c.score_samples(X[:20]))


def test_untrained_flow_is_the_gaussian_of_the_standardized_data():
    # One step at a negligible learning rate leaves the identity flow: the density is then
    # exactly the Gaussian with the data's mean and per-feature standard deviation.
    rng = np.random.RandomState(0)
    X = rng.normal([100.0, -5.0], [1e4, 1e-3], size=(200, 2))
    est = FFJORDDensity(**{**FAST, "max_iter": 1, "learning_rate": 1e-12,
                           "preprocessing": "standardize"}).fit(X)
    expected = norm(X.mean(0), X.std(0)).logpdf(X[:10]).sum(1)
    np.testing.assert_allclose(est.score_samples(X[:10]), expected, rtol=1e-6)


@pytest.mark.parametrize("shift, scale", [(100.0, 1.0), (0.0, 1e4), (-1e3, 1e-3)])
def test_units_do_not_change_what_is_learned(shift, scale):
    # Internal standardization: fitting affinely transformed data gives the same model, with
    # densities that differ exactly by the log-Jacobian of the transform.
    X = make_toy("moons", 400, random_state=0)
    base = FFJORDDensity(**FAST).fit(X)
    moved = FFJORDDensity(**FAST).fit(X * scale + shift)
    np.testing.assert_allclose(moved.score_samples(X[:20] * scale + shift),
                               base.score_samples(X[:20]) - 2 * np.log(scale), atol=1e-3)


def test_dataframe_input_records_feature_names():
    pd = pytest.importorskip("pandas")
    X = make_toy("moons", 200, random_state=0)
    df = pd.DataFrame(X, columns=["a", "b"])
    est = FFJORDDensity(**FAST).fit(df)
    assert list(est.feature_names_in_) == ["a", "b"]
    np.testing.assert_allclose(est.score_samples(df), est.score_samples(X))


@pytest.mark.parametrize("dump, load", [
    (lambda est, f: pickle.dump(est, f), pickle.load),
    (lambda est, f: joblib.dump(est, f), joblib.load),
])
def test_pickled_model_scores_identically(fitted_2d, dump, load):
    est, X = fitted_2d
    buffer = io.BytesIO()
    dump(est, buffer)
    buffer.seek(0)
    loaded = load(buffer)
    np.testing.assert_array_equal(loaded.score_samples(X[:30]), est.score_samples(X[:30]))
    np.testing.assert_array_equal(loaded.sample(5, random_state=0), est.sample(5, random_state=0))


def test_pickle_from_an_incompatible_version_is_refused(fitted_2d):
    est, _ = fitted_2d
    state = est.__getstate__()
    state["_skflow_pickle_format"] = 999
    state["_skflow_version"] = "9.0.0"
    with pytest.raises(ValueError, match="skflow 9.0.0.*cannot load"):
        FFJORDDensity().__setstate__(state)


def test_device_is_resolved_in_fit_not_init():
    est = FFJORDDensity(device="auto")
    assert est.get_params()["device"] == "auto"
    est.set_params(**{k: v for k, v in FAST.items()}).fit(make_toy("moons", 100, random_state=0))
    assert est.device == "auto"
    assert est.device_ == ("cuda" if torch.cuda.is_available() else "cpu")
    assert next(est.flow_.parameters()).device.type == "cpu"  # kept on the CPU: pickles anywhere


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_cuda_request_without_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="CUDA is not available"):
        FFJORDDensity(**{**FAST, "device": "cuda"}).fit(make_toy("moons", 100, random_state=0))


def test_clone_gives_an_unfitted_copy_with_the_same_parameters(fitted_2d):
    est, X = fitted_2d
    copy = clone(est)
    assert copy.get_params() == est.get_params()
    with pytest.raises(NotFittedError):
        copy.score_samples(X)


def test_invalid_parameters_are_named():
    X = make_toy("moons", 100, random_state=0)
    for params, name in [({"hidden_dims": (16, 0)}, "hidden_dims"),
                         ({"learning_rate": -1.0}, "learning_rate"),
                         ({"solver": "leapfrog"}, "solver"),
                         ({"activation": "relu6"}, "activation")]:
        with pytest.raises(ValueError, match=name):
            FFJORDDensity(**{**FAST, **params}).fit(X)


def test_constant_column_is_rejected_by_name():
    pd = pytest.importorskip("pandas")
    X = make_toy("moons", 100, random_state=0)
    df = pd.DataFrame({"x": X[:, 0], "flat": 3.0, "y": X[:, 1]})
    est = FFJORDDensity(**FAST)
    with pytest.raises(ValueError, match="flat.*constant"):
        est.fit(df)
    assert not hasattr(est, "n_features_in_")  # nothing half-fitted


def test_failed_refit_leaves_the_fitted_model_untouched(fitted_2d):
    est, X = fitted_2d
    est = pickle.loads(pickle.dumps(est))
    before = est.score_samples(X[:5])
    with pytest.raises(ValueError, match="constant"):
        est.fit(np.c_[X, np.ones(len(X))])
    assert est.n_features_in_ == 2
    np.testing.assert_array_equal(est.score_samples(X[:5]), before)


def test_sample_count_must_be_positive(fitted_2d):
    est, _ = fitted_2d
    for bad in (0, -3, 2.5):
        with pytest.raises(ValueError, match="n_samples"):
            est.sample(bad)


def test_warm_start_continues_from_the_current_weights():
    X = make_toy("moons", 300, random_state=0)
    est = FFJORDDensity(**{**FAST, "warm_start": True}).fit(X)
    first = est.score_samples(X[:10])
    est.fit(X)
    assert est.n_iter_ == 2 * FAST["max_iter"]
    assert len(est.history_) == 4
    cold = FFJORDDensity(**FAST).fit(X)
    np.testing.assert_array_equal(cold.score_samples(X[:10]), first)
    assert not np.allclose(est.score_samples(X[:10]), first)


def test_partial_fit_trains_one_pass_per_chunk():
    X = make_toy("moons", 600, random_state=0)
    est = FFJORDDensity(**{**FAST, "batch_size": 100})
    for chunk in np.array_split(X, 3):
        est.partial_fit(chunk)
    assert est.n_iter_ == 6  # two minibatches per chunk of 200
    assert len(est.history_) == 3
    assert np.isfinite(est.score_samples(X[:5])).all()


@pytest.mark.parametrize("solver", ["dopri5", "dopri8", "bosh3", "adaptive_heun", "rk4", "midpoint",
                                    "euler"])
def test_every_accepted_training_solver_runs(solver):
    # Each accepted name must reach a torchdiffeq method (a name torchdiffeq lacks once slipped
    # into the accepted list).
    X = np.random.RandomState(0).normal(size=(60, 2))
    est = FFJORDDensity(hidden_dims=(8,), training="likelihood", solver=solver, n_steps=2,
                        max_iter=2, validation_interval=1, atol=1e-3, rtol=1e-3,
                        random_state=0).fit(X)
    assert est.n_iter_ == 2 and est.history_[-1]["nfe_forward"] > 0
    with pytest.raises(ValueError, match="solver"):
        FFJORDDensity(solver="tsit5").fit(X)


# ------------------------------------------------------------------- scikit-learn conventions
def test_transform_names_its_latent_columns_and_follows_set_output(fitted_2d):
    pd = pytest.importorskip("pandas")
    est, X = fitted_2d
    est = copy.deepcopy(est)
    names = est.get_feature_names_out()
    assert list(names) == ["ffjorddensity0", "ffjorddensity1"]
    frame = est.set_output(transform="pandas").transform(pd.DataFrame(X[:4]))
    assert isinstance(frame, pd.DataFrame) and list(frame.columns) == list(names)
    np.testing.assert_array_equal(frame.to_numpy(), est.set_output(transform="default")
                                  .transform(X[:4]))


def test_missing_values_get_a_message_written_for_a_density(fitted_2d):
    est, X = fitted_2d
    Y = X[:5].copy()
    Y[2, 1] = np.nan
    with pytest.raises(ValueError, match=r"NaN in 1 row\(s\) \(the first is row 2\).*density"
                                         r".*SimpleImputer") as error:
        est.score_samples(Y)
    assert "HistGradientBoosting" not in str(error.value)
    with pytest.raises(ValueError, match="NaN or infinity in 2 row"):
        FFJORDDensity(**FAST).fit(np.r_[Y, [[np.inf, 0.0]]])


def test_a_bare_int_for_hidden_dims_is_refused_as_ambiguous():
    with pytest.raises(ValueError, match=r"hidden_dims.*\(64, 64, 64\).*int 64.*\(64,\)"):
        FFJORDDensity(**{**FAST, "hidden_dims": 64}).fit(make_toy("moons", 50, random_state=0))


def test_auto_hidden_dims_widen_with_the_features_and_an_explicit_tuple_is_kept():
    params = {**FAST, "max_iter": 2}
    del params["hidden_dims"]
    rng = np.random.RandomState(0)
    for n_features, n_rows, widths in ((2, 600, (64,) * 4), (4, 600, (64,) * 4),
                                       (4, 599, (64,) * 3), (5, 600, (128,) * 4),
                                       (5, 599, (128,) * 3), (32, 600, (128,) * 4),
                                       (33, 600, (128,) * 3)):
        est = FFJORDDensity(**params).fit(rng.randn(n_rows, n_features))
        assert est.hidden_dims == "auto" and est.hidden_dims_ == widths
        first = est.flow_.blocks[0].net.layers
        assert [layer.linear.out_features for layer in first] == [*widths, n_features]
    est = FFJORDDensity(**{**FAST, "hidden_dims": [8, 4], "max_iter": 2}).fit(rng.randn(60, 5))
    assert est.hidden_dims == [8, 4] and est.hidden_dims_ == (8, 4)
    assert pickle.loads(pickle.dumps(est)).hidden_dims_ == (8, 4)
    with pytest.raises(NotFittedError):
        _ = FFJORDDensity().hidden_dims_


def test_auto_n_blocks_follows_features_and_rows_under_flow_matching():
    rng = np.random.RandomState(0)
    cases = [("flow_matching", 4, 60, 1), ("flow_matching", 5, 60, 2), ("likelihood", 5, 60, 1),
             ("flow_matching", 8, 599, 2), ("flow_matching", 8, 600, 3),
             ("flow_matching", 7, 600, 2), ("likelihood", 8, 600, 1)]
    # The default's 10,000 steps pay for every block; an unchanging validation loss ends the
    # fit after its second step.
    stalled = {"max_iter": "auto", "learning_rate": 1e-12, "validation_interval": 1,
               "n_iter_no_change": 1}
    for training, n_features, n_rows, blocks in cases:
        params = {**FAST, **stalled, "training": training, "solver": "rk4", "n_steps": 2}
        est = FFJORDDensity(**params).fit(rng.randn(n_rows, n_features))
        assert est.n_blocks == "auto" and est.n_blocks_ == len(est.flow_.blocks) == blocks
        assert est.n_iter_ == 2
    est = FFJORDDensity(**{**FAST, "max_iter": 2, "n_blocks": 3}).fit(rng.randn(60, 2))
    assert est.n_blocks_ == 3 and pickle.loads(pickle.dumps(est)).n_blocks_ == 3
    with pytest.raises(NotFittedError):
        _ = FFJORDDensity().n_blocks_


def test_auto_n_blocks_takes_only_the_blocks_that_the_step_limit_pays_for():
    from skflow.defaults import BLOCK_EPOCHS, BLOCK_STEPS
    X = np.random.RandomState(0).randn(600, 8)  # three blocks by its rows and features
    stalled = {"learning_rate": 1e-12, "validation_interval": 1, "n_iter_no_change": 1}
    # 64 rows per step: 1,500 passes over 600 rows are 14,062 steps, more than the blocks need
    for max_iter, blocks in [(BLOCK_STEPS[2] - 1, 1), (BLOCK_STEPS[2], 2),
                             (BLOCK_STEPS[3] - 1, 2), (BLOCK_STEPS[3], 3)]:
        est = FFJORDDensity(**{**FAST, **stalled, "max_iter": max_iter, "batch_size": 64}).fit(X)
        assert est.n_blocks_ == blocks
    # 1,024 rows per step: 1,500 passes are 879 steps, where a small table's fits stop early
    assert BLOCK_EPOCHS * 600 / 1024 == pytest.approx(878.9, abs=0.1)
    for max_iter, blocks in [(878, 1), (879, 3)]:
        est = FFJORDDensity(**{**FAST, **stalled, "max_iter": max_iter, "batch_size": 1024})
        assert est.fit(X).n_blocks_ == blocks
    # partial_fit's steps are one pass over a chunk, but a stream's length is unknown: the
    # first chunk's rows and features decide.
    assert FFJORDDensity(**FAST).partial_fit(X).n_blocks_ == 3


def test_auto_n_blocks_under_a_time_budget_times_the_candidates_steps(monkeypatch):
    from skflow import defaults, training
    X = np.random.RandomState(0).randn(600, 8)
    timed, seconds = [], {}  # the candidates timed; seconds per step by blocks

    def seconds_per_step(spec, Z, config, device, n_threads):
        timed.append(spec.n_blocks)
        assert Z.shape == X.shape and spec.hidden_dims == (16, 16)
        return seconds[spec.n_blocks]

    monkeypatch.setattr(training, "seconds_per_step", seconds_per_step)
    budget = 10.0
    afford = budget * defaults.STEP_SHARE  # seconds of steps
    params = {**FAST, "max_iter": "auto", "max_time": budget, "learning_rate": 1e-12,
              "validation_interval": 1, "n_iter_no_change": 1, "batch_size": 64}
    for per_step, blocks, candidates in [
            ({3: afford / 7600, 2: afford / 5100, 1: 1.0}, 3, [3]),
            ({3: afford / 7400, 2: afford / 5100, 1: 1.0}, 2, [3, 2]),
            ({3: afford / 7400, 2: afford / 4900, 1: 1.0}, 1, [3, 2])]:
        timed.clear()
        seconds.update(per_step)
        est = FFJORDDensity(**params).fit(X)
        assert est.n_blocks_ == blocks and timed == candidates
    # A step limit below the budget's steps still decides.
    timed.clear()
    seconds.update({3: 1e-9, 2: 1e-9, 1: 1e-9})
    assert FFJORDDensity(**{**params, "max_iter": 4999}).fit(X).n_blocks_ == 1
    # No candidates to time where the rule gives one block.
    timed.clear()
    assert FFJORDDensity(**params).fit(X[:, :2]).n_blocks_ == 1 and timed == []


def test_the_time_budget_pays_for_timing_the_blocks(monkeypatch):
    import time

    from skflow import training

    def slow_seconds_per_step(spec, Z, config, device, n_threads):
        time.sleep(0.4)
        return 1.0  # far too slow for a second block

    monkeypatch.setattr(training, "seconds_per_step", slow_seconds_per_step)
    X = np.random.RandomState(0).randn(600, 8)
    est = FFJORDDensity(**{**FAST, "max_iter": "auto", "max_time": 1.0,
                           "validation_interval": 10**6}).fit(X)
    # Two candidates timed (0.8 s) leave training about 0.2 s of the budget.
    assert est.n_blocks_ == 1 and est.n_iter_ > 0
    assert 0.2 <= est.history_[-1]["time"] < 0.9


def test_auto_learning_rate_fits_again_at_its_next_rate_when_the_first_fit_stops_early(
        monkeypatch):
    from skflow import defaults
    X = np.random.RandomState(0).randn(300, 5)
    first, second = defaults.learning_rates("flow_matching", 5)
    assert first > second
    # The first validation without improvement ends a fit, well within half its steps.
    stopping = {**FAST, "max_iter": 400, "validation_interval": 10, "n_iter_no_change": 1}
    at_first = FFJORDDensity(**{**stopping, "learning_rate": first}).fit(X)
    assert at_first.n_iter_ < 200 and at_first.learning_rate_ == first
    at_second = FFJORDDensity(**{**stopping, "learning_rate": second}).fit(X)
    auto = FFJORDDensity(**stopping).fit(X)
    # The second fit is kept whole: the same seed, split and steps as one given that rate.
    assert auto.learning_rate_ == second and auto.n_iter_ == at_second.n_iter_
    np.testing.assert_array_equal(auto.score_samples(X[:20]), at_second.score_samples(X[:20]))
    # A fit that stops later than the share, or runs to its limit, keeps the first rate.
    monkeypatch.setattr(defaults, "STOPPED_EARLY_SHARE", at_first.n_iter_ / 400)
    assert FFJORDDensity(**stopping).fit(X).learning_rate_ == first
    monkeypatch.undo()
    to_limit = FFJORDDensity(**{**stopping, "max_iter": 40, "n_iter_no_change": None}).fit(X)
    assert to_limit.learning_rate_ == first and to_limit.n_iter_ == 40
    # Up to four features flow matching has a single rate.
    assert FFJORDDensity(**stopping).fit(X[:, :4]).learning_rate_ == first
    # Continuing a fit (warm start, partial_fit) keeps the rate that 'auto' chose.
    auto.set_params(warm_start=True, max_iter=10).fit(X)
    assert auto.learning_rate_ == second and auto.history_[-1]["learning_rate"] < second
    assert auto.partial_fit(X).history_[-1]["learning_rate"] == second
    assert FFJORDDensity(**stopping).partial_fit(X).learning_rate_ == first


def test_the_second_rate_gets_what_is_left_of_the_time_budget(monkeypatch):
    from skflow import training
    budgets, fit_flow = [], training.fit_flow

    def recording_fit_flow(flow, Z, config, *args, **kwargs):
        budgets.append((config.learning_rate, config.max_time))
        return fit_flow(flow, Z, config, *args, **kwargs)

    monkeypatch.setattr(training, "fit_flow", recording_fit_flow)
    X = np.random.RandomState(0).randn(300, 5)
    est = FFJORDDensity(**{**FAST, "max_iter": "auto", "max_time": 60.0, "n_blocks": 1,
                           "validation_interval": 10, "n_iter_no_change": 1}).fit(X)
    (rate_1, budget_1), (rate_2, budget_2) = budgets
    assert rate_1 > rate_2 == est.learning_rate_
    assert budget_1 == pytest.approx(60.0, abs=0.5) and 30.0 < budget_2 < budget_1


def test_rows_far_outside_the_training_data_are_scored_with_a_warning(fitted_2d):
    from skflow.exceptions import ExtrapolationWarning
    est, X = fitted_2d
    with pytest.warns(ExtrapolationWarning, match="1 of 3 row.*outside the training data"):
        est.score_samples(np.r_[X[:2], [[1e3, 0.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # rows like the training rows: no warning
        est.score_samples(X[:50])


def test_the_package_ships_its_type_information():
    import importlib.resources
    assert importlib.resources.files("skflow").joinpath("py.typed").is_file()
