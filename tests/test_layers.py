"""The layers under the estimator: input map, training entry point, evaluator, fitted state."""

import copy
import pickle
import threading
import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning

from skflow import FFJORDDensity
from skflow.cnf.evaluation import Evaluator
from skflow.cnf.flow import FlowSpec
from skflow.datasets import make_toy
from skflow.exceptions import InconsistentVersionWarning, TrainingFaultWarning
from skflow.preprocessing import InputMap
from skflow.training import TrainingConfig, _make_optimizer, fit_flow

from .conftest import FAST


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return fn(*args, **kwargs)


# ------------------------------------------------------------------------------- input map
@pytest.mark.parametrize("kind", ["standardize", "quantile", "pca", "pca_quantile"])
def test_input_map_inverts_and_its_log_det_is_the_jacobian(kind):
    rng = np.random.RandomState(0)
    X = np.c_[rng.lognormal(size=500), rng.normal(3.0, 0.01, size=500)]
    input_map = InputMap(kind).fit(X)
    # Rows near, not on, the training rows: the quantile map has a knot at some training values.
    x = X[::50] * (1 + 1e-4 * rng.uniform(-1, 1, size=X[::50].shape))
    Z, log_det = input_map.forward(x)
    np.testing.assert_allclose(input_map.inverse(Z), x, rtol=1e-10)
    # log|det| of the Jacobian dZ/dx, by central differences, row by row.
    h = 1e-7 * X.std(axis=0)
    columns = [(input_map.forward(x + h[j] * np.eye(2)[j])[0]
                - input_map.forward(x - h[j] * np.eye(2)[j])[0]) / (2 * h[j]) for j in range(2)]
    jacobians = np.stack(columns, axis=2)  # (rows, output, input)
    np.testing.assert_allclose(log_det, np.linalg.slogdet(jacobians)[1], rtol=1e-5)
    assert input_map.kind_ == kind
    assert (input_map.quantile_ is not None) == kind.endswith("quantile")
    assert (input_map.whitening_ is not None) == kind.startswith("pca")


def test_input_map_names_constant_columns():
    X = np.c_[np.arange(10.0), np.full(10, 3.0)]
    with pytest.raises(ValueError, match="Column.*b.*constant"):
        InputMap().fit(X, feature_names=["a", "b"])


def test_score_is_the_flow_density_plus_the_input_maps_log_det(fitted_2d):
    # The estimator's density is the flow's density of the mapped rows, plus the map's
    # log-Jacobian: the flow itself never sees the units of X.
    est, X = fitted_2d
    Z, log_det = est.input_map_.forward(X[:20])
    flow_part = Evaluator(est.flow_, est.eval_atol, est.eval_rtol).log_prob(Z)
    np.testing.assert_allclose(est.score_samples(X[:20]), flow_part + log_det, atol=1e-9)


# -------------------------------------------------------------------------------- training
def test_fit_flow_leaves_the_given_flow_and_optimizer_state_untouched():
    Z = np.random.RandomState(0).normal(size=(200, 2))
    config = TrainingConfig(objective="flow_matching", max_iter=10, validation_interval=5)
    first = fit_flow(FlowSpec(2, (8,)), Z, config, random_state=0)
    flow, state = copy.deepcopy(first.flow), copy.deepcopy(first.optimizer_state)
    second = fit_flow(first.flow, Z, config, random_state=1,
                      optimizer_state=first.optimizer_state)
    for a, b in zip(first.flow.state_dict().values(), flow.state_dict().values()):
        assert torch.equal(a, b)
    moments = [v["exp_avg"] for v in first.optimizer_state["state"].values()]
    assert all(torch.equal(a, v["exp_avg"]) for a, v in zip(moments, state["state"].values()))
    assert any(not torch.equal(a, b) for a, b in zip(second.flow.state_dict().values(),
                                                     flow.state_dict().values()))


def test_fit_flow_uses_the_configured_learning_rate_and_weight_decay():
    Z = np.random.RandomState(0).normal(size=(200, 2))
    config = TrainingConfig(objective="flow_matching", max_iter=4, validation_interval=4,
                            learning_rate=0.02, weight_decay=0.3, cosine_decay=False)
    result = fit_flow(FlowSpec(2, (8,)), Z, config, random_state=0)
    assert result.history[-1]["learning_rate"] == pytest.approx(0.02)
    assert all(group["weight_decay"] == 0.3 and group["lr"] == pytest.approx(0.02)
               for group in result.optimizer_state["param_groups"])


@pytest.mark.parametrize("saved_by_adam", [False, True])
def test_weight_decay_shrinks_each_weight_by_rate_times_decay_whatever_its_gradient(
        saved_by_adam):
    # Decoupled (AdamW): w <- w (1 - lr wd) on top of the gradient's step. Adam's L2 term
    # instead moves a weight without loss gradient by the full rate (0.01 here, not 1e-3 w).
    flow = FlowSpec(2, (8,)).build(0)
    trained = [param for param in flow.parameters() if param.requires_grad]
    config = TrainingConfig(learning_rate=0.01, weight_decay=0.1)
    state = None
    if saved_by_adam:  # a model pickled before: its optimizer state says Adam
        adam = torch.optim.Adam(trained, lr=0.5, weight_decay=0.0)
        for param in trained:
            param.grad = torch.zeros_like(param)
        adam.step()
        state = adam.state_dict()
    optimizer = _make_optimizer(flow, config, state)
    before = [param.detach().clone() for param in trained]
    for param in trained:
        param.grad = torch.zeros_like(param)
    optimizer.step()
    for old, param in zip(before, trained):
        torch.testing.assert_close(param.detach(), old * (1 - 0.01 * 0.1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("training", ["flow_matching", "ot_flow_matching"])
def test_hidden_layers_keep_their_weights_while_the_zeroed_output_layer_learns(training):
    # The output layer starts at zero (the identity flow), so for the first steps the hidden
    # layers get almost no gradient; weight decay must not empty them meanwhile (with Adam's
    # L2 term of 1e-5, ot_flow_matching kept 0.3-0.7 of their norms after 30 steps here and
    # never learned on 8gaussians).
    X = make_toy("8gaussians", 1000, random_state=0)
    est = FFJORDDensity(training=training, max_iter=30, weight_decay=1e-5, n_threads=1,
                        random_state=0)
    _quiet(est.fit, X)
    hidden = est.flow_.blocks[0].net.layers[:-1]
    dims = tuple(layer.linear.out_features for layer in hidden)
    fresh = FlowSpec(2, dims).build(0).blocks[0].net.layers[:-1]
    ratios = [float(layer.linear.weight.norm() / new.linear.weight.norm())
              for layer, new in zip(hidden, fresh)]
    assert len(ratios) == 4 and min(ratios) > 0.85, ratios


@pytest.mark.parametrize("training", ["likelihood", "flow_matching", "ot_flow_matching"])
@pytest.mark.parametrize("learned", [True, False])
def test_train_time_length_is_honoured_by_every_training_mode(training, learned):
    X = np.random.RandomState(0).normal(size=(200, 2)) * [1.0, 3.0]
    est = FFJORDDensity(**{**FAST, "training": training, "max_iter": 10, "solver": "rk4",
                           "n_steps": 2, "train_time_length": learned, "time_length": 0.5,
                           "learning_rate": 0.05, "n_iter_no_change": None})
    _quiet(est.fit, X)
    lengths = [float(block.time_length.detach()) for block in est.flow_.blocks]
    assert all((abs(length - 0.5) > 1e-6) == learned for length in lengths), lengths


def test_a_recovered_fault_warns_with_the_packages_own_category(monkeypatch):
    from skflow import training
    make, calls = training.make_objective, []

    def nan_once(flow, config, generator):
        objective = make(flow, config, generator)

        def call(batch):
            calls.append(1)
            loss, reported = objective(batch)
            return (loss * np.nan if len(calls) == 2 else loss), reported

        call.nfe = 0
        return call

    monkeypatch.setattr(training, "make_objective", nan_once)
    with pytest.warns(TrainingFaultWarning, match="non-finite loss at iteration 2"):
        _quiet(FFJORDDensity(**{**FAST, "max_iter": 6, "validation_interval": 3}).fit,
               np.random.RandomState(0).normal(size=(100, 2)))


# ------------------------------------------------------------------------------- evaluator
def test_the_evaluator_is_built_once_per_fitted_flow_and_settings(fitted_2d):
    est, X = fitted_2d
    est = copy.deepcopy(est)
    attributes = dict(vars(est))
    first = est._evaluator()
    est.score_samples(X[:5])
    assert est._evaluator() is first  # reused across calls
    assert vars(est) == attributes  # scoring leaves the attributes as they were
    est.set_params(eval_dtype="float64")
    assert est._evaluator() is not first and est._evaluator().dtype == torch.float64
    est.set_params(eval_dtype="float32")
    assert est._evaluator() is first
    _quiet(est.set_params(max_iter=5).fit, X)  # a new fit: a new flow, a new evaluator
    assert est._evaluator() is not first


def test_threads_scoring_one_estimator_at_once_agree_with_one_thread(fitted_2d):
    # The frozen blocks' work arrays are kept per thread: threads sharing an estimator (as in
    # a threading joblib backend) must not overwrite each other's intermediate results.
    est, X = fitted_2d
    chunks = [X[i::4] for i in range(4)]
    expected = [est.score_samples(chunk) for chunk in chunks]
    results = [None] * len(chunks)

    def score(i):
        for _ in range(3):
            results[i] = est.score_samples(chunks[i])

    threads = [threading.Thread(target=score, args=(i,)) for i in range(len(chunks))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for got, want in zip(results, expected):
        np.testing.assert_array_equal(got, want)


# --------------------------------------------------------------------------- fitted state
def test_a_pickle_of_the_previous_format_fails_with_the_version_message(fitted_2d):
    est, _ = fitted_2d
    state = est.__getstate__()
    state["_skflow_pickle_format"], state["_skflow_version"] = 2, "0.2.0"
    with pytest.raises(ValueError, match=r"skflow 0\.2\.0 \(pickle format 2\).*skflow==0\.2\.0"):
        FFJORDDensity.__new__(FFJORDDensity).__setstate__(state)


def test_pickling_neither_changes_the_estimator_nor_keeps_its_evaluators(fitted_2d):
    est, X = fitted_2d
    est = copy.deepcopy(est)
    est.score_samples(X[:3])
    before = dict(vars(est))
    loaded = pickle.loads(pickle.dumps(est))
    assert vars(est) == before
    assert loaded._evaluators == {}
    np.testing.assert_array_equal(loaded.score_samples(X[:10]), est.score_samples(X[:10]))


def test_a_compatible_version_warns_with_the_packages_own_category(fitted_2d, monkeypatch):
    import skflow._state
    est, _ = fitted_2d
    monkeypatch.setattr(skflow._state, "__version__", "0.0.1")
    blob = pickle.dumps(est)
    monkeypatch.undo()
    with pytest.warns(InconsistentVersionWarning, match="0.0.1"):
        pickle.loads(blob)


# ------------------------------------------------------------------------------ parameters
def test_parameters_are_keyword_only():
    with pytest.raises(TypeError):
        FFJORDDensity((8,))


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "auto"])
def test_device_accepts_names_and_torch_devices(device):
    X = np.random.RandomState(0).normal(size=(100, 2))
    est = _quiet(FFJORDDensity(**{**FAST, "max_iter": 2, "device": device}).fit, X)
    assert np.isfinite(est.score_samples(X[:3])).all()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
@pytest.mark.parametrize("device", ["cuda:1", torch.device("cuda", 0)])
def test_a_cuda_device_without_cuda_is_refused_by_name(device):
    est = FFJORDDensity(**{**FAST, "device": device})
    with pytest.raises(ValueError, match="CUDA is not available"):
        est.fit(np.random.RandomState(0).normal(size=(50, 2)))
    assert not hasattr(est, "flow_")


# --------------------------------------------------------------------------------- threads
def _threads_seen(monkeypatch):
    """Records torch's thread count at every training step and every evaluation."""
    from skflow import training
    from skflow.cnf.frozen import FrozenBlock
    seen = {"training": set(), "evaluation": set()}
    make, velocity = training.make_objective, FrozenBlock.velocity_and_divergence

    def counting_make(flow, config, generator):
        objective = make(flow, config, generator)

        def call(batch):
            seen["training"].add(torch.get_num_threads())
            return objective(batch)

        call.nfe = 0
        return call

    def counting_velocity(self, s, z):
        seen["evaluation"].add(torch.get_num_threads())
        return velocity(self, s, z)

    monkeypatch.setattr(training, "make_objective", counting_make)
    monkeypatch.setattr(FrozenBlock, "velocity_and_divergence", counting_velocity)
    return seen


@pytest.mark.parametrize("n_threads, expected", [(None, 1), (2, 2)])
def test_threads_follow_the_parameter_and_the_callers_count_is_restored(monkeypatch, n_threads,
                                                                        expected):
    seen = _threads_seen(monkeypatch)
    X = np.random.RandomState(0).normal(size=(100, 2))
    before = torch.get_num_threads()
    est = _quiet(FFJORDDensity(**{**FAST, "max_iter": 4, "n_threads": n_threads}).fit, X)
    est.score_samples(X[:5])
    assert seen == {"training": {expected}, "evaluation": {expected}}
    assert torch.get_num_threads() == before


def test_larger_work_uses_the_cores_other_processes_leave_free(monkeypatch):
    from threadpoolctl import threadpool_limits

    from skflow import _threads
    monkeypatch.setattr(_threads.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(_threads.torch, "get_num_threads", lambda: 4)
    for busy, expected in [(0.0, 4), (1.2, 3), (3.0, 1), (6.0, 1), (None, 4)]:
        monkeypatch.setattr(_threads, "cores_busy_elsewhere", lambda busy=busy: busy)
        assert _threads.intra_op_threads(None, 1024, 64) == expected, busy
    assert _threads.intra_op_threads(None, 64, 8) == 1  # tiny work: one thread, no measuring
    assert _threads.intra_op_threads(3, 64, 8) == 3  # asked for
    monkeypatch.undo()
    with threadpool_limits(1):  # a limit the caller set is honoured
        assert _threads.intra_op_threads(None, 4096, 256) == 1


def test_cores_busy_elsewhere_counts_other_processes_not_this_one():
    import os
    import subprocess
    import sys
    import threading
    import time

    from skflow._threads import cores_busy_elsewhere
    # Relative to what the rest of the machine does now (a test may share it).
    baseline = cores_busy_elsewhere(0.3)
    spinning = True

    def spin():  # this process keeps a core busy: not counted
        while spinning:
            pass

    thread = threading.Thread(target=spin)
    thread.start()
    try:
        assert cores_busy_elsewhere(0.3) < baseline + 0.5
    finally:
        spinning = False
        thread.join()
    if baseline > os.cpu_count() - 1:
        pytest.skip("every core is busy already: another process cannot add one")
    other = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        assert cores_busy_elsewhere(0.3) > baseline + 0.5  # another process's busy core is
    finally:
        other.kill()
        other.wait()


# ------------------------------------------------------------------------------ time budget
def test_max_time_ends_training_with_the_best_validated_weights_and_no_warning():
    X = np.random.RandomState(0).normal(size=(300, 2))
    est = FFJORDDensity(**{**FAST, "max_iter": 100_000, "validation_interval": 10**6,
                           "max_time": 1.0})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        est.fit(X)
    assert 0 < est.n_iter_ < 100_000
    # One last validation when the time ran out; its weights are the ones kept.
    assert [entry["iteration"] for entry in est.history_] == [est.n_iter_]
    assert est.history_[-1]["time"] >= 1.0  # validated once the budget was spent
    assert est.best_validation_loss_ == est.history_[-1]["val_loss"]
    assert not [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    # The learning rate decayed over the time budget, as it would over max_iter.
    from skflow.defaults import learning_rate
    assert est.history_[-1]["learning_rate"] < 0.2 * learning_rate("flow_matching", 2)


def test_auto_learning_rate_by_objective_and_features_and_a_given_one_is_kept():
    from skflow.defaults import training_config
    params = FFJORDDensity().get_params()
    assert training_config(params, 1000, 2).learning_rate == 1e-2
    # A table starts at 1e-2 (the estimator falls back to 5e-3 where that fit overfits).
    assert training_config(params, 1000, 5).learning_rate == 1e-2
    assert training_config({**params, "training": "ot_flow_matching"}, 1000, 5
                           ).learning_rate == 5e-3
    assert training_config({**params, "training": "likelihood"}, 1000, 2).learning_rate == 1e-3
    assert training_config({**params, "learning_rate": 3e-4}, 1000, 2).learning_rate == 3e-4


def test_auto_batch_size_by_device_and_a_given_one_is_kept():
    import torch

    from skflow.defaults import training_config
    params = FFJORDDensity().get_params()
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)  # a name: no GPU needed
    assert training_config(params, 10_000, 3, device=cpu).batch_size == 1024
    assert training_config(params, 10_000, 3, device=gpu).batch_size == 4096
    assert training_config({**params, "batch_size": 300}, 10_000, 3, device=gpu).batch_size == 300
    # partial_fit takes one pass over the chunk, in batches of the resolved size.
    assert training_config(params, 10_000, 3, partial=True, device=gpu).max_iter == 3
    assert training_config(params, 10_000, 3, partial=True, device=cpu).max_iter == 10


def test_validation_solves_at_the_looser_of_its_own_and_the_training_tolerance(fitted_2d):
    # Validation only ranks a fit's checkpoints: 1e-3 costs fewer solver steps and moves the
    # loss by less than a hundredth of a nat; a looser tolerance the user gives still holds.
    from skflow.defaults import VALIDATION_TOLERANCE, training_config
    from skflow.training import validation_loss
    params = FFJORDDensity().get_params()
    config = training_config(params, 1000, 3)
    assert config.validation_atol == config.validation_rtol == VALIDATION_TOLERANCE == 1e-3
    assert config.solver.atol == config.solver.rtol == 1e-5  # the training solver's own
    looser = training_config({**params, "atol": 1e-2, "rtol": 2e-2}, 1000, 3)
    assert (looser.validation_atol, looser.validation_rtol) == (1e-2, 2e-2)
    est, X = fitted_2d
    Z, flow = torch.as_tensor(est.input_map_.forward(X[:300])[0]), est.flow_
    tight = TrainingConfig(validation_atol=1e-9, validation_rtol=1e-9)
    assert abs(validation_loss(flow, Z, config) - validation_loss(flow, Z, tight)) < 1e-2
    steps = [Evaluator(flow, tol, tol, dtype=torch.float64).nfe(Z).sum() for tol in (1e-3, 1e-5)]
    assert steps[0] < 0.8 * steps[1]


def test_a_time_budget_lifts_the_auto_step_limit_but_not_a_given_one():
    # With max_time, 'auto' leaves the budget (and early stopping) to end training, so that a
    # longer budget buys a better fit; a max_iter the user gave still holds.
    import math

    from skflow.defaults import training_config
    budget = FFJORDDensity(max_time=30).get_params()
    assert training_config(budget, 1000, 3).max_iter == math.inf
    assert training_config({**budget, "max_iter": 700}, 1000, 3).max_iter == 700
    assert training_config(FFJORDDensity().get_params(), 1000, 3).max_iter == 10000
    X = np.random.RandomState(0).normal(size=(300, 2))
    est = FFJORDDensity(**{**FAST, "max_iter": "auto", "validation_interval": 10**6,
                           "max_time": 0.5}).fit(X)
    assert est.history_[-1]["time"] >= 0.5 and 0 < est.n_iter_


def test_the_warning_says_training_was_cut_short_only_while_it_was_clearly_improving():
    from skflow.density import _recent_gain
    history = lambda losses: [dict(val_loss=v) for v in losses]  # noqa: E731
    assert _recent_gain(history([5.0, 4.0])) == pytest.approx(1.0)
    steady = [3.0 - 0.1 * i for i in range(20)]
    assert _recent_gain(history(steady)) == pytest.approx(0.4)
    settling = [1.0 + 30.0 * np.exp(-i / 2) for i in range(20)]  # the last fifth: 0.05%
    assert _recent_gain(history(settling)) is None
    assert _recent_gain(history([2.0, 1.5, 1.6, 1.7, 1.8])) is None  # no longer improving
