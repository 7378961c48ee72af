"""The continuous normalizing flow: standardization followed by stacked CNF blocks.

Convention: each block maps data-side ``z(0)`` to latent-side ``z(1)`` under ``dz/ds = v(z, s)``,
with ``v = T * f(z, s)`` for the block's time length ``T``. Along a trajectory,
``log p_0(z(0)) = log p_1(z(1)) + int_0^1 Tr(dv/dz) ds``.
"""

import math

import torch
from torch import nn

from .divergence import exact_divergence, hutchinson_divergence
from .frozen import FrozenBlock
from .layers import DynamicsMLP
from .regularizers import INTEGRANDS
from .solver import integrate, solve_per_row


class CNFBlock(nn.Module):
    """One continuous-time block: dynamics network and its (optionally learned) time length."""

    def __init__(self, n_features, hidden_dims, activation, time_length, train_time_length):
        super().__init__()
        self.net = DynamicsMLP(n_features, hidden_dims, activation)
        # T = s**2 keeps the time length positive while it is learned (as in the FFJORD code).
        self.sqrt_time_length = nn.Parameter(torch.tensor(math.sqrt(time_length)),
                                             requires_grad=train_time_length)

    @property
    def time_length(self):
        return self.sqrt_time_length.pow(2)

    def velocity(self, s, z):
        return self.time_length * self.net(s, z)

    @torch.no_grad()
    def frozen(self):
        """The block with its current weights prepared for an evaluation solve."""
        return FrozenBlock(self)


class AugmentedDynamics(nn.Module):
    """``(z, log-det, regularizers...)`` dynamics of one block, for torchdiffeq.

    The Hutchinson probe ``noise`` is set before each solve and kept through it (and through its
    adjoint backward pass). ``nfe`` counts evaluations.
    """

    def __init__(self, block, divergence="exact", regularizers=()):
        super().__init__()
        self.block = block
        self.divergence = divergence
        self.regularizers = tuple(regularizers)
        self.noise = None
        self.nfe = 0

    def forward(self, s, state):
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


def standard_normal_log_prob(z):
    return -0.5 * z.pow(2).sum(-1) - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class ContinuousFlow(nn.Module):
    """Standardization ``(x - shift) / scale`` followed by ``n_blocks`` CNF blocks."""

    def __init__(self, n_features, hidden_dims, activation="softplus", n_blocks=1,
                 time_length=1.0, train_time_length=False):
        super().__init__()
        self.register_buffer("shift", torch.zeros(n_features))
        self.register_buffer("scale", torch.ones(n_features))
        self.blocks = nn.ModuleList(
            CNFBlock(n_features, hidden_dims, activation, time_length, train_time_length)
            for _ in range(n_blocks))

    @property
    def n_features(self):
        return self.shift.shape[0]

    def set_standardization(self, shift, scale):
        self.shift.copy_(torch.as_tensor(shift))
        self.scale.copy_(torch.as_tensor(scale))

    def standardize(self, x):
        return (x - self.shift) / self.scale

    def unstandardize(self, z):
        return z * self.scale + self.shift

    def log_abs_det_standardization(self):
        return -self.scale.log().sum()

    # Training: batch-shared steps through torchdiffeq, gradients by adjoint or backprop.
    def training_log_prob(self, x, config, dynamics, noise=None):
        """Log density of ``x`` in standardized units, with batch-shared solver steps.

        ``dynamics`` is the list from :meth:`training_dynamics` (kept by the caller, which reads
        their NFE counters after the backward pass too). Returns ``(log_prob, penalties)`` where
        ``penalties`` maps each regularizer to its per-row integral summed over blocks.
        """
        regularizers = dynamics[0].regularizers
        z = self.standardize(x)
        log_det = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        penalties = {name: torch.zeros_like(log_det) for name in regularizers}
        for func in dynamics:
            func.noise = noise
            state = (z, torch.zeros_like(log_det)) + tuple(
                torch.zeros_like(log_det) for _ in regularizers)
            z, delta, *integrals = integrate(func, state, config)
            log_det = log_det + delta
            for name, integral in zip(regularizers, integrals):
                penalties[name] = penalties[name] + integral
        log_prob = standard_normal_log_prob(z) + log_det
        return log_prob, penalties

    def training_dynamics(self, divergence, regularizers):
        return [AugmentedDynamics(block, divergence, regularizers) for block in self.blocks]

    # Evaluation (no gradients): per-row adaptive steps and the exact trace, so rows never
    # interact. The standardization runs in the dtype of the input (float64 from the estimator),
    # the blocks in their own dtype (float32 for speed, or float64), so that data far from the
    # origin keep their precision through the standardization.
    @property
    def block_dtype(self):
        return self.blocks[0].sqrt_time_length.dtype

    def evaluation_chunk_rows(self):
        """Rows per evaluation call (the evaluation solver's ``max_rows``).

        The exact trace carries ``n_features`` tangents of a hidden layer per row (twice: forward
        from the input and back from the output). On a CPU, batches whose tangent arrays stay
        within about 2 MiB run fastest (``benchmarks/results/evaluation.md``: 20,000 rows, 10
        features, width 64, float32, seconds by rows in flight: 256 rows 4.00, 409 rows 3.68,
        820 rows 3.48, 1024 rows 3.40, 2048 rows 3.85). A GPU wants large batches.
        """
        width = max(layer.linear.out_features for layer in self.blocks[0].net.layers)
        tangent_bytes = self.n_features * width * torch.finfo(self.block_dtype).bits // 8
        if self.shift.device.type == "cpu":
            return min(8192, max(64, 2 ** 21 // tangent_bytes))
        return max(256, 2 ** 26 // tangent_bytes)

    @torch.no_grad()
    def log_prob(self, x, atol, rtol, max_num_steps=1000, nfe=None):
        """Exact log density of ``x`` in data units, in the dtype of ``x``.

        ``nfe``, if given (a tensor of ``len(x)`` counts), receives each row's number of
        dynamics evaluations over all blocks.
        """
        z = self.standardize(x).to(self.block_dtype)
        log_det = torch.zeros(x.shape[0], dtype=z.dtype, device=x.device)
        for block in self.blocks:
            frozen = block.frozen()

            def func(s, y, frozen=frozen):
                velocity, div = frozen.velocity_and_divergence(s, y[:, :-1])
                return torch.cat([velocity, div[:, None]], dim=1)

            y0 = torch.cat([z, torch.zeros_like(log_det)[:, None]], dim=1)
            y1 = solve_per_row(func, y0, atol, rtol, max_num_steps=max_num_steps, nfe=nfe,
                               max_rows=self.evaluation_chunk_rows())
            z, log_det = y1[:, :-1], log_det + y1[:, -1]
        return (standard_normal_log_prob(z.to(x.dtype)) + log_det.to(x.dtype)
                + self.log_abs_det_standardization().to(x.dtype))

    def _map(self, z, atol, rtol, max_num_steps, reverse):
        dtype = z.dtype
        z = z.to(self.block_dtype)
        blocks = reversed(self.blocks) if reverse else self.blocks
        for block in blocks:
            z = solve_per_row(block.frozen().velocity, z, atol, rtol, reverse=reverse,
                              max_num_steps=max_num_steps, max_rows=self.evaluation_chunk_rows())
        return z.to(dtype)

    @torch.no_grad()
    def to_latent(self, x, atol, rtol, max_num_steps=1000):
        """Data -> latent: standardize, then integrate every block forward."""
        return self._map(self.standardize(x), atol, rtol, max_num_steps, reverse=False)

    @torch.no_grad()
    def from_latent(self, z, atol, rtol, max_num_steps=1000):
        """Latent -> data: integrate every block backward, then undo the standardization."""
        return self.unstandardize(self._map(z, atol, rtol, max_num_steps, reverse=True))
