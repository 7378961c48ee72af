"""Time-conditioned layers and the dynamics network f(z, t) of a CNF."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["ACTIVATIONS", "ConcatSquashLinear", "DynamicsMLP", "Swish",
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


class ConcatSquashLinear(nn.Module):
    """``linear(x) * sigmoid(W_g t + b_g) + W_b t``: a linear layer gated and shifted by time.

    ``t`` is a scalar (one time for the whole batch, as adaptive ODE solvers use) or a column of
    shape ``(n, 1)`` (one time per row, as the per-row evaluation solver uses).

    Parameters
    ----------
    in_features : int
        Width of the input ``x``.
    out_features : int
        Width of the output.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.layers import ConcatSquashLinear
    >>> _ = torch.manual_seed(0)
    >>> layer = ConcatSquashLinear(3, 5)
    >>> x = torch.randn(4, 3)
    >>> layer(torch.tensor(0.5), x).shape  # one time for the batch
    torch.Size([4, 5])
    >>> layer(torch.rand(4, 1), x).shape  # one time per row
    torch.Size([4, 5])
    >>> layer.zero_output_()
    >>> bool((layer(torch.tensor(0.5), x) == 0).all())
    True
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.shift = nn.Linear(1, out_features, bias=False)

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The layer at time ``t`` (a scalar or a column ``(n, 1)``) on rows ``x``."""
        t = t.reshape(-1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.shift(t)

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
        self.layers = nn.ModuleList(
            ConcatSquashLinear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in hidden_dims)
        # Zero last layer: an untrained flow is the identity map, so training starts from the
        # base density of the standardized data instead of a random warp.
        self.layers[-1].zero_output_()

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``f(z, t)`` for rows ``z`` at time ``t`` (a scalar or a column ``(n, 1)``)."""
        for layer, activation in zip(self.layers[:-1], self.activations):
            z = activation(layer(t, z))
        return self.layers[-1](t, z)
