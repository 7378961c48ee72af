"""FFJORDDensity: a continuous normalizing flow as a scikit-learn density estimator.

The estimator holds its parameters, validates them and delegates: the input map
(:mod:`skflow.preprocessing`), training (:mod:`skflow.training`) and evaluation
(:mod:`skflow.cnf.evaluation`) do the work.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from numpy.typing import ArrayLike
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    DensityMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import TransformerTags, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted, validate_data

from . import defaults, training
from ._device import resolve_device
from ._state import VersionedPickleMixin, atomic_fit
from .cnf.evaluation import Evaluator
from .cnf.flow import FlowSpec
from .cnf.layers import ACTIVATIONS
from .cnf.objectives import OBJECTIVES
from .cnf.solver import ADAPTIVE_METHODS, FIXED_GRID_METHODS
from .exceptions import ExtrapolationWarning
from .preprocessing import InputMap

__all__ = ["FFJORDDensity"]

# Rows farther than this from the training data's centre, in training standard deviations of
# some mapped feature, are scored with a warning: the density there is an extrapolation.
_FAR = 10.0


def _stopped_in_first_share(result, config, elapsed):
    """Whether a fit stopped early within the first ``STOPPED_EARLY_SHARE`` of its steps and
    of its time budget (``learning_rate='auto'`` then fits again at its next rate)."""
    share = defaults.STOPPED_EARLY_SHARE
    return (result.stopped_early and result.n_iter < share * config.max_iter
            and (config.max_time is None or elapsed < share * config.max_time))


def _recent_gain(history, share=0.01):
    """How much the validation loss fell over the last fifth of the validations, when that is
    more than ``share`` of its whole fall since the first validation (training stopped while
    still clearly improving); else None. A run whose loss is merely settling (at the end of the
    learning-rate decay) still improves a little: that is no reason to warn."""
    losses = [entry["val_loss"] for entry in history]
    if len(losses) < 2:
        return None
    window = max(1, len(losses) // 5)
    gain = losses[-window - 1] - min(losses[-window:])
    total = losses[0] - min(losses)
    return gain if gain > 1e-3 and gain > share * total else None


def _check_hidden_dims(hidden_dims, n_features: int, n_rows: int) -> tuple[int, ...]:
    """The layer widths that ``hidden_dims`` names for ``n_features`` features and ``n_rows``
    fit rows."""
    if isinstance(hidden_dims, str) and hidden_dims == "auto":
        return defaults.hidden_dims(n_features, n_rows)
    if isinstance(hidden_dims, (Integral, np.integer)) and not isinstance(hidden_dims, bool):
        # An int is ambiguous: one layer of that width, or that many layers?
        raise ValueError(
            f"hidden_dims must be a tuple of layer widths, e.g. (64, 64, 64) for three hidden "
            f"layers of 64; got the int {hidden_dims!r} (write ({hidden_dims},) for one layer).")
    try:
        dims = tuple(hidden_dims)
    except TypeError:
        raise TypeError(
            f"hidden_dims must be a tuple of positive integers, got {hidden_dims!r}.") from None
    if not all(isinstance(w, (Integral, np.integer)) and not isinstance(w, bool) and w > 0
               for w in dims):
        raise ValueError(f"hidden_dims must be a tuple of positive integers, got {hidden_dims!r}.")
    return tuple(int(w) for w in dims)


class MeanLogLikelihoodMixin(DensityMixin):
    """``score``: the mean of ``score_samples``, for skflow's density estimators."""

    def score(self, X: ArrayLike, y: None = None) -> float:
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


def check_n_samples(n_samples) -> int:
    """``n_samples`` of ``sample`` as an int, or a ValueError that names it."""
    if (not isinstance(n_samples, (Integral, np.integer)) or isinstance(n_samples, bool)
            or n_samples < 1):
        raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
    return int(n_samples)


class FFJORDDensity(VersionedPickleMixin, ClassNamePrefixFeaturesOutMixin,
                    MeanLogLikelihoodMixin, TransformerMixin, BaseEstimator):
    """Density estimation with FFJORD, a free-form continuous normalizing flow.

    The data are mapped to standardized features (optionally rotated onto whitened principal
    components, or through a per-feature quantile map, or both, first), then carried to a
    standard normal latent by the neural ODE ``dz/dt = f(z, t)``; the log density follows from
    the instantaneous change of variables
    ``log p(x) = log N(z(T); 0, I) + int_0^T Tr(df/dz) dt + log|det input map|``
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
    hidden_dims : tuple of int or 'auto', default='auto'
        Widths of the hidden layers of the dynamics network; time enters every layer as
        ``t`` and sines and cosines of eight frequencies (concatsquash layers,
        :class:`skflow.cnf.layers.TimeFeatures`). A bare int is refused as ambiguous: write
        ``(64,)`` for one hidden layer of 64. ``'auto'``: 64 wide for up to four features,
        else 128 wide, four layers from 600 rows and up to 32 features, else three
        (``(64, 64, 64, 64)``, ``(128, 128, 128)``; :func:`skflow.defaults.hidden_dims`; with
        ``partial_fit`` the first call's rows decide); the widths used are in ``hidden_dims_``.
    preprocessing : {'auto', 'standardize', 'quantile', 'pca', 'pca_quantile'}, default='auto'
        The invertible map in front of the flow (:class:`skflow.preprocessing.InputMap`), with its
        exact log-Jacobian, always ending in per-feature standardization. ``'standardize'``: mean
        and standard deviation only. ``'quantile'``: a monotone piecewise-linear map of each
        feature to a standard-normal marginal, with knots at empirical quantiles (see
        :class:`skflow.preprocessing.QuantileGaussianizer`), so the flow only has to learn the
        dependence between features: skewed, heavy-tailed or few-valued features.
        ``'pca'``: the rows rotated onto their whitened principal components: strongly
        correlated features, whose covariance the flow then need not learn.
        ``'pca_quantile'``: the whitened components, then the quantile map of each.
        ``'auto'``: standardization below 300 rows (the quantile map's knots then follow the
        sample's noise), else the map under which a Gaussian fits a fifth of the rows held out
        best, with ``'pca'`` in place of ``'pca_quantile'`` when no feature repeats a value
        (:func:`skflow.preprocessing.choose_input_map`); the choice is stored in
        ``preprocessing_``.
    activation : {'silu', 'softplus', 'tanh', 'elu', 'swish'}, default='silu'
        Non-linearity between layers; all are smooth, which keeps the ODE non-stiff. ``'swish'``
        learns its slope, ``'silu'`` is swish with slope 1 (it trains fastest with flow
        matching: see benchmarks/README.md).
    n_blocks : int or 'auto', default='auto'
        Number of stacked CNF blocks, each with its own dynamics network. Under flow matching
        the blocks share the path from data to noise, each its own stretch of time, and a row
        trains one block per step. ``'auto'``: under ``training='flow_matching'`` 1 up to four
        features, 3 from eight features and 600 rows, else 2; 1 for the other training modes
        (:func:`skflow.defaults.n_blocks`); fewer where the fit has fewer steps than the
        blocks need (a second block 5,000, a third 7,500, or 1,500 passes over the rows where
        that is fewer: ``max_iter``, or under ``max_time`` the steps the budget affords, timed
        on a few steps of each candidate). The number used is in ``n_blocks_``.
    time_length : float, default=1.0
        Integration time ``T`` of each block.
    train_time_length : bool, default=False
        Learn each block's ``T`` (likelihood training only), as the reference code does.
    training : {'flow_matching', 'ot_flow_matching', 'likelihood'}, default='flow_matching'
        The objective. ``'likelihood'`` is FFJORD's maximum likelihood, which solves the ODE
        (forward and adjoint) at every step. ``'flow_matching'`` regresses the dynamics on the
        straight path from data to noise (Lipman et al. 2023), with no ODE solve during
        training, on targets averaged over the minibatch rows that could have led to each
        point (Xu et al. 2023; :func:`skflow.cnf.objectives.marginal_velocity`), and keeps an
        exponential moving average of the weights (decay 0.999);
        ``'ot_flow_matching'`` pairs data and noise by minibatch optimal transport first
        (Tong et al. 2024). All three give the same kind of model, scored the same way; the
        default is the one that reaches a good density fastest on a CPU (see benchmarks/README.md).
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
        Tolerances of the adaptive training solver (``training='likelihood'``). Validation,
        which only ranks a fit's checkpoints, solves at these or at 1e-3, whichever is looser
        (:data:`skflow.defaults.VALIDATION_TOLERANCE`): about half the validation's cost, with
        errors of a few thousandths of a nat per row (under a hundredth).
    eval_atol, eval_rtol : float, default=1e-6
        Tolerances of the evaluation solver (per-row Dormand-Prince).
    eval_dtype : {'float32', 'float64'}, default='float32'
        Precision of the evaluation solves (the input map always runs in float64).
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
        whose stream has no known length, keeps it constant). ``'auto'``: 1e-2 for flow
        matching, and on tables of more than four features, where a fit at 1e-2 stops early
        within the first half of its steps (or of ``max_time``), a second fit at 5e-3 (it
        overfitted, and the smaller step reaches a better density); 1e-3 for likelihood
        training (:func:`skflow.defaults.learning_rates`). ``learning_rate_`` says which.
    weight_decay : float, default=0.0
        Decoupled weight decay (AdamW, Loshchilov & Hutter 2019): each step shrinks every
        weight by ``learning_rate * weight_decay`` of itself, whatever its gradient (Adam's
        L2 term would move the weights that get no gradient yet, behind the zeroed output
        layer of a new flow, to zero at the full rate).
    batch_size : int or 'auto', default='auto'
        Rows per minibatch (capped at the number of training rows). ``'auto'``: 1024 on a
        CPU, 4096 on a GPU, whose step is bound by kernel launches rather than rows
        (:func:`skflow.defaults.batch_size`).
    max_iter : int or 'auto', default='auto'
        Maximum number of optimizer steps. ``'auto'``: 10000 for flow matching (a step costs
        milliseconds; small sets stop early), 5000 for OT flow matching, 1000 for likelihood
        training (each step solves the ODE twice); with a ``max_time``, no step limit: the
        budget and early stopping end training.
    max_time : float or None, default=None
        A wall-clock budget for ``fit``, in seconds: training ends when it runs out (after a
        last validation) and keeps the best validated weights; the learning rate's decay
        follows whichever of ``max_iter`` and ``max_time`` runs out first, so that a budget
        trades time for quality without knowing how many steps fit in it. With
        ``n_blocks='auto'`` the budget also decides the blocks (see ``n_blocks``).
    validation_fraction : float, default=0.1
        Fraction of rows held out for early stopping. With 0, the training rows are used.
    n_iter_no_change : int or None, default=10
        Stop after this many validations without improvement, then restore the best weights.
        ``None`` trains for ``max_iter`` steps (still restoring the best weights).
    validation_interval : int or 'auto', default='auto'
        Optimizer steps between validations. ``'auto'``: 50 for likelihood training; for flow
        matching 250, or a quarter of the validation rows when fewer (25 at least), so that a
        small set is not overfitted between two validations
        (:func:`skflow.defaults.validation_interval`).
    warm_start : bool, default=False
        Continue from the current weights on the next ``fit``.
    device : str or torch.device, default='auto'
        Where to train and evaluate: ``'cpu'``, ``'cuda'``, ``'cuda:N'`` or a
        :class:`torch.device`; ``'auto'`` picks CUDA when available. Resolved in ``fit`` (and
        in each evaluation), so a fitted model moves between machines. On a GPU the
        flow-matching step (and the likelihood step with a fixed-grid ``solver`` and
        ``adjoint=False``) is captured once as a CUDA graph and replayed, and a non-finite
        loss is caught at the next validation rather than at its step.
    n_threads : int or None, default=None
        torch's intra-op threads while fitting and evaluating; the caller's setting is restored
        afterwards. None: one thread for tiny networks, otherwise the cores that other
        programs leave free when the work starts (a second thread made a default fit 1.15x
        faster on an idle 2-core machine, but over 5.8x slower with both cores busy), at most
        torch's current count, which follows ``OMP_NUM_THREADS`` and ``threadpoolctl``
        limits (and so the ``n_jobs`` of a grid search).
    verbose : int, default=0
        0 silent, 1 a progress bar (tqdm), 2 a line per validation.
    random_state : int, RandomState instance or None, default=None
        Seeds the initialization, the split, the minibatches and the noise, so that ``fit`` is
        repeatable on the CPU; bit for bit with a fixed ``n_threads`` (None adapts the threads
        to the machine's load, and sums over threads round differently).

    Attributes
    ----------
    input_map_ : skflow.preprocessing.InputMap
        The fitted map from data to flow space (all of preprocessing and its log-Jacobian).
    preprocessing_ : {'standardize', 'quantile', 'pca', 'pca_quantile'}
        The preprocessing used (``preprocessing='auto'`` resolved on the training data).
    hidden_dims_ : tuple of int
        The widths of the fitted flow's hidden layers (``hidden_dims='auto'`` resolved).
    n_blocks_ : int
        The fitted flow's number of blocks (``n_blocks='auto'`` resolved).
    flow_ : skflow.cnf.flow.ContinuousFlow
        The fitted flow on mapped rows (a torch module in float64, kept on the CPU).
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
        (validation negative log-likelihood in nats per row, flow space), ``nfe_forward`` and
        ``nfe_backward`` (function evaluations per step; zero under flow matching, which solves
        no ODE), ``learning_rate``, ``time``.
    best_validation_loss_ : float
        Best validation negative log-likelihood (flow space).
    learning_rate_ : float
        The learning rate of the kept fit (``learning_rate``, or the rate ``'auto'`` chose).
    device_ : str
        Device used by the last ``fit``.
    world_size_ : int
        Number of processes that trained the model data-parallel in the last ``fit`` (1 when
        not distributed). Under ``torchrun``, ``fit`` trains data-parallel over
        ``torch.distributed``: see :mod:`skflow.distributed.torchrun`.

    See Also
    --------
    FFJORDOutlierDetector : Outlier detection by low FFJORD log density.
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.

    Examples
    --------
    >>> from skflow import FFJORDDensity
    >>> from skflow.datasets import make_toy
    >>> X = make_toy("moons", n_samples=500, random_state=0)
    >>> est = FFJORDDensity(hidden_dims=(32, 32), max_iter=200, random_state=0).fit(X)
    >>> est.score_samples(X[:3]).shape
    (3,)
    >>> est.sample(5, random_state=0).shape
    (5, 2)
    """

    _parameter_constraints = {
        "hidden_dims": ["array-like", Integral, StrOptions({"auto"})],
        "preprocessing": [StrOptions({"auto", "standardize", "quantile", "pca",
                                       "pca_quantile"})],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "n_blocks": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
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
        "batch_size": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_iter": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "max_time": [Interval(Real, 0, None, closed="neither"), None],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left"), None],
        "validation_interval": [Interval(Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "warm_start": ["boolean"],
        "device": [str, torch.device],
        "n_threads": [Interval(Integral, 1, None, closed="left"), None],
        "verbose": ["verbose"],
        "random_state": ["random_state"],
    }

    def __init__(
        self, *, hidden_dims="auto", preprocessing="auto", activation="silu", n_blocks="auto",
        time_length=1.0, train_time_length=False, training="flow_matching",
        divergence="hutchinson", noise="rademacher", solver="dopri5", n_steps=8, atol=1e-5,
        rtol=1e-5, eval_atol=1e-6, eval_rtol=1e-6, eval_dtype="float32", max_num_steps=1000,
        adjoint=True, kinetic_energy=0.0, jacobian_frobenius=0.0, learning_rate="auto",
        weight_decay=0.0, batch_size="auto", max_iter="auto", max_time=None,
        validation_fraction=0.1, n_iter_no_change=10, validation_interval="auto", warm_start=False,
        device="auto", n_threads=None, verbose=0, random_state=None,
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
        self.max_time = max_time
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.validation_interval = validation_interval
        self.warm_start = warm_start
        self.device = device
        self.n_threads = n_threads
        self.verbose = verbose
        self.random_state = random_state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # transform / inverse_transform map to and from the latent space.
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "flow_")

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X: ArrayLike, y: None = None) -> FFJORDDensity:
        """Fit the input map and the flow to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data: at least two rows, no constant column.
        y : None
            Ignored.

        Returns
        -------
        self : FFJORDDensity
            The fitted estimator.
        """
        with atomic_fit(self):
            self._fit(X, partial=False)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X: ArrayLike, y: None = None) -> FFJORDDensity:
        """One pass over the chunk ``X`` in minibatches, continuing from the current weights.

        The first call fixes the input map from its chunk. There is no validation split and no
        early stopping; the loss on the chunk is recorded in ``history_``. The learning rate
        stays at ``learning_rate`` (no decay: the stream's length is unknown).

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
        with atomic_fit(self):
            self._fit(X, partial=True)
        return self

    def _fit(self, X, partial):
        """Validate ``X``, train, and set the fitted attributes once training has succeeded;
        returns the validated rows and the training result."""
        first = not hasattr(self, "flow_") or not (partial or self.warm_start)
        X = self._validate_rows(X, reset=first, ensure_min_samples=2)
        n_rows, n_features = X.shape
        device = resolve_device(self.device)
        config = defaults.training_config(self.get_params(), *X.shape, partial, device)
        if first:
            input_map = InputMap(self.preprocessing).fit(X, getattr(self, "feature_names_in_",
                                                                    None))
            Z = input_map.forward(X)[0]
            flow = self._flow_spec(Z, config, partial, device)
            optimizer_state, n_iter, history = None, 0, []
        else:
            input_map, flow, optimizer_state = self.input_map_, self.flow_, self._optimizer_state_
            n_iter, history = self.n_iter_, self.history_
            Z = input_map.forward(X)[0]
        if self.learning_rate != "auto":
            rates = (config.learning_rate,)
        elif first:
            rates = defaults.learning_rates(self.training, n_features)[:1 if partial else None]
        else:  # continuing (warm start, partial_fit) at the rate that 'auto' chose
            rates = (self.learning_rate_,)
        budget, started = config.max_time, time.perf_counter()
        for rate in rates:  # a later rate follows a fit that stopped early (overfitted)
            left = None if budget is None else budget - (time.perf_counter() - started)
            config = dataclasses.replace(config, learning_rate=rate, max_time=left)
            result = training.fit_flow(flow, Z, config,
                                       check_random_state(self.random_state), device,
                                       optimizer_state, n_iter,
                                       n_threads=self.n_threads)
            if not _stopped_in_first_share(result, config, time.perf_counter() - started):
                break
        self.input_map_, self.preprocessing_, self.flow_ = input_map, input_map.kind_, result.flow
        self.learning_rate_ = config.learning_rate
        self._optimizer_state_, self._evaluators = result.optimizer_state, {}
        self.n_iter_, self.history_ = n_iter + result.n_iter, history + result.history
        self.best_validation_loss_ = result.best_validation_loss
        self.device_, self.world_size_ = result.device, result.world_size
        gain = _recent_gain(result.history)
        if (not partial and not result.stopped_early and not result.interrupted
                and not result.out_of_time and self.n_iter_no_change is not None
                and gain is not None):
            warnings.warn(
                f"{type(self).__name__} stopped at max_iter={config.max_iter} while the "
                f"validation loss was still falling ({gain:.3g} nats per row over the last "
                "fifth of training); increase max_iter for a better fit.",
                ConvergenceWarning, stacklevel=2)
        return X, result

    def _flow_spec(self, Z, config, partial, device) -> FlowSpec:
        """The new flow of a first fit on rows ``Z`` (flow space). ``n_blocks='auto'`` under a
        time budget times a few steps of each candidate, and the budget (``config.max_time``)
        pays for that time."""
        n_rows, n_features = Z.shape

        def spec(n_blocks):
            return FlowSpec(n_features, _check_hidden_dims(self.hidden_dims, n_features, n_rows),
                            self.activation, n_blocks, self.time_length, self.train_time_length)

        if self.n_blocks != "auto":
            return spec(self.n_blocks)
        if partial:  # a stream's length is unknown: its first chunk's rows decide
            return spec(defaults.n_blocks(self.training, n_features, n_rows))
        if config.max_time is None:
            return spec(defaults.n_blocks(self.training, n_features, n_rows, config.max_iter,
                                          config.batch_size))
        budget = config.max_time

        def afforded(n_blocks):
            started = time.perf_counter()
            seconds = training.seconds_per_step(spec(n_blocks), Z, config, device,
                                                self.n_threads)
            config.max_time = max(0.0, config.max_time - (time.perf_counter() - started))
            return min(config.max_iter, defaults.STEP_SHARE * budget / seconds)

        return spec(defaults.n_blocks(self.training, n_features, n_rows, afforded,
                                      config.batch_size))

    # --------------------------------------------------------------- evaluation
    def _evaluator(self) -> Evaluator:
        """The evaluator of the fitted flow for the current device and evaluation settings,
        built once and kept (in a dict made by ``fit``, so that scoring leaves the estimator's
        attributes as they were)."""
        check_is_fitted(self)
        device = resolve_device(self.device)
        key = (str(device), self.eval_dtype, self.eval_atol, self.eval_rtol, self.max_num_steps,
               self.n_threads)
        flow, evaluator = self._evaluators.get(key, (None, None))
        if flow is not self.flow_:  # none yet, or one of a flow that a failed fit replaced
            evaluator = Evaluator(self.flow_, self.eval_atol, self.eval_rtol, self.max_num_steps,
                                  dtype=getattr(torch, self.eval_dtype), device=device,
                                  n_threads=self.n_threads)
            self._evaluators[key] = (self.flow_, evaluator)
        return evaluator

    def _validate_rows(self, X, reset=False, ensure_min_samples=1):
        """``X`` as a float64 array of finite rows, with a message written for a density."""
        # 'numeric' refuses arrays of strings; C order makes a fit independent of the layout.
        X = np.asarray(validate_data(self, X, reset=reset, dtype="numeric", order="C",
                                     ensure_min_samples=ensure_min_samples,
                                     ensure_all_finite=False), dtype=np.float64)
        finite = np.isfinite(X)
        if not finite.all():
            what = " or ".join(name for name, present in (
                ("NaN", np.isnan(X).any()), ("infinity", np.isinf(X).any())) if present)
            rows = np.flatnonzero(~finite.all(axis=1))
            raise ValueError(
                f"Input X contains {what} in {len(rows)} row(s) (the first is row {rows[0]}): a "
                "density is defined for complete, finite rows only. Drop those rows, or fill "
                "the missing values first (e.g. sklearn.impute.SimpleImputer in a Pipeline).")
        return X

    def _check_input(self, X):
        check_is_fitted(self)
        return self._validate_rows(X)

    # Scoring rows far outside the training data warns that their density is an extrapolation
    # (an outlier detector, whose job is to find such rows, does not).
    _warns_extrapolation = True

    def _flow_space(self, X):
        """``(Z, log_det)``: the validated rows ``X`` through the input map; a warning when
        some lie far outside the training data."""
        Z, log_det = self.input_map_.forward(X)
        far = int((np.abs(Z) > _FAR).any(axis=1).sum()) if Z.size else 0
        if far and self._warns_extrapolation:
            warnings.warn(
                f"{far} of {len(Z)} row(s) lie more than {_FAR:.0f} training standard deviations "
                "outside the training data in some feature: their density is an extrapolation.",
                ExtrapolationWarning, stacklevel=3)
        return Z, log_det

    @property
    def hidden_dims_(self) -> tuple[int, ...]:
        """The widths of the fitted flow's hidden layers (read from the flow, so that models
        pickled before ``hidden_dims='auto'`` existed have it too)."""
        check_is_fitted(self)
        return self.flow_.hidden_dims

    @property
    def n_blocks_(self) -> int:
        """The fitted flow's number of blocks (read from the flow, as ``hidden_dims_``)."""
        check_is_fitted(self)
        return len(self.flow_.blocks)

    @property
    def _n_features_out(self) -> int:  # names of transform's latent columns
        return self.n_features_in_

    def _log_density(self, X):
        """Log density of the validated rows ``X``."""
        Z, log_det = self._flow_space(X)
        return self._evaluator().log_prob(Z) + log_det

    def score_samples(self, X: ArrayLike) -> np.ndarray:
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
        return self._log_density(self._check_input(X))

    def evaluation_nfe(self, X: ArrayLike) -> np.ndarray:
        """Dynamics evaluations that ``score_samples`` needs for each row of ``X``, summed over
        blocks: regularized or simulation-free training gives straighter flows that need fewer.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Points to evaluate.

        Returns
        -------
        nfe : ndarray of shape (n_samples,)
            Function evaluations per row.
        """
        return self._evaluator().nfe(self._flow_space(self._check_input(X))[0])

    def transform(self, X: ArrayLike) -> np.ndarray:
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
        return self._evaluator().to_latent(self._flow_space(self._check_input(X))[0])

    def inverse_transform(self, Z: ArrayLike) -> np.ndarray:
        """Map latent coordinates back to data space (the flow integrated backwards).

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
            Latent coordinates.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Data-space points.
        """
        Z = self._check_input(Z)  # latent rows: no extrapolation warning
        return self.input_map_.inverse(self._evaluator().from_latent(Z))

    def sample(self, n_samples: int = 1,
               random_state: int | np.random.RandomState | None = None) -> np.ndarray:
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
        Z = check_random_state(random_state).standard_normal((check_n_samples(n_samples),
                                                             self.n_features_in_))
        return self.input_map_.inverse(self._evaluator().from_latent(Z))
