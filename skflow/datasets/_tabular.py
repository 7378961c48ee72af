"""Loaders for the tabular density estimation benchmarks of MAF and FFJORD.

POWER, GAS, HEPMASS, MINIBOONE and BSDS300 with the preprocessing and
train/validation/test splits published with Masked Autoregressive Flows
(Papamakarios et al., 2017), which FFJORD and most later flow papers
report on.

The raw files are read from ``<data_home>/maf/`` in the layout of the
published archive (zenodo record 1161203, ``data.tar.gz``)::

    maf/power/data.npy
    maf/gas/ethylene_CO.pickle
    maf/hepmass/1000_train.csv
    maf/hepmass/1000_test.csv
    maf/miniboone/data.npy
    maf/BSDS300/BSDS300.hdf5

When a file is missing and downloads are allowed, the whole archive is
downloaded once to ``<data_home>/maf/data.tar.gz`` (it is large, over a
gigabyte) and the files of the requested data set are extracted from it.
"""

from collections import Counter

import numpy as np
from sklearn.utils import Bunch

from ._base import RemoteFile, extract_tar, fetch_file, get_data_home

__all__ = [
    "load_bsds300",
    "load_gas",
    "load_hepmass",
    "load_miniboone",
    "load_power",
]

# The SHA-256 digest of the archive is not known here, so it is not
# checked (see ``fetch_file``); do not put a guessed value in.
MAF_ARCHIVE = RemoteFile(
    filename="maf/data.tar.gz",
    url="https://zenodo.org/records/1161203/files/data.tar.gz",
    sha256=None,
)

_REFERENCE = (
    "G. Papamakarios, T. Pavlakou and I. Murray, \"Masked Autoregressive "
    "Flow for Density Estimation\", NeurIPS 2017. Data: "
    "https://zenodo.org/records/1161203"
)


def _raw_paths(dataset, filenames, data_home, download_if_missing):
    """Return the paths of the raw files of a data set, fetching if needed."""
    data_home = get_data_home(data_home)
    folder = data_home / "maf" / dataset
    paths = [folder / name for name in filenames]
    missing = [p for p in paths if not p.exists()]
    if not missing:
        return paths

    if not download_if_missing:
        raise FileNotFoundError(
            f"Raw file {missing[0].name!r} of the {dataset} data set is missing: "
            f"it was looked for at {missing[0]}. It is part of the archive "
            f"{MAF_ARCHIVE.url}; extract the {dataset}/ folder of that archive "
            f"to {folder} by hand, or call again with download_if_missing=True."
        )

    archive = fetch_file(MAF_ARCHIVE, data_home, download_if_missing=True)
    # The archive holds a top-level ``data/`` folder; only the requested
    # data set is extracted, as the archive also contains image data sets.
    extract_tar(archive, data_home / "maf", members=[dataset], strip_prefix="data")
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise OSError(
            f"The archive {archive} (from {MAF_ARCHIVE.url}) did not provide "
            f"{missing[0]}. Delete the archive to download it again, or place "
            f"the file there by hand."
        )
    return paths


def _split_tail(data, fraction=0.1):
    """Split off the last ``int(fraction * n)`` rows, as MAF does."""
    n_tail = int(fraction * data.shape[0])
    cut = data.shape[0] - n_tail
    return data[:cut], data[cut:]


def _three_way_split(data):
    # Test is the last 10% of the rows, validation the last 10% of the rest.
    rest, test = _split_tail(data)
    train, validation = _split_tail(rest)
    return train, validation, test


def _bunch(name, train, validation, test, descr):
    train, validation, test = (
        np.ascontiguousarray(a, dtype=np.float64) for a in (train, validation, test)
    )
    return Bunch(
        train=train,
        validation=validation,
        test=test,
        n_features=train.shape[1],
        DESCR=(
            f"{name}\n{'=' * len(name)}\n\n{descr}\n\n"
            f"Splits: {train.shape[0]} train, {validation.shape[0]} validation, "
            f"{test.shape[0]} test rows; {train.shape[1]} features.\n\n"
            f"Reference: {_REFERENCE}"
        ),
    )


def _load_pandas():
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "Reading this data set requires pandas, which is not installed. "
            "Install it with `pip install pandas`."
        ) from exc
    return pd


def load_power(data_home=None, download_if_missing=True):
    """Load the POWER data set with the MAF preprocessing (6 features).

    Individual household electric power consumption (UCI). The rows are
    shuffled with a fixed seed, the global reactive power and global
    intensity columns are dropped, uniform noise is added to break ties in
    the discretized values, and the data are standardized with the mean and
    standard deviation of the train and validation rows together.

    ===============   ===============================
    Features          6
    Train             1,659,917 rows
    Validation        184,435 rows
    Test              204,928 rows
    ===============   ===============================

    Parameters
    ----------
    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The raw file is read
        from ``<data_home>/maf/power/data.npy``.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when the raw file is missing
        instead of downloading the archive.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the following attributes.

        train : ndarray of shape (n_train, 6)
            The training rows, float64.
        validation : ndarray of shape (n_validation, 6)
            The validation rows.
        test : ndarray of shape (n_test, 6)
            The test rows.
        n_features : int
            The number of features, 6.
        DESCR : str
            Description of the data set.

    Examples
    --------
    >>> from skflow.datasets import load_power
    >>> power = load_power()  # doctest: +SKIP
    >>> power.train.shape  # doctest: +SKIP
    (1659917, 6)
    """
    (path,) = _raw_paths("power", ["data.npy"], data_home, download_if_missing)
    data = np.load(path, allow_pickle=False).astype(np.float64)
    if data.ndim != 2 or data.shape[1] != 8:
        raise ValueError(
            f"Expected the raw POWER data in {path} to have 8 columns, got "
            f"shape {data.shape}."
        )
    # The fixed seed and the order of the random draws below are those of
    # the published preprocessing, so the splits match the literature.
    rng = np.random.RandomState(42)
    rng.shuffle(data)
    n = data.shape[0]
    # Drop global intensity (3) then global reactive power (1).
    data = np.delete(data, 3, axis=1)
    data = np.delete(data, 1, axis=1)
    # Columns now: global active power, voltage, 3 sub-meterings, time.
    # Uniform noise of the size of each column's resolution breaks ties.
    voltage_noise = 0.01 * rng.rand(n, 1)
    gap_noise = 0.001 * rng.rand(n, 1)
    sm_noise = rng.rand(n, 3)
    time_noise = np.zeros((n, 1))
    data = data + np.hstack([gap_noise, voltage_noise, sm_noise, time_noise])

    train, validation, test = _three_way_split(data)
    fit = np.vstack([train, validation])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    train, validation, test = ((a - mean) / std for a in (train, validation, test))
    return _bunch(
        "POWER",
        train,
        validation,
        test,
        "Household electric power consumption (UCI), MAF preprocessing: rows "
        "shuffled with seed 42, columns 1 and 3 dropped, dequantization noise "
        "added, standardized with the train+validation mean and std.",
    )


def _correlated_counts(frame):
    # For each column, how many columns (itself included) it correlates
    # with above 0.98. The published code uses the signed correlation.
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


def load_gas(data_home=None, download_if_missing=True):
    """Load the GAS data set with the MAF preprocessing (8 features).

    Gas sensor array under dynamic gas mixtures, ethylene and CO (UCI). The
    concentration and time columns are dropped, then strongly correlated
    sensors (correlation above 0.98) are removed one at a time, the data
    are standardized with the mean and standard deviation of all rows, and
    split in order (no shuffling).

    ===============   ===============================
    Features          8
    Train             852,174 rows
    Validation        94,685 rows
    Test              105,206 rows
    ===============   ===============================

    Parameters
    ----------
    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The raw file is read
        from ``<data_home>/maf/gas/ethylene_CO.pickle``, a pickled pandas
        DataFrame (reading it requires pandas; only read such a file from
        a source you trust, as unpickling can run code).

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when the raw file is missing
        instead of downloading the archive.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes ``train``,
        ``validation``, ``test`` (float64 arrays with 8 columns),
        ``n_features`` and ``DESCR``.

    Examples
    --------
    >>> from skflow.datasets import load_gas
    >>> gas = load_gas()  # doctest: +SKIP
    >>> gas.n_features  # doctest: +SKIP
    8
    """
    (path,) = _raw_paths("gas", ["ethylene_CO.pickle"], data_home, download_if_missing)
    pd = _load_pandas()
    frame = pd.read_pickle(path)
    missing = {"Meth", "Eth", "Time"} - set(frame.columns)
    if missing:
        raise ValueError(
            f"Expected the raw GAS data in {path} to have the columns 'Meth', "
            f"'Eth' and 'Time'; missing {sorted(missing)}."
        )
    frame = frame.drop(columns=["Meth", "Eth", "Time"])
    counts = _correlated_counts(frame)
    while np.any(counts > 1):
        frame = frame.drop(columns=frame.columns[np.flatnonzero(counts > 1)[0]])
        counts = _correlated_counts(frame)
    # pandas' std, i.e. with ddof=1, as published.
    frame = (frame - frame.mean()) / frame.std()
    train, validation, test = _three_way_split(frame.to_numpy(dtype=np.float64))
    return _bunch(
        "GAS",
        train,
        validation,
        test,
        "Gas sensor array under dynamic gas mixtures, ethylene and CO (UCI), "
        "MAF preprocessing: concentration and time columns dropped, sensors "
        "correlated above 0.98 removed, standardized over all rows, split in "
        "order.",
    )


def load_hepmass(data_home=None, download_if_missing=True):
    """Load the HEPMASS data set with the MAF preprocessing (21 features).

    Particle collision data (UCI), mass 1000 subset. Only the signal rows
    (label 1) are kept, both sets are standardized with the mean and
    standard deviation of the training file, and features with too many
    repeated values are dropped. The validation rows are the last 10% of
    the training file.

    ===============   ===============================
    Features          21
    Train             315,123 rows
    Validation        35,013 rows
    Test              174,987 rows
    ===============   ===============================

    Parameters
    ----------
    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The raw files are read
        from ``<data_home>/maf/hepmass/1000_train.csv`` and
        ``1000_test.csv``.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when a raw file is missing
        instead of downloading the archive.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes ``train``,
        ``validation``, ``test`` (float64 arrays with 21 columns),
        ``n_features`` and ``DESCR``.

    Notes
    -----
    A feature is dropped when, in the standardized training rows, the
    occurrence count of its *smallest* value exceeds 5. This is what the
    published preprocessing computes (its comment speaks of "re-occurring
    values"); it is kept as is so that the features match the literature.

    Examples
    --------
    >>> from skflow.datasets import load_hepmass
    >>> hepmass = load_hepmass()  # doctest: +SKIP
    >>> hepmass.n_features  # doctest: +SKIP
    21
    """
    train_path, test_path = _raw_paths(
        "hepmass", ["1000_train.csv", "1000_test.csv"], data_home, download_if_missing
    )
    pd = _load_pandas()
    train = pd.read_csv(train_path, index_col=False)
    test = pd.read_csv(test_path, index_col=False)
    # Keep signal rows only, then drop the label column.
    train = train[train.iloc[:, 0] == 1].iloc[:, 1:]
    test = test[test.iloc[:, 0] == 1].iloc[:, 1:]
    # The published test file has one column more than the training file.
    test = test.iloc[:, :-1]
    train = train.to_numpy(dtype=np.float64)
    test = test.to_numpy(dtype=np.float64)
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"After dropping the label (and the extra last test column), the "
            f"HEPMASS files have {train.shape[1]} and {test.shape[1]} features; "
            f"expected the same number."
        )
    # pandas' std, i.e. with ddof=1, as published.
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    train, test = (train - mean) / std, (test - mean) / std

    keep = []
    for j, column in enumerate(train.T):
        counts = Counter(column)
        if counts[min(counts)] <= 5:
            keep.append(j)
    train, test = train[:, keep], test[:, keep]
    train, validation = _split_tail(train)
    return _bunch(
        "HEPMASS",
        train,
        validation,
        test,
        "HEPMASS (UCI), mass 1000 subset, MAF preprocessing: signal rows only, "
        "standardized with the training mean and std, features with many "
        "repeated values dropped; validation is the last 10% of the training "
        "file.",
    )


def load_miniboone(data_home=None, download_if_missing=True):
    """Load the MINIBOONE data set with the MAF preprocessing (43 features).

    MiniBooNE particle identification (UCI), signal events with outliers
    removed as published. Test rows are the last 10%, validation rows the
    last 10% of the rest, and all are standardized with the mean and
    standard deviation of the train and validation rows together.

    ===============   ===============================
    Features          43
    Train             29,556 rows
    Validation        3,284 rows
    Test              3,648 rows
    ===============   ===============================

    Parameters
    ----------
    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The raw file is read
        from ``<data_home>/maf/miniboone/data.npy``.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when the raw file is missing
        instead of downloading the archive.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes ``train``,
        ``validation``, ``test`` (float64 arrays with 43 columns),
        ``n_features`` and ``DESCR``.

    Examples
    --------
    >>> from skflow.datasets import load_miniboone
    >>> miniboone = load_miniboone()  # doctest: +SKIP
    >>> miniboone.test.shape  # doctest: +SKIP
    (3648, 43)
    """
    (path,) = _raw_paths("miniboone", ["data.npy"], data_home, download_if_missing)
    data = np.load(path, allow_pickle=False).astype(np.float64)
    if data.ndim != 2:
        raise ValueError(
            f"Expected a 2-D array in {path}, got shape {data.shape}."
        )
    train, validation, test = _three_way_split(data)
    fit = np.vstack([train, validation])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    train, validation, test = ((a - mean) / std for a in (train, validation, test))
    return _bunch(
        "MINIBOONE",
        train,
        validation,
        test,
        "MiniBooNE particle identification (UCI), MAF preprocessing: last 10% "
        "test, last 10% of the rest validation, standardized with the "
        "train+validation mean and std.",
    )


def load_bsds300(data_home=None, download_if_missing=True):
    """Load the BSDS300 data set as published with MAF (63 features).

    8x8 patches of the Berkeley segmentation data set images, monochrome,
    with the bottom-right pixel dropped (63 features). The published splits
    are used as they are.

    ===============   ===============================
    Features          63
    Train             1,000,000 rows
    Validation        50,000 rows
    Test              250,000 rows
    ===============   ===============================

    Parameters
    ----------
    data_home : str or path-like, default=None
        The data folder, see :func:`get_data_home`. The raw file is read
        from ``<data_home>/maf/BSDS300/BSDS300.hdf5``, which requires the
        optional dependency h5py.

    download_if_missing : bool, default=True
        If False, raise a ``FileNotFoundError`` when the raw file is missing
        instead of downloading the archive.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        Dictionary-like object with the attributes ``train``,
        ``validation``, ``test`` (float64 arrays with 63 columns),
        ``n_features`` and ``DESCR``.

    Raises
    ------
    ImportError
        If h5py is not installed.

    Examples
    --------
    >>> from skflow.datasets import load_bsds300
    >>> bsds300 = load_bsds300()  # doctest: +SKIP
    >>> bsds300.n_features  # doctest: +SKIP
    63
    """
    (path,) = _raw_paths("BSDS300", ["BSDS300.hdf5"], data_home, download_if_missing)
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(
            f"load_bsds300 requires h5py to read {path}, and h5py is not "
            f"installed. Install it with `pip install h5py`."
        ) from exc
    with h5py.File(path, "r") as f:
        missing = {"train", "validation", "test"} - set(f.keys())
        if missing:
            raise ValueError(
                f"Expected the datasets 'train', 'validation' and 'test' in "
                f"{path}; missing {sorted(missing)}."
            )
        train, validation, test = (
            np.asarray(f[key], dtype=np.float64)
            for key in ("train", "validation", "test")
        )
    return _bunch(
        "BSDS300",
        train,
        validation,
        test,
        "Berkeley segmentation data set (BSDS300), monochrome 8x8 patches "
        "with one pixel dropped, splits as published with MAF.",
    )
