"""Divergence ``Tr(df/dz)`` of the dynamics: exact, or Hutchinson's unbiased estimate.

Each function returns ``(velocity, divergence, jacobian_sq)`` where ``jacobian_sq`` is the squared
Frobenius norm of ``df/dz`` per row (exact) or its unbiased one-probe estimate ``|e^T J|^2``
(Hutchinson), which the Jacobian regularizer reuses at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["exact_divergence", "hutchinson_divergence", "sample_noise"]

# The dynamics as ``velocity_fn(t, z)``: time first, as torchdiffeq calls them.
_VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _differentiable(z: torch.Tensor, create_graph: bool) -> torch.Tensor:
    """``z`` itself when gradients must flow back through it, else a fresh leaf to differentiate
    against (a solver may hand over a tensor that requires grad but is outside any graph)."""
    if create_graph and z.requires_grad:
        return z
    return z.detach().requires_grad_(True)


def exact_divergence(velocity_fn: _VelocityFn, t: torch.Tensor, z: torch.Tensor,
                     create_graph: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exact trace with all ``d`` vector-Jacobian products in one batched call.

    The rows are replicated ``d`` times, the dynamics are evaluated once on the ``d * n`` rows and a
    single backward pass with one-hot cotangents returns every row of the Jacobian. This costs one
    forward and one backward pass of ``d`` times the batch, instead of ``d`` separate backward
    passes, and each output row depends only on its own input row.

    Parameters
    ----------
    velocity_fn : callable
        ``velocity_fn(t, z)``, the dynamics; must treat rows independently.
    t : torch.Tensor
        A scalar time, or a column ``(n, 1)`` of one time per row.
    z : torch.Tensor of shape (n, d)
        The rows.
    create_graph : bool
        Whether the results must be differentiable (training), or only values (validation).

    Returns
    -------
    velocity : torch.Tensor of shape (n, d)
        ``velocity_fn(t, z)``.
    divergence : torch.Tensor of shape (n,)
        ``Tr(df/dz)`` of each row.
    jacobian_sq : torch.Tensor of shape (n,)
        ``||df/dz||_F^2`` of each row.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.divergence import exact_divergence
    >>> A = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    >>> velocity, div, jac_sq = exact_divergence(lambda t, z: z @ A.T, torch.tensor(0.0),
    ...                                          torch.ones(3, 2), create_graph=False)
    >>> div.tolist(), jac_sq.tolist()  # trace 1 + 4, squared norm 1 + 4 + 9 + 16
    ([5.0, 5.0, 5.0], [30.0, 30.0, 30.0])
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


def hutchinson_divergence(velocity_fn: _VelocityFn, t: torch.Tensor, z: torch.Tensor,
                          noise: torch.Tensor, create_graph: bool
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hutchinson's estimate ``e^T (df/dz) e`` from one vector-Jacobian product.

    Parameters
    ----------
    velocity_fn : callable
        ``velocity_fn(t, z)``, the dynamics.
    t : torch.Tensor
        A scalar time, or a column ``(n, 1)`` of one time per row.
    z : torch.Tensor of shape (n, d)
        The rows.
    noise : torch.Tensor of shape (n, d)
        The probe ``e``: zero mean and identity covariance (see :func:`sample_noise`). It is
        held fixed for a whole solve, so that the integrand is a smooth function of time.
    create_graph : bool
        Whether the results must be differentiable (training), or only values (validation).

    Returns
    -------
    velocity : torch.Tensor of shape (n, d)
        ``velocity_fn(t, z)``.
    divergence : torch.Tensor of shape (n,)
        ``e^T (df/dz) e`` of each row, an unbiased estimate of the trace.
    jacobian_sq : torch.Tensor of shape (n,)
        ``|e^T df/dz|^2`` of each row, an unbiased estimate of ``||df/dz||_F^2``.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.divergence import hutchinson_divergence, sample_noise
    >>> A = torch.diag(torch.tensor([1.0, 3.0]))
    >>> noise = sample_noise((3, 2), "rademacher", torch.Generator().manual_seed(0))
    >>> velocity, div, jac_sq = hutchinson_divergence(lambda t, z: z @ A.T, torch.tensor(0.0),
    ...                                               torch.ones(3, 2), noise, create_graph=False)
    >>> div.tolist(), jac_sq.tolist()  # exact for a diagonal Jacobian and a +-1 probe
    ([4.0, 4.0, 4.0], [10.0, 10.0, 10.0])
    """
    with torch.enable_grad():
        z = _differentiable(z, create_graph)
        velocity = velocity_fn(t, z)
        (vjp,) = torch.autograd.grad(velocity, z, noise, create_graph=create_graph)
    divergence = (vjp * noise).sum(-1)
    jacobian_sq = vjp.pow(2).sum(-1)
    return velocity, divergence, jacobian_sq


def sample_noise(shape: tuple[int, ...] | torch.Size, kind: str,
                 generator: torch.Generator | None = None,
                 device: str | torch.device | None = None,
                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Probe vectors for Hutchinson's estimator: ``'rademacher'`` (+-1) or ``'gaussian'``.

    Parameters
    ----------
    shape : tuple of int
        Shape of the probes, that of the rows they probe.
    kind : {'rademacher', 'gaussian'}
        Random signs, or standard normal values (any other name).
    generator : torch.Generator, default=None
        Source of the draws; the global torch generator when None.
    device : str or torch.device, default=None
        Where the probes are made.
    dtype : torch.dtype, default=torch.float32
        Their precision.

    Returns
    -------
    noise : torch.Tensor
        Zero mean and identity covariance.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.divergence import sample_noise
    >>> generator = torch.Generator().manual_seed(0)
    >>> noise = sample_noise((4, 3), "rademacher", generator)
    >>> noise.shape, noise.dtype, bool((noise.abs() == 1).all())
    (torch.Size([4, 3]), torch.float32, True)
    >>> sample_noise((4, 3), "gaussian", generator, dtype=torch.float64).dtype
    torch.float64
    """
    if kind == "rademacher":
        signs = torch.randint(0, 2, shape, generator=generator, device=device)
        return (2 * signs - 1).to(dtype)
    return torch.randn(shape, generator=generator, device=device, dtype=dtype)
