"""Loaders for anomaly detection benchmarks of the ODDS library."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from sklearn.utils import Bunch

from ._base import RemoteFile, fetch_file

__all__ = ["ODDS_DATASETS", "load_odds"]

_ADBENCH_URL = (
    "https://github.com/Minqi824/ADBench/raw/main/adbench/datasets/Classical/"
)

# name: (file name in the ADBench redistribution, description).
_ODDS_INFO = {
    "thyroid": (
        "38_thyroid.npz",
        "Thyroid disease (UCI), hyperfunction class as anomalies.",
    ),
    "cardio": (
        "6_cardio.npz",
        "Cardiotocography (UCI), pathologic class as anomalies.",
    ),
    "mammography": (
        "23_mammography.npz",
        "Mammography (Woods et al., 1993), calcifications as anomalies.",
    ),
    "annthyroid": (
        "2_annthyroid.npz",
        "Annthyroid (UCI), non-normal thyroid function classes as anomalies.",
    ),
}

#: Names accepted by :func:`load_odds`.
ODDS_DATASETS = tuple(_ODDS_INFO)


def _remote(name: str) -> RemoteFile:
    # The SHA-256 digests of the redistributed files are not known here, so
    # they are not checked (see ``fetch_file``); do not put guessed values in.
    return RemoteFile(
        filename=f"odds/{name}.npz",
        url=_ADBENCH_URL + _ODDS_INFO[name][0],
        sha256=None,
    )


def _read_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read and check the ``X`` (float64) and ``y`` (int64) arrays of a file."""
    # No pickles: the files only need plain numeric arrays.
    with np.load(path, allow_pickle=False) as archive:
        if "X" not in archive.files or "y" not in archive.files:
            raise ValueError(
                f"Expected arrays 'X' and 'y' in {path}, found {archive.files}."
            )
        X = np.asarray(archive["X"], dtype=np.float64)
        y = np.asarray(archive["y"]).astype(np.int64)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(
            f"Expected X of shape (n_samples, n_features) and y of shape "
            f"(n_samples,) in {path}, got {X.shape} and {y.shape}."
        )
    return X, y


def load_odds(
    name: str,
    data_home: str | os.PathLike | None = None,
    download_if_missing: bool = True,
    return_X_y: bool = False,
) -> Bunch | tuple[np.ndarray, np.ndarray]:
    """Load an anomaly detection data set of the ODDS library.

    The data sets are the ODDS benchmark versions (Rayana, 2016) as
    redistributed by ADBench (Han et al., 2022). Anomalies are labelled 1,
    inliers 0.

    =============   =========   ==========   ===========
    Name            Samples     Features     Anomalies
    =============   =========   ==========   ===========
    thyroid         3,772       6            93
    cardio          1,831       21           176
    mammography     11,183      6            260
    annthyroid      7,200       6            534
    =============   =========   ==========   ===========

    Parameters
    ----------
    name : str
        Name of the data set, one of ``'thyroid'``, ``'cardio'``,
        ``'mammography'`` and ``'annthyroid'`` (see ``ODDS_DATASETS``).

    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The data are read from
        ``<data_home>/odds/<name>.npz``, a NumPy archive with arrays ``X``
        and ``y``.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when the file is missing
        instead of downloading it. The checksum of the file is not known,
        so a downloaded file is not verified.

    return_X_y : bool, default=False
        If True, return ``(data, target)`` instead of a Bunch object.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        data : ndarray of shape (n_samples, n_features)
            The features, float64.
        target : ndarray of shape (n_samples,)
            1 for anomalies, 0 for inliers, int64.
        DESCR : str
            Description of the data set.

    (data, target) : tuple if ``return_X_y`` is True
        The two arrays described above.

    Raises
    ------
    ValueError
        If ``name`` is unknown or the file does not hold the expected arrays.
    FileNotFoundError
        If the file is missing and ``download_if_missing`` is False.

    References
    ----------
    .. [1] S. Rayana, "ODDS Library", Stony Brook University, 2016.
       https://odds.cs.stonybrook.edu
    .. [2] S. Han, X. Hu, H. Huang, M. Jiang and Y. Zhao, "ADBench: Anomaly
       Detection Benchmark", NeurIPS 2022.

    Examples
    --------
    Offline, from a file already in the data home (here a tiny stand-in
    for ``thyroid``; without it, the file would be downloaded):

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skflow.datasets import load_odds
    >>> data_home = Path(tempfile.mkdtemp())
    >>> (data_home / "odds").mkdir()
    >>> X_raw, y_raw = np.ones((5, 6)), np.array([0, 0, 0, 0, 1])
    >>> np.savez(data_home / "odds" / "thyroid.npz", X=X_raw, y=y_raw)
    >>> X, y = load_odds("thyroid", data_home, download_if_missing=False, return_X_y=True)
    >>> X.shape, X.dtype, y.tolist()
    ((5, 6), dtype('float64'), [0, 0, 0, 0, 1])

    With the real file, ``load_odds("thyroid", return_X_y=True)`` gives
    ``X`` of shape ``(3772, 6)`` and 93 anomalies.
    """
    if not isinstance(name, str) or name not in _ODDS_INFO:
        raise ValueError(
            f"Unknown ODDS data set {name!r}; valid names are "
            f"{', '.join(repr(n) for n in ODDS_DATASETS)}."
        )
    path = fetch_file(_remote(name), data_home, download_if_missing=download_if_missing)
    X, y = _read_arrays(path)
    if return_X_y:
        return X, y
    descr = _ODDS_INFO[name][1]
    return Bunch(
        data=X,
        target=y,
        DESCR=(
            f"{name}\n{'=' * len(name)}\n\n{descr}\n\n"
            f"{X.shape[0]} samples, {X.shape[1]} features, {int(y.sum())} "
            f"anomalies (target 1). ODDS benchmark version (Rayana, 2016), as "
            f"redistributed by ADBench (Han et al., 2022)."
        ),
    )
