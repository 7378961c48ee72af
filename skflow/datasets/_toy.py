"""Two-dimensional toy densities used in the FFJORD paper.

The definitions follow the ones described by Grathwohl et al. (2019),
"FFJORD: Free-form Continuous Dynamics for Scalable Reversible Generative
Models", for their 2-D experiments. All randomness goes through the
``random_state`` argument (``check_random_state``): no generator calls
NumPy's global random functions directly.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.datasets import make_circles, make_moons, make_swiss_roll
from sklearn.utils import check_random_state

__all__ = ["TOY_DATASETS", "make_toy"]


def _swissroll(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    X, _ = make_swiss_roll(n_samples=n_samples, noise=1.0, random_state=rng)
    # The roll lives in the (x, z) plane; y is the length of the roll.
    return X[:, [0, 2]] / 5.0


def _circles(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    X, _ = make_circles(n_samples=n_samples, factor=0.5, noise=0.08, random_state=rng)
    return X * 3.0


def _moons(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    X, _ = make_moons(n_samples=n_samples, noise=0.1, random_state=rng)
    return X * 2.0 + np.array([-1.0, -0.2])


def _8gaussians(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    scale = 4.0
    angles = np.arange(8) * (np.pi / 4.0)
    centers = scale * np.column_stack([np.cos(angles), np.sin(angles)])
    noise = 0.5 * rng.standard_normal((n_samples, 2))
    component = rng.randint(8, size=n_samples)
    # The paper divides by 1.414 (not sqrt(2)); keep it for comparability.
    return (centers[component] + noise) / 1.414


def _pinwheel(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    n_arms = 5
    radial_std, tangential_std, rate = 0.3, 0.1, 0.25
    # Arms as balanced as possible, so that odd ``n_samples`` work too.
    arm = np.arange(n_samples) % n_arms
    features = rng.standard_normal((n_samples, 2)) * np.array(
        [radial_std, tangential_std]
    )
    features[:, 0] += 1.0
    # The further out along an arm, the more it is bent.
    angle = 2.0 * np.pi * arm / n_arms + rate * np.exp(features[:, 0])
    cos, sin = np.cos(angle), np.sin(angle)
    # Row vector times the rotation matrix [[cos, -sin], [sin, cos]], the
    # convention of the reference implementation (it fixes the chirality).
    X = np.column_stack(
        [
            features[:, 0] * cos + features[:, 1] * sin,
            -features[:, 0] * sin + features[:, 1] * cos,
        ]
    )
    return 2.0 * X[rng.permutation(n_samples)]


def _2spirals(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    # Every point is drawn independently on the spiral; the second half is
    # then mirrored through the origin, which gives the second spiral arm.
    u = np.sqrt(rng.uniform(size=n_samples)) * 540.0 * (2.0 * np.pi) / 360.0
    x = -np.cos(u) * u + rng.uniform(size=n_samples) * 0.5
    y = np.sin(u) * u + rng.uniform(size=n_samples) * 0.5
    X = np.column_stack([x, y])
    X[n_samples // 2 :] *= -1.0
    X = X / 3.0 + 0.1 * rng.standard_normal((n_samples, 2))
    return X[rng.permutation(n_samples)]


def _checkerboard(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    x1 = rng.uniform(-2.0, 2.0, size=n_samples)
    # Pick one of two rows of squares, then shift by one square in every
    # other column so that only the "black" squares are occupied.
    x2 = rng.uniform(size=n_samples) - 2.0 * rng.randint(0, 2, size=n_samples)
    x2 += np.floor(x1) % 2
    return np.column_stack([x1, x2]) * 2.0


def _rings(n_samples: int, rng: np.random.RandomState) -> np.ndarray:
    radii = np.array([1.0, 0.75, 0.5, 0.25])
    # Split exactly n_samples over the four rings; the outer ring takes
    # the remainder.
    counts = np.full(4, n_samples // 4)
    counts[0] += n_samples - counts.sum()
    rings = []
    for radius, count in zip(radii, counts):
        # endpoint=False so that the first and last points do not coincide.
        theta = np.linspace(0.0, 2.0 * np.pi, count, endpoint=False)
        rings.append(radius * np.column_stack([np.cos(theta), np.sin(theta)]))
    X = 3.0 * np.concatenate(rings)
    X = X[rng.permutation(n_samples)]
    return X + 0.08 * rng.standard_normal((n_samples, 2))


_GENERATORS = {
    "swissroll": _swissroll,
    "circles": _circles,
    "rings": _rings,
    "moons": _moons,
    "8gaussians": _8gaussians,
    "pinwheel": _pinwheel,
    "2spirals": _2spirals,
    "checkerboard": _checkerboard,
}

#: Names accepted by :func:`make_toy`.
TOY_DATASETS = tuple(_GENERATORS)


def make_toy(
    name: str,
    n_samples: int = 1000,
    random_state: int | np.random.RandomState | None = None,
) -> np.ndarray:
    """Sample one of the eight 2-D toy densities of the FFJORD paper.

    Parameters
    ----------
    name : str
        Name of the density, one of ``'swissroll'``, ``'circles'``,
        ``'rings'``, ``'moons'``, ``'8gaussians'``, ``'pinwheel'``,
        ``'2spirals'`` and ``'checkerboard'`` (see ``TOY_DATASETS``).

    n_samples : int, default=1000
        Number of points to draw. Must be positive.

    random_state : int, RandomState instance or None, default=None
        Determines random number generation. Pass an int for reproducible
        output across multiple function calls; with an int or a
        RandomState instance the global NumPy random state is neither used
        nor changed. None means the global ``np.random`` generator, as
        elsewhere in scikit-learn.

    Returns
    -------
    X : ndarray of shape (n_samples, 2), dtype float64
        The samples, in random order.

    Raises
    ------
    ValueError
        If ``name`` is unknown or ``n_samples`` is not a positive integer.

    Notes
    -----
    ``'swissroll'``, ``'circles'`` and ``'moons'`` are rescaled versions of
    :func:`~sklearn.datasets.make_swiss_roll`,
    :func:`~sklearn.datasets.make_circles` and
    :func:`~sklearn.datasets.make_moons`. ``'rings'`` places the points
    evenly in angle on four concentric circles of radii 3, 2.25, 1.5 and
    0.75 before adding Gaussian noise.

    References
    ----------
    .. [1] W. Grathwohl, R. T. Q. Chen, J. Bettencourt, I. Sutskever and
       D. Duvenaud, "FFJORD: Free-form Continuous Dynamics for Scalable
       Reversible Generative Models", ICLR 2019.

    Examples
    --------
    >>> from skflow.datasets import make_toy
    >>> X = make_toy("8gaussians", n_samples=500, random_state=0)
    >>> X.shape, X.dtype
    ((500, 2), dtype('float64'))
    >>> bool((make_toy("8gaussians", 500, random_state=0) == X).all())  # seeded: reproducible
    True
    """
    if not isinstance(name, str) or name not in _GENERATORS:
        raise ValueError(
            f"Unknown toy dataset {name!r}; valid names are "
            f"{', '.join(repr(n) for n in TOY_DATASETS)}."
        )
    if (
        isinstance(n_samples, (bool, np.bool_))
        or not isinstance(n_samples, numbers.Integral)
        or n_samples < 1
    ):
        raise ValueError(
            f"n_samples must be a positive integer, got {n_samples!r}."
        )
    rng = check_random_state(random_state)
    X = _GENERATORS[name](int(n_samples), rng)
    return np.ascontiguousarray(X, dtype=np.float64)
