"""Divergence ``Tr(df/dz)`` of the dynamics: exact, or Hutchinson's unbiased estimate.

Each function returns ``(velocity, divergence, jacobian_sq)`` where ``jacobian_sq`` is the squared
Frobenius norm of ``df/dz`` per row (exact) or its unbiased one-probe estimate ``|e^T J|^2``
(Hutchinson), which the Jacobian regularizer reuses at no extra cost.
"""

import torch


def _differentiable(z, create_graph):
    """``z`` itself when gradients must flow back through it, else a fresh leaf to differentiate
    against (a solver may hand over a tensor that requires grad but is outside any graph)."""
    if create_graph and z.requires_grad:
        return z
    return z.detach().requires_grad_(True)


def exact_divergence(velocity_fn, t, z, create_graph):
    """Exact trace with all ``d`` vector-Jacobian products in one batched call.

    The rows are replicated ``d`` times, the dynamics are evaluated once on the ``d * n`` rows and a
    single backward pass with one-hot cotangents returns every row of the Jacobian. This costs one
    forward and one backward pass of ``d`` times the batch, instead of ``d`` separate backward
    passes, and each output row depends only on its own input row.
    """
    n, d = z.shape
    with torch.enable_grad():
        z_rep = _differentiable(z, create_graph).repeat(d, 1)
        t_rep = t.repeat(d, 1) if t.dim() == 2 else t
        v_rep = velocity_fn(t_rep, z_rep)
        one_hot = torch.eye(d, dtype=z.dtype, device=z.device).repeat_interleave(n, dim=0)
        (jac_rows,) = torch.autograd.grad(v_rep, z_rep, one_hot, create_graph=create_graph)
    jac_rows = jac_rows.view(d, n, d)  # jac_rows[i, b, :] = d f_i / d z for row b
    divergence = torch.diagonal(jac_rows, dim1=0, dim2=2).sum(-1)
    jacobian_sq = jac_rows.pow(2).sum(dim=(0, 2))
    return v_rep[:n], divergence, jacobian_sq


def hutchinson_divergence(velocity_fn, t, z, noise, create_graph):
    """Hutchinson's estimate ``e^T (df/dz) e`` from one vector-Jacobian product.

    ``noise`` has the shape of ``z``, zero mean and identity covariance (Rademacher or Gaussian),
    and is held fixed for a whole solve so the integrand is a smooth function of time.
    """
    with torch.enable_grad():
        z = _differentiable(z, create_graph)
        velocity = velocity_fn(t, z)
        (vjp,) = torch.autograd.grad(velocity, z, noise, create_graph=create_graph)
    divergence = (vjp * noise).sum(-1)
    jacobian_sq = vjp.pow(2).sum(-1)
    return velocity, divergence, jacobian_sq


def sample_noise(shape, kind, generator=None, device=None, dtype=torch.float32):
    """Probe vectors for Hutchinson's estimator: ``'rademacher'`` (+-1) or ``'gaussian'``."""
    if kind == "rademacher":
        signs = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * signs - 1).to(dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
