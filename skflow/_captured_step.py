"""A training step on fixed buffers, captured once as a CUDA graph and replayed.

A GPU's flow-matching step on a few thousand rows is bound by kernel launches and Python, not
by arithmetic (``benchmarks/results/toy_gpu.md``: the default fit was no faster on an H200
than on one CPU core). Captured, the whole step (the loss, its gradient, Adam's update and the
weight average) is one graph launch: the host draws the step's random numbers, copies them and
the minibatch into the graph's input buffers, and never waits for the device. So a non-finite
loss is not checked at each step (that check is a wait); it surfaces at the next validation,
in the sum of the training losses, and is recovered from there like any fault.

There are no graphs on a CPU: there the same step runs eagerly on the same buffers, which is
how the tests check its arithmetic without a GPU.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["WARMUP_STEPS", "CapturedStep"]

# Eager steps before the capture: autograd's and the BLAS handles' lazy set-up, and Adam's
# moments, must exist before a graph can record the step (PyTorch's CUDA-graph recipe).
WARMUP_STEPS = 3


class CapturedStep:
    """One optimizer step at a time, replayed from a CUDA graph on a GPU: flow matching's, or
    the likelihood's with a fixed-grid solver and direct backpropagation.

    Parameters
    ----------
    objective : FlowMatchingObjective or LikelihoodObjective
        Its ``draw`` runs on the host side of the step, its ``losses`` inside the graph.
    optimizer : torch.optim.Adam
        On a GPU with ``capturable=True`` and a tensor learning rate (which the graph reads).
    averaged : object or None
        The weight average, with ``advance()`` (host: the next weight) and ``apply()``
        (device: the update), or None.

    Examples
    --------
    On a CPU the step runs eagerly; it returns the loss as a tensor, not waited for:

    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.cnf.objectives import FlowMatchingObjective
    >>> from skflow._captured_step import CapturedStep
    >>> flow = ContinuousFlow(2, (8,))
    >>> objective = FlowMatchingObjective(flow, torch.Generator().manual_seed(0))
    >>> optimizer = torch.optim.Adam(flow.parameters(), lr=1e-2)
    >>> step = CapturedStep(objective, optimizer)
    >>> losses = [step(torch.randn(64, 2)) for _ in range(3)]
    >>> losses[0].shape, step.graph is None
    (torch.Size([]), True)
    """

    def __init__(self, objective, optimizer: torch.optim.Optimizer, averaged=None) -> None:
        self.objective, self.optimizer, self.averaged = objective, optimizer, averaged
        self.inputs: list[torch.Tensor] | None = None  # rows, then the objective's draws
        self.loss: torch.Tensor | None = None
        self.nfe = 0  # dynamics evaluations of a step: the same at every step of a fixed grid
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warm_steps, self.eager = 0, False

    def reset(self) -> None:
        """Forget the graph (it holds the optimizer's old state tensors, which a recovery
        replaced): the next steps warm up and capture again."""
        self.graph, self.warm_steps = None, 0

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """One step on the rows ``batch``; returns its loss (a device tensor)."""
        values = (batch, *self.objective.draw(batch))
        if self.inputs is None:
            self.inputs = [value.clone() for value in values]
        else:
            for buffer, value in zip(self.inputs, values):
                buffer.copy_(value)
        if self.averaged is not None:
            self.averaged.advance()
        if self.graph is not None:
            self.graph.replay()
        elif batch.device.type != "cuda" or self.eager:
            self._step()
        elif self.warm_steps < WARMUP_STEPS:
            self._warm_up(batch.device)
        else:
            self._capture()
        return self.loss

    def _step(self) -> None:
        """The device side of a step: loss, gradient, Adam, weight average."""
        self.optimizer.zero_grad(set_to_none=True)
        loss, reported = self.objective.losses(*self.inputs, fixed_shapes=True)
        self.nfe = self.objective.nfe
        loss.backward()
        self.optimizer.step()
        if self.averaged is not None:
            self.averaged.apply()
        self.loss = reported.detach()

    def _warm_up(self, device: torch.device) -> None:
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            self._step()
        torch.cuda.current_stream(device).wait_stream(side)
        self.warm_steps += 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._step()
        except RuntimeError as error:  # an op that cannot be captured: train without graphs
            warnings.warn(f"the training step could not be captured as a CUDA graph ({error}); "
                          "training goes on step by step.", RuntimeWarning, stacklevel=4)
            self.eager = True
            self._step()
            return
        graph.replay()  # capturing records the step without running it
        self.graph = graph
