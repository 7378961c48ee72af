"""Reliability: bad input gets a clear error, faults lose nothing.

Every test here uses a tiny model (8 hidden units, a handful of steps): what is checked is the
behaviour around training -- validation of the input, recovery from faults, interruption,
chunking, persistence and repeatability -- not the quality of the fit.
"""

import copy
import io
import math
import os
import pickle
import subprocess
import sys
import textwrap
import warnings

import joblib
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import norm
from sklearn.exceptions import ConvergenceWarning, NotFittedError

import skflow._state
from skflow import FFJORDDensity, training
from skflow.cnf.evaluation import Evaluator
from skflow.cnf.frozen import FrozenBlock
from skflow.exceptions import SolverError, TrainingDivergedError

from .conftest import REPO

TINY = dict(hidden_dims=(8,), training="flow_matching", max_iter=5, validation_interval=5,
            random_state=0)


def _data(n=60, d=2, seed=0):
    return np.random.RandomState(seed).normal(size=(n, d)) * [1.0, 2.0][:d] + [0.5, -1.0][:d]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # These models are tiny: a second thread only adds synchronization, which is very slow when
    # the cores are shared with other work.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_fit():
    X = _data()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return FFJORDDensity(**TINY).fit(X), X


def _quiet_fit(est, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(X)


def _same(a, b):
    """Deep equality of fitted state: tensors and arrays bit for bit, modules by state."""
    if isinstance(a, torch.nn.Module):
        return type(a) is type(b) and _same(a.state_dict(), b.state_dict())
    if isinstance(a, torch.Tensor):
        return (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.device == b.device
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    if hasattr(a, "__dict__") and not isinstance(a, type):  # e.g. the input map: by attributes
        return type(a) is type(b) and _same(vars(a), vars(b))
    return a == b


def _fitted_state(est):
    return {k: v for k, v in vars(est).items() if k.endswith("_") or k.startswith("_o")}


# --------------------------------------------------------------------------------- bad input
def _with(value, X=None):
    X = _data() if X is None else X.copy()
    X[3, 1] = value
    return X


BAD_FIT_DATA = {
    "nan": (lambda: _with(np.nan), ValueError, "NaN"),
    "inf": (lambda: _with(np.inf), ValueError, "infinity"),
    "-inf": (lambda: _with(-np.inf), ValueError, "infinity"),
    "words": (lambda: np.array([["a", "b"], ["c", "d"], ["e", "f"]]), ValueError,
              "string|convert"),
    "numeric strings": (lambda: _data().astype(str), ValueError, "strings"),
    "object": (lambda: _with(object(), _data().astype(object)), TypeError,
               "must be a string or a (real )?number"),
    "dict in object array": (lambda: _with({"a": 1}, _data().astype(object)), TypeError,
                             "must be a string or a (real )?number"),
    "complex": (lambda: _data() + 1j, ValueError, "Complex data not supported"),
    "sparse csr": (lambda: sp.csr_matrix(_data()), TypeError, r"dense data is required.*toarray"),
    "sparse coo": (lambda: sp.coo_array(_data()), TypeError, r"dense data is required.*toarray"),
    "no rows": (lambda: np.empty((0, 2)), ValueError, "0 sample"),
    "no columns": (lambda: np.empty((5, 0)), ValueError, "0 feature"),
    "one row": (lambda: _data()[:1], ValueError, "1 sample.*minimum of 2"),
    "1-D": (lambda: _data()[:, 0], ValueError, "Expected 2D array"),
    "3-D": (lambda: _data().reshape(10, 3, 4), ValueError, "dim 3"),
    "scalar": (lambda: np.float64(3.0), ValueError, "2D array"),
}


@pytest.mark.parametrize("case", list(BAD_FIT_DATA))
def test_bad_training_data_is_a_clear_error_and_fits_nothing(case):
    make, error, message = BAD_FIT_DATA[case]
    est = FFJORDDensity(**TINY)
    with pytest.raises(error, match=message):
        est.fit(make())
    assert _fitted_state(est) == {}  # nothing half-fitted
    with pytest.raises(NotFittedError):
        est.score_samples(_data()[:2])


BAD_EVAL_DATA = {
    "more features": (lambda: _data(5, 2)[:, [0, 1, 1]], ValueError, "3 features.*expecting 2"),
    "fewer features": (lambda: _data(5, 2)[:, :1], ValueError, "1 features.*expecting 2"),
    "nan": (lambda: _with(np.nan)[:5], ValueError, "NaN"),
    "inf": (lambda: _with(np.inf)[:5], ValueError, "infinity"),
    "numeric strings": (lambda: _data(5).astype(str), ValueError, "strings"),
    "complex": (lambda: _data(5) + 1j, ValueError, "Complex data not supported"),
    "sparse": (lambda: sp.csr_matrix(_data(5)), TypeError, r"dense data is required.*toarray"),
    "no rows": (lambda: np.empty((0, 2)), ValueError, "0 sample"),
    "1-D": (lambda: _data(5)[0], ValueError, "Expected 2D array"),
    "3-D": (lambda: _data(8).reshape(2, 2, 4), ValueError, "dim 3"),
}


@pytest.mark.parametrize("method", ["score_samples", "score", "transform", "inverse_transform"])
@pytest.mark.parametrize("case", list(BAD_EVAL_DATA))
def test_bad_evaluation_data_is_a_clear_error(tiny_fit, method, case):
    est, _ = tiny_fit
    make, error, message = BAD_EVAL_DATA[case]
    with pytest.raises(error, match=message):
        getattr(est, method)(make())


def test_renamed_or_reordered_columns_are_refused():
    pd = pytest.importorskip("pandas")
    X = _data()
    est = _quiet_fit(FFJORDDensity(**TINY), pd.DataFrame(X, columns=["a", "b"]))
    with pytest.raises(ValueError, match="feature names"):
        est.score_samples(pd.DataFrame(X, columns=["b", "a"]))
    with pytest.raises(ValueError, match="feature names"):
        est.transform(pd.DataFrame(X, columns=["a", "c"]))


@pytest.mark.parametrize("params, name", [
    ({"hidden_dims": (8, 0)}, "hidden_dims"),
    ({"hidden_dims": (8, -4)}, "hidden_dims"),
    ({"hidden_dims": 0}, "hidden_dims"),
    ({"hidden_dims": -8}, "hidden_dims"),
    ({"hidden_dims": (8.5,)}, "hidden_dims"),
    ({"hidden_dims": (True,)}, "hidden_dims"),
    ({"hidden_dims": "wide"}, "hidden_dims"),
    ({"hidden_dims": None}, "hidden_dims"),
    ({"learning_rate": -1e-3}, "learning_rate"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": float("nan")}, "learning_rate"),
    ({"solver": "leapfrog"}, "solver"),
    ({"solver": "DOPRI5"}, "solver"),
    ({"activation": "relu6"}, "activation"),
    ({"training": "adversarial"}, "training"),
    ({"divergence": "approximate"}, "divergence"),
    ({"max_num_steps": 0}, "max_num_steps"),
    ({"n_steps": 0}, "n_steps"),
    ({"batch_size": 0}, "batch_size"),
    ({"max_iter": -1}, "max_iter"),
    ({"validation_fraction": 1.0}, "validation_fraction"),
    ({"device": "tpu"}, "device"),
])
def test_invalid_parameters_are_named_before_any_training(monkeypatch, params, name):
    # Refused in validation: the training loop is never reached.
    monkeypatch.setattr(training, "fit_flow", lambda *a, **k: pytest.fail("training started"))
    est = FFJORDDensity(**{**TINY, **params})
    with pytest.raises((ValueError, TypeError), match=name):
        est.fit(_data())
    assert _fitted_state(est) == {}


@pytest.mark.parametrize("n_samples", [0, -1, -1000, 2.5, True, "3", None, np.float64(2.0)])
def test_sample_count_must_be_a_positive_integer(tiny_fit, n_samples):
    est, _ = tiny_fit
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        est.sample(n_samples)


def test_sample_accepts_numpy_integers(tiny_fit):
    est, _ = tiny_fit
    draws = est.sample(np.int32(3), random_state=0)
    np.testing.assert_array_equal(draws, est.sample(3, random_state=0))
    assert draws.shape == (3, 2) and np.isfinite(draws).all()


# --------------------------------------------------------------------- accepted, and correct
def test_input_containers_give_bitwise_identical_fits(tmp_path):
    # Integer values are exact in every dtype below, so each container carries the same numbers:
    # the fit and the scores must not depend on how they arrive.
    pd = pytest.importorskip("pandas")
    X = np.random.RandomState(0).randint(-40, 40, size=(60, 2))
    reference = _quiet_fit(FFJORDDensity(**TINY), X.astype(np.float64))
    expected = reference.score_samples(X.astype(np.float64))
    assert np.isfinite(expected).all()

    read_only = X.astype(np.float64)
    read_only.setflags(write=False)
    memmap = np.lib.format.open_memmap(tmp_path / "X.npy", mode="w+", dtype=np.float32,
                                       shape=X.shape)
    memmap[:] = X
    memmap.flush()
    memmap = np.load(tmp_path / "X.npy", mmap_mode="r")
    containers = {
        "int64": X.astype(np.int64), "int32": X.astype(np.int32),
        "float32": X.astype(np.float32), "float16": X.astype(np.float16),
        "list": X.tolist(), "tuple rows": [tuple(r) for r in X.tolist()],
        "read-only": read_only, "memmap": memmap,
        "Fortran order": np.asfortranarray(X.astype(np.float64)),
        "strided view": np.repeat(X.astype(np.float64), 2, axis=0)[::2],
        "DataFrame": pd.DataFrame(X, columns=["a", "b"]),
        "float32 DataFrame": pd.DataFrame(X.astype(np.float32)),
        "object": X.astype(object),
    }
    for name, data in containers.items():
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # e.g. torch on read-only arrays
            est = _quiet_fit(FFJORDDensity(**TINY), data)
        np.testing.assert_array_equal(est.score_samples(data), expected, err_msg=name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # names unseen in fit
            np.testing.assert_array_equal(reference.score_samples(data), expected, err_msg=name)
    assert not read_only.flags.writeable and memmap.mode == "r"


def test_one_feature_is_a_univariate_density():
    X = _data(80, 1)
    est = _quiet_fit(FFJORDDensity(**TINY), X)
    grid = np.linspace(X.min() - 3, X.max() + 3, 4001)[:, None]
    density = np.exp(est.score_samples(grid))
    assert np.isfinite(density).all()
    # A univariate density integrates to one (trapezoid rule over a wide grid).
    assert np.trapezoid(density, grid[:, 0]) == pytest.approx(1.0, abs=1e-2)
    assert est.transform(X[:4]).shape == (4, 1) and est.sample(3, random_state=0).shape == (3, 1)


@pytest.fixture(scope="module")
def unit_fit():
    X = _data(200)
    return _quiet_fit(FFJORDDensity(**{**TINY, "max_iter": 20}), X), X


@pytest.mark.parametrize("scale", [1e-8, 1e9, 1e-200, 1e200])
def test_extreme_magnitudes_learn_the_same_model_in_other_units(unit_fit, scale):
    # Standardization in float64 removes the units: data scaled by 1e-8 or 1e9 (or far beyond,
    # where squaring would under- or overflow) give the same flow, and log densities that differ
    # exactly by the log-Jacobian of the scaling.
    base, X = unit_fit
    moved = _quiet_fit(FFJORDDensity(**{**TINY, "max_iter": 20}), X * scale)
    log_p = moved.score_samples(X[:20] * scale)
    assert np.isfinite(log_p).all()
    np.testing.assert_allclose(log_p, base.score_samples(X[:20]) - 2 * np.log(scale),
                               rtol=0, atol=1e-3)
    np.testing.assert_allclose(moved.transform(X[:5] * scale), base.transform(X[:5]), atol=1e-4)
    np.testing.assert_allclose(moved.sample(5, random_state=0) / scale,
                               base.sample(5, random_state=0), rtol=1e-4, atol=1e-6)


def test_constant_columns_are_named_by_index():
    X = np.c_[3.0 * np.ones(60), _data(), np.full(60, -1e-30)]
    est = FFJORDDensity(**TINY)
    with pytest.raises(ValueError, match=r"Column\(s\) 0, 3 of X are constant"):
        est.fit(X)
    assert _fitted_state(est) == {}


def test_constant_columns_are_named_by_dataframe_column():
    pd = pytest.importorskip("pandas")
    X = _data()
    df = pd.DataFrame({"x": X[:, 0], "flat": 7.0, "y": X[:, 1], "zero": 0.0})
    est = FFJORDDensity(**TINY)
    with pytest.raises(ValueError, match=r"Column\(s\) flat, zero of X are constant"):
        est.fit(df)
    assert _fitted_state(est) == {}


@pytest.mark.parametrize("spread", [1e-20, 1e-150])
def test_small_but_varying_column_is_not_constant(spread):
    # Constancy is relative to the column's own magnitude, not to 1.
    X = _data() * [1.0, spread]
    est = _quiet_fit(FFJORDDensity(**TINY), X)
    assert np.isfinite(est.score_samples(X[:5])).all()


def test_column_constant_up_to_rounding_is_constant():
    X = np.c_[_data(), 1e6 + 1e-12 * _data()[:, 0]]  # the noise is below the rounding of 1e6
    with pytest.raises(ValueError, match=r"Column\(s\) 2 of X are constant"):
        FFJORDDensity(**TINY).fit(X)


# ----------------------------------------------------------------------------------- faults
class _Spy:
    """Wraps the training objective: counts calls, snapshots the weights, injects faults."""

    def __init__(self, objective, on_call):
        self.objective, self.on_call, self.calls, self.weights = objective, on_call, 0, {}

    @property
    def nfe(self):
        return self.objective.nfe

    def __call__(self, batch):
        self.calls += 1
        self.weights[self.calls] = {k: v.detach().clone()
                                    for k, v in self.objective.flow.blocks.state_dict().items()}
        return self.on_call(self.calls, self.objective, batch)


@pytest.fixture
def spy(monkeypatch):
    """``spy(on_call)`` wraps every objective made from now on; returns the list of spies."""
    spies = []

    def install(on_call):
        make = training.make_objective

        def make_spied(flow, config, generator):
            spies.append(_Spy(make(flow, config, generator), on_call))
            return spies[-1]

        monkeypatch.setattr(training, "make_objective", make_spied)
        return spies

    return install


def _blocks_equal(est, weights):
    state = est.flow_.blocks.state_dict()
    return state.keys() == weights.keys() and all(
        torch.equal(state[k], weights[k].to(torch.float64)) for k in state)


def _nan_on(calls):
    def on_call(call, objective, batch):
        loss, nll = objective(batch)
        return (loss * np.nan, nll) if call in calls else (loss, nll)
    return on_call


def test_nonfinite_loss_restores_the_last_good_weights_lowers_the_rate_and_continues(spy):
    X = _data(100)
    params = {**TINY, "max_iter": 15}
    clean = _quiet_fit(FFJORDDensity(**params), X)
    spies = spy(_nan_on({8}))
    est = FFJORDDensity(**params)
    with pytest.warns(RuntimeWarning, match="non-finite loss at iteration 8: restored the last "
                                            "good weights"):
        _quiet_fit(est, X)
    weights = spies[0].weights
    assert not all(torch.equal(weights[6][k], weights[8][k]) for k in weights[6])  # it moved
    # The call after the fault starts from the weights validated at iteration 5.
    assert all(torch.equal(weights[6][k], weights[9][k]) for k in weights[6])
    assert est.n_iter_ == 15 and [h["iteration"] for h in est.history_] == [5, 10, 15]
    assert all(math.isfinite(h["val_loss"]) for h in est.history_)
    # Same schedule, a tenth of the rate after the fault.
    assert est.history_[0]["learning_rate"] == pytest.approx(clean.history_[0]["learning_rate"])
    for after, before in zip(est.history_[1:], clean.history_[1:]):
        assert after["learning_rate"] == pytest.approx(before["learning_rate"] / 10)
    assert np.isfinite(est.score_samples(X)).all()


def test_nonfinite_gradient_is_recovered_too(spy):
    def on_call(call, objective, batch):
        loss, nll = objective(batch)
        if call == 3:  # a finite loss (sqrt(0) = 0) whose gradient is NaN (0 * inf)
            param = objective.flow.blocks[0].net.layers[0].linear.weight
            loss = loss + torch.sqrt((param * 0).sum())
        return loss, nll

    spy(on_call)
    est = FFJORDDensity(**{**TINY, "max_iter": 10})
    with pytest.warns(RuntimeWarning, match="non-finite gradient at iteration 3"):
        _quiet_fit(est, _data())
    assert est.n_iter_ == 10 and np.isfinite(est.score_samples(_data())).all()


def test_persistent_faults_raise_training_diverged_with_advice_and_fit_nothing(spy):
    spies = spy(_nan_on(set(range(3, 100))))
    est = FFJORDDensity(**{**TINY, "max_iter": 20})
    with pytest.warns(RuntimeWarning, match="restored the last good weights") as record:
        with pytest.raises(TrainingDivergedError, match="failed 4 times.*learning_rate"):
            est.fit(_data())
    assert sum("restored the last good weights" in str(w.message) for w in record) == 3
    assert spies[0].calls == 6  # two good steps, then the fault and its three retries
    assert _fitted_state(est) == {}
    assert issubclass(TrainingDivergedError, RuntimeError)


def test_absurd_learning_rate_diverges_with_a_clear_error():
    est = FFJORDDensity(**{**TINY, "training": "likelihood", "solver": "rk4", "n_steps": 2,
                           "learning_rate": 1e6, "max_iter": 20})
    with pytest.warns(RuntimeWarning, match="restored the last good weights"):
        with pytest.raises(TrainingDivergedError, match="learning_rate"):
            est.fit(_data())
    assert _fitted_state(est) == {}


@pytest.mark.parametrize("warm_start", [True, False])
def test_failed_refit_leaves_the_earlier_fit_intact(spy, warm_start):
    X = _data()
    est = _quiet_fit(FFJORDDensity(**{**TINY, "warm_start": warm_start}), X)
    before, scores = copy.deepcopy(_fitted_state(est)), est.score_samples(X)
    spy(_nan_on(set(range(2, 100))))
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDivergedError):
        est.fit(X + 1.0)
    assert _same(_fitted_state(est), before)
    np.testing.assert_array_equal(est.score_samples(X), scores)


def test_failed_validation_solve_is_recovered(monkeypatch):
    # A validation whose solve fails (here: the first one) is a fault like a non-finite loss.
    real, calls = training.validation_loss, []

    def flaky(flow, X_val, config, **kw):
        calls.append(1)
        if len(calls) == 1:
            raise SolverError("the state became non-finite during the solve")
        return real(flow, X_val, config, **kw)

    monkeypatch.setattr(training, "validation_loss", flaky)
    est = FFJORDDensity(**{**TINY, "max_iter": 15})
    with pytest.warns(RuntimeWarning, match="non-finite during the solve at iteration 5"):
        _quiet_fit(est, _data())
    assert [h["iteration"] for h in est.history_] == [10, 15]
    assert np.isfinite(est.score_samples(_data())).all()


def test_training_that_never_validates_is_not_a_fit(monkeypatch):
    # Fewer failures than max_recoveries, but no validation ever succeeded: the weights were
    # never checked, so the estimator must not pretend to be fitted.
    monkeypatch.setattr(training, "validation_loss", lambda *a, **k: math.nan)
    est = FFJORDDensity(**{**TINY, "max_iter": 10})
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDivergedError, match="validation"):
        est.fit(_data())
    assert _fitted_state(est) == {}


@pytest.mark.parametrize("training_mode", ["likelihood", "flow_matching"])
def test_tiny_max_num_steps_is_a_clear_error_that_names_it(training_mode):
    # Neither the training solves (likelihood, adaptive) nor the validation solves can finish in
    # one step: the bound stops them at once and the error names the parameter.
    est = FFJORDDensity(**{**TINY, "training": training_mode, "solver": "dopri5",
                           "max_num_steps": 1, "max_iter": 50})
    with pytest.warns(RuntimeWarning, match="restored the last good weights"):
        with pytest.raises(TrainingDivergedError, match="max_num_steps"):
            est.fit(_data())
    assert _fitted_state(est) == {}


def test_evaluation_step_bound_is_a_clear_error(tiny_fit):
    est, X = tiny_fit
    est = copy.deepcopy(est).set_params(max_num_steps=2)
    for method in (est.score_samples, est.transform, est.inverse_transform):
        with pytest.raises(SolverError, match="within 2 steps.*max_num_steps"):
            method(X[:4])
    with pytest.raises(SolverError, match="max_num_steps"):
        est.sample(3)


def _interrupt_at(n, corrupt=False):
    def on_call(call, objective, batch):
        if call == n:
            if corrupt:  # an interrupted update that left the weights unusable
                with torch.no_grad():
                    for param in objective.flow.blocks.parameters():
                        param.fill_(np.nan)
            raise KeyboardInterrupt
        return objective(batch)
    return on_call


def test_ctrl_c_keeps_the_best_weights_so_far(spy):
    X = _data(100)
    spies = spy(_interrupt_at(8))
    # Likelihood training: the validated weights are the iterates themselves (flow matching
    # would validate and keep their moving average instead).
    est = FFJORDDensity(**{**TINY, "max_iter": 50, "training": "likelihood", "solver": "rk4",
                           "n_steps": 2})
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        assert est.fit(X) is est
    messages = [str(w.message) for w in record]
    assert any("interrupted at iteration 7" in m for m in messages)
    assert not any(issubclass(w.category, ConvergenceWarning) for w in record)
    assert est.n_iter_ == 7 and len(est.history_) == 1
    assert est.best_validation_loss_ == est.history_[0]["val_loss"]
    weights = spies[0].weights
    assert _blocks_equal(est, weights[6])  # validated at iteration 5
    assert not _blocks_equal(est, weights[8])  # not the unvalidated weights at the interrupt
    assert np.isfinite(est.score_samples(X)).all()


def test_ctrl_c_before_the_first_validation_keeps_usable_weights(spy):
    X = _data(100)
    spies = spy(_interrupt_at(3))
    est = FFJORDDensity(**{**TINY, "max_iter": 50})
    with pytest.warns(RuntimeWarning, match="interrupted at iteration 2"):
        est.fit(X)
    assert est.n_iter_ == 2
    assert _blocks_equal(est, spies[0].weights[3])  # the two steps taken are kept...
    assert math.isfinite(est.best_validation_loss_)  # ...because they were validated
    assert np.isfinite(est.score_samples(X)).all()


def test_ctrl_c_with_unusable_weights_falls_back_to_the_last_good_ones(spy):
    X = _data(100)
    spy(_interrupt_at(3, corrupt=True))
    est = FFJORDDensity(**{**TINY, "max_iter": 50})
    with pytest.warns(RuntimeWarning, match="interrupted"):
        est.fit(X)
    # The last good weights of a fresh fit are the initial ones: the identity flow, whose
    # density is the Gaussian of the standardized data.
    expected = norm(X.mean(0), X.std(0)).logpdf(X).sum(1)
    np.testing.assert_allclose(est.score_samples(X), expected, rtol=0, atol=1e-5)  # float32


def test_ctrl_c_in_a_warm_start_refit_keeps_the_earlier_weights(spy):
    X = _data(100)
    est = _quiet_fit(FFJORDDensity(**{**TINY, "warm_start": True}), X)
    scores = est.score_samples(X)
    spy(_interrupt_at(2, corrupt=True))
    with pytest.warns(RuntimeWarning, match="interrupted"):
        est.fit(X)
    np.testing.assert_array_equal(est.score_samples(X), scores)


# --------------------------------------------------------------------------------- chunking
def test_large_inputs_are_scored_and_sampled_in_bounded_chunks(tiny_fit, monkeypatch):
    # Memory stays bounded twice over: the input is copied to the solver in chunks, and the
    # solver evaluates the dynamics on at most Evaluator.chunk_rows rows at once.
    est, X = tiny_fit
    sizes = {"log_prob": [], "to_latent": [], "from_latent": []}
    for name in sizes:
        real = getattr(Evaluator, f"_{name}_chunk")

        def spied(self, x, *args, _real=real, _name=name, **kwargs):
            sizes[_name].append(x.shape[0])
            return _real(self, x, *args, **kwargs)

        monkeypatch.setattr(Evaluator, f"_{name}_chunk", spied)
    evaluated = []
    for name in ("velocity", "velocity_and_divergence"):
        real = getattr(FrozenBlock, name)

        def counted(self, s, z, _real=real):
            evaluated.append(z.shape[0])
            return _real(self, s, z)

        monkeypatch.setattr(FrozenBlock, name, counted)

    n = 140_000
    bound = 2 ** 16  # input rows per chunk
    in_flight = est._evaluator().chunk_rows
    assert in_flight < bound
    Y = np.random.RandomState(1).normal(size=(n, 2))
    log_p = est.score_samples(Y)
    assert log_p.shape == (n,) and np.isfinite(log_p).all()
    assert len(sizes["log_prob"]) == 3 and max(sizes["log_prob"]) <= bound
    assert sum(sizes["log_prob"]) == n
    assert max(evaluated) == in_flight
    # Chunking does not change a row's value beyond float32 rounding: a matmul's summation
    # order may depend on the batch's size.
    np.testing.assert_allclose(log_p[-50:], est.score_samples(Y[-50:]), rtol=1e-6, atol=0)

    evaluated.clear()
    draws = est.sample(n, random_state=0)
    assert draws.shape == (n, 2) and np.isfinite(draws).all()
    assert len(sizes["from_latent"]) == 3 and max(sizes["from_latent"]) <= bound
    assert max(evaluated) == in_flight
    Z = est.transform(Y[:80_000])
    assert Z.shape == (80_000, 2) and len(sizes["to_latent"]) == 2
    assert max(sizes["to_latent"]) <= bound


# ------------------------------------------------------------------------------ persistence
def _python(code, tmp_path, env=None):
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO,
                            env={**os.environ, **(env or {})}, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _tensors(obj):
    """Every tensor reachable from ``obj`` (dicts, sequences, modules)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, torch.nn.Module):
        yield from obj.state_dict().values()
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def test_saved_model_loads_in_a_fresh_process_without_cuda(tiny_fit, tmp_path):
    est, X = tiny_fit
    state = est.__getstate__()
    tensors = list(_tensors(state))
    assert len(tensors) > 5 and all(t.device.type == "cpu" for t in tensors)
    with open(tmp_path / "model.pkl", "wb") as f:
        pickle.dump(est, f)
    joblib.dump(est, tmp_path / "model.joblib")
    joblib.dump(copy.deepcopy(est).set_params(device="cuda"), tmp_path / "cuda.joblib")
    np.save(tmp_path / "X.npy", X)
    _python(f"""
        import pickle, joblib, numpy as np, torch
        torch.set_num_threads(1)
        torch.cuda.is_available = lambda: False  # as on a machine without a GPU
        X = np.load({str(tmp_path / 'X.npy')!r})
        with open({str(tmp_path / 'model.pkl')!r}, "rb") as f:
            est = pickle.load(f)
        np.save({str(tmp_path / 'pickle.npy')!r}, est.score_samples(X))
        est = joblib.load({str(tmp_path / 'model.joblib')!r})
        np.save({str(tmp_path / 'joblib.npy')!r}, est.score_samples(X))
        np.save({str(tmp_path / 'sample.npy')!r}, est.sample(7, random_state=3))
        # A model told to use CUDA explicitly says so on a machine without it, and moves.
        est = joblib.load({str(tmp_path / 'cuda.joblib')!r})
        try:
            est.score_samples(X)
        except ValueError as error:
            assert "CUDA is not available" in str(error), error
        else:
            raise AssertionError("device='cuda' without CUDA did not raise")
        np.save({str(tmp_path / 'moved.npy')!r}, est.set_params(device="cpu").score_samples(X))
    """, tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    expected = est.score_samples(X)
    np.testing.assert_array_equal(np.load(tmp_path / "pickle.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "joblib.npy"), expected)
    np.testing.assert_array_equal(np.load(tmp_path / "sample.npy"), est.sample(7, random_state=3))
    np.testing.assert_array_equal(np.load(tmp_path / "moved.npy"), expected)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_model_fitted_on_the_gpu_loads_on_a_cpu_only_machine(tmp_path):
    X = _data()
    est = _quiet_fit(FFJORDDensity(**{**TINY, "device": "auto"}), X)
    assert est.device_.startswith("cuda")
    assert all(t.device.type == "cpu" for t in _tensors(est.__getstate__()))
    joblib.dump(est, tmp_path / "model.joblib")
    np.save(tmp_path / "X.npy", X)
    _python(f"""
        import joblib, numpy as np, torch
        torch.set_num_threads(1)
        assert not torch.cuda.is_available()
        est = joblib.load({str(tmp_path / 'model.joblib')!r})
        X = np.load({str(tmp_path / 'X.npy')!r})
        np.save({str(tmp_path / 'cpu.npy')!r}, est.score_samples(X))
    """, tmp_path, env={"CUDA_VISIBLE_DEVICES": ""})
    np.testing.assert_allclose(np.load(tmp_path / "cpu.npy"), est.score_samples(X), atol=1e-8)


def test_pickle_from_an_incompatible_version_says_so(tiny_fit, tmp_path, monkeypatch):
    est, X = tiny_fit
    with monkeypatch.context() as m:  # as written by a future skflow with another format
        m.setattr(skflow._state, "PICKLE_FORMAT", 99)
        m.setattr(skflow._state, "__version__", "9.0.0")
        joblib.dump(est, tmp_path / "future.joblib")
    with pytest.raises(ValueError, match=r"saved by skflow 9\.0\.0 \(pickle format 99\).*cannot "
                                         r"load.*skflow==9\.0\.0.*refit"):
        joblib.load(tmp_path / "future.joblib")


def test_pickle_from_another_compatible_version_loads_with_a_warning(tiny_fit, monkeypatch):
    est, X = tiny_fit
    with monkeypatch.context() as m:
        m.setattr(skflow._state, "__version__", "0.0.1")
        blob = pickle.dumps(est)
    with pytest.warns(UserWarning, match="saved by skflow 0.0.1"):
        loaded = pickle.loads(blob)
    np.testing.assert_array_equal(loaded.score_samples(X), est.score_samples(X))


def test_pickle_without_version_marks_is_refused(tiny_fit):
    est, _ = tiny_fit
    buffer = io.BytesIO()
    state = est.__getstate__()
    del state["_skflow_pickle_format"], state["_skflow_version"]
    pickle.dump(state, buffer)
    buffer.seek(0)
    with pytest.raises(ValueError, match="skflow unknown.*cannot load"):
        FFJORDDensity.__new__(FFJORDDensity).__setstate__(pickle.load(buffer))


# ---------------------------------------------------------------------------- repeatability
_REPEATABILITY = """
    import sys, warnings, numpy as np, torch
    torch.set_num_threads(1)
    from skflow import FFJORDDensity

    def results(seed):
        X = np.random.RandomState(0).normal(size=(80, 2))
        out = []
        for params in [dict(training="flow_matching"),
                       dict(training="likelihood", solver="rk4", n_steps=2)]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                est = FFJORDDensity(hidden_dims=(8,), max_iter=10, validation_interval=5,
                                    random_state=seed, **params).fit(X)
            out += [v.hex() for v in est.score_samples(X[:10])]
            out += [v.hex() for v in est.sample(3, random_state=0).ravel()]
        return out

    if __name__ == "__main__":
        print(" ".join(results(0) + ["|"] + results(1)))
"""


def test_same_random_state_is_bitwise_repeatable_across_processes():
    # Two fresh processes at once, and this one (after whatever ran before in it): the same
    # random_state gives the same bits; another random_state does not.
    runs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(_REPEATABILITY)], cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    namespace = {}
    exec(compile(textwrap.dedent(_REPEATABILITY), "repeatability", "exec"), namespace)
    here = namespace["results"](0)
    outputs = []
    for run in runs:
        stdout, stderr = run.communicate(timeout=300)
        assert run.returncode == 0, stderr[-3000:]
        outputs.append(stdout.split())
    first, second = outputs
    assert len(first) == 2 * 2 * (10 + 6) + 1
    assert first == second
    seed_0, seed_1 = first[:32], first[33:]
    assert seed_0 == here
    assert all(a != b for a, b in zip(seed_0[:10], seed_1[:10]))
