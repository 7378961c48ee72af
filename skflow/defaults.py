"""What the estimators' ``'auto'`` settings resolve to for given data, and the training
configuration that their parameters make.

Each rule was chosen by measurement (``benchmarks/results/``: ``quality.md`` on the development
suite, ``defaults.md``, ``toy.md``); the comments name the measurement behind it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch

from .cnf.solver import SolverConfig
from .training import TrainingConfig

__all__ = ["AUTO", "BLOCK_EPOCHS", "BLOCK_STEPS", "FEW_FEATURES", "FOURTH_LAYER_MAX_FEATURES",
           "FOURTH_LAYER_ROWS", "STEP_SHARE", "STOPPED_EARLY_SHARE", "THIRD_BLOCK_FEATURES",
           "THIRD_BLOCK_ROWS", "VALIDATION_TOLERANCE", "batch_size", "hidden_dims",
           "learning_rate", "learning_rates", "n_blocks", "validation_interval",
           "training_config"]

# 'auto' values by training mode: flow-matching steps cost milliseconds, likelihood steps solve
# the ODE twice. 10,000 flow-matching steps rather than 5,000 (results/quality.md, held-out nats
# per row): compactiv -61.04 against -63.63, airfoil 0.23 against -1.38, miniboone -13.61
# against -14.35, winequality_white 0.54 against -0.11, checkerboard -3.593 against -3.616, for
# about twice the time where a fit runs to the limit; the small sets stop early either way.
AUTO = {
    "likelihood": dict(max_iter=1000, validation_interval=50),
    "flow_matching": dict(max_iter=10000, validation_interval=250),
    "ot_flow_matching": dict(max_iter=5000, validation_interval=250),
}
# Up to this many features, the narrower network and a single flow-matching rate.
FEW_FEATURES = 4
# A fit at the first 'auto' rate that stops early within this share of its steps (or of its
# time budget) is fitted again at the next (``learning_rates``): the suite's tables that
# stopped early before 5,000 of 10,000 steps at 1e-2 did better at 5e-3, those that stopped
# later or ran to the limit did better at 1e-2.
STOPPED_EARLY_SHARE = 0.5
# From this many features and fit rows, a third flow-matching block (``n_blocks``).
THIRD_BLOCK_FEATURES, THIRD_BLOCK_ROWS = 8, 600
# The training steps from which a second and a third block pay (``n_blocks``): a row trains
# only its block, so each block learns from a share of the steps' rows. A small table needs
# fewer: its fits stop early, after about this many passes over its rows or more (the suite's
# tables below 2,000 rows: 870-5,800), so a limit above that does not cut them short.
BLOCK_STEPS, BLOCK_EPOCHS = {2: 5000, 3: 7500}, 1500
# The share of a time budget that goes to training steps rather than validation solves, for
# the steps a budget affords: 60 s default fits of six tables with two or three blocks, steps
# taken times a step's time over the budget, 0.54-0.73 with validation at VALIDATION_TOLERANCE
# (0.32-0.69 when it solved at 1e-5; benchmarks/README.md, "Validation at a looser
# tolerance"): at 0.5 winequality_red and digits_pca15 got fewer blocks than they pay for.
STEP_SHARE = 0.6
# From this many fit rows and up to this many features, the network takes a fourth layer
# (``hidden_dims``): the third block's row threshold, as more capacity needs rows there too;
# the widest tables (puma32h, 33 features; MINIBOONE, 43) gained nothing or lost with it.
FOURTH_LAYER_ROWS, FOURTH_LAYER_MAX_FEATURES = THIRD_BLOCK_ROWS, 32
# Validation only ranks the checkpoints of one fit, so its solves run at this tolerance (or the
# training solver's, if looser): at 1e-5 the validations' exact traces took 31-62% of a wide
# table's fit (one block; each block adds its solve). Default fits, seed 0, against 1e-5 in
# the same run: miniboone, compactiv, electrical_grid and winequality_white scored the same to
# the last digit in 0.68-0.80 of the time; the 2-D densities moved by 0.003 nats or less
# either way (benchmarks/README.md, "Validation at a looser tolerance").
VALIDATION_TOLERANCE = 1e-3
_CPU = torch.device("cpu")


def hidden_dims(n_features: int, n_rows: int) -> tuple[int, ...]:
    """``hidden_dims='auto'``: 64 wide for up to four features, else 128 wide; four layers
    from 600 rows and up to 32 features, else three.

    Wider dynamics fitted the real tables better at about twice the fit time
    (``benchmarks/results/quality_wide_128.md``, held-out nats per row, 128 against 64 wide):
    miniboone (43 features) -14.79 against -19.61, compactiv (22) -67.05 against -72.11, airfoil
    (6) -4.72 against -6.34, treasury (16) -21.31 against -22.86, and gains on 8 of the 11 other
    sets with five features or more (losses: breast_cancer 0.58, diabetes 0.28, puma32h 0.10
    nats); on the 2-D toy densities they gained 0.02-0.06 nats for twice the time, which the
    default fit there does not pay. A fourth layer pays at either width where there are rows
    for it (``benchmarks/README.md``, "A fourth layer"): 64 wide, 4,800 fit rows, seeds 0-4,
    2spirals -2.656 against -2.674 on average, pinwheel -2.331 against -2.342, 8gaussians
    -2.818 against -2.822; 128 wide, the tables with 600 fit rows or more, seed 0 (and 1):
    concrete -20.77 (-20.23) against -22.19 (-22.56), airfoil 1.45 (1.44) against 0.83 (0.33),
    compactiv -58.20 against -58.86, treasury -16.23 against -16.73, 0.2-0.3 nats on
    winequality_red, wizmir and digits_pca15, losses on synthetic10 (0.08, 0.07) and
    electrical_grid (0.04). Below 600 rows it lost: iris (120 fit rows) on three seeds of five,
    breast_cancer (456), diabetes (354) and wine (143) by 0.4-19 nats. On the widest tables it
    did not pay: puma32h (33 features) -54.315 against -54.317 for 1.35x the time, miniboone
    (43) -13.113 against -12.856, and MINIBOONE fitted on its validation split (a table that
    took no part in the choice) -16.058 against -15.263: they keep three layers.

    Examples
    --------
    >>> from skflow.defaults import hidden_dims
    >>> hidden_dims(2, 1000), hidden_dims(2, 300), hidden_dims(10, 1000), hidden_dims(10, 300)
    ((64, 64, 64, 64), (64, 64, 64), (128, 128, 128, 128), (128, 128, 128))
    >>> hidden_dims(43, 5000)
    (128, 128, 128)
    """
    width = 64 if n_features <= FEW_FEATURES else 128
    deep = n_rows >= FOURTH_LAYER_ROWS and n_features <= FOURTH_LAYER_MAX_FEATURES
    return (width,) * (4 if deep else 3)


def learning_rate(training: str, n_features: int) -> float:
    """``learning_rate='auto'``: the first of :func:`learning_rates`.

    Examples
    --------
    >>> from skflow.defaults import learning_rate
    >>> learning_rate("flow_matching", 2), learning_rate("flow_matching", 10)
    (0.01, 0.01)
    """
    return learning_rates(training, n_features)[0]


def learning_rates(training: str, n_features: int) -> tuple[float, ...]:
    """The rates that ``learning_rate='auto'`` tries in turn: 1e-3 for likelihood training;
    for flow matching 1e-2, and for tables of more than four features 5e-3 after it when the
    fit at 1e-2 stops early within :data:`STOPPED_EARLY_SHARE` of its steps or time budget;
    for flow matching with optimal-transport pairs (not measured with the second rate) 1e-2
    up to four features, else 5e-3.

    A fit that runs to its step limit is short of steps, and a larger step buys it more; one
    that stops early overfits, and a smaller step reaches a better peak. Default fits on the
    development suite, seed 0, held-out nats per row, 1e-2 against 5e-3 (``benchmarks/README.md``,
    "A larger step for the tables that train to the limit"): compactiv -56.49 against
    -58.20, winequality_white 2.86 against 1.40, airfoil 2.37 against 1.45, miniboone -12.45
    against -12.86 (these ran to the limit), concrete -20.86 against -20.90 (stopped in the
    second half); treasury gained too (-15.77 against -16.23) but stopped at 2,750 steps, so
    it falls back and keeps -16.23. The other tables whose fits stopped within the first half lost:
    synthetic10 -15.16 against -14.88 (below the tuned mixture), breast_cancer 37.69 against
    37.94, wizmir -6.17 against -5.93, diabetes, digits_pca15, wine and winequality_red by
    0.12-0.20. Their validation losses did not say which rate was better on the smallest
    tables (wine, breast_cancer, digits_pca15), so the second fit is kept, not compared. On the
    2-D toy densities 1e-2 was better than 5e-3 over three seeds each (2spirals -2.716 against
    -2.782, checkerboard -3.619 against -3.653; pinwheel and 8gaussians within 0.01).

    Examples
    --------
    >>> from skflow.defaults import learning_rates
    >>> learning_rates("flow_matching", 2), learning_rates("flow_matching", 10)
    ((0.01,), (0.01, 0.005))
    >>> learning_rates("likelihood", 10), learning_rates("ot_flow_matching", 10)
    ((0.001,), (0.005,))
    """
    if training == "likelihood":
        return (1e-3,)
    if n_features <= FEW_FEATURES:
        return (1e-2,)
    return (1e-2, 5e-3) if training == "flow_matching" else (5e-3,)


def n_blocks(training: str, n_features: int, n_rows: int,
             steps: float | Callable[[int], float] = math.inf, batch_size: int = 1024) -> int:
    """``n_blocks='auto'``: under flow matching one block up to four features, three from
    eight features and 600 rows, else two; one block for the other training modes. Fewer
    where the fit may take fewer ``steps`` than the blocks need: :data:`BLOCK_STEPS`, or
    :data:`BLOCK_EPOCHS` passes over the rows in minibatches of ``batch_size`` if fewer.

    ``steps`` is the step limit (``max_iter``), or a function of a number of blocks that says
    how many steps a time budget (``max_time``) affords that many (their steps cost more).

    Under flow matching the blocks share the path from data to noise, each its own network for
    its own part of the time, and a row trains only the block of its drawn time: each block
    adds one dynamics network's capacity at little cost per step (the same rows, more kernel
    launches), though fits train longer before they stop and scoring integrates every block.
    On the development suite (held-out nats per row):

    - two blocks against one (``benchmarks/results/quality_blocks2.md``) gained on 13 of the 15
      tables with five features or more (compactiv -59.85 against -61.04, winequality_white
      1.49 against 0.54, treasury -17.54 against -18.47), and lost 0.004-0.027 nats on three
      of the four 2-D densities;
    - three blocks against two (seeds 0 and 1, ``benchmarks/README.md``;
      ``results/quality_auto_blocks.md``) gained on 10 of the 11 tables with eight features
      or more and 600 rows or more (winequality_white 2.72 against 1.49, winequality_red 2.45
      and 2.59 against 1.59 and 1.33, concrete -22.84 and -20.54 against -23.37 and -22.74,
      miniboone -12.65 against -13.05; synthetic10 0.005 lower) for 1.2-2.4x the fit time,
      and lost where there were fewer rows (breast_cancer, 456 rows: 35.16 and 36.45 against
      37.75 and 37.41; diabetes, 354 rows, 0.2-0.3 nats) or fewer features (airfoil, 6
      features: -0.44 and 0.31 against 0.53; the first seven columns of winequality_red and
      concrete, 0.01-0.9 nats).

    Those gains were measured at the default 10,000 steps. Each block learns from a share of
    the steps' rows, and its steps cost more (a validation solves every block), so fewer steps
    pay for fewer blocks (``benchmarks/README.md``, "Blocks that a budget pays for"; seed 0,
    held-out nats per row for 1, 2 and 3 blocks): at 2,500 steps miniboone -15.53, -15.01,
    -16.83 and compactiv -66.72, -66.22, -69.60, but airfoil (two blocks by the rule) -2.34
    and -2.99; at 5,000 steps miniboone -14.28, -13.67, -13.75, compactiv -63.10, -61.60,
    -61.99, airfoil 0.001 and -0.025; at 7,500 steps miniboone -13.22 and -13.15 (two, three),
    compactiv -59.98 and -59.41. Under ``max_time=60`` (1,500-3,400 steps) one block won on
    three of the four tables tried (miniboone -15.35, -15.83, -22.18; compactiv -65.89, -67.92,
    -74.62; airfoil -1.16, -2.65) and two on winequality_white (-0.22, -0.03, -0.16).

    Likelihood training solves every block at every step (a block's full cost), and
    optimal-transport flow matching was not measured: both keep one. With ``partial_fit`` the
    first call's rows decide (a stream's length is unknown).

    Examples
    --------
    >>> from skflow.defaults import n_blocks
    >>> [n_blocks("flow_matching", d, 1000) for d in (2, 6, 10)]
    [1, 2, 3]
    >>> n_blocks("flow_matching", 10, 300), n_blocks("likelihood", 10, 1000)
    (2, 1)
    >>> [n_blocks("flow_matching", 10, 10000, steps) for steps in (2000, 5000, 7500)]
    [1, 2, 3]
    >>> n_blocks("flow_matching", 10, 10000, lambda blocks: 12000 / blocks)  # a time budget
    2
    >>> n_blocks("flow_matching", 10, 1000, 2000)  # 1,500 passes over 1,000 rows: 1,465 steps
    3
    """
    if training != "flow_matching" or n_features <= FEW_FEATURES:
        return 1
    blocks = 3 if n_features >= THIRD_BLOCK_FEATURES and n_rows >= THIRD_BLOCK_ROWS else 2
    afforded = steps if callable(steps) else (lambda blocks: steps)
    epochs = BLOCK_EPOCHS * n_rows / batch_size
    while blocks > 1 and afforded(blocks) < min(BLOCK_STEPS[blocks], epochs):
        blocks -= 1
    return blocks


def batch_size(device: torch.device) -> int:
    """``batch_size='auto'``: 1024 rows per step on a CPU, 4096 on a GPU.

    A CPU's step costs in proportion to its rows. A GPU's step on a few thousand rows is bound
    by kernel launches, not arithmetic (``benchmarks/results/toy_gpu.md``: the default fit was
    no faster on an H200 than on one CPU core), so there four times the rows should cost little
    more time, and more rows per step fit better: on the CPU, 2048 rows against 1024 at the
    same 5,000 steps moved pinwheel from -2.359 to -2.347 and checkerboard from -3.616 to
    -3.597 nats per row (2spirals -2.698 against -2.695, 8gaussians -2.820 against -2.822;
    ``benchmarks/README.md``). The GPU's time and quality with 4096 rows are for
    ``benchmarks/gpu_benchmark.py`` to measure.

    Examples
    --------
    >>> import torch
    >>> from skflow.defaults import batch_size
    >>> batch_size(torch.device("cpu")), batch_size(torch.device("cuda"))
    (1024, 4096)
    """
    return 4096 if device.type == "cuda" else 1024


def validation_interval(training: str, n_validation_rows: int) -> int:
    """Steps between validations under flow matching: 250, or fewer for small validation splits.

    A hundred rows are overfitted within a few hundred steps (a step is an epoch there): on
    iris and wine, validating every 50 rather than every 250 steps kept better weights
    (-1.93 vs -2.00 and -18.84 vs -19.23 nats). A validation costs about as much as a step per
    four validation rows, so the interval stays a quarter of the validation rows or more.

    Examples
    --------
    >>> from skflow.defaults import validation_interval
    >>> [validation_interval("flow_matching", n) for n in (15, 180, 500, 5000)]
    [25, 50, 125, 250]
    >>> validation_interval("likelihood", 15)
    50
    """
    if training == "likelihood":
        return AUTO[training]["validation_interval"]
    return int(np.clip(25 * round(n_validation_rows / 100), 25, 250))


def _max_iter(params: dict, resolved: int) -> int | float:
    """``max_iter='auto'`` with a ``max_time`` budget sets no step limit: the budget (and early
    stopping) end training, so that a longer budget buys a better fit."""
    if params["max_iter"] == "auto" and params["max_time"] is not None:
        return math.inf
    return resolved


def training_config(params: dict, n_rows: int, n_features: int, partial: bool = False,
                    device: torch.device = _CPU) -> TrainingConfig:
    """The :class:`~skflow.training.TrainingConfig` of an estimator's ``params`` for a fit on
    ``n_rows`` rows of ``n_features`` features on ``device``, or for one ``partial_fit`` call:
    one pass over the chunk, no split, no early stop, no decay (a decay per call would saw the
    rate down and up at every chunk).

    Examples
    --------
    >>> from skflow import FFJORDDensity
    >>> from skflow.defaults import training_config
    >>> config = training_config(FFJORDDensity().get_params(), n_rows=150, n_features=10)
    >>> config.max_iter, config.learning_rate, config.validation_interval, config.batch_size
    (10000, 0.01, 25, 1024)
    >>> training_config(FFJORDDensity(max_time=60).get_params(), 150, 10).max_iter
    inf
    """
    mode = params["training"]

    def resolved(name):
        if params[name] != "auto":
            return params[name]
        if name == "learning_rate":
            return learning_rate(mode, n_features)
        return AUTO[mode][name]

    n_val = round(params["validation_fraction"] * n_rows) or min(2048, n_rows)
    rows_per_step = (batch_size(device) if params["batch_size"] == "auto"
                     else params["batch_size"])
    patience = params["n_iter_no_change"]
    config = TrainingConfig(
        objective=mode, divergence=params["divergence"], noise=params["noise"],
        solver=SolverConfig(method=params["solver"], atol=params["atol"], rtol=params["rtol"],
                            n_steps=params["n_steps"], max_num_steps=params["max_num_steps"],
                            adjoint=params["adjoint"]),
        regularization={"kinetic_energy": params["kinetic_energy"],
                        "jacobian_frobenius": params["jacobian_frobenius"]},
        learning_rate=resolved("learning_rate"), weight_decay=params["weight_decay"],
        batch_size=rows_per_step, max_iter=_max_iter(params, resolved("max_iter")),
        max_time=params["max_time"], validation_fraction=params["validation_fraction"],
        n_iter_no_change=math.inf if patience is None else patience,
        validation_interval=(validation_interval(mode, n_val)
                             if params["validation_interval"] == "auto"
                             else params["validation_interval"]),
        validation_atol=max(params["atol"], VALIDATION_TOLERANCE),
        validation_rtol=max(params["rtol"], VALIDATION_TOLERANCE),
        max_num_steps=params["max_num_steps"], verbose=params["verbose"],
        averaging_decay=0.0 if mode == "likelihood" else 0.999)
    if partial:
        n_batches = max(1, math.ceil(n_rows / rows_per_step))
        config.max_iter = config.validation_interval = n_batches
        config.validation_fraction, config.cosine_decay = 0.0, False
        config.n_iter_no_change = n_batches + 1
    return config
