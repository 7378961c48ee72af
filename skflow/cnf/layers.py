"""Time-conditioned layers and the dynamics network f(z, t) of a CNF."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ACTIVATIONS", "ConcatSquashLinear", "DynamicsMLP", "Swish", "TimeFeatures",
           "value_and_scaled_derivative"]


class Swish(nn.Module):
    """``x * sigmoid(beta * x)`` with a learned ``beta`` (as in the FFJORD code).

    ``beta`` starts at 1, where Swish is the SiLU.

    Attributes
    ----------
    beta : torch.nn.Parameter
        The learned slope inside the sigmoid, a scalar.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import Swish
    >>> swish = Swish()
    >>> x = torch.tensor([-1.0, 0.0, 2.0])
    >>> bool(torch.allclose(swish(x), torch.nn.functional.silu(x)))
    True
    >>> value, scaled = swish.value_and_scaled_derivative(x, torch.full((3,), 2.0))
    >>> scaled[1].item()  # 2 * swish'(0), where swish'(0) = 1/2
    1.0
    """

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x * sigmoid(beta * x)`` elementwise."""
        return x * torch.sigmoid(self.beta * x)

    def value_and_scaled_derivative(self, x: torch.Tensor, scale: torch.Tensor
                                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(swish(x), scale * swish'(x))`` elementwise, the sigmoid computed once."""
        s = torch.sigmoid(self.beta * x)
        y = x * s
        return y, scale * (s + self.beta * y * (1 - s))


# ``(activation(x), scale * activation'(x))`` for the exact trace at evaluation, each
# derivative in one fused kernel (the ones autograd uses). The modules are built with their
# default settings (softplus beta 1 and threshold 20, ELU alpha 1).
_aten = torch.ops.aten


def _silu(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.silu(x), _aten.silu_backward(scale, x)


def _softplus(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return F.softplus(x), _aten.softplus_backward(scale, x, 1.0, 20.0)


def _tanh(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.tanh(x)
    return y, _aten.tanh_backward(scale, y)


def _elu(x: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    y = F.elu(x)
    return y, _aten.elu_backward(scale, 1.0, 1.0, 1.0, True, y)


_VALUE_AND_SCALED_DERIVATIVE: dict[
    type[nn.Module], Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
] = {nn.SiLU: _silu, nn.Softplus: _softplus, nn.Tanh: _tanh, nn.ELU: _elu}


def value_and_scaled_derivative(activation: nn.Module, x: torch.Tensor, scale: torch.Tensor
                                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(activation(x), scale * activation'(x))`` elementwise.

    The exact trace of the evaluation path needs each hidden layer's output and its derivative
    times the layer's gate; both come from one call, without autograd.

    Parameters
    ----------
    activation : torch.nn.Module
        A module of :data:`ACTIVATIONS`, built with its default settings.
    x : torch.Tensor
        Pre-activations.
    scale : torch.Tensor
        Factor of the derivative, broadcastable to ``x``.

    Returns
    -------
    value : torch.Tensor
        ``activation(x)``.
    scaled_derivative : torch.Tensor
        ``scale * activation'(x)``.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import value_and_scaled_derivative
    >>> x = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    >>> y, scaled = value_and_scaled_derivative(torch.nn.Tanh(), x, torch.full((2,), 3.0))
    >>> bool(torch.allclose(scaled, 3 * (1 - torch.tanh(x) ** 2)))
    True
    """
    if isinstance(activation, Swish):
        return activation.value_and_scaled_derivative(x, scale)
    return _VALUE_AND_SCALED_DERIVATIVE[type(activation)](x, scale)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": nn.Softplus,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "swish": Swish,
    "silu": nn.SiLU,
}


class TimeFeatures(nn.Module):
    """Time as ``(t, sin(pi k t), cos(pi k t))`` for ``k = 1 .. n_frequencies``.

    A gate that sees ``t`` alone is a sigmoid of a line in ``t``: monotone, one switch per unit.
    The velocity that flow matching regresses changes fast near the data end of the path, and
    sines of a few frequencies let every gate follow it (2-D toy densities, default fits:
    0.03-0.08 nats per row; see benchmarks/README.md).

    Parameters
    ----------
    n_frequencies : int, default=8
        Number of frequencies ``k``; ``0`` gives ``t`` alone.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import TimeFeatures
    >>> features = TimeFeatures(2)
    >>> features.n_features
    5
    >>> [round(v, 4) + 0.0 for v in features(torch.tensor(0.5))[0].tolist()]  # a scalar time
    [0.5, 1.0, 0.0, 0.0, -1.0]
    >>> features(torch.rand(3, 1)).shape  # one time per row
    torch.Size([3, 5])
    """

    def __init__(self, n_frequencies: int = 8) -> None:
        super().__init__()
        self.register_buffer("frequencies", math.pi * torch.arange(1.0, n_frequencies + 1))

    @property
    def n_features(self) -> int:
        """Width of the features."""
        return 1 + 2 * self.frequencies.numel()

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        """Features ``(n, n_features)`` of times ``t``: a scalar (``n = 1``) or a column."""
        t = t.reshape(-1, 1)
        angles = t * self.frequencies.to(t.dtype)
        return torch.cat([t, torch.sin(angles), torch.cos(angles)], dim=1)


class ConcatSquashLinear(nn.Module):
    """``linear(x) * sigmoid(W_g phi(t) + b_g) + W_b phi(t)``: a linear layer gated and shifted
    by features ``phi(t)`` of time (:class:`TimeFeatures`).

    Parameters
    ----------
    in_features : int
        Width of the input ``x``.
    out_features : int
        Width of the output.
    time_features : int, default=1
        Width of the time features ``phi(t)``.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import ConcatSquashLinear, TimeFeatures
    >>> _ = torch.manual_seed(0)
    >>> features = TimeFeatures(2)
    >>> layer = ConcatSquashLinear(3, 5, features.n_features)
    >>> x = torch.randn(4, 3)
    >>> layer(features(torch.tensor(0.5)), x).shape  # one time for the batch
    torch.Size([4, 5])
    >>> layer(features(torch.rand(4, 1)), x).shape  # one time per row
    torch.Size([4, 5])
    >>> layer.zero_output_()
    >>> bool((layer(features(torch.tensor(0.5)), x) == 0).all())
    True
    """

    def __init__(self, in_features: int, out_features: int, time_features: int = 1) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(time_features, out_features)
        self.shift = nn.Linear(time_features, out_features, bias=False)

    def forward(self, time_features: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer on rows ``x`` at time features ``(1 or n, time_features)``."""
        time_features = time_features.to(x.dtype)
        return (self.linear(x) * torch.sigmoid(self.gate(time_features))
                + self.shift(time_features))

    def zero_output_(self) -> None:
        """Make the layer output exactly zero, so a flow ending in it starts as the identity."""
        with torch.no_grad():
            for param in (self.linear.weight, self.linear.bias, self.shift.weight):
                param.zero_()


class DynamicsMLP(nn.Module):
    """The free-form dynamics ``f(z, t)``: an MLP of concatsquash layers, time fed to every layer.

    Parameters
    ----------
    n_features : int
        Dimension of ``z``.
    hidden_dims : tuple of int
        Widths of the hidden layers.
    activation : str, default='softplus'
        One of ``ACTIVATIONS``; applied between layers, not after the last one.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import DynamicsMLP
    >>> _ = torch.manual_seed(0)
    >>> net = DynamicsMLP(2, (16, 16), "tanh")
    >>> len(net.layers), len(net.activations)
    (3, 2)
    >>> velocity = net(torch.tensor(0.0), torch.randn(5, 2))
    >>> velocity.shape, bool((velocity == 0).all())  # a new network is still: the identity flow
    (torch.Size([5, 2]), True)
    """

    def __init__(self, n_features: int, hidden_dims: tuple[int, ...],
                 activation: str = "softplus") -> None:
        super().__init__()
        widths = (n_features, *hidden_dims, n_features)
        self.time_features = TimeFeatures()
        self.layers = nn.ModuleList(
            ConcatSquashLinear(w_in, w_out, self.time_features.n_features)
            for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in hidden_dims)
        # Zero last layer: an untrained flow is the identity map, so training starts from the
        # base density of the standardized data instead of a random warp.
        self.layers[-1].zero_output_()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``f(z, t)`` for rows ``z`` at time ``t`` (a scalar or a column ``(n, 1)``)."""
        features = self.time_features(t.to(z.dtype))
        for layer, activation in zip(self.layers[:-1], self.activations):
            z = activation(layer(features, z))
        return self.layers[-1](features, z)
