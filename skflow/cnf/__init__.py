"""The continuous normalizing flow behind the estimators.

- ``layers``: time-conditioned layers, activations and the dynamics network ``f(z, t)``.
- ``divergence``: the divergence of the dynamics, exact or Hutchinson's estimate.
- ``regularizers``: kinetic-energy and Jacobian-norm integrands that ride along the ODE.
- ``solver``: solver settings, torchdiffeq solves for training, a per-row solver for evaluation.
- ``frozen``: a block with its weights prepared once for evaluation, with an exact trace.
- ``flow``: CNF blocks, the flow they stack into, its training log density and ``FlowSpec``.
- ``objectives``: training objectives, maximum likelihood and (optimal-transport) flow matching.
- ``evaluation``: the ``Evaluator``, per-row log densities, latents and inverses of a flow.
"""

__all__: list[str] = []  # the modules are the public surface
