"""The training loop: objectives, minibatches, validation, early stopping and fault recovery.

The loop works on a :class:`~skflow.cnf.flow.ContinuousFlow` and tensors; it knows nothing of
scikit-learn. :class:`TrainingConfig` gathers what the estimator's parameters decide.
"""

import copy
import math
import time
import warnings
from dataclasses import dataclass, field

import torch
from scipy.optimize import linear_sum_assignment

from . import distributed
from .cnf.divergence import sample_noise
from .cnf.solver import SolverConfig, SolverError

OBJECTIVES = ("likelihood", "flow_matching", "ot_flow_matching")


class TrainingDivergedError(RuntimeError):
    """Training kept producing non-finite losses or failed solves after the recovery attempts."""


@dataclass
class TrainingConfig:
    objective: str = "likelihood"
    solver: SolverConfig = field(default_factory=SolverConfig)
    divergence: str = "hutchinson"
    noise: str = "rademacher"
    regularization: dict = field(default_factory=dict)  # regularizer name -> weight
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_iter: int = 1000
    n_iter_no_change: int = 10
    validation_interval: int = 50
    validation_atol: float = 1e-5
    validation_rtol: float = 1e-5
    max_num_steps: int = 1000
    max_recoveries: int = 3
    cosine_decay: bool = True
    averaging_decay: float = 0.0  # > 0: validate and keep an exponential average of the weights
    verbose: int = 0
    # Data-parallel over torch.distributed: each rank passes its shard of the training and
    # validation rows; gradients, validation sums and fault flags are combined across ranks.
    distributed: bool = False


@dataclass
class TrainingResult:
    n_iter: int
    history: list
    best_validation_loss: float
    stopped_early: bool
    interrupted: bool


class LikelihoodObjective:
    """Negative log-likelihood (nats per row, standardized units) plus weighted regularizers."""

    def __init__(self, flow, config, generator):
        self.flow, self.config, self.generator = flow, config, generator
        self.regularization = {k: w for k, w in config.regularization.items() if w > 0}
        self.dynamics = flow.training_dynamics(config.divergence, tuple(self.regularization))

    def __call__(self, batch):
        for func in self.dynamics:
            func.nfe = 0
        noise = None
        if self.config.divergence == "hutchinson":
            # One probe per solve, shared by all blocks and the adjoint pass.
            noise = sample_noise(batch.shape, self.config.noise, self.generator, batch.device,
                                 batch.dtype)
        log_prob, penalties = self.flow.training_log_prob(batch, self.config.solver,
                                                          self.dynamics, noise)
        nll = -log_prob.mean()
        loss = nll + sum(w * penalties[k].mean() for k, w in self.regularization.items())
        return loss, nll

    @property
    def nfe(self):
        return sum(func.nfe for func in self.dynamics)


class FlowMatchingObjective:
    """Conditional flow matching (Lipman et al. 2023) on the straight path from data to noise.

    ``x_tau = (1 - tau) x + tau * eps`` has velocity ``eps - x``; with ``ot=True`` the pairs
    ``(x, eps)`` are matched within the minibatch by exact optimal transport (Tong et al. 2024),
    which straightens the learned flow. ``n_blocks`` blocks share the path: block ``k`` covers
    ``tau`` in ``[k / K, (k + 1) / K]`` in its own time ``s``, so its target velocity is
    ``(eps - x) / K``.
    """

    def __init__(self, flow, config, generator, ot=False):
        self.flow, self.generator, self.ot = flow, generator, ot

    def __call__(self, batch):
        x = self.flow.standardize(batch)
        eps = torch.randn(x.shape, generator=self.generator, device=x.device, dtype=x.dtype)
        if self.ot:
            eps = self._ot_pairing(x, eps)
        n_blocks = len(self.flow.blocks)
        tau = torch.rand((x.shape[0], 1), generator=self.generator, device=x.device, dtype=x.dtype)
        x_tau = (1 - tau) * x + tau * eps
        target = (eps - x) / n_blocks
        block_index = (tau[:, 0] * n_blocks).long().clamp(max=n_blocks - 1)
        s = tau * n_blocks - block_index[:, None]
        loss = 0.0
        for k, block in enumerate(self.flow.blocks):
            rows = block_index == k
            residual = block.velocity(s[rows], x_tau[rows]) - target[rows]
            loss = loss + residual.pow(2).sum()
        loss = loss / x.shape[0]
        return loss, loss

    nfe = 0  # no ODE solve

    @staticmethod
    def _ot_pairing(x, eps, block=256):
        """Reorder ``eps`` to the optimal assignment to ``x`` (squared distances), solved within
        blocks of ``block`` rows: exact assignment costs O(n^3), which at a batch of 1024 would
        dwarf the training step."""
        paired = torch.empty_like(eps)
        for start in range(0, x.shape[0], block):
            rows = slice(start, start + block)
            cost = torch.cdist(x[rows], eps[rows]).pow(2).cpu().numpy()
            _, columns = linear_sum_assignment(cost)
            paired[rows] = eps[rows][torch.as_tensor(columns, device=x.device)]
        return paired


def make_objective(flow, config, generator):
    if config.objective == "likelihood":
        return LikelihoodObjective(flow, config, generator)
    return FlowMatchingObjective(flow, config, generator, ot=config.objective == "ot_flow_matching")


def validation_loss(flow, X_val, config):
    """Mean exact negative log-likelihood (standardized units) with the per-row solver."""
    with torch.no_grad():
        log_prob = flow.log_prob(X_val, config.validation_atol, config.validation_rtol,
                                 config.max_num_steps)
        total = float((log_prob - flow.log_abs_det_standardization()).sum())
    return -total / X_val.shape[0]


def _global_validation_loss(flow, X_val, config):
    """The validation loss over all ranks' shards of the validation set (same on every rank)."""
    if not config.distributed:
        return validation_loss(flow, X_val, config)
    n = X_val.shape[0]
    try:
        total = validation_loss(flow, X_val, config) * n if n else 0.0
    except SolverError:  # still join the gather, so that every rank sees the fault
        total = math.nan
    sums = distributed.gather_values([total, n]).sum(axis=0)
    return float(sums[0] / sums[1])


def _state_snapshot(flow, optimizer):
    return copy.deepcopy(flow.state_dict()), copy.deepcopy(optimizer.state_dict())


def _gradients_finite(parameters):
    grads = [p.grad for p in parameters if p.grad is not None]
    return bool(torch.isfinite(torch.stack([g.norm() for g in grads])).all()) if grads else True


class _Progress:
    """verbose=0 silent, 1 a tqdm bar (when tqdm is installed), 2 a line per validation."""

    def __init__(self, verbose, total):
        self.verbose, self.bar = verbose, None
        if verbose == 1:
            try:
                from tqdm.auto import tqdm
                self.bar = tqdm(total=total, desc="fit", leave=False)
            except ImportError:
                self.verbose = 2

    def step(self):
        if self.bar is not None:
            self.bar.update(1)

    def record(self, entry):
        if self.bar is not None:
            self.bar.set_postfix(train=f"{entry['train_loss']:.3f}", val=f"{entry['val_loss']:.3f}",
                                 nfe=f"{entry['nfe_forward']:.0f}")
        elif self.verbose >= 2:
            print(f"iter {entry['iteration']:5d}  train {entry['train_loss']:.4f}  "
                  f"val {entry['val_loss']:.4f}  nfe {entry['nfe_forward']:.0f}+"
                  f"{entry['nfe_backward']:.0f}  {entry['time']:.1f}s", flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _recover(fault, recoveries, flow, optimizer, good_state, config, iteration):
    """Restore the last good weights and divide the learning rate by 10, or give up."""
    recoveries += 1
    if recoveries > config.max_recoveries:
        raise TrainingDivergedError(
            f"training failed {recoveries} times ({fault}) even after restoring the last good "
            "weights and lowering the learning rate. Try a smaller learning_rate, a fixed-grid "
            "solver, a larger weight_decay, or the kinetic_energy / jacobian_frobenius "
            "regularizers; if the solves hit max_num_steps, raise max_num_steps or loosen the "
            "tolerances.") from fault
    flow.load_state_dict(good_state[0])
    optimizer.load_state_dict(good_state[1])
    warnings.warn(f"{fault} at iteration {iteration}: restored the last good weights and divided "
                  "the learning rate by 10.", RuntimeWarning, stacklevel=4)
    return recoveries


def _learning_rate_factor(iteration, max_iter, cosine_decay):
    """Cosine decay from 1 to 0.1 over the run: large steps early, fine ones at the end."""
    if not cosine_decay:
        return 1.0
    return 0.1 + 0.45 * (1 + math.cos(math.pi * min(iteration / max_iter, 1.0)))


class _AveragedWeights:
    """Exponential moving average of the weights (Polyak averaging). Flow matching's regression
    targets are noisy, and the average of the iterates is a markedly better density than the
    last iterate; it is what gets validated and kept."""

    def __init__(self, flow, decay):
        self.decay, self.model, self.steps = decay, copy.deepcopy(flow), 0

    def update(self, flow):
        self.steps += 1
        weight = 1 - min(self.decay, (1 + self.steps) / (10 + self.steps))  # short warm-up
        with torch.no_grad():
            for averaged, current in zip(self.model.parameters(), flow.parameters()):
                averaged.lerp_(current, weight)

    def reset(self, flow):
        self.model.load_state_dict(flow.state_dict())
        self.steps = 0


def train(flow, optimizer, X_train, X_val, config, generator, n_iter_start=0):
    """Train ``flow`` in place for up to ``config.max_iter`` optimizer steps.

    Validation runs every ``validation_interval`` steps and at the end; training stops after
    ``n_iter_no_change`` validations without improvement, and the best-validation weights are
    restored (with ``averaging_decay`` > 0, validation and the kept weights use an exponential
    moving average of the iterates). The learning rate follows a cosine decay to a tenth of its start (unless
    ``cosine_decay`` is off). A non-finite loss or gradient, or a failed solve, restores the
    last good weights, divides the learning rate by 10 and continues; after ``max_recoveries`` such faults
    :class:`TrainingDivergedError` is raised. Ctrl-C stops training and keeps the best weights.
    """
    parameters = [p for p in flow.parameters() if p.requires_grad]
    objective = make_objective(flow, config, generator)
    n_train = X_train.shape[0]
    batch_size = min(config.batch_size, n_train)
    history, progress = [], _Progress(config.verbose, config.max_iter)
    best_loss, best_state = math.inf, copy.deepcopy(flow.state_dict())
    good_state = _state_snapshot(flow, optimizer)
    averaged = _AveragedWeights(flow, config.averaging_decay) if config.averaging_decay else None
    n_bad, recoveries, stopped_early, interrupted = 0, 0, False, False
    sums = dict(loss=0.0, nfe_forward=0, nfe_backward=0, count=0)
    permutation, cursor = None, n_train
    base_lrs, lr_scale = [group["lr"] for group in optimizer.param_groups], 1.0
    started = time.perf_counter()
    iteration = 0
    try:
        while iteration < config.max_iter:
            if cursor + batch_size > n_train:  # new epoch: reshuffle
                permutation = torch.randperm(n_train, generator=generator, device=X_train.device)
                cursor = 0
            batch = X_train[permutation[cursor:cursor + batch_size]]
            cursor += batch_size

            factor = lr_scale * _learning_rate_factor(iteration, config.max_iter,
                                                      config.cosine_decay)
            for group, base_lr in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base_lr * factor
            optimizer.zero_grad(set_to_none=True)
            fault = None
            try:
                loss, nll = objective(batch)
                nfe_forward = objective.nfe
                if not torch.isfinite(loss):
                    raise FloatingPointError("non-finite loss")
                loss.backward()
            except (SolverError, FloatingPointError) as error:
                fault = error
            if config.distributed:  # every rank takes the same branch: recover if any failed
                if distributed.any_across_ranks(fault is not None) and fault is None:
                    fault = FloatingPointError("non-finite loss or failed solve on another rank")
                if fault is None:
                    distributed.average_gradients(parameters)
            if fault is None:
                bad_gradient = not _gradients_finite(parameters)
                if config.distributed:
                    bad_gradient = distributed.any_across_ranks(bad_gradient)
                if bad_gradient:
                    fault = FloatingPointError("non-finite gradient")
            if fault is not None:
                recoveries = _recover(fault, recoveries, flow, optimizer, good_state, config,
                                      n_iter_start + iteration + 1)
                lr_scale /= 10
                if averaged:
                    averaged.reset(flow)
                continue
            optimizer.step()
            if averaged:
                averaged.update(flow)
            iteration += 1
            progress.step()
            sums["loss"] += float(nll.detach())
            sums["nfe_forward"] += nfe_forward
            sums["nfe_backward"] += objective.nfe - nfe_forward
            sums["count"] += 1

            if iteration % config.validation_interval == 0 or iteration == config.max_iter:
                validated = averaged.model if averaged else flow
                try:
                    val_loss = _global_validation_loss(validated, X_val, config)
                    fault = None if math.isfinite(val_loss) else FloatingPointError(
                        "non-finite validation loss")
                except SolverError as error:  # a failed validation solve is a fault too
                    fault = error
                if fault is not None:
                    recoveries = _recover(fault, recoveries, flow, optimizer, good_state, config,
                                          n_iter_start + iteration)
                    lr_scale /= 10
                    if averaged:
                        averaged.reset(flow)
                    continue
                count, elapsed = sums["count"], time.perf_counter() - started
                if config.distributed:  # means over the ranks, the slowest rank's time
                    gathered = distributed.gather_values(
                        [sums["loss"], sums["nfe_forward"], sums["nfe_backward"], elapsed])
                    sums["loss"], sums["nfe_forward"], sums["nfe_backward"] = map(
                        float, gathered[:, :3].mean(axis=0))
                    elapsed = float(gathered[:, 3].max())
                entry = dict(iteration=n_iter_start + iteration, train_loss=sums["loss"] / count,
                             val_loss=val_loss, nfe_forward=sums["nfe_forward"] / count,
                             nfe_backward=sums["nfe_backward"] / count,
                             learning_rate=optimizer.param_groups[0]["lr"],
                             time=elapsed)
                history.append(entry)
                progress.record(entry)
                sums = dict(loss=0.0, nfe_forward=0, nfe_backward=0, count=0)
                good_state = _state_snapshot(flow, optimizer)
                if val_loss < best_loss - 1e-4:
                    best_loss, n_bad = val_loss, 0
                    best_state = copy.deepcopy(validated.state_dict())
                else:
                    n_bad += 1
                    if n_bad >= config.n_iter_no_change:
                        stopped_early = True
                        break
    except KeyboardInterrupt:
        interrupted = True
        warnings.warn(f"fit interrupted at iteration {n_iter_start + iteration}; keeping the best "
                      "weights found so far.", RuntimeWarning, stacklevel=3)
    finally:
        progress.close()

    if interrupted and not math.isfinite(best_loss):
        # Interrupted before the first validation: keep the steps taken if their weights
        # validate (on this rank's rows: no collectives here), else the last good weights.
        try:
            best_loss = validation_loss(flow, X_val, config) if len(X_val) else math.nan
        except (SolverError, KeyboardInterrupt):
            best_loss = math.nan
        if math.isfinite(best_loss):
            best_state = copy.deepcopy(flow.state_dict())
        else:
            best_loss, best_state = math.inf, good_state[0]
            flow.load_state_dict(best_state)
    elif not math.isfinite(best_loss):
        raise TrainingDivergedError(
            "no validation succeeded: every validation solve failed or was non-finite, so the "
            "weights were never checked. Try a smaller learning_rate, a larger max_num_steps or "
            "looser atol / rtol.")
    if math.isfinite(best_loss):
        flow.load_state_dict(best_state)
    return TrainingResult(n_iter=iteration, history=history, best_validation_loss=best_loss,
                          stopped_early=stopped_early, interrupted=interrupted)
