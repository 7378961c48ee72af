"""A CNF block with its weights frozen for an evaluation solve.

An evaluation solve calls the dynamics tens of times per row with the same weights. Everything
that depends only on the weights is prepared once here: transposed weights, the block's time
length folded into the last layer, all layers' time gates and offsets from one product, and the
weight products of the exact trace; the large work arrays are kept from call to call. A call of
one row, which measures this fixed cost, takes 91 us in float32 against 444 us for the autograd
trace (``benchmarks/results/evaluation.md``).
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import torch

from .layers import value_and_scaled_derivative

if TYPE_CHECKING:  # flow.py imports this module
    from .flow import CNFBlock

__all__ = ["FrozenBlock"]


class FrozenBlock:
    """``v(s, z) = T f(z, s)`` of a :class:`~skflow.cnf.flow.CNFBlock` and its exact divergence.

    Built from the block's current weights; later changes to the block are not seen. No autograd
    graph is built. Times ``s`` are columns ``(n, 1)``, one time per row.

    The exact trace. Write the Jacobian of row ``b`` as
    ``J = diag(g) W_o diag(s_H) W_H ... diag(s_1) W_1``, where ``g`` is the output gate and ``s_l``
    the per-row scales of hidden layer ``l`` (its gate times the activation's derivative). Its
    diagonal meets in the middle: tangents ``d h_{H-1} / d z_i`` carried forward from the input,
    and the rows ``i`` of ``W_o diag(s_H) W_H`` carried back from the output, each side one matrix
    product with weights prepared here (the first layer's Jacobian, ``s_1`` times a fixed weight,
    never needs its own product). Per row that costs about ``d`` passes through one
    hidden-to-hidden layer for each hidden layer after the first, against ``2 d`` full passes
    for ``d`` vector-Jacobian products.

    Parameters
    ----------
    block : CNFBlock
        The block whose current weights are prepared, on the device and in the dtype of the
        solves; :meth:`~skflow.cnf.flow.CNFBlock.frozen` builds it without autograd.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.divergence import exact_divergence
    >>> from skflow.cnf.flow import CNFBlock
    >>> _ = torch.manual_seed(0)
    >>> block = CNFBlock(3, (8, 8), "tanh", time_length=0.5, train_time_length=False).double()
    >>> _ = torch.nn.init.normal_(block.net.layers[-1].linear.weight)  # leave the identity
    >>> frozen = block.frozen()
    >>> s, z = torch.rand(4, 1, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    >>> velocity, div = frozen.velocity_and_divergence(s, z)
    >>> _, expected, _ = exact_divergence(block.velocity, s, z, create_graph=False)
    >>> bool(torch.allclose(velocity, block.velocity(s, z))), bool(torch.allclose(div, expected))
    (True, True)
    """

    def __init__(self, block: CNFBlock) -> None:
        layers = list(block.net.layers)
        self.time_features = block.net.time_features
        self.activations = list(block.net.activations)
        time_length = block.time_length
        weights = [layer.linear.weight for layer in layers]
        weights[-1] = weights[-1] * time_length
        self.weights_t = [weight.t().contiguous() for weight in weights]
        self.widths = [weight.shape[0] for weight in weights]
        # Gates sigmoid(phi(s) W_g + b_g) and offsets b * gate + phi(s) W_s of every layer, side
        # by side.
        self.gate_weight = torch.cat([layer.gate.weight.t() for layer in layers], dim=1)
        self.gate_bias = torch.cat([layer.gate.bias for layer in layers])
        shift_weights = [layer.shift.weight.t() for layer in layers]
        shift_weights[-1] = shift_weights[-1] * time_length
        self.shift_weight = torch.cat(shift_weights, dim=1)
        self.bias = torch.cat([layer.linear.bias for layer in layers[:-1]]
                              + [layers[-1].linear.bias * time_length])
        n_hidden = len(self.activations)
        out = weights[-1]
        if n_hidden == 0:
            self.output_diagonal = torch.diagonal(out).unsqueeze(0)
        elif n_hidden == 1:  # diagonal[b, i] = sum_k s_1[b, k] W_1[k, i] W_o[i, k]
            self.first_to_diagonal = weights[0] * out.t()
        else:
            d = weights[0].shape[1]
            # Back from the output: cotangents[b, i, m] = sum_k s_H[b, k] W_o[i, k] W_H[k, m],
            # times W_1[m, i] when layer H - 1 is the first (its tangents stay factored).
            back = out.t().unsqueeze(2) * weights[n_hidden - 1].unsqueeze(1)  # (k, i, m)
            if n_hidden == 2:
                back = back * weights[0].t().unsqueeze(0)
            self.cotangent_weights = back.reshape(back.shape[0], -1)
            # Forward from the input: tangents[b, i, m] = sum_k s_1[b, k] W_1[k, i] W_2[m, k].
            if n_hidden > 2:
                pairs = weights[0].unsqueeze(2) * weights[1].t().unsqueeze(1)  # (k, i, m)
                self.tangent_weights = pairs.reshape(pairs.shape[0], -1)
            self.n_features = d
        self._workspace = {}

    def _buffer(self, name: str, n: int, columns: int, like: torch.Tensor) -> torch.Tensor:
        """A reused ``(n, columns)`` array. Allocating the large per-call arrays afresh at every
        evaluation costs more than filling them: with glibc, blocks of this size may be returned
        to the system when freed and faulted back in at the next call. One set per thread, so
        that threads may evaluate with the same frozen block at once."""
        workspace = self._workspace.setdefault(threading.get_ident(), {})
        buffer = workspace.get(name)
        if buffer is None or buffer.shape[0] < n:
            buffer = workspace[name] = like.new_empty((n, columns))
        return buffer[:n]

    def _time_terms(self, s: torch.Tensor
                    ) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
        """Per layer, every row's gate and offset at its time ``s``."""
        n, width = s.shape[0], self.gate_bias.shape[0]
        features = self.time_features(s)
        gates = torch.addmm(self.gate_bias, features, self.gate_weight,
                            out=self._buffer("gates", n, width, s)).sigmoid_()
        offsets = torch.mm(features, self.shift_weight,
                           out=self._buffer("offsets", n, width, s))
        offsets.addcmul_(gates, self.bias)
        return gates.split(self.widths, dim=1), offsets.split(self.widths, dim=1)

    def _layer(self, index: int, h: torch.Tensor, gates: tuple[torch.Tensor, ...],
               offsets: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.addcmul(offsets[index], h @ self.weights_t[index], gates[index])

    @torch.no_grad()
    def velocity(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``v(s, z)`` for rows ``z`` at times ``s`` of shape ``(n, 1)``."""
        gates, offsets = self._time_terms(s)
        h = z
        for index, activation in enumerate(self.activations):
            h = activation(self._layer(index, h, gates, offsets))
        return self._layer(-1, h, gates, offsets)

    @torch.no_grad()
    def velocity_and_divergence(self, s: torch.Tensor, z: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(v, Tr(dv/dz))``, the trace exact (see the class notes)."""
        n = z.shape[0]
        gates, offsets = self._time_terms(s)
        h, scales = z, []
        for index, activation in enumerate(self.activations):
            pre = self._layer(index, h, gates, offsets)
            h, scale = value_and_scaled_derivative(activation, pre, gates[index])
            scales.append(scale)
        out = self._layer(-1, h, gates, offsets)
        if not scales:
            diagonal = self.output_diagonal
        elif len(scales) == 1:
            diagonal = scales[0] @ self.first_to_diagonal
        else:
            d = self.n_features
            cotangents = torch.mm(scales[-1], self.cotangent_weights, out=self._buffer(
                "cotangents", n, self.cotangent_weights.shape[1], z)).view(n, d, -1)
            if len(scales) == 2:
                tangents = scales[0].unsqueeze(1)
            else:
                tangents = torch.mm(scales[0], self.tangent_weights, out=self._buffer(
                    "tangents", n, self.tangent_weights.shape[1], z)).view(n, d, -1)
                tangents.mul_(scales[1].unsqueeze(1))
                for index in range(2, len(scales) - 1):
                    weight_t = self.weights_t[index]
                    following = torch.mm(tangents.view(n * d, -1), weight_t, out=self._buffer(
                        f"tangents{index % 2}", n * d, weight_t.shape[1], z)).view(n, d, -1)
                    tangents = following.mul_(scales[index].unsqueeze(1))
            diagonal = cotangents.mul_(tangents).sum(-1)
        return out, torch.linalg.vecdot(diagonal, gates[-1])
