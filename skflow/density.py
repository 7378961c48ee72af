"""FFJORDDensity: a continuous normalizing flow as a scikit-learn density estimator."""

import copy
import math
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, _fit_context
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import TransformerTags, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import __version__
from . import distributed as _distributed
from .cnf.flow import ContinuousFlow
from .cnf.layers import ACTIVATIONS
from .preprocessing import QuantileGaussianizer, marginals_need_gaussianizing
from .cnf.solver import ADAPTIVE_METHODS, FIXED_GRID_METHODS, SolverConfig
from .training import OBJECTIVES, TrainingConfig, train

# Bumped whenever the pickled state changes incompatibly.
_PICKLE_FORMAT = 2  # 2: eval_dtype, preprocessing_, quantile map with atoms


def _resolve_device(device):
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but CUDA is not available; use "
                         "device='auto' or 'cpu'.")
    return torch.device(device)


def _column_mean_std(X):
    """Per-column mean and standard deviation of float64 ``X``, computed on each column divided
    by its largest magnitude so that squaring neither overflows (data near 1e200) nor
    underflows (data near 1e-200). Also returns that standard deviation relative to the
    column's magnitude, which does not depend on the units."""
    magnitude = np.abs(X).max(axis=0)
    magnitude[magnitude == 0] = 1.0
    unit = X / magnitude
    relative_std = unit.std(axis=0)
    return unit.mean(axis=0) * magnitude, relative_std * magnitude, relative_std


def _check_hidden_dims(hidden_dims):
    if isinstance(hidden_dims, (Integral, np.integer)):
        hidden_dims = (hidden_dims,)
    try:
        dims = tuple(hidden_dims)
    except TypeError:
        raise TypeError(f"hidden_dims must be a tuple of positive integers, got {hidden_dims!r}.")
    if not all(isinstance(w, (Integral, np.integer)) and not isinstance(w, bool) and w > 0
               for w in dims):
        raise ValueError(f"hidden_dims must be a tuple of positive integers, got {hidden_dims!r}.")
    return tuple(int(w) for w in dims)


class FFJORDDensity(DensityMixin, BaseEstimator):
    """Density estimation with FFJORD, a free-form continuous normalizing flow.

    The data are standardized, then carried to a standard normal latent by the neural ODE
    ``dz/dt = f(z, t)``; the log density follows from the instantaneous change of variables
    ``log p(x) = log N(z(T); 0, I) + int_0^T Tr(df/dz) dt + log|det standardization|``
    (Grathwohl et al., 2019). Densities always refer to the original units of ``X``.

    By default the flow is trained without simulation by flow matching, which reaches a good
    density in a fraction of the time; ``training='likelihood'`` maximizes the likelihood with
    Hutchinson's trace estimator and adjoint gradients, as in the paper. Evaluation
    (``score_samples``, ``transform``, ``inverse_transform``, ``sample``) uses the exact trace
    (no autograd graph), with its own tolerances and a step size per row, so that
    a row's log density does not depend on the other rows in the call (up to float32 rounding,
    about 1e-5 nats, or exactly with ``eval_dtype='float64'``).

    Parameters
    ----------
    hidden_dims : tuple of int, default=(64, 64, 64)
        Widths of the hidden layers of the dynamics network. Time enters every layer
        (concatsquash layers).
    preprocessing : {'auto', 'standardize', 'quantile'}, default='auto'
        The invertible map in front of the flow, both with exact log-Jacobians and both
        followed by per-feature standardization. ``'standardize'``: mean and standard deviation
        only; smooth densities, better on smooth light-tailed data such as the 2-D toy
        densities. ``'quantile'``: a monotone piecewise-linear map of each feature to a
        standard-normal marginal, with knots at empirical quantiles (see
        :class:`skflow.preprocessing.QuantileGaussianizer`), so the flow only has to learn the
        dependence between features; it scored better on every real tabular set measured
        (skewed, heavy-tailed or few-valued features; see the README). ``'auto'``: the
        quantile map when some feature is strongly skewed (|skewness| > 1), heavy-tailed
        (excess kurtosis > 3) or has one value in over 5% of the rows, else standardization
        (see :func:`skflow.preprocessing.marginals_need_gaussianizing`); the choice is stored
        in ``preprocessing_``.
    activation : {'silu', 'softplus', 'tanh', 'elu', 'swish'}, default='silu'
        Non-linearity between layers; all are smooth, which keeps the ODE non-stiff. ``'swish'``
        learns its slope, ``'silu'`` is swish with slope 1 (it trains fastest with flow
        matching: see the README).
    n_blocks : int, default=1
        Number of stacked CNF blocks, each with its own dynamics network.
    time_length : float, default=1.0
        Integration time ``T`` of each block.
    train_time_length : bool, default=False
        Learn each block's ``T`` (likelihood training only), as the reference code does.
    training : {'flow_matching', 'ot_flow_matching', 'likelihood'}, default='flow_matching'
        The objective. ``'likelihood'`` is FFJORD's maximum likelihood, which solves the ODE
        (forward and adjoint) at every step. ``'flow_matching'`` regresses the dynamics on the
        straight path from data to noise (Lipman et al. 2023), with no ODE solve during
        training, and keeps an exponential moving average of the weights (decay 0.999);
        ``'ot_flow_matching'`` pairs data and noise by minibatch optimal transport first
        (Tong et al. 2024). All three give the same kind of model, scored the same way; the
        default is the one that reaches a good density fastest on a CPU (see the README).
    divergence : {'hutchinson', 'exact'}, default='hutchinson'
        Trace of the Jacobian during likelihood training: Hutchinson's unbiased one-probe
        estimate (linear cost) or the exact trace (cost grows with the number of features).
    noise : {'rademacher', 'gaussian'}, default='rademacher'
        Distribution of the Hutchinson probe, drawn once per solve.
    solver : str, default='dopri5'
        torchdiffeq method for likelihood training: adaptive (``'dopri5'``, ``'dopri8'``,
        ``'bosh3'``, ``'adaptive_heun'``) or fixed-grid (``'rk4'``, ``'midpoint'``,
        ``'euler'``, with ``n_steps`` steps per block).
    n_steps : int, default=8
        Steps per block for the fixed-grid solvers.
    atol, rtol : float, default=1e-5
        Tolerances of the adaptive training solver, also used for validation.
    eval_atol, eval_rtol : float, default=1e-6
        Tolerances of the evaluation solver (per-row Dormand-Prince).
    eval_dtype : {'float32', 'float64'}, default='float32'
        Precision of the evaluation solves (the standardization always runs in float64).
        At the default tolerances both give the same accuracy (the solver's error, about 4e-5
        nats, dominates float32 rounding) and float32 is about twice as fast; use
        ``'float64'`` for tolerances below about 1e-7 or for bit-for-bit batch independence.
    max_num_steps : int, default=1000
        Largest number of solver steps per solve, so that no solve can hang.
    adjoint : bool, default=True
        Adjoint gradients (``odeint_adjoint``, constant memory) instead of backpropagation
        through the solver.
    kinetic_energy : float, default=0.0
        Weight of the kinetic-energy regularizer ``int |f|^2 dt`` (Finlay et al. 2020);
        likelihood training only.
    jacobian_frobenius : float, default=0.0
        Weight of the Jacobian Frobenius regularizer ``int ||df/dz||_F^2 dt``, estimated from
        the Hutchinson vector-Jacobian product; likelihood training only.
    learning_rate : float or 'auto', default='auto'
        Adam step size (before the cosine decay to a tenth of it over ``fit``; ``partial_fit``,
        whose stream has no known length, keeps it constant). ``'auto'``: 5e-3 for flow
        matching, 1e-3 for likelihood training.
    weight_decay : float, default=1e-5
        Adam weight decay.
    batch_size : int, default=1024
        Rows per minibatch (capped at the number of training rows).
    max_iter : int or 'auto', default='auto'
        Maximum number of optimizer steps. ``'auto'``: 5000 for flow matching (a step costs
        milliseconds), 1000 for likelihood training (each step solves the ODE twice).
    validation_fraction : float, default=0.1
        Fraction of rows held out for early stopping. With 0, the training rows are used.
    n_iter_no_change : int or None, default=10
        Stop after this many validations without improvement, then restore the best weights.
        ``None`` trains for ``max_iter`` steps (still restoring the best weights).
    validation_interval : int or 'auto', default='auto'
        Optimizer steps between validations. ``'auto'``: 250 for flow matching, 50 for
        likelihood training.
    warm_start : bool, default=False
        Continue from the current weights on the next ``fit``.
    device : {'auto', 'cpu', 'cuda'}, default='auto'
        Where to train and evaluate; ``'auto'`` picks CUDA when available. Resolved in ``fit``
        (and in each evaluation), so a fitted model moves between machines.
    verbose : int, default=0
        0 silent, 1 a progress bar (tqdm), 2 a line per validation.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization, the split, the minibatches and the noise, so that ``fit`` is
        repeatable on the CPU.

    Attributes
    ----------
    flow_ : skflow.cnf.flow.ContinuousFlow
        The fitted flow (a torch module in float64, kept on the CPU).
    preprocessing_ : {'standardize', 'quantile'}
        The preprocessing used (``preprocessing='auto'`` resolved on the training data).
    marginal_ : skflow.preprocessing.QuantileGaussianizer or None
        The fitted marginal map (when ``preprocessing_ == 'quantile'``), else None.
    n_features_in_ : int
        Number of features seen during ``fit``.
    feature_names_in_ : ndarray of shape (n_features_in_,)
        Names of features seen during ``fit``, when ``X`` has string column names.
    n_iter_ : int
        Optimizer steps taken, over all calls to ``fit`` / ``partial_fit`` since the last
        fresh start.
    history_ : list of dict
        One entry per validation: ``iteration``, ``train_loss`` (the training objective
        averaged since the last entry: the negative log-likelihood plus penalties under
        ``'likelihood'``, the velocity regression loss under flow matching), ``val_loss``
        (validation negative log-likelihood in nats per row, standardized units),
        ``nfe_forward`` and ``nfe_backward`` (function evaluations per step; zero under flow
        matching, which solves no ODE), ``learning_rate``, ``time``.
    best_validation_loss_ : float
        Best validation negative log-likelihood (standardized units).
    device_ : str
        Device used by the last ``fit``.
    world_size_ : int
        Number of processes that trained the model data-parallel in the last ``fit`` (1 when
        not distributed). Under ``torchrun``, ``fit`` trains data-parallel over
        ``torch.distributed``: see :mod:`skflow.distributed`.

    See Also
    --------
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.

    Examples
    --------
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> X = make_toy("moons", n_samples=500, random_state=0)
    >>> est = FFJORDDensity(hidden_dims=(32, 32), training="flow_matching", max_iter=200,
    ...                     random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    >>> est.sample(5, random_state=0).shape
    (5, 2)
    """

    _parameter_constraints = {
        "hidden_dims": ["array-like", Interval(Integral, 1, None, closed="left")],
        "preprocessing": [StrOptions({"auto", "standardize", "quantile"})],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "n_blocks": [Interval(Integral, 1, None, closed="left")],
        "time_length": [Interval(Real, 0, None, closed="neither")],
        "train_time_length": ["boolean"],
        "training": [StrOptions(set(OBJECTIVES))],
        "divergence": [StrOptions({"hutchinson", "exact"})],
        "noise": [StrOptions({"rademacher", "gaussian"})],
        "solver": [StrOptions(set(ADAPTIVE_METHODS + FIXED_GRID_METHODS))],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "atol": [Interval(Real, 0, None, closed="neither")],
        "rtol": [Interval(Real, 0, None, closed="neither")],
        "eval_atol": [Interval(Real, 0, None, closed="neither")],
        "eval_rtol": [Interval(Real, 0, None, closed="neither")],
        "eval_dtype": [StrOptions({"float32", "float64"})],
        "max_num_steps": [Interval(Integral, 1, None, closed="left")],
        "adjoint": ["boolean"],
        "kinetic_energy": [Interval(Real, 0, None, closed="left")],
        "jacobian_frobenius": [Interval(Real, 0, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), StrOptions({"auto"})],
        "weight_decay": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "max_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "validation_interval": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "warm_start": ["boolean"],
        "device": [StrOptions({"auto", "cpu", "cuda"})],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        hidden_dims=(64, 64, 64),
        preprocessing="auto",
        activation="silu",
        n_blocks=1,
        time_length=1.0,
        train_time_length=False,
        training="flow_matching",
        divergence="hutchinson",
        noise="rademacher",
        solver="dopri5",
        n_steps=8,
        atol=1e-5,
        rtol=1e-5,
        eval_atol=1e-6,
        eval_rtol=1e-6,
        eval_dtype="float32",
        max_num_steps=1000,
        adjoint=True,
        kinetic_energy=0.0,
        jacobian_frobenius=0.0,
        learning_rate="auto",
        weight_decay=1e-5,
        batch_size=1024,
        max_iter="auto",
        validation_fraction=0.1,
        n_iter_no_change=10,
        validation_interval="auto",
        warm_start=False,
        device="auto",
        verbose=0,
        random_state=None,
    ):
        self.hidden_dims = hidden_dims
        self.preprocessing = preprocessing
        self.activation = activation
        self.n_blocks = n_blocks
        self.time_length = time_length
        self.train_time_length = train_time_length
        self.training = training
        self.divergence = divergence
        self.noise = noise
        self.solver = solver
        self.n_steps = n_steps
        self.atol = atol
        self.rtol = rtol
        self.eval_atol = eval_atol
        self.eval_rtol = eval_rtol
        self.eval_dtype = eval_dtype
        self.max_num_steps = max_num_steps
        self.adjoint = adjoint
        self.kinetic_energy = kinetic_energy
        self.jacobian_frobenius = jacobian_frobenius
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_iter = max_iter
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.validation_interval = validation_interval
        self.warm_start = warm_start
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def _validate_fit_data(self, X, reset):
        # 'numeric' refuses arrays of strings; C order makes the fit independent of the layout.
        X = validate_data(self, X, reset=reset, dtype="numeric", order="C", ensure_min_samples=2)
        X = np.asarray(X, dtype=np.float64)
        if not reset:
            return X
        # Constant relative to the column's own magnitude, whatever the units.
        constant = _column_mean_std(X)[2] <= 10 * np.finfo(np.float64).eps
        if constant.any():
            names = getattr(self, "feature_names_in_", None)
            columns = [str(names[i]) if names is not None else str(i)
                       for i in np.flatnonzero(constant)]
            raise ValueError(
                f"Column(s) {', '.join(columns)} of X are constant: a continuous density is "
                "not defined along a constant feature. Drop them (e.g. with "
                "sklearn.feature_selection.VarianceThreshold) before fitting.")
        return X

    # 'auto' values, by training mode (see benchmarks/results for the measurements behind them).
    _AUTO = {
        "likelihood": dict(learning_rate=1e-3, max_iter=1000, validation_interval=50),
        "flow_matching": dict(learning_rate=5e-3, max_iter=5000, validation_interval=250),
        "ot_flow_matching": dict(learning_rate=5e-3, max_iter=5000, validation_interval=250),
    }

    def _resolved(self, name):
        value = getattr(self, name)
        return self._AUTO[self.training][name] if value == "auto" else value

    def _training_config(self, max_iter=None, validation_interval=None, n_iter_no_change=None,
                         cosine_decay=True):
        solver = SolverConfig(method=self.solver, atol=self.atol, rtol=self.rtol,
                              n_steps=self.n_steps, max_num_steps=self.max_num_steps,
                              adjoint=self.adjoint)
        patience = self.n_iter_no_change if n_iter_no_change is None else n_iter_no_change
        return TrainingConfig(
            objective=self.training, solver=solver, divergence=self.divergence, noise=self.noise,
            regularization={"kinetic_energy": self.kinetic_energy,
                            "jacobian_frobenius": self.jacobian_frobenius},
            learning_rate=self._resolved("learning_rate"), weight_decay=self.weight_decay,
            batch_size=self.batch_size, max_iter=max_iter or self._resolved("max_iter"),
            averaging_decay=0.0 if self.training == "likelihood" else 0.999,
            n_iter_no_change=patience if patience is not None else math.inf,
            validation_interval=validation_interval or self._resolved("validation_interval"),
            validation_atol=self.atol, validation_rtol=self.rtol,
            max_num_steps=self.max_num_steps, verbose=self.verbose, cosine_decay=cosine_decay)

    def _new_flow(self, X, seed):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = ContinuousFlow(X.shape[1], _check_hidden_dims(self.hidden_dims),
                                  self.activation, self.n_blocks, self.time_length,
                                  self.train_time_length)
        flow = flow.double()
        flow.set_standardization(*_column_mean_std(X)[:2])
        return flow

    def _make_optimizer(self, flow):
        return torch.optim.Adam([p for p in flow.parameters() if p.requires_grad],
                                lr=self._resolved("learning_rate"),
                                weight_decay=self.weight_decay)

    def _run_training(self, X, reset, max_iter=None, split=True, validation_interval=None,
                      n_iter_no_change=None, cosine_decay=True):
        """Train on ``X`` and set the fitted attributes only once training has succeeded."""
        _check_hidden_dims(self.hidden_dims)
        rng = check_random_state(self.random_state)
        device = _resolve_device(self.device)
        world, device = _distributed.setup(device)  # data-parallel under torchrun
        if world.size > 1:  # all ranks: rank 0's seed and split, the same X
            rng = _distributed.broadcast_object(rng)
            _distributed.check_same_data(X)
        seed = int(rng.randint(np.iinfo(np.int32).max))

        if reset:
            preprocessing = self.preprocessing
            if preprocessing == "auto":
                preprocessing = ("quantile" if marginals_need_gaussianizing(X)
                                 else "standardize")
            marginal = QuantileGaussianizer().fit(X) if preprocessing == "quantile" else None
            X = marginal.transform(X)[0] if marginal is not None else X
            master, optimizer_state, n_iter, history = self._new_flow(X, seed), None, 0, []
        else:  # work on copies: a failed run must leave the fitted estimator untouched
            preprocessing, marginal = self.preprocessing_, self.marginal_
            X = self._flow_space(X)[0]
            master = copy.deepcopy(self.flow_)
            optimizer_state = copy.deepcopy(self._optimizer_state)
            n_iter, history = self.n_iter_, list(self.history_)
        # The fitted flow is a float64 master on the CPU. Training runs on a float32 copy that
        # sees data standardized in float64 first: casting raw data centred at 1e3 with a spread
        # of 1e-3 to float32 would lose the signal before standardization could rescue it.
        X = master.standardize(torch.tensor(X, dtype=torch.float64)).numpy()  # X may be read-only
        flow = copy.deepcopy(master).to(device=device, dtype=torch.float32)
        flow.set_standardization(np.zeros(X.shape[1]), np.ones(X.shape[1]))
        optimizer = self._make_optimizer(flow)
        if optimizer_state is not None:
            optimizer.load_state_dict(optimizer_state)
            for group in optimizer.param_groups:
                group["lr"] = self._resolved("learning_rate")
                group["weight_decay"] = self.weight_decay

        n_val = int(round(self.validation_fraction * X.shape[0])) if split else 0
        order = rng.permutation(X.shape[0])
        if 0 < n_val < X.shape[0]:
            X_train, X_val = X[order[n_val:]], X[order[:n_val]]
        else:  # validate on (at most 2048) training rows
            X_train, X_val = X, X[order[:2048]]
        to_tensor = lambda a: torch.tensor(a, dtype=torch.float32, device=device)
        generator = torch.Generator(device=device).manual_seed(seed + world.rank)
        config = self._training_config(max_iter, validation_interval, n_iter_no_change,
                                       cosine_decay)
        if world.size > 1:  # each rank its shard of the rows; the global minibatch is batch_size
            X_train, X_val = (_distributed.shard_rows(A, world.rank, world.size)
                              for A in (X_train, X_val))
            config.batch_size, config.distributed = max(1, self.batch_size // world.size), True

        result = train(flow, optimizer, to_tensor(X_train), to_tensor(X_val), config, generator,
                       n_iter_start=n_iter)
        if world.size > 1:  # every rank ends with rank 0's weights and optimizer state
            _distributed.broadcast_training_state(flow, optimizer)

        master.blocks.load_state_dict(flow.blocks.state_dict())  # casts back to float64
        self.flow_ = master
        self.preprocessing_ = preprocessing
        self.marginal_ = marginal
        self._optimizer_state = _to_cpu(optimizer.state_dict())
        self.n_iter_ = n_iter + result.n_iter
        self.history_ = history + result.history
        self.best_validation_loss_ = result.best_validation_loss
        self.device_ = str(device)
        self.world_size_ = world.size
        if (not result.stopped_early and not result.interrupted and split
                and self.n_iter_no_change is not None):
            warnings.warn(
                f"{type(self).__name__} stopped at max_iter={config.max_iter} before the "
                "validation loss stopped improving; increase max_iter for a better fit.",
                ConvergenceWarning)
        return self

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # transform / inverse_transform map to and from the latent space.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    def __sklearn_is_fitted__(self):
        return hasattr(self, "flow_")

    def _fit_atomically(self, X, partial):
        """Validate and train; if anything fails, restore the fitted state as it was."""
        before = {k: v for k, v in vars(self).items() if k.endswith("_") or k.startswith("_o")}
        try:
            reset = not hasattr(self, "flow_") if partial else not (
                self.warm_start and hasattr(self, "flow_"))
            X = self._validate_fit_data(X, reset=reset)
            if not partial:
                return self._run_training(X, reset=reset)
            # A stream has no known length: no decay (a decay per call would saw the rate down
            # and up again at every chunk).
            n_batches = max(1, math.ceil(X.shape[0] / self.batch_size))
            return self._run_training(X, reset=reset, max_iter=n_batches, split=False,
                                      validation_interval=n_batches,
                                      n_iter_no_change=n_batches + 1, cosine_decay=False)
        except BaseException:
            for key in [k for k in vars(self) if k.endswith("_") or k.startswith("_o")]:
                delattr(self, key)
            vars(self).update(before)
            raise

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the flow to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; at least two rows, no constant column.
        y : None
            Ignored.

        Returns
        -------
        self : FFJORDDensity
            The fitted estimator.
        """
        return self._fit_atomically(X, partial=False)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One pass over ``X`` in minibatches, continuing from the current weights.

        The first call fixes the standardization from its chunk. There is no validation split
        and no early stopping; the loss on the chunk is recorded in ``history_``. The learning
        rate stays at ``learning_rate`` (no decay: the stream's length is unknown).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            One chunk of training data.
        y : None
            Ignored.

        Returns
        -------
        self : FFJORDDensity
            The updated estimator.
        """
        return self._fit_atomically(X, partial=True)

    # --------------------------------------------------------------- evaluation
    def _eval_flow(self):
        """A copy of the fitted flow on the evaluation device, its blocks in ``eval_dtype``
        (the standardization stays float64)."""
        flow = copy.deepcopy(self.flow_).to(device=_resolve_device(self.device)).eval()
        flow.blocks.to(dtype=getattr(torch, self.eval_dtype))
        return flow

    def _chunks(self, A, flow):
        # The evaluation solver keeps evaluation_chunk_rows() rows in flight and refills its
        # batch as rows finish; the input chunks only bound the memory of the copies.
        rows = max(2 ** 16, 8 * flow.evaluation_chunk_rows())
        for start in range(0, A.shape[0], rows):
            # A copy: the input may be a read-only array or memory map.
            yield torch.tensor(A[start:start + rows], dtype=torch.float64,
                               device=flow.shift.device)

    def _check_input(self, X):
        check_is_fitted(self)
        # 'numeric' refuses arrays of strings, as in fit.
        return np.asarray(validate_data(self, X, reset=False, dtype="numeric"), dtype=np.float64)

    def _flow_space(self, X):
        """``X`` through the marginal map (if any) and that map's log-Jacobian per row."""
        if getattr(self, "marginal_", None) is None:
            return X, np.zeros(X.shape[0])
        return self.marginal_.transform(X)

    def score_samples(self, X):
        """Log density of each row of ``X``, in the units of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            Natural logarithm of the density, float64.
        """
        X, log_det = self._flow_space(self._check_input(X))
        flow = self._eval_flow()
        with torch.no_grad():
            parts = [flow.log_prob(chunk, self.eval_atol, self.eval_rtol, self.max_num_steps)
                     for chunk in self._chunks(X, flow)]
        return (torch.cat(parts).cpu().numpy() if parts else np.empty(0)) + log_det

    def evaluation_nfe(self, X):
        """Number of dynamics evaluations the evaluation solver needs for each row of ``X``.

        The cost of ``score_samples`` per row, summed over blocks: regularized or
        simulation-free training gives straighter flows that need fewer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.

        Returns
        -------
        nfe : ndarray of shape (n_samples,)
            Function evaluations per row.
        """
        X = self._flow_space(self._check_input(X))[0]
        flow = self._eval_flow()
        counts = []
        with torch.no_grad():
            for chunk in self._chunks(X, flow):
                nfe = torch.zeros(chunk.shape[0], dtype=torch.long, device=chunk.device)
                flow.log_prob(chunk, self.eval_atol, self.eval_rtol, self.max_num_steps, nfe=nfe)
                counts.append(nfe)
        return torch.cat(counts).cpu().numpy()

    def score(self, X, y=None):
        """Mean log-likelihood per row of ``X`` (as :class:`~sklearn.mixture.GaussianMixture`).

        Being a mean, it is comparable across folds of different sizes, so model selection
        (``GridSearchCV``, ``cross_val_score``) can use it as the default score.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.
        y : None
            Ignored.

        Returns
        -------
        score : float
            Mean log density.
        """
        return float(np.mean(self.score_samples(X)))

    def transform(self, X):
        """Map ``X`` to the latent space, where the model is a standard normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Data.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
            Latent coordinates.
        """
        X = self._flow_space(self._check_input(X))[0]
        flow = self._eval_flow()
        with torch.no_grad():
            parts = [flow.to_latent(c, self.eval_atol, self.eval_rtol, self.max_num_steps)
                     for c in self._chunks(X, flow)]
        return torch.cat(parts).cpu().numpy()

    def fit_transform(self, X, y=None):
        """Fit to ``X``, then return its latent coordinates (``fit(X).transform(X)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data.
        y : None
            Ignored.

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)
            Latent coordinates of ``X``.
        """
        return self.fit(X).transform(X)

    def inverse_transform(self, Z):
        """Map latent coordinates back to data space (integrating the flow backwards).

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
            Latent coordinates.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Data-space points.
        """
        check_is_fitted(self)
        return self._from_latent(self._check_input(Z))

    def _from_latent(self, Z):
        flow = self._eval_flow()
        with torch.no_grad():
            parts = [flow.from_latent(c, self.eval_atol, self.eval_rtol, self.max_num_steps)
                     for c in self._chunks(Z, flow)]
        X = torch.cat(parts).cpu().numpy()
        marginal = getattr(self, "marginal_", None)
        return marginal.inverse_transform(X) if marginal is not None else X

    def sample(self, n_samples=1, random_state=None):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seeds the latent draws (made with numpy, so they do not depend on the device).

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Samples.
        """
        check_is_fitted(self)
        if (not isinstance(n_samples, (Integral, np.integer)) or isinstance(n_samples, bool)
                or n_samples < 1):
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        rng = check_random_state(random_state)
        Z = rng.standard_normal((int(n_samples), self.n_features_in_))
        return self._from_latent(Z)

    # --------------------------------------------------------------- persistence
    def __getstate__(self):
        state = super().__getstate__()
        state["_skflow_version"] = __version__
        state["_skflow_pickle_format"] = _PICKLE_FORMAT
        return state

    def __setstate__(self, state):
        pickle_format = state.pop("_skflow_pickle_format", None)
        version = state.pop("_skflow_version", "unknown")
        if pickle_format != _PICKLE_FORMAT:
            raise ValueError(
                f"This {type(self).__name__} was saved by skflow {version} (pickle format "
                f"{pickle_format}), which this skflow {__version__} (format {_PICKLE_FORMAT}) "
                f"cannot load. Install skflow=={version} to load it, or refit the model.")
        if version != __version__:
            warnings.warn(f"Loading a {type(self).__name__} saved by skflow {version} with skflow "
                          f"{__version__}.", UserWarning)
        super().__setstate__(state)


def _to_cpu(state):
    if isinstance(state, torch.Tensor):
        return state.detach().cpu()
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    if isinstance(state, (list, tuple)):
        return type(state)(_to_cpu(v) for v in state)
    return state
