"""Time-conditioned layers and the dynamics network f(z, t) of a CNF."""

import torch
from torch import nn
from torch.nn import functional as F


class Swish(nn.Module):
    """``x * sigmoid(beta * x)`` with a learned ``beta`` (as in the FFJORD code)."""

    def __init__(self):
        super().__init__()
        self.beta = nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        return x * torch.sigmoid(self.beta * x)

    def value_and_scaled_derivative(self, x, scale):
        s = torch.sigmoid(self.beta * x)
        y = x * s
        return y, scale * (s + self.beta * y * (1 - s))


# ``(activation(x), scale * activation'(x))`` for the exact trace at evaluation, each
# derivative in one fused kernel (the ones autograd uses). The modules are built with their
# default settings (softplus beta 1 and threshold 20, ELU alpha 1).
_aten = torch.ops.aten


def _silu(x, scale):
    return F.silu(x), _aten.silu_backward(scale, x)


def _softplus(x, scale):
    return F.softplus(x), _aten.softplus_backward(scale, x, 1.0, 20.0)


def _tanh(x, scale):
    y = torch.tanh(x)
    return y, _aten.tanh_backward(scale, y)


def _elu(x, scale):
    y = F.elu(x)
    return y, _aten.elu_backward(scale, 1.0, 1.0, 1.0, True, y)


_VALUE_AND_SCALED_DERIVATIVE = {nn.SiLU: _silu, nn.Softplus: _softplus, nn.Tanh: _tanh,
                                nn.ELU: _elu}


def value_and_scaled_derivative(activation, x, scale):
    """``(activation(x), scale * activation'(x))`` elementwise."""
    if isinstance(activation, Swish):
        return activation.value_and_scaled_derivative(x, scale)
    return _VALUE_AND_SCALED_DERIVATIVE[type(activation)](x, scale)


ACTIVATIONS = {
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
    """

    def __init__(self, in_features, out_features):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.shift = nn.Linear(1, out_features, bias=False)

    def forward(self, t, x):
        t = t.reshape(-1, 1).to(x.dtype)
        return self.linear(x) * torch.sigmoid(self.gate(t)) + self.shift(t)

    def zero_output_(self):
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
    activation : str
        One of ``ACTIVATIONS``; applied between layers, not after the last one.
    """

    def __init__(self, n_features, hidden_dims, activation="softplus"):
        super().__init__()
        widths = (n_features, *hidden_dims, n_features)
        self.layers = nn.ModuleList(
            ConcatSquashLinear(w_in, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        self.activations = nn.ModuleList(ACTIVATIONS[activation]() for _ in hidden_dims)
        # Zero last layer: an untrained flow is the identity map, so training starts from the
        # base density of the standardized data instead of a random warp.
        self.layers[-1].zero_output_()

    def forward(self, t, z):
        for layer, activation in zip(self.layers[:-1], self.activations):
            z = activation(layer(t, z))
        return self.layers[-1](t, z)
