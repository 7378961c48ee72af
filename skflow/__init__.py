"""skflow: FFJORD continuous normalizing flows as scikit-learn density estimators."""

__version__ = "0.3.0"

from .density import FFJORDDensity  # noqa: E402
from .ensemble import DensityEnsemble  # noqa: E402
from .outlier import FFJORDOutlierDetector  # noqa: E402

__all__ = ["DensityEnsemble", "FFJORDDensity", "FFJORDOutlierDetector", "__version__"]
