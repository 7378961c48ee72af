"""skflow: FFJORD continuous normalizing flows as scikit-learn density estimators."""

__version__ = "0.1.0"
