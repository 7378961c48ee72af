"""The device side: what a GPU changes (tests skipped without CUDA) and the CPU-visible parts
of the GPU work (device objects, the evaluator's bounded chunks, the solver's one read of the
device per step)."""

import pickle
import warnings

import numpy as np
import pytest
import torch

from skflow import FFJORDDensity
from skflow.cnf.evaluation import Evaluator
from skflow.cnf.flow import ContinuousFlow
from skflow.cnf.solver import solve_per_row
from skflow.datasets import make_toy
from skflow.exceptions import SolverError

from .conftest import FAST

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

# Scores of one model on two devices differ by float32 rounding, which the per-row adaptive
# steps can amplify a little (a step accepted on one device, rejected on the other); in
# float64 the devices agree far more tightly.
CROSS_DEVICE_ATOL = {"float32": 1e-3, "float64": 1e-8}


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
