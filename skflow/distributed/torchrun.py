"""Data-parallel training with ``torch.distributed`` (torchrun).

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

Every helper here is a no-op (or returns its input) when the process is not part of a
distributed group, so the training loop calls them unconditionally: single-process training
runs the same code. See docs/scaling.md for the user's view.
"""

from __future__ import annotations

import atexit
import hashlib
import math
import os
from collections.abc import Iterable, Sequence
from typing import NamedTuple, TypeVar

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["WorldInfo", "world_info", "setup", "shard_rows", "average_gradients",
           "any_across_ranks", "gather_values", "broadcast_object", "check_same_data",
           "broadcast_training_state"]

_Rows = TypeVar("_Rows")
_Obj = TypeVar("_Obj")


class WorldInfo(NamedTuple):
    """Where this process stands in the process group.

    Parameters
    ----------
    rank : int
        This process's rank, in ``[0, size)``.
    size : int
        The number of processes (ranks).
    local_rank : int
        The rank on this machine (torchrun's ``LOCAL_RANK``), which picks the GPU.

    Examples
    --------
    >>> WorldInfo(rank=1, size=4, local_rank=1)
    WorldInfo(rank=1, size=4, local_rank=1)
    >>> WorldInfo(0, 1, 0) == (0, 1, 0)
    True
    """

    rank: int
    size: int
    local_rank: int


_SINGLE = WorldInfo(0, 1, 0)


def _disabled() -> bool:
    return os.environ.get("SKFLOW_DISTRIBUTED", "1").strip().lower() in ("0", "false", "no", "off")


def world_info() -> WorldInfo:
    """``WorldInfo(rank, size, local_rank)`` of this process; ``(0, 1, 0)`` when not distributed.

    Distributed means: ``torch.distributed`` is initialized with more than one process and
    ``SKFLOW_DISTRIBUTED`` is not ``0``.

    Returns
    -------
    world : WorldInfo
        This process's rank, the number of ranks and the local rank.

    Examples
    --------
    Outside a process group (a plain ``python`` run):

    >>> world_info()
    WorldInfo(rank=0, size=1, local_rank=0)
    """
    if _disabled() or not (dist.is_available() and dist.is_initialized()):
        return _SINGLE
    size = dist.get_world_size()
    if size == 1:
        return _SINGLE
    rank = dist.get_rank()
    return WorldInfo(rank, size, int(os.environ.get("LOCAL_RANK", rank)))


def _env_world_size() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        return 1


def setup(device: torch.device) -> tuple[WorldInfo, torch.device]:
    """Join the process group torchrun describes, if any; return ``(world_info(), device)``.

    Initializes ``torch.distributed`` from the environment when ``WORLD_SIZE`` > 1 and ``RANK``
    is set and no group exists yet (``gloo`` for a CPU ``device``, ``nccl`` for CUDA), and maps
    a bare ``cuda`` device to this rank's GPU.

    Parameters
    ----------
    device : torch.device
        The device the model trains on.

    Returns
    -------
    world : WorldInfo
        :func:`world_info` after joining.
    device : torch.device
        ``device``, or this rank's GPU for a bare ``cuda`` device in a group of several ranks.

    Examples
    --------
    Without torchrun's variables nothing is initialized and the device is kept:

    >>> import torch
    >>> setup(torch.device("cpu"))
    (WorldInfo(rank=0, size=1, local_rank=0), device(type='cpu'))
    """
    if (not _disabled() and dist.is_available() and not dist.is_initialized()
            and _env_world_size() > 1 and "RANK" in os.environ):
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0"))
                                  % torch.cuda.device_count())
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
        atexit.register(_destroy)  # we made the group, so we tear it down
    world = world_info()
    if world.size > 1 and device.type == "cuda" and device.index is None:
        if "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", world.local_rank % torch.cuda.device_count())
        else:  # a group the script made itself: trust the device it selected
            device = torch.device("cuda", torch.cuda.current_device())
    return world, device


def _destroy() -> None:
    try:
        if dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # pragma: no cover - best effort at interpreter exit
        pass


def _collective_device(tensor_device: torch.device | None = None) -> torch.device:
    """Where a tensor must live for the group's backend."""
    backend = str(dist.get_backend())
    if backend == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    if backend == "gloo" or tensor_device is None:
        return torch.device("cpu")
    return tensor_device  # a multi-backend group (cpu:gloo,cuda:nccl) takes either


def shard_rows(X: _Rows, rank: int | None = None, world_size: int | None = None) -> _Rows:
    """This rank's rows of ``X``: every ``world_size``-th row from ``rank`` on.

    The shards are disjoint, cover ``X`` and differ in size by at most one row. With the
    defaults, the rank and size come from :func:`world_info`.

    Parameters
    ----------
    X : array-like supporting ``X[start::step]`` (ndarray, tensor, list)
        The rows to shard.
    rank : int, optional
        The shard to take, in ``[0, world_size)``; this process's rank when either is None.
    world_size : int, optional
        The number of shards; the number of ranks when either is None.

    Returns
    -------
    shard : same type as X
        ``X[rank::world_size]`` (a view for arrays and tensors); all of ``X`` when not
        distributed.

    Raises
    ------
    ValueError
        If ``rank`` is not in ``[0, world_size)``.

    Examples
    --------
    >>> import numpy as np
    >>> shard_rows(np.arange(7), rank=1, world_size=3)
    array([1, 4])
    >>> shard_rows(np.arange(7))  # one process: every row
    array([0, 1, 2, 3, 4, 5, 6])
    """
    if rank is None or world_size is None:
        world = world_info()
        rank, world_size = world.rank, world.size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}.")
    # A strided slice rather than blocks: the training rows are already shuffled, and the
    # shards then differ in size by at most one row whatever the length.
    return X[rank::world_size]


def _flatten_gradients(parameters: list[torch.Tensor]) -> tuple[torch.Tensor, torch.device]:
    """One buffer on the collective device: every ``.grad`` (zeros where missing), then a
    0/1 flag per parameter saying whether it had a gradient."""
    reference = parameters[0]
    dtype = next((p.grad.dtype for p in parameters if p.grad is not None), reference.dtype)
    device = _collective_device(reference.device)
    pieces = [(p.grad.detach().reshape(-1) if p.grad is not None
               else torch.zeros(p.numel(), dtype=dtype, device=reference.device))
              for p in parameters]
    present = torch.tensor([float(p.grad is not None) for p in parameters], dtype=dtype,
                           device=reference.device)
    return torch.cat([piece.to(dtype) for piece in pieces] + [present]).to(device), device


def _unflatten_gradients(parameters: list[torch.Tensor], buffer: torch.Tensor) -> None:
    offset = 0
    present = (buffer[-len(parameters):] > 0).tolist()
    for i, p in enumerate(parameters):
        n = p.numel()
        if present[i]:
            p.grad = buffer[offset:offset + n].reshape(p.shape).to(device=p.device,
                                                                    dtype=p.dtype, copy=True)
        else:  # no rank had a gradient: keep None so that Adam skips the parameter
            p.grad = None
        offset += n


def average_gradients(parameters: Iterable[torch.Tensor]) -> None:
    """Replace each parameter's ``.grad`` by its mean over the ranks (one all-reduce).

    A rank without a gradient for a parameter counts as a zero gradient; a parameter with no
    gradient on any rank keeps ``.grad = None`` (so Adam still skips it). A no-op when not
    distributed.

    Parameters
    ----------
    parameters : iterable of torch.Tensor
        The parameters whose ``.grad`` to average, in the same order on every rank.

    Returns
    -------
    None
        The gradients are replaced in place.

    Examples
    --------
    Outside a process group the gradients are left as they are:

    >>> import torch
    >>> p = torch.nn.Parameter(torch.zeros(3))
    >>> p.grad = torch.tensor([0.0, 1.0, 2.0])
    >>> average_gradients([p])
    >>> p.grad
    tensor([0., 1., 2.])
    """
    world = world_info()
    parameters = list(parameters)
    if world.size == 1 or not parameters:
        return
    buffer, _ = _flatten_gradients(parameters)
    # One flattened all-reduce per step: these models are small, so bucketing buys nothing.
    dist.all_reduce(buffer)
    buffer /= world.size
    _unflatten_gradients(parameters, buffer)


def any_across_ranks(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (``flag`` when not distributed).

    Parameters
    ----------
    flag : bool
        This rank's flag (anything ``bool`` accepts).

    Returns
    -------
    any : bool
        Whether any rank's ``flag`` is true; the same on every rank.

    Examples
    --------
    Outside a process group this is ``bool(flag)``:

    >>> any_across_ranks(True), any_across_ranks(False)
    (True, False)
    """
    flag = bool(flag)
    if world_info().size == 1:
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int32, device=_collective_device())
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def gather_values(values: Sequence[float] | np.ndarray) -> np.ndarray:
    """All ranks' ``values`` (a list of floats), as an array of shape ``(world_size, len(values))``.

    Every rank receives the same array, so sums or maxima taken from it, in rank order, are the
    same on every rank to the last bit (a floating-point all-reduce gives no such promise).

    Parameters
    ----------
    values : sequence of float
        This rank's values; the same length on every rank.

    Returns
    -------
    gathered : ndarray of shape (world_size, len(values)), dtype float64
        Row ``r`` holds rank ``r``'s values; one row when not distributed.

    Examples
    --------
    >>> gather_values([1.0, 2.0])
    array([[1., 2.]])
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


def broadcast_object(obj: _Obj, src: int = 0) -> _Obj:
    """Rank ``src``'s ``obj`` (any picklable object) on every rank.

    Parameters
    ----------
    obj : picklable object
        This rank's object (only rank ``src``'s is used).
    src : int, default=0
        The rank whose object every rank receives.

    Returns
    -------
    obj : object
        Rank ``src``'s object; ``obj`` itself when not distributed.

    Examples
    --------
    >>> broadcast_object({"seed": 3})
    {'seed': 3}
    """
    if world_info().size == 1:
        return obj
    holder = [obj]
    # NCCL moves the pickled bytes through a CUDA tensor; gloo picks the CPU itself.
    device = _collective_device() if str(dist.get_backend()) == "nccl" else None
    dist.broadcast_object_list(holder, src=src, device=device)
    return holder[0]


def check_same_data(X: np.ndarray) -> None:
    """Raise ``ValueError`` on every rank unless all ranks hold the same array ``X``.

    Parameters
    ----------
    X : ndarray
        This rank's data; its shape, dtype and a digest of its bytes are compared with
        rank 0's.

    Returns
    -------
    None

    Raises
    ------
    ValueError
        On every rank, if any rank's ``X`` differs from rank 0's.

    Examples
    --------
    Outside a process group there is nothing to compare with:

    >>> import numpy as np
    >>> check_same_data(np.zeros((3, 2)))
    """
    if world_info().size == 1:
        return
    X = np.ascontiguousarray(X)
    local = (X.shape, str(X.dtype), hashlib.blake2b(X.view(np.uint8).reshape(-1),
                                                    digest_size=16).hexdigest())
    reference = broadcast_object(local)
    # Decided by an all-reduce, so every rank raises (none is left waiting in a collective).
    if any_across_ranks(local != reference):
        raise ValueError(
            "data-parallel fit: the ranks were given different X. Every rank must call fit with "
            "the same data (each then trains on its own shard of the rows); to fit separate "
            "models per rank, set SKFLOW_DISTRIBUTED=0.")


def _broadcast_tensor_(tensor: torch.Tensor, src: int = 0) -> None:
    device = _collective_device(tensor.device)
    if tensor.device == device:
        dist.broadcast(tensor, src=src)
    else:  # e.g. a CUDA tensor through gloo: round trip through the CPU
        moved = tensor.detach().to(device)
        dist.broadcast(moved, src=src)
        with torch.no_grad():
            tensor.copy_(moved)


def _broadcast_optimizer_state(optimizer: torch.optim.Optimizer, src: int) -> None:
    for group in optimizer.param_groups:
        for p in group["params"]:
            # Sorted keys: every rank must issue the same collectives in the same order.
            for key in sorted(optimizer.state.get(p, {})):
                value = optimizer.state[p][key]
                if isinstance(value, torch.Tensor):
                    _broadcast_tensor_(value, src)


def broadcast_training_state(module: torch.nn.Module,
                             optimizer: torch.optim.Optimizer | None = None,
                             src: int = 0) -> float:
    """Overwrite every rank's module state (and optimizer state) with rank ``src``'s, in place.

    Parameters
    ----------
    module : torch.nn.Module
        The model whose ``state_dict`` tensors are overwritten.
    optimizer : torch.optim.Optimizer, optional
        Its tensor state (Adam's moments, step counts) is overwritten too.
    src : int, default=0
        The rank whose state every rank receives.

    Returns
    -------
    drift : float
        The largest absolute difference this rank's module state had from rank ``src``'s
        before the overwrite (0.0 when the ranks had stayed in lockstep, and when not
        distributed; ``inf`` when a non-float tensor differed).

    Examples
    --------
    >>> import torch
    >>> broadcast_training_state(torch.nn.Linear(2, 1))
    0.0
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
            _broadcast_optimizer_state(optimizer, src)
    return drift
