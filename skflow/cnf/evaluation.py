"""The evaluator: log densities, latents and inverses of a fitted flow, row by row.

Evaluation solves every row with its own adaptive steps and the exact trace (no autograd), so
that a row's result does not depend on the other rows of the call (up to float32 rounding,
about 1e-5 nats, or exactly in float64). One :class:`Evaluator` is built per fitted flow,
device, precision and tolerances; the weights are prepared once (frozen blocks), not per call.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator

import numpy as np
import torch

from .._threads import intra_op_threads, torch_threads
from .flow import ContinuousFlow, standard_normal_log_prob
from .solver import solve_per_row

__all__ = ["Evaluator"]

# What the evaluator takes: a numpy array (copied to the device chunk by chunk) or a tensor.
_ArrayOrTensor = np.ndarray | torch.Tensor


class Evaluator:
    """Exact per-row evaluation of a :class:`~skflow.cnf.flow.ContinuousFlow`.

    Inputs are rows in flow space (after the input map), as a numpy array (copied to the device
    in chunks, so that memory stays bounded) or a tensor; results come back as float64 numpy
    arrays.

    Parameters
    ----------
    flow : ContinuousFlow
        The fitted flow; its current weights are copied, later changes are not seen.
    atol, rtol : float, default=1e-6
        Tolerances of the per-row Dormand-Prince solver.
    max_num_steps : int, default=1000
        Largest number of steps per row and block.
    dtype : torch.dtype, default=torch.float32
        Precision of the solves.
    device : str or torch.device, default='cpu'
        Where the solves run.
    n_threads : int or None, default=None
        torch's intra-op threads during a call (the caller's count is restored after it); None:
        one for tiny work, else the cores other processes leave free (see
        :mod:`skflow._threads`).

    Attributes
    ----------
    chunk_rows : int
        Rows in flight in the solver (see :meth:`rows_in_flight`).

    Examples
    --------
    >>> import numpy as np
    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.evaluation import Evaluator
    >>> flow = ContinuousFlow(2, (8,)).double()  # a new flow is the identity map
    >>> evaluator = Evaluator(flow, dtype=torch.float64)
    >>> Z = np.array([[0.0, 0.0], [1.0, -1.0]])
    >>> evaluator.log_prob(Z).round(4)  # the standard normal's log density
    array([-1.8379, -2.8379])
    >>> bool(np.allclose(evaluator.from_latent(evaluator.to_latent(Z)), Z))
    True
    >>> nfe = evaluator.nfe(Z)  # dynamics evaluations of each row
    >>> nfe.dtype, bool((nfe > 0).all())
    (dtype('int64'), True)
    """

    def __init__(self, flow: ContinuousFlow, atol: float = 1e-6, rtol: float = 1e-6,
                 max_num_steps: int = 1000, dtype: torch.dtype = torch.float32,
                 device: str | torch.device = "cpu", n_threads: int | None = None) -> None:
        self.atol, self.rtol, self.max_num_steps = atol, rtol, max_num_steps
        self.dtype, self.device = dtype, torch.device(device)
        blocks = copy.deepcopy(flow.blocks).to(device=self.device, dtype=dtype)
        self.blocks = [block.frozen() for block in blocks]
        width = max(layer.linear.out_features for layer in blocks[0].net.layers)
        self.chunk_rows = self.rows_in_flight(flow.n_features, width, dtype, self.device)
        self.n_threads, self.width = n_threads, width

    @staticmethod
    def rows_in_flight(n_features: int, width: int, dtype: torch.dtype,
                       device: torch.device) -> int:
        """Rows the solver integrates together (its ``max_rows``).

        The exact trace carries ``n_features`` tangents of a hidden layer per row (twice: forward
        from the input and back from the output). On a CPU, batches whose tangent arrays stay
        within about 2 MiB run fastest (``benchmarks/results/evaluation.md``: 20,000 rows, 10
        features, width 64, float32, seconds by rows in flight: 256 rows 4.00, 409 rows 3.68,
        820 rows 3.48, 1024 rows 3.40, 2048 rows 3.85). A GPU wants large batches.
        """
        tangent_bytes = n_features * width * torch.finfo(dtype).bits // 8
        if device.type == "cpu":
            return min(8192, max(64, 2 ** 21 // tangent_bytes))
        return max(256, 2 ** 26 // tangent_bytes)

    def _chunks(self, Z: _ArrayOrTensor) -> Iterator[torch.Tensor]:
        # The solver keeps chunk_rows rows in flight and refills its batch as rows finish; the
        # input chunks only bound the memory of the copies (a numpy input may be read-only or a
        # memory map: each chunk is copied).
        rows = max(2 ** 16, 8 * self.chunk_rows)
        for start in range(0, Z.shape[0], rows):
            chunk = Z[start:start + rows]
            if torch.is_tensor(chunk):
                yield chunk.to(device=self.device, dtype=self.dtype)
            elif self.device.type == "cuda":  # from pinned memory: a copy the GPU can overlap
                staged = torch.tensor(np.asarray(chunk), dtype=self.dtype).pin_memory()
                yield staged.to(self.device, non_blocking=True)
            else:
                yield torch.tensor(np.asarray(chunk), dtype=self.dtype, device=self.device)

    def _gather(self, Z: _ArrayOrTensor, evaluate: Callable[[torch.Tensor], torch.Tensor],
                width: int | None) -> np.ndarray:
        shape = (Z.shape[0],) if width is None else (Z.shape[0], width)
        # A call of a few batches takes less time than measuring the machine's load (0.1 s):
        # one thread, unless asked for more.
        rows = self.chunk_rows if Z.shape[0] >= 4 * self.chunk_rows else 0
        threads = intra_op_threads(self.n_threads, rows, self.width)
        with torch.no_grad(), torch_threads(threads):
            parts = [evaluate(chunk).cpu().double() for chunk in self._chunks(Z)]
        return torch.cat(parts).numpy() if parts else np.empty(shape)

    def _solve(self, func: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
               reverse: bool = False, nfe: torch.Tensor | None = None) -> torch.Tensor:
        return solve_per_row(func, z, self.atol, self.rtol, reverse=reverse,
                             max_num_steps=self.max_num_steps, nfe=nfe, max_rows=self.chunk_rows)

    def _log_prob_chunk(self, z: torch.Tensor, nfe: torch.Tensor | None = None) -> torch.Tensor:
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for frozen in self.blocks:

            def func(s, y, frozen=frozen):
                velocity, div = frozen.velocity_and_divergence(s, y[:, :-1])
                return torch.cat([velocity, div[:, None]], dim=1)

            y1 = self._solve(func, torch.cat([z, torch.zeros_like(log_det)[:, None]], dim=1),
                             nfe=nfe)
            z, log_det = y1[:, :-1], log_det + y1[:, -1]
        return standard_normal_log_prob(z.double()) + log_det.double()

    def _to_latent_chunk(self, z: torch.Tensor) -> torch.Tensor:
        for frozen in self.blocks:
            z = self._solve(frozen.velocity, z)
        return z

    def _from_latent_chunk(self, z: torch.Tensor) -> torch.Tensor:
        for frozen in reversed(self.blocks):
            z = self._solve(frozen.velocity, z, reverse=True)
        return z

    def log_prob(self, Z: _ArrayOrTensor) -> np.ndarray:
        """Log density of each row of ``Z`` (flow space) under the flow: shape ``(n,)``."""
        return self._gather(Z, self._log_prob_chunk, None)

    def nfe(self, Z: _ArrayOrTensor) -> np.ndarray:
        """Dynamics evaluations that each row of ``Z`` needs for :meth:`log_prob`, all blocks."""

        def count(chunk: torch.Tensor) -> torch.Tensor:
            nfe = torch.zeros(chunk.shape[0], dtype=torch.long, device=chunk.device)
            self._log_prob_chunk(chunk, nfe=nfe)
            return nfe

        return self._gather(Z, count, None).astype(np.int64)

    def to_latent(self, Z: _ArrayOrTensor) -> np.ndarray:
        """Flow space to latent, every block integrated forward: shape ``(n, d)``."""
        return self._gather(Z, self._to_latent_chunk, Z.shape[1])

    def from_latent(self, Z: _ArrayOrTensor) -> np.ndarray:
        """Latent to flow space, every block integrated backward: shape ``(n, d)``."""
        return self._gather(Z, self._from_latent_chunk, Z.shape[1])
