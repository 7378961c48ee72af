"""The fitted state of skflow's estimators: atomic fits and versioned pickles.

The fitted state is every attribute whose name ends in ``_`` (public ones such as ``flow_``,
private ones such as ``_optimizer_state_``).
"""

import contextlib
import warnings

from . import __version__
from .exceptions import InconsistentVersionWarning

# Bumped whenever the pickled state changes incompatibly.
PICKLE_FORMAT = 5  # 5: time features in the dynamics; 4: the input map may rotate first


def _fitted_state(estimator):
    return {k: v for k, v in vars(estimator).items() if k.endswith("_")}


@contextlib.contextmanager
def atomic_fit(estimator):
    """Restore the estimator's fitted state as it was if anything in the block fails
    (invalid data, a diverged training, Ctrl-C before any validation, a failed scoring), so that
    a failed ``fit`` never leaves a half-fitted estimator."""
    before = _fitted_state(estimator)
    try:
        yield
    except BaseException:
        for key in _fitted_state(estimator):
            delattr(estimator, key)
        vars(estimator).update(before)
        raise


class VersionedPickleMixin:
    """Pickles carry skflow's version and state format: another format fails with a message
    that says which version to install, another compatible version loads with a warning."""

    def __getstate__(self):
        state = dict(super().__getstate__())  # a copy: object's is the live __dict__
        state.pop("_evaluators", None)  # device-bound and rebuilt on demand: never pickled
        state["_skflow_version"] = __version__
        state["_skflow_pickle_format"] = PICKLE_FORMAT
        return state

    def __setstate__(self, state):
        pickle_format = state.pop("_skflow_pickle_format", None)
        version = state.pop("_skflow_version", "unknown")
        if pickle_format != PICKLE_FORMAT:
            raise ValueError(
                f"This {type(self).__name__} was saved by skflow {version} (pickle format "
                f"{pickle_format}), which this skflow {__version__} (format {PICKLE_FORMAT}) "
                f"cannot load. Install skflow=={version} to load it, or refit the model.")
        if version != __version__:
            warnings.warn(f"Loading a {type(self).__name__} saved by skflow {version} with skflow "
                          f"{__version__}.", InconsistentVersionWarning, stacklevel=2)
        super().__setstate__(state)
        self._evaluators = {}
