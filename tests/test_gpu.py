"""The device side: what a GPU changes (tests skipped without CUDA) and the CPU-visible parts
of the GPU work (device objects, the evaluator's bounded chunks, the solver's one read of the
device per step, the captured training step's arithmetic)."""

import math
import pickle
import warnings

import numpy as np
import pytest
import torch

from skflow import FFJORDDensity
from skflow._captured_step import CapturedStep
from skflow.cnf.evaluation import Evaluator
from skflow.cnf.flow import ContinuousFlow, FlowSpec
from skflow.cnf.objectives import FlowMatchingObjective
from skflow.cnf.solver import SolverConfig, solve_per_row
from skflow.datasets import make_toy
from skflow.exceptions import SolverError, TrainingFaultWarning
from skflow.training import TrainingConfig, fit_flow

from .conftest import FAST

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Scores of one model on two devices differ by float32 rounding, which the per-row adaptive
# steps can amplify a little (a step accepted on one device, rejected on the other); in
# float64 the devices agree far more tightly.
CROSS_DEVICE_ATOL = {"float32": 1e-3, "float64": 1e-8}


def _train(capture, device="cpu", flow=None, optimizer_state=None, **config):
    """A small flow-matching run of ``fit_flow`` (weight averaging on, as by default)."""
    Z = make_toy("pinwheel", 600, random_state=0) / 2
    config = TrainingConfig(**{
        "objective": "flow_matching", "max_iter": 30, "validation_interval": 10,
        "batch_size": 128, "learning_rate": 1e-2, "averaging_decay": 0.999, "capture": capture,
        **config})
    return fit_flow(flow or FlowSpec(2, (16, 16)), Z, config, random_state=0, device=device,
                    optimizer_state=optimizer_state)


# Likelihood training that a GPU captures: a fixed grid, direct backpropagation.
FIXED_GRID_LIKELIHOOD = dict(objective="likelihood", averaging_decay=0.0, learning_rate=1e-3,
                             regularization={"kinetic_energy": 0.01},
                             solver=SolverConfig(method="rk4", n_steps=4, adjoint=False))


def _weights(result):
    return [t.detach().cpu() for t in result.flow.state_dict().values()]


def _fit(**params):
    X = make_toy("pinwheel", 400, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**{**FAST, "n_threads": 1, **params}).fit(X), X


# ------------------------------------------------------------------------------- on any machine
def test_a_torch_device_fits_exactly_as_its_name():
    by_name, X = _fit(device="cpu")
    by_object, _ = _fit(device=torch.device("cpu"))
    assert by_object.device_ == by_name.device_ == "cpu"
    np.testing.assert_array_equal(by_object.score_samples(X), by_name.score_samples(X))


def test_the_evaluator_copies_rows_in_bounded_chunks():
    evaluator = Evaluator(ContinuousFlow(2, (8,)))
    bound = max(2 ** 16, 8 * evaluator.chunk_rows)
    rows = 2 * bound + 5
    sizes = [chunk.shape[0] for chunk in evaluator._chunks(np.zeros((rows, 2)))]
    assert sizes == [bound, bound, 5]
    # A GPU keeps more rows in flight than a core (no GPU needed to ask).
    on_gpu = Evaluator.rows_in_flight(10, 64, torch.float32, torch.device("cuda"))
    on_cpu = Evaluator.rows_in_flight(10, 64, torch.float32, torch.device("cpu"))
    assert on_gpu > 10 * on_cpu


@pytest.mark.parametrize("max_rows", [None, 2])
def test_the_per_row_solver_still_stops_on_faults(max_rows):
    y0 = torch.ones(5, 2, dtype=torch.float64)
    with pytest.raises(SolverError, match="non-finite"):
        solve_per_row(lambda s, y: torch.where(s > 0.3, torch.inf, 1.0) * y, y0, 1e-6, 1e-6,
                      max_rows=max_rows)
    with pytest.raises(SolverError, match="did not finish within 3 steps"):
        solve_per_row(lambda s, y: -y, y0, 1e-9, 1e-9, max_num_steps=3, max_rows=max_rows)


def test_the_per_row_solver_reads_the_device_once_per_step(monkeypatch):
    # Every step's checks come back in one transfer (on a GPU each costs a round trip).
    from skflow.cnf import solver
    reads, real = [], solver._step_report

    def counted(*args):
        reads.append(1)
        return real(*args)

    monkeypatch.setattr(solver, "_step_report", counted)
    nfe = torch.zeros(3, dtype=torch.long)
    y1 = solver.solve_per_row(lambda s, y: -y, torch.ones(3, 1, dtype=torch.float64), 1e-6, 1e-6,
                              nfe=nfe)
    assert torch.allclose(y1, torch.full_like(y1, np.exp(-1)), atol=1e-5)
    assert len(reads) == (int(nfe.max()) - 2) // 6  # one per step: 6 evaluations, 2 to start


def test_the_captured_step_trains_exactly_as_the_eager_step(monkeypatch):
    # On a CPU the captured step runs eagerly on its buffers: the same draws, the same Adam
    # update (its rate read from a tensor) and the same weight average, to the bit.
    calls = []
    real = CapturedStep.__call__
    monkeypatch.setattr(CapturedStep, "__call__",
                        lambda self, batch: calls.append(1) or real(self, batch))
    eager, captured = _train(False), _train(True)
    assert len(calls) == 30
    assert [h["val_loss"] for h in captured.history] == [h["val_loss"] for h in eager.history]
    assert [h["train_loss"] for h in captured.history] == [
        h["train_loss"] for h in eager.history]
    assert all(torch.equal(a, b) for a, b in zip(_weights(captured), _weights(eager)))
    # Not by default on a CPU, nor where the host takes part in the step.
    calls.clear()
    _train(None)
    _train(True, objective="ot_flow_matching")  # the pairing is solved on the host
    assert calls == []


def test_the_captured_step_of_several_blocks_trains_as_the_eager_step():
    # The eager step splits the minibatch between the blocks by the drawn times; the captured
    # step runs every row through every block and keeps each row's own: the same loss and
    # gradients, up to the order of the sums.
    spec = FlowSpec(2, (16, 16), n_blocks=3)
    eager, captured = (_train(capture, flow=spec) for capture in (False, True))
    np.testing.assert_allclose([h["val_loss"] for h in captured.history],
                               [h["val_loss"] for h in eager.history], rtol=1e-5)
    for a, b in zip(_weights(captured), _weights(eager)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("divergence", ["exact", "hutchinson"])
def test_the_captured_likelihood_step_of_a_fixed_grid_trains_as_the_eager_step(
        monkeypatch, divergence):
    # Likelihood training with a fixed-grid solver and direct backpropagation reads nothing
    # back from the device (its own grid loop; the probe drawn on the host side): it is
    # captured too, and trains exactly as the eager step, evaluation counts included.
    calls = []
    real = CapturedStep.__call__
    monkeypatch.setattr(CapturedStep, "__call__",
                        lambda self, batch: calls.append(1) or real(self, batch))
    likelihood = dict(FIXED_GRID_LIKELIHOOD, divergence=divergence, max_iter=20)
    eager, captured = _train(False, **likelihood), _train(True, **likelihood)
    assert len(calls) == 20
    for key in ("val_loss", "train_loss", "nfe_forward"):
        assert [h[key] for h in captured.history] == [h[key] for h in eager.history]
    assert captured.history[0]["nfe_forward"] == 16  # 4 steps of 4 evaluations
    assert all(torch.equal(a, b) for a, b in zip(_weights(captured), _weights(eager)))
    # torchdiffeq's adjoint and adaptive solves wait for the device: those are not captured.
    calls.clear()
    _train(True, **{**likelihood, "solver": SolverConfig(method="rk4", n_steps=4)})
    _train(True, **{**likelihood, "solver": SolverConfig(adjoint=False)})
    assert calls == []


def test_a_fault_in_a_captured_step_surfaces_at_the_next_validation(monkeypatch):
    # The captured step does not wait for its loss: a non-finite one shows in the training
    # loss summed up to the next validation, which restores the last good weights (here the
    # initial ones) and divides the learning rate by 10, as for any fault.
    real, calls = FlowMatchingObjective.losses, []

    def nan_on_call_7(self, *args, **kwargs):
        calls.append(1)
        loss, reported = real(self, *args, **kwargs)
        return (loss * math.nan, reported * math.nan) if len(calls) == 7 else (loss, reported)

    clean = _train(True)
    monkeypatch.setattr(FlowMatchingObjective, "losses", nan_on_call_7)
    with pytest.warns(TrainingFaultWarning,
                      match="non-finite training loss at iteration 10: restored the last good"):
        result = _train(True)
    assert result.n_iter == 30 and [h["iteration"] for h in result.history] == [20, 30]
    for after, before in zip(result.history, clean.history[1:]):
        assert after["learning_rate"] == pytest.approx(before["learning_rate"] / 10)
        assert math.isfinite(after["val_loss"]) and math.isfinite(after["train_loss"])
    assert all(torch.isfinite(t).all() for t in _weights(result))


def test_a_captured_runs_optimizer_state_continues_any_run():
    # The returned state is portable (a float rate, not capturable, on the CPU), and a run
    # continued from it is the same with or without the captured step.
    first = _train(True)
    assert all(isinstance(group["lr"], float) and not group["capturable"]
               for group in first.optimizer_state["param_groups"])
    continued = [_train(capture, flow=first.flow, optimizer_state=first.optimizer_state)
                 for capture in (False, True)]
    assert all(torch.equal(a, b) for a, b in zip(*map(_weights, continued)))
    assert not all(torch.equal(a, b) for a, b in zip(_weights(first), _weights(continued[0])))


# ------------------------------------------------------------------------------ with a GPU
@needs_cuda
@pytest.mark.parametrize("device", ["cuda:0", torch.device("cuda", 0)])
def test_cuda_devices_are_accepted_by_name_and_object(device):
    est, X = _fit(device=device)
    assert est.device_ == "cuda:0"
    assert all(t.device.type == "cpu" for t in est.flow_.state_dict().values())
    assert np.isfinite(est.score_samples(X)).all()


@pytest.mark.parametrize("device, rows", [("cpu", 1024),
                                           pytest.param("cuda", 4096, marks=needs_cuda)])
def test_auto_batch_size_follows_the_device(monkeypatch, device, rows):
    from skflow import training
    seen = []
    original = training._minibatches

    def spy(Z, batch_size, generator):
        seen.append(batch_size)
        return original(Z, batch_size, generator)

    monkeypatch.setattr(training, "_minibatches", spy)
    X = make_toy("pinwheel", 6000, random_state=0)
    est = FFJORDDensity(**{**FAST, "max_iter": 2, "n_threads": 1, "device": device}).fit(X)
    assert seen == [rows] and est.get_params()["batch_size"] == "auto"


@needs_cuda
@pytest.mark.parametrize("eval_dtype", ["float32", "float64"])
def test_a_gpu_fit_scores_the_same_on_the_cpu(eval_dtype):
    est, X = _fit(device="cuda", eval_dtype=eval_dtype)
    on_gpu = est.score_samples(X)
    on_cpu = est.set_params(device="cpu").score_samples(X)
    np.testing.assert_allclose(on_cpu, on_gpu, rtol=0, atol=CROSS_DEVICE_ATOL[eval_dtype])


@needs_cuda
def test_a_pickled_gpu_model_loads_and_scores_on_the_cpu():
    est, X = _fit(device="cuda")
    expected = est.set_params(device="cpu").score_samples(X)
    loaded = pickle.loads(pickle.dumps(est.set_params(device="cuda")))
    assert all(t.device.type == "cpu" for t in loaded.flow_.state_dict().values())
    np.testing.assert_array_equal(loaded.set_params(device="cpu").score_samples(X), expected)
    np.testing.assert_allclose(loaded.set_params(device="cuda").score_samples(X), expected,
                               rtol=0, atol=CROSS_DEVICE_ATOL["float32"])


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_model_fitted_on_one_gpu_scores_on_another():
    est, X = _fit(device="cuda:0")
    first = est.score_samples(X)
    np.testing.assert_allclose(est.set_params(device="cuda:1").score_samples(X), first,
                               rtol=0, atol=CROSS_DEVICE_ATOL["float32"])


@needs_cuda
def test_the_evaluator_on_a_gpu_keeps_many_rows_in_flight_and_matches_the_cpu():
    torch.manual_seed(0)
    flow = ContinuousFlow(3, (16, 16))
    with torch.no_grad():  # a new flow is the identity map: perturb it into a non-trivial one
        for parameter in flow.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    Z = np.random.RandomState(0).normal(size=(5000, 3))
    on_gpu = Evaluator(flow, device="cuda")
    assert on_gpu.chunk_rows >= 256
    np.testing.assert_allclose(on_gpu.log_prob(Z), Evaluator(flow).log_prob(Z), rtol=0,
                               atol=CROSS_DEVICE_ATOL["float32"])


@needs_cuda
@pytest.mark.parametrize("training", [{}, FIXED_GRID_LIKELIHOOD],
                         ids=["flow_matching", "fixed_grid_likelihood"])
def test_a_gpu_run_captures_its_step_once_and_trains_as_the_eager_step(monkeypatch, training):
    captures, real = [], CapturedStep._capture
    monkeypatch.setattr(CapturedStep, "_capture", lambda self: captures.append(1) or real(self))
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture warns
        captured = _train(None, device="cuda", **training, max_iter=60)
    assert captures == [1]  # captured once, replayed for the other steps
    eager = _train(False, device="cuda", **training, max_iter=60)
    # Capturable Adam orders its float32 arithmetic differently: equal up to rounding.
    np.testing.assert_allclose([h["val_loss"] for h in captured.history],
                               [h["val_loss"] for h in eager.history], rtol=1e-3)
    for a, b in zip(_weights(captured), _weights(eager)):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0, atol=1e-3)


@needs_cuda
def test_a_gpu_run_continues_a_cpu_run_and_back():
    on_cpu = _train(False)
    on_gpu = _train(None, device="cuda", flow=on_cpu.flow, optimizer_state=on_cpu.optimizer_state)
    back = _train(False, flow=on_gpu.flow, optimizer_state=on_gpu.optimizer_state)
    assert back.n_iter == 30 and all(torch.isfinite(t).all() for t in _weights(back))
