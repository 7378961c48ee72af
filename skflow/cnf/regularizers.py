"""Regularizers of "How to train your neural ODE" (Finlay et al. 2020), integrated along the flow.

Both are per-row integrands that ride along the ODE as extra states; the loss adds their weighted
mean over the batch. They favour straight, smooth trajectories, which adaptive solvers cross in
fewer steps.
"""

REGULARIZERS = ("kinetic_energy", "jacobian_frobenius")


def kinetic_energy(velocity, jacobian_sq):
    """``|f(z, t)|^2``, the squared speed of each row."""
    return velocity.pow(2).sum(-1)


def jacobian_frobenius(velocity, jacobian_sq):
    """``||df/dz||_F^2``: exact with the exact divergence, or the unbiased Hutchinson estimate
    ``|e^T df/dz|^2`` reused from the divergence's vector-Jacobian product."""
    return jacobian_sq


INTEGRANDS = {"kinetic_energy": kinetic_energy, "jacobian_frobenius": jacobian_frobenius}
