"""Property tests of the public API (hypothesis): whatever the shapes, values and parameters,
FFJORDDensity either refuses the input with a ValueError or TypeError, or returns finite
results -- never NaN, never an error from deep inside torch.

The models are tiny and train for a handful of steps: the properties are about robustness,
not about the quality of the fit.
"""

import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from skflow import FFJORDDensity
from skflow.cnf.layers import ACTIVATIONS

# Derandomized, so that a run is repeatable; SKFLOW_HYPOTHESIS_EXAMPLES=200 searches harder.
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                max_examples=int(os.environ.get("SKFLOW_HYPOTHESIS_EXAMPLES", 20)),
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Tiny models: a second thread only adds synchronization (slow on shared cores).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ------------------------------------------------------------------------------- strategies
@st.composite
def datasets(draw):
    """(n, d) arrays, 2 <= n <= 30, 1 <= d <= 4: floats of any magnitude from 1e-200 to 1e200
    (per column, or mixed within a column), integers, or duplicated rows."""
    n, d = draw(st.integers(2, 30)), draw(st.integers(1, 4))
    kind = draw(st.sampled_from(["scaled", "wide", "integers", "duplicates"]))
    if kind == "integers":
        low = draw(st.sampled_from([0, -5, -10**6]))
        return draw(hnp.arrays(np.int64, (n, d), fill=st.nothing(), elements=st.integers(
            low, low + 10**draw(st.integers(1, 7)))))
    if kind == "duplicates":
        rows = draw(st.integers(2, max(2, n // 2)))
        base = draw(hnp.arrays(np.float64, (rows, d), fill=st.nothing(),
                               elements=st.floats(-10, 10, width=32)))
        index = draw(hnp.arrays(np.int64, n, elements=st.integers(0, rows - 1)))
        return base[np.r_[np.arange(rows), index[rows:]]] if n > rows else base
    if kind == "wide":  # magnitudes from 1e-200 to 1e200 side by side, in one column
        mantissa = draw(hnp.arrays(np.float64, (n, d), fill=st.nothing(),
                                   elements=st.floats(-10, 10, width=32)))
        exponent = draw(hnp.arrays(np.int64, (n, d), fill=st.nothing(),
                                   elements=st.integers(-200, 199)))
        return mantissa * 10.0 ** exponent
    unit = draw(hnp.arrays(np.float64, (n, d), fill=st.nothing(),
                           elements=st.floats(-1e3, 1e3, allow_subnormal=False)))
    scales = draw(hnp.arrays(np.float64, d, elements=st.sampled_from(
        [1e-200, 1e-8, 1.0, 1e9, 1e200])))
    shifts = draw(hnp.arrays(np.float64, d, elements=st.sampled_from([0.0, -7.5, 1e6])))
    return unit * scales + shifts * scales


@st.composite
def parameters(draw):
    training = draw(st.sampled_from(["likelihood", "flow_matching", "ot_flow_matching"]))
    params = dict(
        hidden_dims=draw(st.lists(st.integers(1, 12), min_size=1, max_size=2)),
        activation=draw(st.sampled_from(sorted(ACTIVATIONS))),
        training=training,
        solver=draw(st.sampled_from(["rk4", "euler", "dopri5"])),
        n_steps=draw(st.integers(1, 3)),
        divergence=draw(st.sampled_from(["hutchinson", "exact"])),
        n_blocks=draw(st.integers(1, 2)),
        batch_size=draw(st.integers(1, 40)),
        max_iter=draw(st.integers(1, 4)),
        validation_interval=draw(st.integers(1, 3)),
        validation_fraction=draw(st.sampled_from([0.0, 0.1, 0.5])),
        learning_rate=draw(st.sampled_from([1e-3, 1e-2])),
        random_state=draw(st.integers(0, 3)),
    )
    if draw(st.integers(0, 9)) == 7:  # now and then an invalid width, to be refused by name
        params["hidden_dims"][-1] = draw(st.sampled_from([0, -3]))
    params["hidden_dims"] = tuple(params["hidden_dims"])
    if training == "likelihood" and params["solver"] == "dopri5":
        params["max_num_steps"] = 200  # adaptive solves on a fresh tiny flow take a few steps
    return params


def _fit(params, X):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings: a handful of steps on purpose
        return FFJORDDensity(**params).fit(X)


# ------------------------------------------------------------------------------- properties
@settings(**SETTINGS)
@given(X=datasets(), params=parameters())
def test_fit_refuses_clearly_or_gives_finite_results(X, params):
    try:
        est = _fit(params, X)
    except (ValueError, TypeError) as error:
        event(f"refused: {type(error).__name__}: {str(error)[:30]}")
        # Refusals name what is wrong: a parameter, a constant column, the shape of X.
        assert any(word in str(error) for word in (
            "hidden_dims", "constant", "sample", "feature")), str(error)
        return
    event(f"fitted: {params['training']}")
    n, d = X.shape
    assert est.n_features_in_ == d and est.n_iter_ >= 1
    assert all(np.isfinite(h["val_loss"]) for h in est.history_)
    log_p = est.score_samples(X)
    assert log_p.shape == (n,) and log_p.dtype == np.float64
    assert np.isfinite(log_p).all(), log_p
    assert np.isfinite(est.score(X))
    Z = est.transform(X)
    assert Z.shape == (n, d) and np.isfinite(Z).all()
    draws = est.sample(3, random_state=0)
    assert draws.shape == (3, d) and np.isfinite(draws).all()
    assert np.isfinite(est.score_samples(draws)).all()


@settings(**SETTINGS)
@given(X=datasets())
def test_fit_is_refused_only_for_constant_columns(X):
    # Varying columns of any magnitude are accepted; a column with one distinct value is
    # refused, by name.
    # (Columns whose values differ only in the last digits are numerically constant: either.)
    X = X.astype(np.float64)
    magnitude = np.maximum(np.abs(X).max(axis=0), 1e-300)
    spread = (X.max(axis=0) - X.min(axis=0)) / magnitude
    params = dict(hidden_dims=(4,), training="flow_matching", max_iter=2, random_state=0)
    if (spread == 0).any():
        first = int(np.flatnonzero(spread == 0)[0])
        with pytest.raises(ValueError, match=rf"Column\(s\) (\d+, )*{first}\b.*constant"):
            _fit(params, X)
    elif (spread > 1e-12).all():
        log_p = _fit(params, X).score_samples(X)
        assert np.isfinite(log_p).all()


@pytest.fixture(scope="module")
def fitted():
    X = np.random.RandomState(0).normal(size=(50, 2)) * [1.0, 3.0]
    return _fit(dict(hidden_dims=(8,), training="flow_matching", max_iter=5, random_state=0), X)


@settings(**SETTINGS)
@given(data=st.data())
def test_evaluation_on_any_array_refuses_clearly_or_is_finite(fitted, data):
    shape = data.draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=5))
    dtype = data.draw(st.sampled_from([np.float64, np.float32, np.int64, np.bool_]))
    X = data.draw(hnp.arrays(dtype, shape, elements=hnp.from_dtype(
        np.dtype(dtype), allow_nan=False, allow_infinity=False, allow_subnormal=False,
        **({"min_value": -1e6, "max_value": 1e6} if dtype != np.bool_ else {}))))
    method = data.draw(st.sampled_from(["score_samples", "score", "transform",
                                        "inverse_transform"]))
    try:
        result = getattr(fitted, method)(X)
    except (ValueError, TypeError):
        assert not (X.ndim == 2 and X.shape[1] == 2 and X.shape[0] >= 1)  # valid: must work
        return
    assert X.ndim == 2 and X.shape[1] == 2 and X.shape[0] >= 1
    assert not np.isnan(result).any()
    if method == "score_samples":
        assert result.shape == (X.shape[0],)
    elif method != "score":
        assert result.shape == X.shape


@settings(**SETTINGS)
@given(n_samples=st.one_of(st.integers(-5, 40), st.floats(-2, 5), st.none(), st.text(max_size=2),
                           st.booleans()))
def test_sample_count_is_checked(fitted, n_samples):
    valid = isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples >= 1
    if not valid:
        with pytest.raises(ValueError, match="n_samples"):
            fitted.sample(n_samples)
        return
    draws = fitted.sample(n_samples, random_state=0)
    assert draws.shape == (n_samples, 2) and np.isfinite(draws).all()
