"""ODE solvers: torchdiffeq for training, a per-row adaptive Dormand-Prince solver for evaluation.

All solver options live in :class:`SolverConfig`. Every solve runs over the block's own time
``s`` from 0 (data side) to 1 (latent side), or back.

Why two solvers: torchdiffeq's adaptive solvers take one step size for the whole batch, so a
row's result depends on its batch-mates. That is fine for training (a minibatch is one sample of
the loss), but a density model must give a row the same log density whatever else is in the
call. The evaluation solver below keeps a time, a step size and an error test per row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchdiffeq
from torch import nn

from ..exceptions import SolverError

__all__ = ["ADAPTIVE_METHODS", "FIXED_GRID_METHODS", "SolverConfig", "fixed_grid_solve",
           "integrate", "solve_per_row"]

# The dynamics of the per-row solver: ``func(s, y)``, ``s`` a column of one time per row.
_RowFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# The torchdiffeq methods that the training solves accept.
FIXED_GRID_METHODS = ("euler", "midpoint", "rk4")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")


@dataclass(frozen=True)
class SolverConfig:
    """How one solve is carried out.

    Parameters
    ----------
    method : str, default='dopri5'
        A torchdiffeq method, one of :data:`FIXED_GRID_METHODS` or :data:`ADAPTIVE_METHODS`.
    atol, rtol : float, default=1e-5
        Tolerances of the adaptive methods.
    n_steps : int, default=8
        Number of steps of the fixed-grid methods.
    max_num_steps : int, default=1000
        Adaptive methods stop with :class:`~skflow.exceptions.SolverError` after this many steps.
    adjoint : bool, default=True
        Adjoint gradients (``odeint_adjoint``) rather than direct backpropagation through the
        solver.

    Examples
    --------
    >>> from skflow.cnf.solver import SolverConfig
    >>> config = SolverConfig(method="rk4", n_steps=4)
    >>> config.fixed_grid, config.options()
    (True, {'step_size': 0.25})
    >>> SolverConfig().options()
    {'max_num_steps': 1000}
    """

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    n_steps: int = 8
    max_num_steps: int = 1000
    adjoint: bool = True

    @property
    def fixed_grid(self) -> bool:
        """Whether :attr:`method` takes fixed steps."""
        return self.method in FIXED_GRID_METHODS

    def options(self) -> dict[str, float | int]:
        """The ``options`` that torchdiffeq takes for :attr:`method`."""
        if self.fixed_grid:
            return {"step_size": 1.0 / self.n_steps}
        return {"max_num_steps": self.max_num_steps}


def integrate(func: nn.Module, state: tuple[torch.Tensor, ...], config: SolverConfig,
              reverse: bool = False) -> tuple[torch.Tensor, ...]:
    """Integrate a tuple ``state`` under ``func(s, state)`` over ``s`` in [0, 1] with torchdiffeq.

    Parameters
    ----------
    func : torch.nn.Module
        ``func(s, state)``, the time derivative of every component of ``state``, ``s`` a scalar
        shared by the batch. A module, so that the adjoint finds its parameters.
    state : tuple of torch.Tensor
        The state at the start.
    config : SolverConfig
        Method, tolerances or steps, and how gradients are taken.
    reverse : bool, default=False
        Integrate from ``s = 1`` back to 0.

    Returns
    -------
    tuple of torch.Tensor
        The state at the end.

    Raises
    ------
    SolverError
        When torchdiffeq gives up (step size underflow, too many steps).

    Examples
    --------
    >>> import math
    >>> import torch
    >>> from skflow.cnf.solver import SolverConfig, integrate
    >>> class Decay(torch.nn.Module):
    ...     def forward(self, s, state):
    ...         return (-state[0],)
    >>> config = SolverConfig(atol=1e-9, rtol=1e-9, adjoint=False)
    >>> (y1,) = integrate(Decay(), (torch.ones(2, dtype=torch.float64),), config)
    >>> bool(torch.allclose(y1, torch.full_like(y1, math.exp(-1))))  # y(1) = y(0) / e
    True
    """
    if config.fixed_grid and not config.adjoint:  # direct backprop: no host synchronisation
        return fixed_grid_solve(func, state, config.method, config.n_steps, reverse)
    times = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=state[0].dtype,
                         device=state[0].device)
    kwargs = dict(method=config.method, atol=config.atol, rtol=config.rtol,
                  options=config.options())
    try:
        if config.adjoint:
            # The seminorm drops the parameter adjoints from the backward step-size control
            # (Kidger et al. 2021): fewer backward evaluations for the same gradients.
            adjoint_options = dict(config.options(), norm="seminorm")
            solution = torchdiffeq.odeint_adjoint(func, state, times,
                                                  adjoint_options=adjoint_options, **kwargs)
        else:
            solution = torchdiffeq.odeint(func, state, times, **kwargs)
    except AssertionError as error:  # torchdiffeq reports "underflow in dt" and step limits so
        raise SolverError(str(error)) from error
    return tuple(component[-1] for component in solution)


_State = tuple[torch.Tensor, ...]
# torchdiffeq's fixed-grid methods as explicit Runge-Kutta tableaus: the later stages' times
# and weights of the earlier stages, and the step's weights (its 'rk4' is the 3/8 rule).
_FIXED_GRID_TABLEAUS = {
    "euler": ((), (), (1.0,)),
    "midpoint": ((0.5,), ((0.5,),), (0.0, 1.0)),
    "rk4": ((1 / 3, 2 / 3, 1.0), ((1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0)),
            (1 / 8, 3 / 8, 3 / 8, 1 / 8)),
}


def _combined(state: _State, h: torch.Tensor, weights: tuple[float, ...],
              stages: list[_State]) -> _State:
    """``state + h * sum_i weights[i] * stages[i]``, component by component."""
    return tuple(y + h * sum(w * stage[i] for w, stage in zip(weights, stages))
                 for i, y in enumerate(state))


def fixed_grid_solve(func: Callable[[torch.Tensor, _State], _State], state: _State, method: str,
                     n_steps: int, reverse: bool = False) -> _State:
    """Integrate a tuple ``state`` under ``func(s, state)`` over ``s`` in [0, 1] in ``n_steps``
    equal steps of :data:`FIXED_GRID_METHODS` ``method``, as torchdiffeq's methods step (its
    ``'rk4'`` is the 3/8 rule).

    torchdiffeq's fixed-grid solver reads its grid and compares times on the host; this loop
    reads nothing back, so that a training step built on it can be captured as a CUDA graph.
    Gradients are by direct backpropagation.

    Examples
    --------
    >>> import math
    >>> import torch
    >>> from skflow.cnf.solver import fixed_grid_solve
    >>> y0 = (torch.ones(2, dtype=torch.float64),)
    >>> (y1,) = fixed_grid_solve(lambda s, state: (-state[0],), y0, "rk4", 8)
    >>> bool(torch.allclose(y1, torch.full_like(y1, math.exp(-1)), atol=1e-6))
    True
    """
    if method not in FIXED_GRID_METHODS:
        raise ValueError(f"method must be one of {FIXED_GRID_METHODS}, got {method!r}")
    times, stage_weights, step_weights = _FIXED_GRID_TABLEAUS[method]
    first = state[0]
    start, end = (1.0, 0.0) if reverse else (0.0, 1.0)
    grid = (torch.arange(n_steps + 1, dtype=first.dtype, device=first.device)
            * ((end - start) / n_steps) + start)
    grid[-1] = end
    for s0, s1 in zip(grid[:-1], grid[1:]):
        h = s1 - s0
        stages = [func(s0, state)]
        for c, weights in zip(times, stage_weights):
            stages.append(func(s0 + c * h, _combined(state, h, weights, stages)))
        state = _combined(state, h, step_weights, stages)
    return state


# Dormand-Prince 5(4) tableau.
_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0)
_A = (
    (),
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
    (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84),
)
_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
_B_ERR = tuple(b - b_star for b, b_star in zip(
    _B, (5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40)))


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.pow(2).mean(-1).sqrt()


def _initial_step(func: _RowFn, t: torch.Tensor, y: torch.Tensor, f0: torch.Tensor, atol: float,
                  rtol: float, direction: float) -> torch.Tensor:
    """Per-row starting step (Hairer, Norsett & Wanner, II.4)."""
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale), _rms(f0 / scale)
    h0 = torch.where((d0 < 1e-5) | (d1 < 1e-5), torch.full_like(d0, 1e-6), 0.01 * d0 / d1)
    h0 = h0.clamp(max=1.0)
    f1 = func(t + direction * h0[:, None], y + direction * h0[:, None] * f0)
    d2 = _rms((f1 - f0) / scale) / h0
    big = torch.maximum(d1, d2)
    h1 = torch.where(big <= 1e-15, torch.maximum(torch.full_like(h0, 1e-6), h0 * 1e-3),
                     (0.01 / big).pow(1 / 5))
    return torch.minimum(100 * h0, h1).clamp(max=1.0)


def _tableau(like: torch.Tensor) -> torch.Tensor:
    """Stage combinations as one matrix: row ``i < 7`` builds stage ``i`` (the last stage is
    evaluated at the 5th-order solution, first-same-as-last); row 7 is the error estimate."""
    tableau = torch.zeros(len(_C) + 1, len(_C), dtype=like.dtype, device=like.device)
    for i, a in enumerate(_A[1:], start=1):
        tableau[i, :len(a)] = torch.tensor(a, dtype=like.dtype)
    tableau[-1] = torch.tensor(_B_ERR, dtype=like.dtype)
    return tableau


class _Rows:
    """The rows in flight: their indices, times, states, derivatives, step sizes, step counts."""

    def __init__(self, y0: torch.Tensor, t0: torch.Tensor, f0: torch.Tensor,
                 h0: torch.Tensor) -> None:
        self.t0, self.y0, self.f0, self.h0 = t0, y0, f0, h0
        self.index = torch.arange(0, device=y0.device)
        self.t, self.y, self.f, self.h = t0[:0], y0[:0], f0[:0], h0[:0]
        self.steps = torch.zeros(0, dtype=torch.long, device=y0.device)
        self.admitted = 0

    def admit(self, capacity: int) -> None:
        """Let waiting rows take the free places, up to ``capacity`` rows in flight."""
        take = min(capacity - self.index.numel(), self.y0.shape[0] - self.admitted)
        if take <= 0:
            return
        part = slice(self.admitted, self.admitted + take)
        self.admitted += take
        new = torch.arange(part.start, part.stop, device=self.y0.device)
        self.index, self.t = torch.cat([self.index, new]), torch.cat([self.t, self.t0[part]])
        self.y, self.f = torch.cat([self.y, self.y0[part]]), torch.cat([self.f, self.f0[part]])
        self.h = torch.cat([self.h, self.h0[part]])
        self.steps = torch.cat([self.steps, torch.zeros_like(new)])

    def keep(self, mask: torch.Tensor) -> None:
        """Keep only the rows in flight where ``mask`` is true."""
        self.index, self.t, self.y, self.f, self.h, self.steps = (
            self.index[mask], self.t[mask], self.y[mask], self.f[mask], self.h[mask],
            self.steps[mask])


def _starting_points(func: _RowFn, y0: torch.Tensor, atol: float, rtol: float, direction: float,
                     batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every row's first derivative and starting step, computed in calls of ``batch`` rows, so
    that rows can later join the batch one by one."""
    n = y0.shape[0]
    t0 = torch.full((n, 1), 0.0 if direction > 0 else 1.0, dtype=y0.dtype, device=y0.device)
    f0, h0 = torch.empty_like(y0), y0.new_empty(n)
    for start in range(0, n, batch):
        part = slice(start, start + batch)
        f0[part] = func(t0[part], y0[part])
        h0[part] = _initial_step(func, t0[part], y0[part], f0[part], atol, rtol, direction)
    return t0, f0, h0


def _dopri_step(func: _RowFn, rows: _Rows, tableau: torch.Tensor, atol: float, rtol: float,
                direction: float, t_end: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One Dormand-Prince step of every row in flight, each with its own step size; accepted
    steps advance, and every row's step size is adapted to its own error. Returns which rows
    finished and whether the new states are all finite (a tensor: nothing here waits for the
    device)."""
    t, y, f = rows.t, rows.y, rows.f
    h = torch.minimum(rows.h, (t_end - t[:, 0]) * direction)
    hh = (direction * h)[:, None]
    stages = torch.empty((len(_C),) + tuple(y.shape), dtype=y.dtype, device=y.device)
    stages[0] = f
    flat = stages.view(len(_C), -1)
    for i in range(1, len(_C)):
        y_stage = torch.addcmul(y, hh, (tableau[i, :i] @ flat[:i]).view_as(y))
        stages[i] = func(t + _C[i] * hh, y_stage)
    y_new = y_stage  # _A[-1] == _B
    finite = torch.isfinite(y_new).all()
    error = hh * (tableau[-1] @ flat).view_as(y)
    scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
    error_ratio = _rms(error / scale)
    accept = error_ratio <= 1.0
    rows.t = torch.where(accept[:, None], t + hh, t)
    rows.y = torch.where(accept[:, None], y_new, y)
    rows.f = torch.where(accept[:, None], stages[-1], f)  # first-same-as-last
    factor = (0.9 * error_ratio.clamp(min=1e-10).pow(-0.2)).clamp(0.2, 10.0)
    rows.h = h * torch.where(accept, factor, factor.clamp(max=1.0))
    rows.steps += 1
    done = accept & ((t_end - rows.t[:, 0]) * direction <= 1e-12 * max(1.0, abs(t_end)))
    return done, finite


def _step_report(rows: _Rows, done: torch.Tensor, finite: torch.Tensor,
                 max_num_steps: int) -> list[bool]:
    """Whether the state stayed finite, whether some rows finished, and whether any row still in
    flight ran out of steps or its step size underflowed: read in one transfer from the device,
    so that a step waits for it once (on a GPU each wait costs a round trip)."""
    running = ~done
    return torch.stack([finite, done.any(), ((rows.steps >= max_num_steps) & running).any(),
                        ((rows.h < 1e-12) & running).any()]).tolist()


def _check_progress(finite: bool, out_of_steps: bool, underflow: bool,
                    max_num_steps: int) -> None:
    if not finite:
        raise SolverError("the state became non-finite during the solve")
    if out_of_steps:
        raise SolverError(
            f"the evaluation solver did not finish within {max_num_steps} steps; the "
            "dynamics may be stiff, or the tolerances too tight: raise the estimator's "
            "max_num_steps, loosen eval_atol / eval_rtol, or (below about 1e-7) evaluate "
            "with eval_dtype='float64'")
    if underflow:
        raise SolverError("step size underflow in the evaluation solver: stiff dynamics, or "
                          "tolerances below the evaluation precision (eval_dtype)")


def solve_per_row(func: _RowFn, y0: torch.Tensor, atol: float, rtol: float,
                  reverse: bool = False, max_num_steps: int = 1000,
                  nfe: torch.Tensor | None = None, max_rows: int | None = None) -> torch.Tensor:
    """Integrate ``dy/ds = func(s, y)`` row by row over ``s`` in [0, 1] (or [1, 0]).

    Each row keeps its own time, step size and error test (RMS over its own components), so its
    result does not depend on the other rows.

    Parameters
    ----------
    func : callable
        ``func(s, y)``, ``s`` a column ``(n, 1)``, ``y`` ``(n, m)``; must treat rows independently.
    y0 : torch.Tensor of shape (n_rows, m)
        The rows at the start.
    atol, rtol : float
        Tolerances of each row's error test.
    reverse : bool, default=False
        Integrate from ``s = 1`` back to 0.
    max_num_steps : int, default=1000
        Largest number of steps of a row.
    nfe : torch.Tensor of shape (n_rows,), default=None
        If given, each row's evaluations of ``func`` are added to it, in place.
    max_rows : int, default=None
        Most rows integrated together, all when None. Finished rows leave the batch and waiting
        rows take their places, so the calls of ``func`` do not trail off with the slowest rows.

    Returns
    -------
    torch.Tensor of shape (n_rows, m)
        The rows at the end.

    Raises
    ------
    SolverError
        When a row needs more than ``max_num_steps`` steps, or its step size underflows.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.solver import solve_per_row
    >>> y0 = torch.tensor([[1.0], [2.0]], dtype=torch.float64)
    >>> y1 = solve_per_row(lambda s, y: -y, y0, atol=1e-9, rtol=1e-9)  # y(1) = y(0) / e
    >>> [round(v, 6) for v in (y1[:, 0] * torch.e).tolist()]
    [1.0, 2.0]
    """
    batch = y0.shape[0] if max_rows is None else max(1, int(max_rows))
    direction = -1.0 if reverse else 1.0
    t_end = 0.0 if reverse else 1.0
    result = torch.empty_like(y0)
    tableau = _tableau(y0)
    rows = _Rows(y0, *_starting_points(func, y0, atol, rtol, direction, batch))
    if nfe is not None:
        nfe += 2
    while True:
        rows.admit(batch)
        if rows.index.numel() == 0:
            return result
        done, finite = _dopri_step(func, rows, tableau, atol, rtol, direction, t_end)
        if nfe is not None:
            nfe[rows.index] += len(_C) - 1
        finite, finished, out_of_steps, underflow = _step_report(rows, done, finite,
                                                                 max_num_steps)
        if finished:
            result[rows.index[done]] = rows.y[done]
            rows.keep(~done)
        _check_progress(finite, out_of_steps, underflow, max_num_steps)
