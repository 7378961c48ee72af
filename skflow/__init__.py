"""skflow: FFJORD continuous normalizing flows as scikit-learn density estimators."""

__version__ = "0.1.0"

from .density import FFJORDDensity  # noqa: E402

__all__ = ["FFJORDDensity", "__version__"]
