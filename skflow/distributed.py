"""Scaling out: data-parallel training with ``torch.distributed``, and Dask helpers.

Data-parallel training
----------------------
A script that calls ``FFJORDDensity(...).fit(X)`` trains data-parallel when it runs in
several processes that form a ``torch.distributed`` process group, typically::

    torchrun --nproc_per_node=4 my_script.py

When the process group is not initialized but torchrun's variables say there are several
processes (``WORLD_SIZE`` > 1 and ``RANK`` set), ``fit`` initializes it itself: ``gloo`` when
training on the CPU, ``nccl`` on CUDA (each process then uses the GPU ``cuda:LOCAL_RANK``). A
group that the script initialized itself is used as it is. Set ``SKFLOW_DISTRIBUTED=0`` to make
``fit`` ignore the process group and train in each process on its own (for instance to fit
different models in different ranks).

All ranks must call ``fit`` with the same ``X`` (checked: a digest of ``X`` is compared across
ranks) and the same parameters. Then:

* all ranks draw the seed and the validation split of rank 0, so they hold out the same rows;
* each rank trains on its shard of the training rows (every ``world_size``-th row of the
  shuffled training set, :func:`shard_rows`), with a minibatch of ``batch_size // world_size``
  rows, so that the global minibatch is ``batch_size``;
* the Hutchinson probes and minibatch orders come from a generator seeded with ``seed + rank``,
  so that the ranks draw different noise (and ``'ot_flow_matching'`` pairs data and noise
  within each rank's share of the minibatch);
* after ``backward`` the gradients are averaged over the ranks (:func:`average_gradients`),
  which, the per-rank losses being means over equally large minibatches, is the gradient of the
  global minibatch's loss; every rank then takes the same Adam step;
* the validation set is sharded too: each rank scores its shard and the sums are gathered, so
  validation is also ``world_size`` times cheaper per rank; every early-stopping and
  fault-recovery decision is taken from gathered or all-reduced values
  (:func:`any_across_ranks` for a non-finite loss or gradient or a failed solve on any rank),
  so all ranks take the same branch and no rank is left waiting in a collective;
* at the end, rank 0's weights and optimizer state are broadcast, so that every rank holds the
  same fitted estimator (they already agree when the collectives are deterministic, as gloo's
  and NCCL's all-reduce are in practice); ``world_size_`` records the number of ranks.

Why a plain all-reduce of the gradients rather than ``DistributedDataParallel``: DDP's reducer
fires its all-reduces from hooks *during* ``backward`` and expects the training forward to go
through the wrapped module's ``forward``. Here the likelihood forward goes through
``torchdiffeq.odeint_adjoint`` over several blocks (the adjoint backward evaluates each block's
network many times, which DDP reports as a parameter marked ready twice unless the graph is
declared static), flow matching calls ``block.velocity`` directly, and a solve may fail on one
rank in the middle of ``backward`` (``max_num_steps``), which would leave the other ranks
blocked inside DDP's bucket all-reduce. Averaging the ``.grad`` of every parameter in one
flattened all-reduce after ``backward`` is mathematically the same update, costs one
collective per step (these models have thousands to a few hundred thousand parameters, so
bucketing and overlap buy little), and lets the fault check come first. Ctrl-C in one rank is
not coordinated (torchrun stops all ranks), nor is an error raised in one rank alone (out of
memory, say): the others wait in their next collective until the process group's timeout.

Dask
----
:func:`score_dask` scores a Dask array or DataFrame block by block, :func:`sample_dask` draws a
Dask array of samples, and :func:`fit_stream` feeds chunks (a Dask collection or any iterable
of arrays) to ``partial_fit`` one at a time. Dask is an optional dependency
(``pip install skflow[distributed]``), imported only by these functions. Model selection on a
cluster needs no helper: run ``GridSearchCV(...).fit`` inside
``joblib.parallel_backend("dask")`` with a ``dask.distributed.Client``; see docs/scaling.md.
"""

import atexit
import hashlib
import math
import os
from collections import namedtuple

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["WorldInfo", "world_info", "setup", "shard_rows", "average_gradients",
           "any_across_ranks", "gather_values", "broadcast_object", "check_same_data",
           "broadcast_training_state", "score_dask", "sample_dask", "fit_stream"]

WorldInfo = namedtuple("WorldInfo", ["rank", "size", "local_rank"])

_SINGLE = WorldInfo(0, 1, 0)


def _disabled():
    return os.environ.get("SKFLOW_DISTRIBUTED", "1").strip().lower() in ("0", "false", "no", "off")


def world_info():
    """``WorldInfo(rank, size, local_rank)`` of this process; ``(0, 1, 0)`` when not distributed.

    Distributed means: ``torch.distributed`` is initialized with more than one process and
    ``SKFLOW_DISTRIBUTED`` is not ``0``.
    """
    if _disabled() or not (dist.is_available() and dist.is_initialized()):
        return _SINGLE
    size = dist.get_world_size()
    if size == 1:
        return _SINGLE
    rank = dist.get_rank()
    return WorldInfo(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


def _env_world_size():
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device):
    """Join the process group torchrun describes, if any; return ``(world_info(), device)``.

    Initializes ``torch.distributed`` from the environment when ``WORLD_SIZE`` > 1 and ``RANK``
    is set and no group exists yet (``gloo`` for a CPU ``device``, ``nccl`` for CUDA), and maps
    a bare ``cuda`` device to this rank's GPU.
    """
    if (not _disabled() and dist.is_available() and not dist.is_initialized()
            and _env_world_size() > 1 and "RANK" in os.environ):
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0"))
                                  % torch.cuda.device_count())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        atexit.register(_destroy)
    world = world_info()
    if world.size > 1 and device.type == "cuda" and device.index is None:
        if "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        else:
            device = torch.device("cuda", torch.cuda.current_device())
    return world, device


def _destroy():
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at interpreter exit
        pass


def _collective_device(tensor_device=None):
    """Where a tensor must live for the group's backend."""
    backend = str(dist.get_backend())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo" or tensor_device is None:
        return torch.device("cpu")
    return tensor_device  # a multi-backend group (cpu:gloo,cuda:nccl) takes either


def shard_rows(X, rank=None, world_size=None):
    """This rank's rows of ``X``: every ``world_size``-th row from ``rank`` on.

    The shards are disjoint, cover ``X`` and differ in size by at most one row. With the
    defaults, the rank and size come from :func:`world_info`.
    """
    if rank is None or world_size is None:
        world = world_info()
        rank, world_size = world.rank, world.size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    return X[rank::world_size]


def average_gradients(parameters):
    """Replace each parameter's ``.grad`` by its mean over the ranks (one all-reduce).

    A rank without a gradient for a parameter counts as a zero gradient; a parameter with no
    gradient on any rank keeps ``.grad = None`` (so Adam still skips it). A no-op when not
    distributed.
    """
    world = world_info()
    parameters = list(parameters)
    if world.size == 1 or not parameters:
        return
    reference = parameters[0]
    dtype = next((p.grad.dtype for p in parameters if p.grad is not None), reference.dtype)
    device = _collective_device(reference.device)
    pieces = [(p.grad.detach().reshape(-1) if p.grad is not None
               else torch.zeros(p.numel(), dtype=dtype, device=reference.device))
              for p in parameters]
    present = torch.tensor([float(p.grad is not None) for p in parameters], dtype=dtype,
                           device=reference.device)
    buffer = torch.cat([piece.to(dtype) for piece in pieces] + [present]).to(device)
    dist.all_reduce(buffer)
    buffer /= world.size
    offset = 0
    present = (buffer[-len(parameters):] > 0).tolist()
    for i, p in enumerate(parameters):
        n = p.numel()
        if present[i]:
            p.grad = buffer[offset:offset + n].reshape(p.shape).to(device=p.device,
                                                                    dtype=p.dtype, copy=True)
        else:
            p.grad = None
        offset += n


def any_across_ranks(flag):
    """True on every rank when ``flag`` is true on any rank (``flag`` when not distributed)."""
    flag = bool(flag)
    if world_info().size == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_values(values):
    """All ranks' ``values`` (a list of floats), as an array of shape ``(world_size, len(values))``.

    Every rank receives the same array, so sums or maxima taken from it, in rank order, are the
    same on every rank to the last bit (a floating-point all-reduce gives no such promise).
    """
    values = np.asarray(values, dtype=np.float64).reshape(-1)
    world = world_info()
    if world.size == 1:
        return values[None, :]
    device = _collective_device()
    local = torch.as_tensor(values, dtype=torch.float64, device=device)
    gathered = [torch.empty_like(local) for _ in range(world.size)]
    dist.all_gather(gathered, local)
    return torch.stack(gathered).cpu().numpy()


def broadcast_object(obj, src=0):
    """Rank ``src``'s ``obj`` (any picklable object) on every rank."""
    if world_info().size == 1:
        return obj
    holder = [obj]
    device = _collective_device() if str(dist.get_backend()) == "nccl" else None
    dist.broadcast_object_list(holder, src=src, device=device)
    return holder[0]


def check_same_data(X):
    """Raise ``ValueError`` on every rank unless all ranks hold the same array ``X``."""
    if world_info().size == 1:
        return
    X = np.ascontiguousarray(X)
    local = (X.shape, str(X.dtype), hashlib.blake2b(X.view(np.uint8).reshape(-1),
                                                    digest_size=16).hexdigest())
    reference = broadcast_object(local)
    if any_across_ranks(local != reference):
        raise ValueError(
            "data-parallel fit: the ranks were given different X. Every rank must call fit with "
            "the same data (each then trains on its own shard of the rows); to fit separate "
            "models per rank, set SKFLOW_DISTRIBUTED=0.")


def _broadcast_tensor_(tensor, src=0):
    device = _collective_device(tensor.device)
    if tensor.device == device:
        dist.broadcast(tensor, src=src)
    else:
        moved = tensor.detach().to(device)
        dist.broadcast(moved, src=src)
        with torch.no_grad():
            tensor.copy_(moved)


def broadcast_training_state(module, optimizer=None, src=0):
    """Overwrite every rank's module state (and optimizer state) with rank ``src``'s, in place.

    Returns the largest absolute difference this rank's module state had from rank ``src``'s
    before the overwrite (0.0 when the ranks had stayed in lockstep, and when not distributed).
    """
    if world_info().size == 1:
        return 0.0
    drift = 0.0
    with torch.no_grad():
        for tensor in module.state_dict().values():
            before = tensor.detach().clone()
            _broadcast_tensor_(tensor, src)
            if before.is_floating_point() and before.numel():
                drift = max(drift, float((before - tensor).abs().max()))
            elif not torch.equal(before, tensor):
                drift = math.inf
        if optimizer is not None:
            for group in optimizer.param_groups:
                for p in group["params"]:
                    for key in sorted(optimizer.state.get(p, {})):
                        value = optimizer.state[p][key]
                        if isinstance(value, torch.Tensor):
                            _broadcast_tensor_(value, src)
    return drift


# --------------------------------------------------------------------------- Dask helpers
def _is_dask_array(X):
    try:
        import dask.array as da
    except ImportError:
        return False
    return isinstance(X, da.Array)


def _is_dask_dataframe(X):
    if not type(X).__module__.startswith("dask"):
        return False
    return hasattr(X, "map_partitions") and hasattr(X, "partitions")


def _score_block(block, estimator):
    return estimator.score_samples(block)


def _score_partition(part, estimator):
    import pandas as pd
    data = part if hasattr(estimator, "feature_names_in_") else part.to_numpy()
    return pd.Series(estimator.score_samples(data), index=part.index, dtype="float64")


def score_dask(estimator, X):
    """Lazily score a Dask collection with a fitted estimator, one block at a time.

    Parameters
    ----------
    estimator : fitted estimator with ``score_samples`` (e.g. FFJORDDensity)
        Shipped to the workers with the task graph.
    X : dask.array.Array of shape (n_samples, n_features) or dask.dataframe.DataFrame
        The rows to score. An array split along its columns is first rechunked to whole rows.

    Returns
    -------
    log_density : dask.array.Array of shape (n_samples,) or dask.dataframe.Series
        ``estimator.score_samples`` of each row, computed block by block (``map_blocks``) or
        partition by partition (``map_partitions``); call ``.compute()`` or write it out.
    """
    from sklearn.utils.validation import check_is_fitted
    check_is_fitted(estimator)
    if _is_dask_array(X):
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D Dask array, got {X.ndim} dimension(s).")
        if X.numblocks[1] > 1:
            X = X.rechunk({1: -1})
        return X.map_blocks(_score_block, estimator, drop_axis=1, dtype=np.float64,
                            meta=np.empty((0,), dtype=np.float64))
    if _is_dask_dataframe(X):
        return X.map_partitions(_score_partition, estimator, meta=("log_density", "float64"))
    raise TypeError(f"score_dask expects a Dask array or DataFrame, got {type(X).__name__}; "
                    "call estimator.score_samples for data in memory.")


def _chunk_seeds(random_state, n_chunks):
    if isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(np.iinfo(np.int32).max))
    children = np.random.SeedSequence(random_state).spawn(n_chunks)
    return [int(child.generate_state(1)[0]) for child in children]


def sample_dask(estimator, n_samples, chunk_size=10_000, random_state=None):
    """Draw ``n_samples`` samples as a Dask array, ``chunk_size`` rows per independent task.

    Each chunk is ``estimator.sample(rows, random_state=seed)`` with its own seed, spawned from
    ``random_state`` by :class:`numpy.random.SeedSequence`, so the result is reproducible for an
    integer ``random_state`` whatever the cluster, and no two chunks share a seed.
    """
    import dask
    import dask.array as da
    from sklearn.utils.validation import check_is_fitted
    check_is_fitted(estimator)
    if int(n_samples) < 1 or int(chunk_size) < 1:
        raise ValueError("n_samples and chunk_size must be positive integers.")
    n_samples, chunk_size = int(n_samples), int(chunk_size)
    sizes = [min(chunk_size, n_samples - start) for start in range(0, n_samples, chunk_size)]
    seeds = _chunk_seeds(random_state, len(sizes))
    draw = dask.delayed(lambda est, n, seed: est.sample(n, random_state=seed), pure=True)
    blocks = [da.from_delayed(draw(estimator, n, seed), shape=(n, estimator.n_features_in_),
                              dtype=np.float64) for n, seed in zip(sizes, seeds)]
    return da.concatenate(blocks, axis=0)


def _iter_chunks(chunks):
    if _is_dask_array(chunks):
        if chunks.ndim != 2:
            raise ValueError("a Dask array of chunks must be 2-D.")
        for block in chunks.rechunk({1: -1}).to_delayed().ravel():
            yield block.compute()
    elif _is_dask_dataframe(chunks):
        for i in range(chunks.npartitions):
            yield chunks.get_partition(i).compute()
    else:
        yield from chunks


def fit_stream(estimator, chunks, n_epochs=1):
    """Train with ``partial_fit`` on one chunk at a time; return the estimator.

    ``chunks`` is a Dask array (one block of rows at a time), a Dask DataFrame (one partition at
    a time) or any iterable of arrays; only one chunk is in memory at once. With ``n_epochs`` >
    1 the chunks are visited again, so they must be re-iterable (not a one-shot generator).
    """
    n_epochs = int(n_epochs)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be a positive integer, got {n_epochs}.")
    if n_epochs > 1 and iter(chunks) is chunks:
        raise ValueError("n_epochs > 1 needs re-iterable chunks (a list or a Dask collection), "
                         "not a one-shot iterator.")
    for _ in range(n_epochs):
        for chunk in _iter_chunks(chunks):
            estimator.partial_fit(chunk)
    return estimator
