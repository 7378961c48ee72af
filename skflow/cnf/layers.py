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


# ``(activation(x), scale * activation'(x))`` for the forward-mode trace, each derivative in one
# fused kernel (the ones autograd uses). The modules are built with their default settings
# (softplus beta 1 and threshold 20, ELU alpha 1).
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
        return self.forward_with_gate(t, x)[0]

    def forward_with_gate(self, t, x):
        """The output and the gate ``sigmoid(W_g t + b_g)``, the layer's Jacobian being
        ``gate[:, :, None] * W``."""
        t = t.reshape(-1, 1).to(x.dtype)
        gate = torch.sigmoid(self.gate(t))
        return self.linear(x) * gate + self.shift(t), gate

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

    def forward_and_trace(self, t, z):
        """``(f(z, t), Tr(df/dz))`` with the exact trace by forward-mode differentiation.

        The Jacobian of the hidden activations with respect to ``z`` is carried along the layers
        as ``d`` tangent rows per input row, one matrix product per hidden layer after the
        first; the last layer needs only the diagonal. The first hidden layer's Jacobian is its
        weight scaled per row, so it stays factored and the second layer's tangents come from a
        single product of the per-row scales with fixed weight pairs. No autograd graph is
        built: per row this costs about ``d`` forward passes of the hidden-to-hidden layers,
        against ``2 d`` full passes for ``d`` vector-Jacobian products.
        """
        n, d = z.shape
        h = z
        first_scale = first_weight = tangents = None  # tangents: d(hidden)/dz, (n, d, width)
        for index, (layer, activation) in enumerate(zip(self.layers[:-1], self.activations)):
            pre, gate = layer.forward_with_gate(t, h)
            h, scale = value_and_scaled_derivative(activation, pre, gate)
            weight = layer.linear.weight
            if index == 0:  # d(hidden_1)/dz[b] = first_scale[b, :, None] * W1
                first_scale, first_weight = scale, weight
            elif index == 1:  # tangents[b, j, m] = sum_k first_scale[b, k] W1[k, j] W2[m, k]
                pairs = first_weight.unsqueeze(2) * weight.t().unsqueeze(1)
                tangents = (first_scale @ pairs.reshape(pairs.shape[0], -1)).view(n, d, -1)
                tangents.mul_(scale.unsqueeze(1))
            else:
                tangents = (tangents.view(n * d, -1) @ weight.t()).view(n, d, -1)
                tangents.mul_(scale.unsqueeze(1))
        out, gate = self.layers[-1].forward_with_gate(t, h)
        weight = self.layers[-1].linear.weight
        if first_scale is None:  # no hidden layer: a gated linear map
            diagonal = torch.diagonal(weight).unsqueeze(0)
        elif tangents is None:  # one hidden layer: diagonal[b, i] = sum_k s[b, k] W1[k, i] W[i, k]
            diagonal = first_scale @ (first_weight * weight.t())
        else:  # diagonal[b, i] = sum_k weight[i, k] * tangents[b, i, k]
            diagonal = torch.linalg.vecdot(tangents, weight)
        return out, (diagonal * gate).sum(-1)
