"""ODE solvers: torchdiffeq for training, a per-row adaptive Dormand-Prince solver for evaluation.

All solver options live in :class:`SolverConfig`. Every solve runs over the block's own time
``s`` from 0 (data side) to 1 (latent side), or back.

Why two solvers: torchdiffeq's adaptive solvers take one step size for the whole batch, so a row's
result depends on its batch-mates. That is fine for training (a minibatch is one sample of the loss),
but a density model must give a row the same log density whatever else is in the call. The
evaluation solver below keeps a time, a step size and an error test per row.
"""

from dataclasses import dataclass

import torch
import torchdiffeq

FIXED_GRID_METHODS = ("euler", "midpoint", "rk4")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "adaptive_heun")


class SolverError(RuntimeError):
    """Raised when an ODE solve cannot finish (too many steps, step size underflow, non-finite state)."""


@dataclass(frozen=True)
class SolverConfig:
    """How one solve is carried out.

    ``n_steps`` is the number of steps for the fixed-grid methods; adaptive methods use ``atol`` and
    ``rtol`` and stop with :class:`SolverError` after ``max_num_steps`` steps. ``adjoint`` selects
    adjoint gradients (``odeint_adjoint``) over direct backpropagation through the solver.
    """

    method: str = "dopri5"
    atol: float = 1e-5
    rtol: float = 1e-5
    n_steps: int = 8
    max_num_steps: int = 1000
    adjoint: bool = True

    @property
    def fixed_grid(self):
        return self.method in FIXED_GRID_METHODS

    def options(self):
        if self.fixed_grid:
            return {"step_size": 1.0 / self.n_steps}
        return {"max_num_steps": self.max_num_steps}


def integrate(func, state, config, reverse=False):
    """Integrate a tuple ``state`` under ``func(s, state)`` over ``s`` in [0, 1] with torchdiffeq.

    Returns the final state. ``func`` is an ``nn.Module`` so that the adjoint finds its parameters.
    """
    times = torch.tensor([1.0, 0.0] if reverse else [0.0, 1.0], dtype=state[0].dtype,
                         device=state[0].device)
    kwargs = dict(method=config.method, atol=config.atol, rtol=config.rtol, options=config.options())
    try:
        if config.adjoint:
            # The seminorm drops the parameter adjoints from the backward step-size control
            # (Kidger et al. 2021): fewer backward evaluations for the same gradients.
            adjoint_options = dict(config.options(), norm="seminorm")
            solution = torchdiffeq.odeint_adjoint(func, state, times, adjoint_options=adjoint_options,
                                                  **kwargs)
        else:
            solution = torchdiffeq.odeint(func, state, times, **kwargs)
    except AssertionError as error:  # torchdiffeq reports "underflow in dt" and step limits so
        raise SolverError(str(error)) from error
    return tuple(component[-1] for component in solution)


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


def _rms(x):
    return x.pow(2).mean(-1).sqrt()


def _initial_step(func, t, y, f0, atol, rtol, direction):
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


def solve_per_row(func, y0, atol, rtol, reverse=False, max_num_steps=1000, nfe=None,
                  max_rows=None):
    """Integrate ``dy/ds = func(s, y)`` row by row over ``s`` in [0, 1] (or [1, 0]).

    ``func`` takes ``s`` as a column ``(n, 1)`` and ``y`` as ``(n, m)`` and must treat rows
    independently. Each row keeps its own time, step size and error test (RMS over its own
    components), so its result does not depend on the other rows. At most ``max_rows`` rows
    (default: all) are integrated together: finished rows leave the batch and waiting rows take
    their places, so that the calls of ``func`` stay near that size instead of trailing off with
    the slowest rows. Raises :class:`SolverError` when a row needs more than ``max_num_steps``
    steps. If ``nfe`` (a tensor of ``n`` counts) is given, each row's evaluations of ``func`` are
    added.
    """
    n = y0.shape[0]
    batch = n if max_rows is None else max(1, int(max_rows))
    direction = -1.0 if reverse else 1.0
    t_end = 0.0 if reverse else 1.0
    result = torch.empty_like(y0)
    # Stage combinations as one matrix product each: (stages) x (stages, rows * columns).
    # Row i < 7 builds stage i; the last stage is evaluated at the 5th-order solution (FSAL);
    # row 7 is the error estimate.
    tableau = torch.zeros(len(_C) + 1, len(_C), dtype=y0.dtype, device=y0.device)
    for i, a in enumerate(_A[1:], start=1):
        tableau[i, :len(a)] = torch.tensor(a, dtype=y0.dtype)
    tableau[-1] = torch.tensor(_B_ERR, dtype=y0.dtype)
    # Every row's first derivative and starting step, computed in full-size calls, so that
    # rows can join the batch one by one.
    t0 = torch.full((n, 1), 1.0 - t_end, dtype=y0.dtype, device=y0.device)
    f0, h0 = torch.empty_like(y0), y0.new_empty(n)
    for start in range(0, n, batch):
        part = slice(start, start + batch)
        f0[part] = func(t0[part], y0[part])
        h0[part] = _initial_step(func, t0[part], y0[part], f0[part], atol, rtol, direction)
    if nfe is not None:
        nfe += 2
    active = torch.arange(0, device=y0.device)
    t, y, f, h = t0[:0], y0[:0], f0[:0], h0[:0]
    steps = torch.zeros(0, dtype=torch.long, device=y0.device)
    admitted = 0
    while True:
        take = min(batch - active.numel(), n - admitted)
        if take > 0:
            part = slice(admitted, admitted + take)
            admitted += take
            rows = torch.arange(part.start, part.stop, device=y0.device)
            active, t = torch.cat([active, rows]), torch.cat([t, t0[part]])
            y, f, h = torch.cat([y, y0[part]]), torch.cat([f, f0[part]]), torch.cat([h, h0[part]])
            steps = torch.cat([steps, torch.zeros_like(rows)])
        if active.numel() == 0:
            return result
        remaining = (t_end - t[:, 0]) * direction
        h = torch.minimum(h, remaining)
        hh = (direction * h)[:, None]
        stages = torch.empty((len(_C),) + tuple(y.shape), dtype=y.dtype, device=y.device)
        stages[0] = f
        flat = stages.view(len(_C), -1)
        for i in range(1, len(_C)):
            y_stage = torch.addcmul(y, hh, (tableau[i, :i] @ flat[:i]).view_as(y))
            stages[i] = func(t + _C[i] * hh, y_stage)
        if nfe is not None:
            nfe[active] += len(_C) - 1
        y_new = y_stage  # _A[-1] == _B
        error = hh * (tableau[-1] @ flat).view_as(y)
        scale = atol + rtol * torch.maximum(y.abs(), y_new.abs())
        error_ratio = _rms(error / scale)
        if not torch.isfinite(y_new).all():
            raise SolverError("the state became non-finite during the solve")
        accept = error_ratio <= 1.0
        t = torch.where(accept[:, None], t + hh, t)
        y = torch.where(accept[:, None], y_new, y)
        f = torch.where(accept[:, None], stages[-1], f)  # first-same-as-last
        factor = (0.9 * error_ratio.clamp(min=1e-10).pow(-0.2)).clamp(0.2, 10.0)
        h = h * torch.where(accept, factor, factor.clamp(max=1.0))
        steps += 1
        done = accept & ((t_end - t[:, 0]) * direction <= 1e-12 * max(1.0, abs(t_end)))
        if done.any():
            result[active[done]] = y[done]
            keep = ~done
            active, t, y, f, h, steps = (active[keep], t[keep], y[keep], f[keep], h[keep],
                                         steps[keep])
        if (steps >= max_num_steps).any():
            raise SolverError(
                f"the evaluation solver did not finish within {max_num_steps} steps; the "
                "dynamics may be stiff, or the tolerances too tight: raise the estimator's "
                "max_num_steps, loosen eval_atol / eval_rtol, or (below about 1e-7) evaluate "
                "with eval_dtype='float64'")
        if (h < 1e-12).any():
            raise SolverError("step size underflow in the evaluation solver: stiff dynamics, or "
                              "tolerances below the evaluation precision (eval_dtype)")
