"""Scaling out: data-parallel training under torchrun, and Dask model selection, scoring,
sampling and streaming (see skflow/distributed/ and docs/scaling.md)."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal

import skflow.distributed as D
from skflow import FFJORDDensity

from .conftest import FAST, REPO

# Likelihood training (Hutchinson probes, adjoint, a fixed grid to keep it quick): the objective
# whose cost data parallelism is meant to split.
DP_PARAMS = dict(training="likelihood", hidden_dims=[16, 16], solver="rk4", n_steps=4,
                 batch_size=128, max_iter=100, learning_rate=1e-2, validation_interval=25,
                 n_iter_no_change=None, random_state=0, device="cpu",
                 preprocessing="standardize")  # the flow alone does the learning


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    # On 2 shared cores, two intra-op threads competing with other processes (the torchrun
    # ranks, the Dask workers, other test runs) slow small models down many times over.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def bimodal(n, seed):
    rng = np.random.RandomState(seed)
    X = np.concatenate([rng.normal(-1.5, 0.5, (n // 2, 2)), rng.normal(1.5, 0.5, (n // 2, 2))])
    return X[rng.permutation(n)]  # mixed rows: any chunk or fold sees both modes


# --------------------------------------------------------------------- single process
def test_single_process_helpers_are_pass_through():
    assert D.world_info() == (0, 1, 0)
    X = np.arange(10)
    assert_array_equal(D.shard_rows(X), X)
    shards = [D.shard_rows(X, r, 3) for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == X.tolist()
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError):
        D.shard_rows(X, 3, 3)
    p = torch.nn.Parameter(torch.zeros(3))
    p.grad = torch.arange(3.0)
    D.average_gradients([p])
    assert_array_equal(p.grad.numpy(), [0.0, 1.0, 2.0])
    assert D.any_across_ranks(True) and not D.any_across_ranks(False)
    assert D.gather_values([1.0, 2.0]).tolist() == [[1.0, 2.0]]


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_plain_fit_records_world_size_one():
    est = FFJORDDensity(**FAST).fit(bimodal(200, 0))
    assert est.world_size_ == 1


def test_skflow_works_without_dask():
    code = textwrap.dedent("""
        import sys
        for name in ("dask", "distributed"):
            sys.modules[name] = None  # makes 'import dask' fail
        import numpy as np, skflow, skflow.distributed as D
        from skflow import FFJORDDensity
        X = np.random.RandomState(0).normal(size=(100, 2))
        est = FFJORDDensity(hidden_dims=(4,), training="flow_matching", max_iter=3,
                            n_iter_no_change=None, random_state=0).fit(X)
        assert est.world_size_ == 1 and np.isfinite(est.score(X))
        try:
            D.score_dask(est, X)
        except TypeError:
            print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().endswith("ok")


# --------------------------------------------------------------------- torchrun, 2 ranks
DP_SCRIPT = r'''
import json, os, sys, warnings
from pathlib import Path

import numpy as np
import torch

import skflow.distributed as D
from skflow import FFJORDDensity
from skflow.cnf.flow import ContinuousFlow
from skflow.cnf.solver import SolverConfig
from skflow.cnf.objectives import make_objective
from skflow.training import TrainingConfig

warnings.simplefilter("ignore")
out, params = Path(sys.argv[1]), json.loads(sys.argv[2])
world, _ = D.setup(torch.device("cpu"))  # what fit does: join torchrun's group (gloo)
rank, res = world.rank, {"world": list(world), "backend": str(torch.distributed.get_backend())}

def bimodal(n, seed):
    rng = np.random.RandomState(seed)
    X = np.concatenate([rng.normal(-1.5, 0.5, (n // 2, 2)), rng.normal(1.5, 0.5, (n // 2, 2))])
    return X[rng.permutation(n)]  # mixed rows: any chunk or fold sees both modes

# The collective helpers.
res["shard"] = D.shard_rows(np.arange(7)).tolist()
res["any_rank1"] = D.any_across_ranks(rank == 1)
res["any_none"] = D.any_across_ranks(False)
res["gathered"] = D.gather_values([rank, 10.0 * rank]).tolist()
weight, only1, unused = (torch.nn.Parameter(torch.zeros(2, 3)), torch.nn.Parameter(torch.zeros(2)),
                         torch.nn.Parameter(torch.zeros(1)))
weight.grad = torch.arange(6.0).reshape(2, 3) * (rank + 1)
only1.grad = torch.full((2,), 4.0) if rank == 1 else None
D.average_gradients([weight, only1, unused])
res["avg"] = dict(weight=weight.grad.tolist(), only1=only1.grad.tolist(),
                  unused_is_none=unused.grad is None)

# Averaging the gradients of the shards' mean losses gives the full minibatch's gradient
# (exact trace, fixed grid, float64: no noise, no rounding to hide behind).
torch.manual_seed(0)
flow = ContinuousFlow(2, (8,), "softplus", 2).double()
config = TrainingConfig(divergence="exact", solver=SolverConfig(method="rk4", n_steps=4))
objective = make_objective(flow, config, torch.Generator())
batch = torch.randn(10, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
parameters = [p for p in flow.parameters() if p.requires_grad]
full = torch.autograd.grad(objective(batch)[0], parameters)
objective(D.shard_rows(batch))[0].backward()
D.average_gradients(parameters)
res["grad_max_error"] = max(float((p.grad - g).abs().max()) for p, g in zip(parameters, full))
res["grad_scale"] = max(float(g.abs().max()) for g in full)

# The estimator: record whether the ranks had drifted apart before the final broadcast.
drift = []
broadcast = D.torchrun.broadcast_training_state
def recording_broadcast(*args, **kwargs):
    drift.append(broadcast(*args, **kwargs))
    return drift[-1]
D.torchrun.broadcast_training_state = recording_broadcast  # where fit looks it up
X, X_test = bimodal(800, 0), bimodal(400, 1)
est = FFJORDDensity(**params).fit(X)
res.update(world_size=est.world_size_, n_iter=est.n_iter_, history=est.history_,
           scores=est.score_samples(X_test).tolist(),
           weights=[v.ravel().tolist() for v in est.flow_.state_dict().values()])
est.partial_fit(X[:300])  # streaming continues data-parallel too
res.update(partial_n_iter=est.n_iter_, partial_world_size=est.world_size_,
           partial_scores=est.score_samples(X_test[:50]).tolist(), drift=list(drift))

# A non-finite loss on rank 1 alone: both ranks restore the last good weights, together.
from skflow import training
make_objective = training.make_objective
class NaNOnRank1AtCall4:
    def __init__(self, objective):
        self.objective, self.calls = objective, 0
    @property
    def nfe(self):
        return self.objective.nfe
    def __call__(self, batch):
        self.calls += 1
        loss, nll = self.objective(batch)
        return (loss * float("nan") if rank == 1 and self.calls == 4 else loss), nll
training.make_objective = lambda *args: NaNOnRank1AtCall4(make_objective(*args))
with warnings.catch_warnings(record=True) as record:
    warnings.simplefilter("always")
    faulty = FFJORDDensity(**dict(params, max_iter=10, validation_interval=5)).fit(X)
training.make_objective = make_objective
res.update(fault_warnings=[str(w.message) for w in record if "restored" in str(w.message)],
           fault_n_iter=faulty.n_iter_, fault_drift=drift[2:],
           fault_weights=[v.ravel().tolist() for v in faulty.flow_.state_dict().values()])

# Different data on different ranks is refused on every rank (no hang).
try:
    FFJORDDensity(**params).fit(X + rank)
    res["mismatch"] = "accepted"
except ValueError as error:
    res["mismatch"] = str(error)

# SKFLOW_DISTRIBUTED=0: each rank fits on its own.
os.environ["SKFLOW_DISTRIBUTED"] = "0"
own = FFJORDDensity(**dict(params, max_iter=5)).fit(X + rank)
res["local_world_size"] = own.world_size_
(out / f"rank{rank}.json").write_text(json.dumps(res))
'''


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_torchrun(script, args, nproc=2, timeout=300):
    """Run ``script`` under ``torchrun --nproc_per_node=nproc``; kill the whole group on timeout."""
    env = {k: v for k, v in os.environ.items() if k not in ("SKFLOW_DISTRIBUTED", "WORLD_SIZE",
                                                             "RANK", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={_free_port()}",
               str(script), *args]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True, env=env, cwd=REPO, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        output, _ = process.communicate()
        pytest.fail(f"torchrun timed out after {timeout} s:\n{output[-4000:]}")
    assert process.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("torchrun")
    script = out / "dp_script.py"
    script.write_text(DP_SCRIPT)
    run_torchrun(script, [str(out), json.dumps(DP_PARAMS)])
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(2)]


def test_torchrun_helpers(two_ranks):
    r0, r1 = two_ranks
    assert r0["world"] == [0, 2, 0] and r1["world"] == [1, 2, 1]
    assert r0["backend"] == "gloo"  # initialized by setup() from torchrun's variables
    assert r0["shard"] == [0, 2, 4, 6] and r1["shard"] == [1, 3, 5]
    for r in two_ranks:
        assert r["any_rank1"] is True and r["any_none"] is False
        assert r["gathered"] == [[0.0, 0.0], [1.0, 10.0]]
        assert_allclose(r["avg"]["weight"], np.arange(6.0).reshape(2, 3) * 1.5)
        assert r["avg"]["only1"] == [2.0, 2.0]  # the rank without a gradient counts as zero
        assert r["avg"]["unused_is_none"]
        # data-parallel gradient == full-minibatch gradient
        assert r["grad_max_error"] <= 1e-12 * r["grad_scale"]


def test_torchrun_ranks_end_with_the_same_estimator(two_ranks):
    r0, r1 = two_ranks
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["n_iter"] == r1["n_iter"] == DP_PARAMS["max_iter"]
    # every validation (hence every early-stopping decision) saw the same numbers
    assert [h["val_loss"] for h in r0["history"]] == [h["val_loss"] for h in r1["history"]]
    assert r0["history"] == r1["history"]
    # the averaged gradients kept the ranks in lockstep: nothing for the final broadcasts (after
    # fit and after partial_fit) to fix
    assert r0["drift"] == r1["drift"] == [0.0, 0.0]
    assert r0["weights"] == r1["weights"]
    assert r0["scores"] == r1["scores"]
    # partial_fit: one pass over 300 rows in global minibatches of 128 is 3 steps
    assert r0["partial_n_iter"] == r1["partial_n_iter"] == DP_PARAMS["max_iter"] + 3
    assert r0["partial_world_size"] == 2
    assert r0["partial_scores"] == r1["partial_scores"]


def test_torchrun_fault_on_one_rank_is_recovered_by_all(two_ranks):
    r0, r1 = two_ranks
    assert len(r0["fault_warnings"]) == len(r1["fault_warnings"]) == 1
    assert "non-finite loss at iteration 4" in r1["fault_warnings"][0]
    assert "on another rank at iteration 4" in r0["fault_warnings"][0]
    assert r0["fault_n_iter"] == r1["fault_n_iter"] == 10
    assert r0["fault_drift"] == r1["fault_drift"] == [0.0]
    assert r0["fault_weights"] == r1["fault_weights"]


def test_torchrun_refuses_different_data_and_can_be_switched_off(two_ranks):
    for r in two_ranks:
        assert "different X" in r["mismatch"]
        assert r["local_world_size"] == 1


def test_torchrun_fit_matches_single_process_fit(two_ranks):
    X, X_test = bimodal(800, 0), bimodal(400, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        single = FFJORDDensity(**DP_PARAMS).fit(X)
        untrained = FFJORDDensity(**dict(DP_PARAMS, max_iter=1)).fit(X)
    distributed_ll = float(np.mean(two_ranks[0]["scores"]))
    single_ll, untrained_ll = single.score(X_test), untrained.score(X_test)
    # both trained well past the starting point, and to about the same held-out likelihood
    assert single_ll > untrained_ll + 0.5
    assert distributed_ll > untrained_ll + 0.5
    assert abs(distributed_ll - single_ll) < 0.1, (distributed_ll, single_ll)
    # ... but not identically: the ranks drew their own minibatches and probes
    assert two_ranks[0]["scores"] != single.score_samples(X_test).tolist()


CUDA_SCRIPT = r'''
import json, sys, warnings
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import skflow.distributed as D
from skflow import FFJORDDensity

warnings.simplefilter("ignore")
out, params = Path(sys.argv[1]), json.loads(sys.argv[2])
dist.init_process_group("gloo")  # a group the script made itself: fit uses it as it is
drift = []
broadcast = D.torchrun.broadcast_training_state
D.torchrun.broadcast_training_state = (  # where fit looks it up
    lambda *a, **k: drift.append(broadcast(*a, **k)) or drift[-1])
rng = np.random.RandomState(0)
X = np.concatenate([rng.normal(-1.5, 0.5, (400, 2)), rng.normal(1.5, 0.5, (400, 2))])
est = FFJORDDensity(**dict(params, device="cuda")).fit(X[rng.permutation(800)])
X_test = np.concatenate([rng.normal(-1.5, 0.5, (200, 2)), rng.normal(1.5, 0.5, (200, 2))])
res = dict(world_size=est.world_size_, device=est.device_, drift=drift,
           scores=est.score_samples(X_test).tolist(),
           weights=[v.ravel().tolist() for v in est.flow_.state_dict().values()])
(out / f"rank{dist.get_rank()}.json").write_text(json.dumps(res))
'''


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torchrun_cuda_ranks_with_a_gloo_group(tmp_path):
    # Two ranks on the (first) GPU, collectives through gloo: the CUDA tensors' round trip
    # through the collectives, per-rank CUDA generators and device mapping. (NCCL, which fit
    # picks itself under torchrun, needs one GPU per rank.)
    script = tmp_path / "cuda_script.py"
    script.write_text(CUDA_SCRIPT)
    run_torchrun(script, [str(tmp_path), json.dumps(DP_PARAMS)])
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["device"] == r1["device"] == "cuda:0"
    assert r0["weights"] == r1["weights"] and r0["scores"] == r1["scores"]
    assert max(r0["drift"] + r1["drift"]) < 1e-4  # in lockstep up to GPU kernel rounding
    scores = np.array(r0["scores"])  # trained: an untrained flow scores about -3.75 here
    assert np.isfinite(scores).all() and scores.mean() > -3.3


# --------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def client():
    pytest.importorskip("dask")
    distributed = pytest.importorskip("dask.distributed")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cluster = distributed.LocalCluster(n_workers=2, processes=True, threads_per_worker=1,
                                           dashboard_address=None)
        with cluster, distributed.Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def fitted():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return FFJORDDensity(**FAST).fit(bimodal(300, 2))


def test_grid_search_on_a_dask_cluster_matches_local(client):
    import joblib
    from dask.distributed import get_task_stream
    from sklearn.model_selection import GridSearchCV
    X = bimodal(300, 3)
    base = FFJORDDensity(training="likelihood", hidden_dims=(16, 16), solver="rk4", n_steps=4,
                         adjoint=False, max_iter=40, batch_size=128, validation_interval=20,
                         n_iter_no_change=None, random_state=0)
    grid = {"learning_rate": [1e-6, 1e-2]}
    local = GridSearchCV(base, grid, cv=2, refit=False).fit(X)
    with get_task_stream(client) as stream, joblib.parallel_backend("dask"):
        remote = GridSearchCV(base, grid, cv=2, refit=False, n_jobs=-1).fit(X)
    assert len(stream.data) >= 4  # the 2 x 2 fits ran as tasks on the cluster
    assert set(remote.cv_results_) == set(local.cv_results_)
    assert remote.cv_results_["params"] == local.cv_results_["params"]
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        assert_allclose(remote.cv_results_[key], local.cv_results_[key], rtol=1e-6)
    assert_array_equal(remote.cv_results_["rank_test_score"], local.cv_results_["rank_test_score"])
    # a learning rate of 1e-6 barely moves the flow in 40 steps: 1e-2 must win, by a margin
    assert local.best_params_ == remote.best_params_ == {"learning_rate": 1e-2}
    assert np.diff(local.cv_results_["mean_test_score"])[0] > 0.1


def test_score_dask_array_block_by_block(client, fitted):
    da = pytest.importorskip("dask.array")
    X = bimodal(300, 4)
    dX = da.from_array(X, chunks=(70, 1))  # uneven row blocks, split columns
    scores = D.score_dask(fitted, dX)
    assert scores.shape == (300,) and scores.numblocks == (5,)
    # Rows are scored independently: only float32 rounding may differ between block sizes.
    assert_allclose(scores.compute(), fitted.score_samples(X), rtol=0, atol=1e-5)


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
@pytest.mark.parametrize("fit_on_frame", [False, True])
def test_score_dask_dataframe_partition_by_partition(client, fit_on_frame):
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame(bimodal(300, 5), columns=["a", "b"], index=np.arange(300) * 3)
    est = FFJORDDensity(**FAST).fit(frame if fit_on_frame else frame.to_numpy())
    scores = D.score_dask(est, dd.from_pandas(frame, npartitions=3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no feature-name warnings either way
        result = scores.compute()
    assert_array_equal(result.index, frame.index)
    expected = est.score_samples(frame if fit_on_frame else frame.to_numpy())
    assert_allclose(result.to_numpy(), expected, rtol=0, atol=1e-5)


def test_score_dask_rejects_other_input(fitted):
    with pytest.raises(TypeError, match="score_samples"):
        D.score_dask(fitted, np.zeros((3, 2)))


def test_sample_dask_is_reproducible_and_chunked(client, fitted):
    pytest.importorskip("dask.array")
    samples = D.sample_dask(fitted, 250, chunk_size=100, random_state=7)
    assert samples.shape == (250, 2) and samples.chunks == ((100, 100, 50), (2,))
    first, again = samples.compute(), D.sample_dask(fitted, 250, 100, random_state=7).compute()
    assert_array_equal(first, again)
    assert np.isfinite(first).all()
    assert not np.allclose(first[:50], first[100:150])  # the chunks have their own seeds
    other = D.sample_dask(fitted, 250, 100, random_state=8).compute()
    assert not np.allclose(first, other)


def test_fit_stream_over_dask_blocks_equals_partial_fit_loop():
    da = pytest.importorskip("dask.array")
    X = bimodal(1200, 6)
    # Standardized: the quantile map fitted on the first chunk would already give the two
    # modes, leaving the later chunks little to teach.
    params = dict(training="likelihood", hidden_dims=(16, 16), solver="rk4", n_steps=4,
                  adjoint=False, batch_size=50, learning_rate=3e-2, preprocessing="standardize",
                  random_state=0)
    streamed = D.fit_stream(FFJORDDensity(**params), da.from_array(X, chunks=(300, 2)),
                            n_epochs=2)
    assert streamed.n_iter_ == 2 * 4 * 6  # 2 epochs x 4 chunks x 6 minibatches
    assert len(streamed.history_) == 2 * 4  # one record per chunk
    looped = FFJORDDensity(**params)
    for _ in range(2):
        for start in range(0, 1200, 300):
            looped.partial_fit(X[start:start + 300])
    X_test = bimodal(200, 7)
    assert_array_equal(streamed.score_samples(X_test), looped.score_samples(X_test))
    # the later chunks taught the model something the first chunk alone had not
    first_only = FFJORDDensity(**params).partial_fit(X[:300])
    assert streamed.score(X_test) > first_only.score(X_test) + 0.3


def test_fit_stream_dataframe_partitions_and_iterators():
    pd = pytest.importorskip("pandas")
    dd = pytest.importorskip("dask.dataframe")
    frame = pd.DataFrame(bimodal(600, 8), columns=["u", "v"])
    params = dict(hidden_dims=(8,), training="flow_matching", batch_size=100, random_state=0)
    est = D.fit_stream(FFJORDDensity(**params), dd.from_pandas(frame, npartitions=3))
    assert est.n_iter_ == 6 and list(est.feature_names_in_) == ["u", "v"]
    chunks = (frame.to_numpy()[i:i + 200] for i in range(0, 600, 200))
    with pytest.raises(ValueError, match="re-iterable"):
        D.fit_stream(FFJORDDensity(**params), chunks, n_epochs=2)
    assert D.fit_stream(FFJORDDensity(**params), chunks).n_iter_ == 6
