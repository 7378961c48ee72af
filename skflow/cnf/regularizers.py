"""Regularizers of "How to train your neural ODE" (Finlay et al. 2020), integrated along the flow.

Both are per-row integrands that ride along the ODE as extra states; the loss adds their weighted
mean over the batch. They favour straight, smooth trajectories, which adaptive solvers cross in
fewer steps.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["INTEGRANDS", "REGULARIZERS", "jacobian_frobenius", "kinetic_energy"]

REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


def kinetic_energy(velocity: torch.Tensor, jacobian_sq: torch.Tensor) -> torch.Tensor:
    """``|f(z, t)|^2``, the squared speed of each row.

    Parameters
    ----------
    velocity : torch.Tensor of shape (n, d)
        The dynamics at each row.
    jacobian_sq : torch.Tensor of shape (n,)
        Unused; every integrand takes the same arguments.

    Returns
    -------
    torch.Tensor of shape (n,)
        The squared speed of each row.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.regularizers import kinetic_energy
    >>> kinetic_energy(torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.zeros(2)).tolist()
    [25.0, 1.0]
    """
    return velocity.pow(2).sum(-1)


def jacobian_frobenius(velocity: torch.Tensor, jacobian_sq: torch.Tensor) -> torch.Tensor:
    """``||df/dz||_F^2``: exact with the exact divergence, or the unbiased Hutchinson estimate
    ``|e^T df/dz|^2`` reused from the divergence's vector-Jacobian product.

    Parameters
    ----------
    velocity : torch.Tensor of shape (n, d)
        Unused; every integrand takes the same arguments.
    jacobian_sq : torch.Tensor of shape (n,)
        The squared Frobenius norm (or its estimate) that the divergence function returned.

    Returns
    -------
    torch.Tensor of shape (n,)
        ``jacobian_sq`` itself.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.regularizers import jacobian_frobenius
    >>> jacobian_frobenius(torch.zeros(2, 2), torch.tensor([30.0, 2.0])).tolist()
    [30.0, 2.0]
    """
    return jacobian_sq


INTEGRANDS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "kinetic_energy": kinetic_energy, "jacobian_frobenius": jacobian_frobenius}
