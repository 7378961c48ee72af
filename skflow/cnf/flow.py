"""The continuous normalizing flow: stacked CNF blocks from the mapped data to a standard normal.

Convention: each block maps data-side ``z(0)`` to latent-side ``z(1)`` under ``dz/ds = v(z, s)``,
with ``v = T * f(z, s)`` for the block's time length ``T``. Along a trajectory,
``log p_0(z(0)) = log p_1(z(1)) + int_0^1 Tr(dv/dz) ds``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from .divergence import exact_divergence, hutchinson_divergence
from .frozen import FrozenBlock
from .layers import DynamicsMLP
from .regularizers import INTEGRANDS
from .solver import SolverConfig, integrate

__all__ = ["AugmentedDynamics", "CNFBlock", "ContinuousFlow", "FlowSpec",
           "standard_normal_log_prob"]


class CNFBlock(nn.Module):
    """One continuous-time block: dynamics network and its (optionally learned) time length.

    The block's velocity is ``v(s, z) = T f(z, s)`` over its own time ``s`` in [0, 1].

    Parameters
    ----------
    n_features : int
        Dimension of ``z``.
    hidden_dims : tuple of int
        Widths of the hidden layers of the dynamics network.
    activation : str
        One of :data:`skflow.cnf.layers.ACTIVATIONS`.
    time_length : float
        The time length ``T``, positive.
    train_time_length : bool
        Whether ``T`` is learned along with the weights.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import CNFBlock
    >>> _ = torch.manual_seed(0)
    >>> block = CNFBlock(2, (8,), "silu", time_length=4.0, train_time_length=True)
    >>> block.time_length.item(), block.sqrt_time_length.requires_grad
    (4.0, True)
    >>> block.velocity(torch.tensor(0.0), torch.randn(3, 2)).shape
    torch.Size([3, 2])
    >>> type(block.frozen()).__name__
    'FrozenBlock'
    """

    def __init__(self, n_features: int, hidden_dims: tuple[int, ...], activation: str,
                 time_length: float, train_time_length: bool) -> None:
        super().__init__()
        self.net = DynamicsMLP(n_features, hidden_dims, activation)
        # T = s**2 keeps the time length positive while it is learned (as in the FFJORD code).
        self.sqrt_time_length = nn.Parameter(torch.tensor(math.sqrt(time_length)),
                                             requires_grad=train_time_length)

    @property
    def time_length(self) -> torch.Tensor:
        """The time length ``T``, a scalar tensor."""
        return self.sqrt_time_length.pow(2)

    def velocity(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``T f(z, s)`` for rows ``z`` at time ``s`` (a scalar or a column ``(n, 1)``)."""
        return self.time_length * self.net(s, z)

    @torch.no_grad()
    def frozen(self) -> FrozenBlock:
        """The block with its current weights prepared for an evaluation solve."""
        return FrozenBlock(self)


class AugmentedDynamics(nn.Module):
    """``(z, log-det, regularizers...)`` dynamics of one block, for torchdiffeq.

    The Hutchinson probe ``noise`` is set before each solve and kept through it (and through its
    adjoint backward pass). ``nfe`` counts evaluations.

    Parameters
    ----------
    block : CNFBlock
        The block whose dynamics are integrated.
    divergence : {'exact', 'hutchinson'}, default='exact'
        How the divergence is computed (see :mod:`skflow.cnf.divergence`).
    regularizers : iterable of str, default=()
        Names of :data:`skflow.cnf.regularizers.INTEGRANDS` that ride along as extra states.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import AugmentedDynamics, CNFBlock
    >>> _ = torch.manual_seed(0)
    >>> block = CNFBlock(2, (8,), "tanh", time_length=1.0, train_time_length=False)
    >>> dynamics = AugmentedDynamics(block, "exact", ("kinetic_energy",))
    >>> state = (torch.randn(5, 2), torch.zeros(5), torch.zeros(5))
    >>> velocity, div, kinetic = dynamics(torch.tensor(0.0), state)
    >>> velocity.shape, div.shape, kinetic.shape, dynamics.nfe
    (torch.Size([5, 2]), torch.Size([5]), torch.Size([5]), 1)
    """

    def __init__(self, block: CNFBlock, divergence: str = "exact",
                 regularizers: Iterable[str] = ()) -> None:
        super().__init__()
        self.block = block
        self.divergence = divergence
        self.regularizers = tuple(regularizers)
        self.noise = None
        self.nfe = 0

    def forward(self, s: torch.Tensor, state: tuple[torch.Tensor, ...]
                ) -> tuple[torch.Tensor, ...]:
        """Time derivatives of ``(z, log-det, regularizers...)``; only ``z`` is read."""
        self.nfe += 1
        z = state[0]
        # Higher-order graphs are needed only when gradients flow (direct backprop or the adjoint
        # backward pass), not in the adjoint's forward solve or in validation.
        create_graph = torch.is_grad_enabled()
        if self.divergence == "exact":
            velocity, div, jac_sq = exact_divergence(self.block.velocity, s, z, create_graph)
        else:
            velocity, div, jac_sq = hutchinson_divergence(self.block.velocity, s, z, self.noise,
                                                         create_graph)
        extras = tuple(INTEGRANDS[name](velocity, jac_sq) for name in self.regularizers)
        return (velocity, div) + extras


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Log density of each row of ``z`` under the standard normal, the flow's latent.

    Parameters
    ----------
    z : torch.Tensor of shape (n, d)
        Latent rows.

    Returns
    -------
    torch.Tensor of shape (n,)
        ``-|z|^2 / 2 - d log(2 pi) / 2`` of each row.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import standard_normal_log_prob
    >>> standard_normal_log_prob(torch.tensor([[0.0, 0.0], [1.0, -1.0]])).round(decimals=4)
    tensor([-1.8379, -2.8379])
    """
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


@dataclass(frozen=True)
class FlowSpec:
    """What a new :class:`ContinuousFlow` is made of; :meth:`build` makes one from a seed.

    The fields are the arguments of :class:`ContinuousFlow`.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import FlowSpec
    >>> spec = FlowSpec(n_features=2, hidden_dims=(8,), n_blocks=2)
    >>> flow = spec.build(seed=0)
    >>> len(flow.blocks), next(flow.parameters()).dtype
    (2, torch.float64)
    >>> all(torch.equal(p, q) for p, q in zip(spec.build(0).parameters(), flow.parameters()))
    True
    """

    n_features: int
    hidden_dims: tuple[int, ...] = (64, 64, 64)
    activation: str = "silu"
    n_blocks: int = 1
    time_length: float = 1.0
    train_time_length: bool = False

    def build(self, seed: int) -> ContinuousFlow:
        """A new float64 flow, its weights drawn from ``seed`` (the global torch RNG untouched)."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = ContinuousFlow(self.n_features, self.hidden_dims, self.activation,
                                  self.n_blocks, self.time_length, self.train_time_length)
        return flow.double()


class ContinuousFlow(nn.Module):
    """``n_blocks`` CNF blocks, data side first; the latent is a standard normal.

    The flow sees rows already mapped by :class:`skflow.preprocessing.InputMap`. Training goes
    through :meth:`training_log_prob` (torchdiffeq, batch-shared steps, gradients by adjoint or
    backprop); evaluation through :class:`skflow.cnf.evaluation.Evaluator` (per-row steps, the
    exact trace, no autograd).

    Parameters
    ----------
    n_features : int
        Dimension of the rows.
    hidden_dims : tuple of int
        Widths of the hidden layers of each block's dynamics network.
    activation : str, default='softplus'
        One of :data:`skflow.cnf.layers.ACTIVATIONS`.
    n_blocks : int, default=1
        Number of blocks, each with its own dynamics.
    time_length : float, default=1.0
        Every block's time length ``T`` at the start.
    train_time_length : bool, default=False
        Whether the time lengths are learned.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.solver import SolverConfig
    >>> flow = ContinuousFlow(2, (16, 16), "silu", n_blocks=2)
    >>> flow.n_features, flow.hidden_dims, len(flow.blocks)
    (2, (16, 16), 2)
    >>> dynamics = flow.training_dynamics("exact", ("kinetic_energy",))
    >>> config = SolverConfig(method="euler", n_steps=2, adjoint=False)
    >>> log_prob, penalties = flow.training_log_prob(torch.zeros(3, 2), config, dynamics)
    >>> log_prob.detach().round(decimals=4)  # a new flow is the identity: the normal's density
    tensor([-1.8379, -1.8379, -1.8379])
    >>> penalties["kinetic_energy"].tolist(), sum(func.nfe for func in dynamics)
    ([0.0, 0.0, 0.0], 4)
    """

    def __init__(self, n_features: int, hidden_dims: tuple[int, ...],
                 activation: str = "softplus", n_blocks: int = 1, time_length: float = 1.0,
                 train_time_length: bool = False) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            CNFBlock(n_features, hidden_dims, activation, time_length, train_time_length)
            for _ in range(n_blocks))

    @property
    def n_features(self) -> int:
        """Dimension of the rows."""
        return self.blocks[0].net.layers[0].linear.in_features

    @property
    def hidden_dims(self) -> tuple[int, ...]:
        """Widths of the hidden layers of each block's dynamics network."""
        return tuple(layer.linear.out_features for layer in self.blocks[0].net.layers[:-1])

    def training_log_prob(self, z: torch.Tensor, config: SolverConfig,
                          dynamics: list[AugmentedDynamics], noise: torch.Tensor | None = None
                          ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Log density of the mapped rows ``z``, shape ``(n, d)``, with batch-shared solver steps.

        ``dynamics`` is the list from :meth:`training_dynamics` (kept by the caller, which reads
        their NFE counters after the backward pass too); ``noise`` is the Hutchinson probe, None
        with the exact divergence. Returns ``(log_prob, penalties)`` where ``penalties`` maps
        each regularizer to its per-row integral summed over blocks.
        """
        regularizers = dynamics[0].regularizers
        log_det = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        penalties = {name: torch.zeros_like(log_det) for name in regularizers}
        for func in dynamics:
            func.noise = noise
            state = (z, torch.zeros_like(log_det)) + tuple(
                torch.zeros_like(log_det) for _ in regularizers)
            z, delta, *integrals = integrate(func, state, config)
            log_det = log_det + delta
            for name, integral in zip(regularizers, integrals):
                penalties[name] = penalties[name] + integral
        return standard_normal_log_prob(z) + log_det, penalties

    def training_dynamics(self, divergence: str, regularizers: tuple[str, ...]
                          ) -> list[AugmentedDynamics]:
        """One :class:`AugmentedDynamics` per block, for :meth:`training_log_prob`."""
        return [AugmentedDynamics(block, divergence, regularizers) for block in self.blocks]
