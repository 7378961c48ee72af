"""Training objectives of a CNF: maximum likelihood and (optimal-transport) flow matching.

An objective maps a minibatch of rows in flow space to ``(loss, reported)``: the loss to
minimise and the value recorded in the history (the negative log-likelihood without penalties
under likelihood training, the regression loss under flow matching). A call is ``draw`` (the
step's random numbers) then ``losses`` (the arithmetic on them), so that a captured step can
draw on the host and replay the arithmetic. ``nfe`` counts the dynamics evaluations of the
last call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from scipy.optimize import linear_sum_assignment

from .divergence import sample_noise
from .flow import ContinuousFlow

if TYPE_CHECKING:  # skflow.training imports this module
    from ..training import TrainingConfig

__all__ = ["OBJECTIVES", "REFERENCE_ROWS", "FlowMatchingObjective", "LikelihoodObjective",
           "make_objective", "marginal_velocity"]

OBJECTIVES = ("likelihood", "flow_matching", "ot_flow_matching")
# Rows over which flow matching averages a target (benchmarks/README.md, "Flow-matching
# targets averaged over the rows"): 256 cost about a third of a 2-D step, less of a wider one.
REFERENCE_ROWS = 256


class LikelihoodObjective:
    """Negative log-likelihood (nats per row, flow space) plus weighted regularizers.

    Calling the objective on a minibatch returns ``(loss, nll)``: the loss to minimise (the
    negative log-likelihood plus the weighted means of the regularizers) and the negative
    log-likelihood alone.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow being trained.
    config : TrainingConfig
        Its ``solver``, ``divergence``, ``noise`` and ``regularization`` (name to weight; the
        regularizers of weight 0 are not integrated) are used.
    generator : torch.Generator or None
        Source of the Hutchinson probes; the global torch generator when None.

    Attributes
    ----------
    dynamics : list of AugmentedDynamics
        One per block, kept from call to call.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.objectives import make_objective
    >>> from skflow.training import TrainingConfig
    >>> flow = ContinuousFlow(2, (8,)).double()  # the identity map: the loss is the normal's
    >>> objective = make_objective(flow, TrainingConfig(objective="likelihood"), None)
    >>> loss, nll = objective(torch.zeros(4, 2, dtype=torch.float64))
    >>> round(nll.item(), 4)  # log(2 pi)
    1.8379
    >>> objective.nfe > 0
    True
    """

    def __init__(self, flow: ContinuousFlow, config: TrainingConfig,
                 generator: torch.Generator | None) -> None:
        self.flow, self.config, self.generator = flow, config, generator
        self.regularization = {k: w for k, w in config.regularization.items() if w > 0}
        self.dynamics = flow.training_dynamics(config.divergence, tuple(self.regularization))

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, nll)`` of a minibatch ``(n, d)`` of rows in flow space."""
        return self.losses(batch, *self.draw(batch))

    def draw(self, batch: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The random part of a step: the Hutchinson probe (one per solve, shared by all blocks
        and the adjoint pass), or nothing with the exact divergence."""
        if self.config.divergence != "hutchinson":
            return ()
        return (sample_noise(batch.shape, self.config.noise, self.generator, batch.device,
                             batch.dtype),)

    def losses(self, batch: torch.Tensor, noise: torch.Tensor | None = None,
               fixed_shapes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, nll)`` of rows ``batch`` with the probe ``noise``. The shapes never depend
        on the draws (``fixed_shapes`` is accepted for the captured step); with a fixed-grid
        solver and direct backpropagation nothing waits for the device either."""
        for func in self.dynamics:
            func.nfe = 0
        log_prob, penalties = self.flow.training_log_prob(batch, self.config.solver,
                                                          self.dynamics, noise)
        nll = -log_prob.mean()
        loss = nll + sum(w * penalties[k].mean() for k, w in self.regularization.items())
        return loss, nll

    @property
    def nfe(self) -> int:
        """Dynamics evaluations of the last call, all blocks, forward and adjoint solves."""
        return sum(func.nfe for func in self.dynamics)


class FlowMatchingObjective:
    """Flow matching (Lipman et al. 2023) on the straight path from data to noise.

    ``x_tau = (1 - tau) x + tau * eps`` has velocity ``eps - x``. The dynamics are regressed on
    that velocity averaged over the rows that could have led to ``x_tau`` (the stable target
    field of Xu et al. 2023; :func:`marginal_velocity`), among the row's own block of
    ``reference_rows`` rows of the minibatch: the same minimiser as the single row's velocity
    (the marginal field, as the blocks grow) with far less noise in the targets, so the same
    steps reach a better density. With ``ot=True`` the pairs ``(x, eps)`` are instead matched
    within the minibatch by exact optimal transport (Tong et al. 2024), which straightens the
    learned flow, and each pair's own velocity is the target. ``n_blocks`` blocks share the
    path: block ``k`` covers ``tau`` in ``[k / K, (k + 1) / K]`` in its own time ``s``, so its
    target velocity is divided by ``K``. Calling the objective on a minibatch returns the
    regression loss twice, as ``(loss, reported)``.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow being trained.
    generator : torch.Generator or None
        Source of the noise and the times; the global torch generator when None.
    ot : bool, default=False
        Pair data and noise by optimal transport within the minibatch.
    reference_rows : int, default=256
        Rows of the minibatch over which a target is averaged (1: each row's own velocity, the
        conditional target). Ignored with ``ot=True``.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.objectives import FlowMatchingObjective
    >>> _ = torch.manual_seed(0)
    >>> flow = ContinuousFlow(2, (8,))
    >>> objective = FlowMatchingObjective(flow, torch.Generator().manual_seed(0), ot=True)
    >>> loss, _ = objective(torch.randn(64, 2))
    >>> loss.shape, bool(loss > 0)
    (torch.Size([]), True)
    """

    def __init__(self, flow: ContinuousFlow, generator: torch.Generator | None,
                 ot: bool = False, reference_rows: int = REFERENCE_ROWS) -> None:
        self.flow, self.generator, self.ot = flow, generator, ot
        self.reference_rows = reference_rows

    def __call__(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, loss)`` of a minibatch ``(n, d)`` of rows in flow space."""
        return self.losses(batch, *self.draw(batch))

    def draw(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The random part of a step on rows ``x``: their noise ``eps`` (paired by optimal
        transport with ``ot=True``) and path times ``tau`` of shape ``(n, 1)``."""
        eps = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        if self.ot:
            eps = self._ot_pairing(x, eps)
        tau = torch.rand((x.shape[0], 1), generator=self.generator, device=x.device, dtype=x.dtype)
        return eps, tau

    def losses(self, x: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor,
               fixed_shapes: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """The regression loss of rows ``x`` with draws ``(eps, tau)``, twice (the loss and
        the value reported): device arithmetic alone. With several blocks each row trains its
        own block, which splits the minibatch by the drawn times; ``fixed_shapes`` instead
        runs every row through every block and keeps each row's own residual (``n_blocks``
        times the arithmetic, shapes that do not depend on the draws, no host
        synchronisation: what a GPU can capture as a graph)."""
        n_blocks = len(self.flow.blocks)
        x_tau = (1 - tau) * x + tau * eps
        if self.ot or self.reference_rows <= 1:
            target = (eps - x) / n_blocks
        else:
            target = marginal_velocity(x, eps, tau, self.reference_rows) / n_blocks
        block_index = (tau[:, 0] * n_blocks).long().clamp(max=n_blocks - 1)
        s = tau * n_blocks - block_index[:, None]
        loss = 0.0
        for k, block in enumerate(self.flow.blocks):
            if n_blocks == 1:  # every row: no boolean mask, whose size the host must wait for
                residual = block.velocity(s, x_tau) - target
            elif fixed_shapes:
                residual = torch.where((block_index == k)[:, None],
                                       block.velocity(s, x_tau) - target, 0.0)
            else:
                rows = block_index == k
                residual = block.velocity(s[rows], x_tau[rows]) - target[rows]
            loss = loss + residual.pow(2).sum()
        loss = loss / x.shape[0]
        return loss, loss

    nfe = 0  # no ODE solve

    @staticmethod
    def _ot_pairing(x: torch.Tensor, eps: torch.Tensor, block: int = 256) -> torch.Tensor:
        """Reorder ``eps`` to the optimal assignment to ``x`` (squared distances), solved within
        blocks of ``block`` rows: exact assignment costs O(n^3), which at a batch of 1024 would
        dwarf the training step."""
        paired = torch.empty_like(eps)
        for start in range(0, x.shape[0], block):
            rows = slice(start, start + block)
            cost = torch.cdist(x[rows], eps[rows]).pow(2).cpu().numpy()
            _, columns = linear_sum_assignment(cost)
            paired[rows] = eps[rows][torch.as_tensor(columns, device=x.device)]
        return paired


def marginal_velocity(x: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor,
                      reference_rows: int = REFERENCE_ROWS) -> torch.Tensor:
    """The straight path's velocity at ``x_tau = (1 - tau) x + tau eps``, averaged over the
    rows that could have led there: the stable target field (Xu et al. 2023).

    Row ``i``'s conditional velocity ``eps_i - x_i`` equals ``(x_tau_i - x_i) / tau_i``; its
    expectation given ``x_tau_i`` is ``(x_tau_i - E[x | x_tau_i]) / tau_i``, where the posterior
    over the reference rows ``x_j`` (row ``i``'s block of ``reference_rows`` consecutive rows,
    ``i`` among them) is proportional to ``N(x_tau_i; (1 - tau_i) x_j, tau_i^2 I)``. Written as
    ``eps_i - x_i + (x_i - E[x | x_tau_i]) / tau_i``, it stays exact as ``tau`` goes to 0,
    where the posterior sits on row ``i`` alone. Minibatches are shuffled, so a block is a
    random sample of the rows.

    Parameters
    ----------
    x, eps : Tensor of shape (n, d)
        Data rows (in flow space) and their noise.
    tau : Tensor of shape (n, 1)
        Path times in ``[0, 1)``; at 0 the target is the row's own velocity.
    reference_rows : int, default=256
        Rows per block; its cost is ``n * reference_rows * d``.

    Returns
    -------
    Tensor of shape (n, d)

    Examples
    --------
    Two reference rows at -1 and +1: halfway along, a point at 0 is as likely from either, and
    its expected velocity is the noise's mean pull, 0; with one row, the row's own velocity.

    >>> import torch
    >>> from skflow.cnf.objectives import marginal_velocity
    >>> x = torch.tensor([[-1.0], [1.0]])
    >>> eps = torch.tensor([[1.0], [-1.0]])  # both reach x_tau = 0 at tau = 0.5
    >>> marginal_velocity(x, eps, torch.full((2, 1), 0.5))
    tensor([[0.],
            [0.]])
    >>> marginal_velocity(x, eps, torch.full((2, 1), 0.5), reference_rows=1)
    tensor([[ 2.],
            [-2.]])
    """
    # tau = 0 (torch.rand can draw it) leaves x_tau = x: the posterior is the row itself.
    at_data = tau == 0
    tau = torch.where(at_data, 1.0, tau)
    x_tau = (1 - tau) * x + tau * eps
    expected = torch.empty_like(x)
    with torch.no_grad():
        for start in range(0, x.shape[0], reference_rows):
            rows = slice(start, start + reference_rows)
            xr, zr, ar = x[rows], x_tau[rows], 1 - tau[rows]
            # |x_tau_i - a_i x_j|^2 without an (n, m, d) tensor
            squared = ((zr * zr).sum(1, keepdim=True) - 2 * ar * (zr @ xr.T)
                       + ar ** 2 * (xr * xr).sum(1)[None, :]).clamp(min=0)
            weights = torch.softmax(-squared / (2 * tau[rows] ** 2), dim=1)
            expected[rows] = weights @ xr
    return torch.where(at_data, eps - x, eps - x + (x - expected) / tau)


def make_objective(flow: ContinuousFlow, config: TrainingConfig,
                   generator: torch.Generator | None
                   ) -> LikelihoodObjective | FlowMatchingObjective:
    """The objective that ``config.objective`` names, one of :data:`OBJECTIVES`.

    Parameters
    ----------
    flow : ContinuousFlow
        The flow being trained.
    config : TrainingConfig
        Names the objective, and holds the likelihood objective's settings.
    generator : torch.Generator or None
        Source of the objective's random draws; the global torch generator when None.

    Returns
    -------
    LikelihoodObjective or FlowMatchingObjective
        ``FlowMatchingObjective(ot=True)`` for ``'ot_flow_matching'``.

    Examples
    --------
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.objectives import make_objective
    >>> from skflow.training import TrainingConfig
    >>> config = TrainingConfig(objective="ot_flow_matching")
    >>> type(make_objective(ContinuousFlow(2, (8,)), config, None)).__name__
    'FlowMatchingObjective'
    """
    if config.objective == "likelihood":
        return LikelihoodObjective(flow, config, generator)
    return FlowMatchingObjective(flow, generator, ot=config.objective == "ot_flow_matching")
