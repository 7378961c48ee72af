"""The exceptions and warnings that skflow raises.

scikit-learn's own classes are used where they say the same thing: ``NotFittedError`` before
``fit``, ``ConvergenceWarning`` when training stopped early of convergence.
"""

__all__ = ["SolverError", "TrainingDivergedError", "TrainingFaultWarning",
           "FitInterruptedWarning", "InconsistentVersionWarning", "ExtrapolationWarning"]


class SolverError(RuntimeError):
    """An ODE solve could not finish: too many steps, step size underflow or a non-finite state.

    Examples
    --------
    >>> from skflow.exceptions import SolverError
    >>> issubclass(SolverError, RuntimeError)
    True
    """


class TrainingDivergedError(RuntimeError):
    """Training kept producing non-finite losses or failed solves after the recovery attempts,
    or no validation ever succeeded. The estimator is left as it was before ``fit``.

    Examples
    --------
    >>> from skflow.exceptions import TrainingDivergedError
    >>> issubclass(TrainingDivergedError, RuntimeError)
    True
    """


class TrainingFaultWarning(RuntimeWarning):
    """A fault during training (a non-finite loss or gradient, a failed solve) was recovered:
    the last good weights were restored and the learning rate divided by 10.

    Examples
    --------
    >>> from skflow.exceptions import TrainingFaultWarning
    >>> issubclass(TrainingFaultWarning, RuntimeWarning)
    True
    """


class FitInterruptedWarning(RuntimeWarning):
    """``fit`` was interrupted (Ctrl-C); the best weights found so far were kept.

    Examples
    --------
    >>> from skflow.exceptions import FitInterruptedWarning
    >>> issubclass(FitInterruptedWarning, RuntimeWarning)
    True
    """


class ExtrapolationWarning(UserWarning):
    """Scored rows lie far outside the training data, where the density is an extrapolation
    (a point scored -3e6 may be no more than far away).

    Examples
    --------
    >>> from skflow.exceptions import ExtrapolationWarning
    >>> issubclass(ExtrapolationWarning, UserWarning)
    True
    """


class InconsistentVersionWarning(UserWarning):
    """A pickled estimator was saved by another (compatible) version of skflow.

    Examples
    --------
    >>> from skflow.exceptions import InconsistentVersionWarning
    >>> issubclass(InconsistentVersionWarning, UserWarning)
    True
    """
