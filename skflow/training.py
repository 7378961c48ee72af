"""Training: :func:`fit_flow` fits a CNF to rows in flow space.

It knows nothing of scikit-learn: :class:`TrainingConfig` gathers what the estimator's
parameters decide. One run draws its seed and validation split, trains a float32 copy of the
flow on the device with Adam (minibatches, validation, early stopping, fault recovery) and
returns the float64 flow with the best validated weights. Under ``torchrun`` the ranks train
data-parallel (:mod:`skflow.distributed.torchrun`); in a single process the same code runs
with collectives that do nothing. :func:`seconds_per_step` times a few of a new flow's steps,
for what a time budget affords.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.utils import check_random_state

from ._captured_step import CapturedStep
from ._threads import intra_op_threads, torch_threads
from .cnf.evaluation import Evaluator
from .cnf.flow import ContinuousFlow, FlowSpec
from .cnf.objectives import make_objective
from .cnf.solver import SolverConfig
from .distributed import torchrun
from .exceptions import (
    FitInterruptedWarning,
    SolverError,
    TrainingDivergedError,
    TrainingFaultWarning,
)

__all__ = ["TrainingConfig", "TrainingResult", "fit_flow", "seconds_per_step", "validation_loss"]


@dataclass
class TrainingConfig:
    """How :func:`fit_flow` trains.

    ``n_iter_no_change`` validations without an improvement of 1e-4 nats stop training
    (``math.inf``: never). ``validation_fraction`` of the rows are held out for validation; with
    0, up to 2048 training rows are validated. ``averaging_decay`` > 0 validates and keeps an
    exponential moving average of the weights. ``max_time`` (seconds, None: no limit) ends
    training when it runs out, after a last validation; the learning rate's decay then follows
    whichever of ``max_iter`` and ``max_time`` runs out first. ``validation_atol`` /
    ``validation_rtol`` and ``max_num_steps`` are the validation solver's. ``capture``: None
    captures the training step as a CUDA graph on a GPU
    (:class:`~skflow._captured_step.CapturedStep`; one process; flow matching without optimal
    transport pairing, or likelihood training with a fixed-grid solver and ``adjoint=False``),
    True runs that step on any device (eagerly on a CPU), False never.

    Examples
    --------
    >>> from skflow.training import TrainingConfig
    >>> TrainingConfig(objective="flow_matching", max_iter=200).batch_size
    512
    """

    objective: str = "likelihood"
    solver: SolverConfig = field(default_factory=SolverConfig)
    divergence: str = "hutchinson"
    noise: str = "rademacher"
    regularization: dict = field(default_factory=dict)  # regularizer name -> weight
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_iter: int | float = 1000
    max_time: float | None = None
    validation_fraction: float = 0.1
    n_iter_no_change: float = 10
    validation_interval: int = 50
    validation_atol: float = 1e-5
    validation_rtol: float = 1e-5
    max_num_steps: int = 1000
    max_recoveries: int = 3
    cosine_decay: bool = True
    averaging_decay: float = 0.0
    capture: bool | None = None
    verbose: int = 0


@dataclass
class TrainingResult:
    """What :func:`fit_flow` returns: the fitted float64 flow (on the CPU) and its record.

    ``history`` has one entry per validation (see ``FFJORDDensity.history_``);
    ``best_validation_loss`` is in nats per row, flow space; ``validation_rows`` are the indices
    of the rows held out from training (None when the training rows were validated);
    ``world_size`` counts the ranks that trained together.

    Examples
    --------
    :func:`fit_flow` makes one:

    >>> from dataclasses import fields
    >>> from skflow.training import TrainingResult
    >>> [field.name for field in fields(TrainingResult)][:4]
    ['flow', 'optimizer_state', 'n_iter', 'history']
    """

    flow: ContinuousFlow
    optimizer_state: dict
    n_iter: int
    history: list
    best_validation_loss: float
    stopped_early: bool
    interrupted: bool
    out_of_time: bool
    device: str
    world_size: int
    validation_rows: np.ndarray | None = None


def fit_flow(flow: ContinuousFlow | FlowSpec, Z: np.ndarray, config: TrainingConfig,
             random_state: int | np.random.RandomState | None = None,
             device: str | torch.device = "cpu", optimizer_state: dict | None = None,
             n_iter_start: int = 0, n_threads: int | None = None) -> TrainingResult:
    """Fit a flow to the rows ``Z`` (flow space, float64) and return the result.

    ``flow`` is the flow to continue training (it is not modified) or the :class:`FlowSpec` of
    a new one, built from the run's seed, so that ``random_state`` alone decides the fit.
    ``optimizer_state`` continues Adam's moments (with ``config``'s learning rate and weight
    decay). ``n_threads``: torch's intra-op threads while training (None: one for small
    networks, else torch's current count; the caller's count is restored). A run that cannot
    recover from its faults raises :class:`~skflow.exceptions.TrainingDivergedError`; Ctrl-C
    stops it with the best weights.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.cnf.flow import FlowSpec
    >>> from skflow.training import TrainingConfig, fit_flow
    >>> Z = np.random.RandomState(0).normal(size=(300, 2))
    >>> config = TrainingConfig(objective="flow_matching", max_iter=20, validation_interval=10)
    >>> result = fit_flow(FlowSpec(2, (8,)), Z, config, random_state=0)
    >>> result.n_iter, [entry["iteration"] for entry in result.history]
    (20, [10, 20])
    >>> next(result.flow.parameters()).dtype, len(result.validation_rows), result.world_size
    (torch.float64, 30, 1)
    """
    world, device = torchrun.setup(torch.device(device))  # data-parallel under torchrun
    # Every rank: rank 0's seed and split, and the same rows.
    rng = torchrun.broadcast_object(check_random_state(random_state))
    torchrun.check_same_data(Z)
    seed = int(rng.randint(np.iinfo(np.int32).max))
    master = flow.build(seed) if isinstance(flow, FlowSpec) else copy.deepcopy(flow)
    # The flow is kept in float64 on the CPU; training runs on a float32 copy on the device.
    working = copy.deepcopy(master).to(device=device, dtype=torch.float32)
    train_rows, val_rows = _split(Z.shape[0], config.validation_fraction, rng)
    Z_train, Z_val = (_rank_rows(Z[rows], device) for rows in (train_rows, val_rows))
    run, batches = _start_run(working, Z_train, config, world, seed, optimizer_state,
                              n_iter_start)
    with torch_threads(_training_threads(n_threads, config, len(Z), master)):
        run.train(batches, Z_val)
    torchrun.broadcast_training_state(working, run.optimizer)  # every rank ends with rank 0's
    master.load_state_dict(working.state_dict())  # casts back to float64
    return TrainingResult(
        flow=master, optimizer_state=_portable(run.optimizer.state_dict()), n_iter=run.iteration,
        history=run.history, best_validation_loss=run.best_loss,
        stopped_early=run.stopped_early, interrupted=run.interrupted,
        out_of_time=run.out_of_time, device=str(device),
        world_size=world.size, validation_rows=val_rows if len(train_rows) < len(Z) else None)


def _split(n_rows, validation_fraction, rng):
    """Indices of the training and validation rows; without a split, up to 2048 training rows
    validate."""
    n_val = int(round(validation_fraction * n_rows))
    order = rng.permutation(n_rows)
    if 0 < n_val < n_rows:
        return order[n_val:], order[:n_val]
    return np.arange(n_rows), order[:2048]


def seconds_per_step(spec: FlowSpec, Z: np.ndarray, config: TrainingConfig,
                     device: str | torch.device = "cpu", n_threads: int | None = None,
                     n_steps: int = 8) -> float:
    """Wall seconds of one training step of a new flow of ``spec`` on rows ``Z`` (flow space)
    under ``config``, as :func:`fit_flow` would take it: the median of ``n_steps`` steps after
    two that warm up. For deciding what a time budget affords; the flow is thrown away. Under
    torchrun every rank takes the steps and gets rank 0's time.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow.cnf.flow import FlowSpec
    >>> from skflow.training import TrainingConfig, seconds_per_step
    >>> Z = np.random.RandomState(0).normal(size=(300, 2))
    >>> config = TrainingConfig(objective="flow_matching", batch_size=128)
    >>> 0 < seconds_per_step(FlowSpec(2, (8,)), Z, config) < 1
    True
    """
    world, device = torchrun.setup(torch.device(device))
    flow = spec.build(0).to(device=device, dtype=torch.float32)
    # Enough rows for the steps, not a copy of a large table.
    run, batches = _start_run(flow, _rank_rows(Z[:8 * config.batch_size], device), config,
                              world, seed=0)
    times = []
    with torch_threads(_training_threads(n_threads, config, len(Z), flow)):
        for _ in range(n_steps + 2):
            _synchronize(device)
            start = time.perf_counter()
            run._step(next(batches))
            _synchronize(device)
            times.append(time.perf_counter() - start)
    return float(torchrun.broadcast_object(np.median(times[2:])))


def _rank_rows(Z, device):
    """This rank's shard of the rows ``Z``, float32 on ``device``."""
    return torch.tensor(torchrun.shard_rows(Z), dtype=torch.float32, device=device)


def _start_run(flow, Z_train, config, world, seed, optimizer_state=None, n_iter_start=0):
    """A run that trains ``flow`` (float32, on its device) on this rank's rows ``Z_train``,
    and its minibatches: each rank a share of ``batch_size`` rows, from its own generator."""
    device = Z_train.device
    capture = _captures(config, device, world.size)
    optimizer = _make_optimizer(flow, config, optimizer_state, capture)
    generator = torch.Generator(device=device).manual_seed(seed + world.rank)
    batches = _minibatches(Z_train, max(1, config.batch_size // world.size), generator)
    return _Run(flow, optimizer, config, generator, n_iter_start, capture), batches


def _synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _training_threads(n_threads, config, n_rows, flow):
    """torch's intra-op threads for training ``flow`` (see ``fit_flow``'s ``n_threads``)."""
    width = max(layer.linear.out_features for layer in flow.blocks[0].net.layers)
    return intra_op_threads(n_threads, min(config.batch_size, n_rows), width)


def _captures(config, device, world_size):
    """Whether the run takes :class:`CapturedStep`'s steps (see ``TrainingConfig.capture``)."""
    wanted = device.type == "cuda" if config.capture is None else config.capture
    # The host takes part in the optimal-transport pairing and in torchdiffeq's solves.
    capturable = config.objective == "flow_matching" or (
        config.objective == "likelihood" and config.solver.fixed_grid
        and not config.solver.adjoint)
    return wanted and capturable and world_size == 1


def _make_optimizer(flow, config, state, captured=False):
    """Adam with decoupled weight decay (AdamW), continuing the moments of ``state`` with this
    run's rate and decay. A step captured on a GPU reads its rate from a device tensor and
    updates without waiting for the host (``capturable``)."""
    # Not Adam's L2 term: Adam divides it by the gradient's own scale, so it moves every
    # weight whose loss gradient is below weight_decay times the weight towards zero at the
    # full rate. The zeroed output layer gives the hidden layers no gradient in the first
    # steps, and at 1e-5 that emptied them: ot_flow_matching learned nothing on 7 of 8 seeds
    # of 8gaussians. Decoupled decay shrinks each weight by rate * weight_decay of itself.
    parameters = [p for p in flow.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    if state is not None:
        optimizer.load_state_dict(copy.deepcopy(state))  # Adam updates its moments in place
        for group in optimizer.param_groups:
            group["lr"], group["weight_decay"] = config.learning_rate, config.weight_decay
            if "decoupled_weight_decay" in group:  # a state saved by Adam says False
                group["decoupled_weight_decay"] = True
    device = parameters[0].device
    if captured and device.type == "cuda":  # the rate and the step counts on the device
        for group in optimizer.param_groups:
            group["lr"], group["capturable"] = torch.tensor(group["lr"], device=device), True
        for moments in optimizer.state.values():
            moments["step"] = moments["step"].to(device)
    return optimizer


def _portable(optimizer_state):
    """An optimizer state that any run continues: on the CPU, a float rate, not capturable."""
    state = _to_cpu(optimizer_state)
    for group in state["param_groups"]:
        group["lr"], group["capturable"] = float(group["lr"]), False
    return state


def _set_learning_rate(group, value):
    if torch.is_tensor(group["lr"]):  # read by a captured step: change it in place
        group["lr"].fill_(value)
    else:
        group["lr"] = value


def _minibatches(Z, batch_size, generator) -> Iterator[torch.Tensor]:
    """Minibatches of ``batch_size`` rows, reshuffled at every epoch (the last partial one
    dropped)."""
    n = Z.shape[0]
    batch_size = min(batch_size, n)
    while True:
        permutation = torch.randperm(n, generator=generator, device=Z.device)
        for start in range(0, n - batch_size + 1, batch_size):
            yield Z[permutation[start:start + batch_size]]


def validation_loss(flow: ContinuousFlow, Z_val: torch.Tensor, config: TrainingConfig) -> float:
    """Mean exact negative log-likelihood of the rows ``Z_val`` (flow space), per-row solver.

    Examples
    --------
    >>> import torch
    >>> from skflow.cnf.flow import ContinuousFlow
    >>> from skflow.training import TrainingConfig, validation_loss
    >>> flow = ContinuousFlow(2, (8,))  # the identity map: the standard normal's loss
    >>> round(validation_loss(flow, torch.zeros(3, 2), TrainingConfig()), 4)
    1.8379
    """
    dtype = next(flow.parameters()).dtype
    evaluator = Evaluator(flow, config.validation_atol, config.validation_rtol,
                          config.max_num_steps, dtype=dtype, device=Z_val.device,
                          n_threads=torch.get_num_threads())  # as many as training uses
    return -float(evaluator.log_prob(Z_val).mean())


def _global_validation_loss(flow, Z_val, config):
    """The validation loss over all ranks' shards (the same on every rank). A rank whose solve
    failed still joins the gather, so that every rank sees the fault, then raises its error."""
    n, error = Z_val.shape[0], None
    try:
        total = validation_loss(flow, Z_val, config) * n if n else 0.0
    except SolverError as failure:
        total, error = math.nan, failure
    sums = torchrun.gather_values([total, n]).sum(axis=0)
    if error is not None:
        raise error
    return float(sums[0] / sums[1])


def _state_snapshot(flow, optimizer):
    return copy.deepcopy(flow.state_dict()), copy.deepcopy(optimizer.state_dict())


def _gradients_finite(parameters):
    grads = [p.grad for p in parameters if p.grad is not None]
    # One fused norm per step on a GPU; on a CPU, a norm per tensor as before.
    return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()) if grads else True


def _learning_rate_factor(done, cosine_decay):
    """Cosine decay from 1 to 0.1 over the run (``done`` goes from 0 to 1): large steps early,
    fine ones at the end."""
    if not cosine_decay:
        return 1.0
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0)))


def _to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state


class _Progress:
    """verbose=0 silent, 1 a tqdm bar (when tqdm is installed), 2 a line per validation."""

    def __init__(self, verbose, total):
        self.verbose, self.bar = verbose, None
        if verbose == 1:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total if math.isfinite(total) else None, desc="fit",
                                leave=False)
            except ImportError:
                self.verbose = 2

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def record(self, entry):
        # Function evaluations are shown only where training solves the ODE (likelihood):
        # flow matching's would always read 0.
        solves = entry["nfe_forward"] > 0
        if self.bar is not None:
            shown = dict(train=f"{entry['train_loss']:.3f}", val=f"{entry['val_loss']:.3f}")
            if solves:
                shown["nfe"] = f"{entry['nfe_forward']:.0f}+{entry['nfe_backward']:.0f}"
            self.bar.set_postfix(shown)
        elif self.verbose >= 2:
            nfe = (f"  nfe {entry['nfe_forward']:.0f}+{entry['nfe_backward']:.0f}" if solves
                   else "")
            print(f"iter {entry['iteration']:5d}  train {entry['train_loss']:.4f}  "
                  f"val {entry['val_loss']:.4f}{nfe}  {entry['time']:.1f}s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


class _AveragedWeights:
    """Exponential moving average of the weights of ``flow`` (Polyak averaging). Flow matching's
    regression targets are noisy, and the average of the iterates is a markedly better density
    than the last iterate; it is what gets validated and kept. An update is the host's
    :meth:`advance` (the next weight, written into a device tensor) and the device's
    :meth:`apply`, so that a captured step can replay the second."""

    def __init__(self, flow, decay):
        self.flow, self.decay, self.model, self.steps = flow, decay, copy.deepcopy(flow), 0
        first = next(flow.parameters())
        self.weight = torch.zeros((), dtype=first.dtype, device=first.device)

    def update(self):
        self.advance()
        self.apply()

    def advance(self):
        self.steps += 1
        self.weight.fill_(1 - min(self.decay, (1 + self.steps) / (10 + self.steps)))  # warm-up

    def apply(self):
        with torch.no_grad():  # one fused update on a GPU (on a CPU, lerp_ per tensor as before)
            torch._foreach_lerp_(list(self.model.parameters()), list(self.flow.parameters()),
                                 self.weight)

    def reset(self):
        self.model.load_state_dict(self.flow.state_dict())
        self.steps = 0


class _Sums:
    """Training loss and evaluation counts summed since the last validation. The loss is summed
    where it was computed, in float64 (as a Python float would be), so that a step does not
    wait for the device to report it."""

    def __init__(self):
        self.loss, self.nfe_forward, self.nfe_backward, self.count = 0.0, 0, 0, 0

    def add(self, loss: torch.Tensor, nfe_forward, nfe_backward):
        self.loss = self.loss + loss.detach().double()
        self.nfe_forward += nfe_forward
        self.nfe_backward += nfe_backward
        self.count += 1

    def means(self, elapsed):
        """Means over the steps and the ranks, and the slowest rank's time."""
        gathered = torchrun.gather_values([float(self.loss), self.nfe_forward,
                                           self.nfe_backward, elapsed])
        loss, nfe_forward, nfe_backward = (float(v) / self.count
                                           for v in gathered[:, :3].mean(axis=0))
        return loss, nfe_forward, nfe_backward, float(gathered[:, 3].max())


class _Run:
    """One training run: the optimizer steps, validations, recoveries and their record.

    Validation runs every ``validation_interval`` steps and at the end; training stops after
    ``n_iter_no_change`` validations without improvement, and the best-validation weights are
    restored (with ``averaging_decay`` > 0, validation and the kept weights use an exponential
    moving average of the iterates). The learning rate follows a cosine decay to a tenth of its
    start (unless ``cosine_decay`` is off). A non-finite loss or gradient, or a failed solve,
    restores the last good weights (those of the last validation), divides the learning rate
    by 10 and continues; after ``max_recoveries`` such faults :class:`TrainingDivergedError` is
    raised. A captured step (``captured``) is not checked until the next validation. Ctrl-C
    stops training and keeps the best weights.
    """

    def __init__(self, flow, optimizer, config, generator, n_iter_start, captured=False):
        self.flow, self.optimizer, self.config = flow, optimizer, config
        self.n_iter_start = n_iter_start
        self.parameters = [p for p in flow.parameters() if p.requires_grad]
        self.objective = make_objective(flow, config, generator)
        self.averaged = (_AveragedWeights(flow, config.averaging_decay)
                         if config.averaging_decay else None)
        self.captured = (CapturedStep(self.objective, optimizer, self.averaged) if captured
                         else None)
        self.base_lrs, self.lr_scale = [float(g["lr"]) for g in optimizer.param_groups], 1.0
        self.best_loss, self.best_state = math.inf, copy.deepcopy(flow.state_dict())
        self.good_state = _state_snapshot(flow, optimizer)
        self.iteration, self.recoveries, self.n_bad = 0, 0, 0
        self.stopped_early, self.interrupted, self.out_of_time = False, False, False
        self.history, self.sums, self.started = [], _Sums(), time.perf_counter()

    def train(self, batches, Z_val):
        progress = _Progress(self.config.verbose, self.config.max_iter)
        try:
            while (self.iteration < self.config.max_iter and not self.stopped_early
                   and not self.out_of_time):
                fault = self._step(next(batches))
                if fault is not None:
                    self._recover(fault, self.iteration + 1)
                    continue
                progress.step()
                if self.config.max_time is not None:  # every rank stops at the same step
                    self.out_of_time = torchrun.any_across_ranks(
                        time.perf_counter() - self.started >= self.config.max_time)
                if (self.iteration % self.config.validation_interval == 0
                        or self.iteration == self.config.max_iter or self.out_of_time):
                    fault = self._validate(Z_val, progress)
                    if fault is not None:
                        self._recover(fault, self.iteration)
        except KeyboardInterrupt:
            self.interrupted = True
            warnings.warn(f"fit interrupted at iteration {self.n_iter_start + self.iteration}; "
                          "keeping the best weights found so far.", FitInterruptedWarning,
                          stacklevel=4)
        finally:
            progress.close()
        self._keep_best(Z_val)

    def _done(self):
        """The share of the budget used: steps, or time when ``max_time`` is set."""
        done = self.iteration / self.config.max_iter
        if self.config.max_time is not None:
            done = max(done, (time.perf_counter() - self.started) / self.config.max_time)
        return done

    def _step(self, batch):
        """One optimizer step; returns the fault that prevented it, if any (on any rank)."""
        factor = self.lr_scale * _learning_rate_factor(self._done(), self.config.cosine_decay)
        for group, base_lr in zip(self.optimizer.param_groups, self.base_lrs):
            _set_learning_rate(group, base_lr * factor)
        if self.captured is not None:  # no host synchronisation: faults show at validation
            self.sums.add(self.captured(batch), self.captured.nfe, 0)
            self.iteration += 1
            return None
        self.optimizer.zero_grad(set_to_none=True)
        fault = None
        try:
            loss, reported = self.objective(batch)
            nfe_forward = self.objective.nfe
            if not torch.isfinite(loss):
                raise FloatingPointError("non-finite loss")
            loss.backward()
        except (SolverError, FloatingPointError) as error:
            fault = error
        # Every rank takes the same branch: all recover if any failed.
        if torchrun.any_across_ranks(fault is not None) and fault is None:
            fault = FloatingPointError("non-finite loss or failed solve on another rank")
        if fault is None:
            torchrun.average_gradients(self.parameters)
            if torchrun.any_across_ranks(not _gradients_finite(self.parameters)):
                fault = FloatingPointError("non-finite gradient")
        if fault is not None:
            return fault
        self.optimizer.step()
        if self.averaged:
            self.averaged.update()
        self.iteration += 1
        self.sums.add(reported, nfe_forward, self.objective.nfe - nfe_forward)
        return None

    def _validate(self, Z_val, progress):
        """Validate, record, keep the best weights; returns a fault instead, if any."""
        validated = self.averaged.model if self.averaged else self.flow
        if not math.isfinite(float(self.sums.loss)):  # a captured step's fault surfaces here
            return FloatingPointError("non-finite training loss")
        try:
            val_loss = _global_validation_loss(validated, Z_val, self.config)
            if not math.isfinite(val_loss):
                raise FloatingPointError("non-finite validation loss")
        except (SolverError, FloatingPointError) as error:  # a failed validation is a fault
            return error
        loss, nfe_forward, nfe_backward, elapsed = self.sums.means(
            time.perf_counter() - self.started)
        entry = dict(iteration=self.n_iter_start + self.iteration, train_loss=loss,
                     val_loss=val_loss, nfe_forward=nfe_forward, nfe_backward=nfe_backward,
                     learning_rate=float(self.optimizer.param_groups[0]["lr"]), time=elapsed)
        self.history.append(entry)
        progress.record(entry)
        self.sums = _Sums()
        self.good_state = _state_snapshot(self.flow, self.optimizer)
        if val_loss < self.best_loss - 1e-4:
            self.best_loss, self.n_bad = val_loss, 0
            self.best_state = copy.deepcopy(validated.state_dict())
        else:
            self.n_bad += 1
            self.stopped_early = self.n_bad >= self.config.n_iter_no_change
        return None

    def _recover(self, fault, iteration):
        """Restore the last good weights and divide the learning rate by 10, or give up."""
        self.recoveries += 1
        if self.recoveries > self.config.max_recoveries:
            raise TrainingDivergedError(
                f"training failed {self.recoveries} times ({fault}) even after restoring the "
                "last good weights and lowering the learning rate. Try a smaller "
                "learning_rate, a fixed-grid solver, a larger weight_decay, or the "
                "kinetic_energy / jacobian_frobenius regularizers; if the solves hit "
                "max_num_steps, raise max_num_steps or loosen the tolerances.") from fault
        self.flow.load_state_dict(self.good_state[0])
        self.optimizer.load_state_dict(self.good_state[1])
        warnings.warn(f"{fault} at iteration {self.n_iter_start + iteration}: restored the last "
                      "good weights and divided the learning rate by 10.", TrainingFaultWarning,
                      stacklevel=5)
        self.lr_scale /= 10
        self.sums = _Sums()  # the undone steps' losses (non-finite after a captured fault)
        if self.averaged:
            self.averaged.reset()
        if self.captured is not None:
            self.captured.reset()

    def _keep_best(self, Z_val):
        """Load the best validated weights; an interrupted run before its first validation
        keeps the steps taken if they validate (this rank's rows: no collectives here)."""
        if self.interrupted and not math.isfinite(self.best_loss):
            try:
                self.best_loss = (validation_loss(self.flow, Z_val, self.config)
                                  if len(Z_val) else math.nan)
            except (SolverError, KeyboardInterrupt):
                self.best_loss = math.nan
            if math.isfinite(self.best_loss):
                self.best_state = copy.deepcopy(self.flow.state_dict())
            else:
                self.best_loss, self.best_state = math.inf, self.good_state[0]
        elif not math.isfinite(self.best_loss):
            raise TrainingDivergedError(
                "no validation succeeded: every validation solve failed or was non-finite, so "
                "the weights were never checked. Try a smaller learning_rate, a larger "
                "max_num_steps or looser atol / rtol.")
        self.flow.load_state_dict(self.best_state)
