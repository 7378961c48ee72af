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

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from sklearn.utils import Bunch

from ._base import RemoteFile, extract_tar, fetch_file, get_data_home

if TYPE_CHECKING:  # pandas is optional: only the GAS and HEPMASS loaders need it
    import pandas

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

_Loader = TypeVar("_Loader", bound=Callable)


def _splits_table(n_features: int, rows: tuple[int, int, int]) -> list[str]:
    n_train, n_validation, n_test = rows
    return [
        "===============   ===============================",
        f"Features          {n_features}",
        f"Train             {n_train:,} rows",
        f"Validation        {n_validation:,} rows",
        f"Test              {n_test:,} rows",
        "===============   ===============================",
    ]


def _parameters_section(raw_files: Sequence[str], raw_note: Sequence[str]) -> list[str]:
    paths = [f"``<data_home>/maf/{name}``" for name in raw_files]
    return [
        "data_home : str or path-like, default=None",
        "    The data folder, see :func:`get_data_home`. The raw "
        + ("file is read from" if len(paths) == 1 else "files are read from"),
        *(f"    {path} and" for path in paths[:-1]),
        f"    {paths[-1]}.",
        *(f"    {line}" for line in raw_note),
        "",
        "download_if_missing : bool, default=True",
        "    If False, raise a ``FileNotFoundError`` when a raw file is missing",
        "    instead of downloading the archive.",
    ]


def _returns_section(n_features: int) -> list[str]:
    return [
        "data : :class:`~sklearn.utils.Bunch`",
        "    Dictionary-like object with the following attributes.",
        "",
        f"    train : ndarray of shape (n_train, {n_features})",
        "        The training rows, float64.",
        f"    validation : ndarray of shape (n_validation, {n_features})",
        "        The validation rows, float64.",
        f"    test : ndarray of shape (n_test, {n_features})",
        "        The test rows, float64.",
        "    n_features : int",
        f"        The number of features, {n_features}.",
        "    DESCR : str",
        "        Description of the data set.",
    ]


def _loader_doc(
    n_features: int,
    rows: tuple[int, int, int],
    raw_files: Sequence[str],
    raw_note: Sequence[str] = (),
) -> Callable[[_Loader], _Loader]:
    """Fill in the sections the MAF loaders share: splits table, Parameters, Returns.

    They differ only in numbers and raw files, so the text is written once,
    here, and replaces ``{splits_parameters_returns}`` in the docstring.
    ``rows`` are the train, validation and test sizes; ``raw_note`` holds
    further lines on the raw files, appended to the entry of ``data_home``.
    """
    lines = [
        *_splits_table(n_features, rows),
        "",
        "Parameters",
        "----------",
        *_parameters_section(raw_files, raw_note),
        "",
        "Returns",
        "-------",
        *_returns_section(n_features),
    ]

    def fill(loader: _Loader) -> _Loader:
        if loader.__doc__ is None:  # ``python -OO`` strips docstrings
            return loader
        placeholder = "{splits_parameters_returns}"
        # Take the placeholder's indent: Python 3.13 dedents docstrings.
        indent = re.search(rf"^( *){re.escape(placeholder)}", loader.__doc__, re.M).group(1)
        text = "\n".join((indent + line).rstrip() for line in lines)
        loader.__doc__ = loader.__doc__.replace(placeholder, text[len(indent) :])
        return loader

    return fill


def _raw_paths(
    dataset: str,
    filenames: Sequence[str],
    data_home: str | os.PathLike | None,
    download_if_missing: bool,
) -> list[Path]:
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


def _split_tail(data: np.ndarray, fraction: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """Split off the last ``int(fraction * n)`` rows, as MAF does."""
    n_tail = int(fraction * data.shape[0])
    cut = data.shape[0] - n_tail
    return data[:cut], data[cut:]


def _three_way_split(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    # Test is the last 10% of the rows, validation the last 10% of the rest.
    rest, test = _split_tail(data)
    train, validation = _split_tail(rest)
    return train, validation, test


def _split_and_standardize(data: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-way split, standardized with the train and validation rows together."""
    train, validation, test = _three_way_split(data)
    fit = np.vstack([train, validation])
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    return tuple((a - mean) / std for a in (train, validation, test))


def _bunch(
    name: str, train: np.ndarray, validation: np.ndarray, test: np.ndarray, descr: str
) -> Bunch:
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


def _load_pandas() -> ModuleType:
    try:
        import pandas as pd
    except ImportError as exc:
        raise ImportError(
            "Reading this data set requires pandas, which is not installed. "
            "Install it with `pip install pandas`."
        ) from exc
    return pd


@_loader_doc(n_features=6, rows=(1_659_917, 184_435, 204_928), raw_files=["power/data.npy"])
def load_power(
    data_home: str | os.PathLike | None = None, download_if_missing: bool = True
) -> Bunch:
    """Load the POWER data set with the MAF preprocessing (6 features).

    Individual household electric power consumption (UCI). The rows are
    shuffled with a fixed seed, the global reactive power and global
    intensity columns are dropped, uniform noise is added to break ties in
    the discretized values, and the data are standardized with the mean and
    standard deviation of the train and validation rows together.

    {splits_parameters_returns}

    Examples
    --------
    A tiny stand-in for ``power/data.npy`` (8 random columns, like the raw
    file) in a fresh data home, so that nothing is downloaded:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skflow.datasets import load_power
    >>> raw = Path(tempfile.mkdtemp(), "maf", "power", "data.npy")
    >>> raw.parent.mkdir(parents=True)
    >>> np.save(raw, np.random.RandomState(0).rand(100, 8))
    >>> power = load_power(raw.parents[2], download_if_missing=False)
    >>> power.train.shape, power.validation.shape, power.test.shape
    ((81, 6), (9, 6), (10, 6))
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
    return _bunch(
        "POWER",
        *_split_and_standardize(data),
        "Household electric power consumption (UCI), MAF preprocessing: rows "
        "shuffled with seed 42, columns 1 and 3 dropped, dequantization noise "
        "added, standardized with the train+validation mean and std.",
    )


def _correlated_counts(frame: pandas.DataFrame) -> np.ndarray:
    # For each column, how many columns (itself included) it correlates
    # with above 0.98. The published code uses the signed correlation.
    return (frame.corr() > 0.98).to_numpy().sum(axis=1)


@_loader_doc(
    n_features=8,
    rows=(852_174, 94_685, 105_206),
    raw_files=["gas/ethylene_CO.pickle"],
    raw_note=[
        "It is a pickled pandas DataFrame: reading it requires pandas, and",
        "only read such a file from a source you trust, as unpickling can",
        "run code.",
    ],
)
def load_gas(
    data_home: str | os.PathLike | None = None, download_if_missing: bool = True
) -> Bunch:
    """Load the GAS data set with the MAF preprocessing (8 features).

    Gas sensor array under dynamic gas mixtures, ethylene and CO (UCI). The
    concentration and time columns are dropped, then strongly correlated
    sensors (correlation above 0.98) are removed one at a time, the data
    are standardized with the mean and standard deviation of all rows, and
    split in order (no shuffling).

    {splits_parameters_returns}

    Examples
    --------
    A tiny stand-in for the raw pickle, with three random sensors, in a
    fresh data home, so that nothing is downloaded:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> import pandas as pd
    >>> from skflow.datasets import load_gas
    >>> data_home = Path(tempfile.mkdtemp())
    >>> (data_home / "maf" / "gas").mkdir(parents=True)
    >>> columns = ["Time", "Meth", "Eth", "sensor 1", "sensor 2", "sensor 3"]
    >>> raw = pd.DataFrame(np.random.RandomState(0).rand(50, 6), columns=columns)
    >>> raw.to_pickle(data_home / "maf" / "gas" / "ethylene_CO.pickle")
    >>> gas = load_gas(data_home, download_if_missing=False)
    >>> gas.n_features, len(gas.train), len(gas.validation), len(gas.test)
    (3, 41, 4, 5)
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
    return _bunch(
        "GAS",
        *_three_way_split(frame.to_numpy(dtype=np.float64)),
        "Gas sensor array under dynamic gas mixtures, ethylene and CO (UCI), "
        "MAF preprocessing: concentration and time columns dropped, sensors "
        "correlated above 0.98 removed, standardized over all rows, split in "
        "order.",
    )


def _hepmass_signal(frame: pandas.DataFrame) -> np.ndarray:
    """The features of the signal rows (label 1, the first column)."""
    return frame[frame.iloc[:, 0] == 1].iloc[:, 1:].to_numpy(dtype=np.float64)


def _columns_with_few_repeats(data: np.ndarray, max_repeats: int = 5) -> list[int]:
    # The published rule counts the occurrences of each column's smallest
    # value only; kept as is so that the features match the literature.
    keep = []
    for j, column in enumerate(data.T):
        counts = Counter(column)
        if counts[min(counts)] <= max_repeats:
            keep.append(j)
    return keep


@_loader_doc(
    n_features=21,
    rows=(315_123, 35_013, 174_987),
    raw_files=["hepmass/1000_train.csv", "hepmass/1000_test.csv"],
)
def load_hepmass(
    data_home: str | os.PathLike | None = None, download_if_missing: bool = True
) -> Bunch:
    """Load the HEPMASS data set with the MAF preprocessing (21 features).

    Particle collision data (UCI), mass 1000 subset. Only the signal rows
    (label 1) are kept, both sets are standardized with the mean and
    standard deviation of the training file, and features with too many
    repeated values are dropped. The validation rows are the last 10% of
    the training file.

    {splits_parameters_returns}

    Notes
    -----
    A feature is dropped when, in the standardized training rows, the
    occurrence count of its *smallest* value exceeds 5. This is what the
    published preprocessing computes (its comment speaks of "re-occurring
    values"); it is kept as is so that the features match the literature.

    Examples
    --------
    Tiny stand-ins for the two raw CSV files (label first, all rows signal)
    in a fresh data home, so that nothing is downloaded:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> import pandas as pd
    >>> from skflow.datasets import load_hepmass
    >>> folder = Path(tempfile.mkdtemp(), "maf", "hepmass")
    >>> folder.mkdir(parents=True)
    >>> rows = np.c_[np.ones(40), np.random.RandomState(0).randn(40, 3)]
    >>> pd.DataFrame(rows).to_csv(folder / "1000_train.csv", index=False)
    >>> # The published test file has one column more; the loader drops it.
    >>> pd.DataFrame(np.c_[rows, rows[:, 1]]).to_csv(folder / "1000_test.csv", index=False)
    >>> hepmass = load_hepmass(folder.parents[1], download_if_missing=False)
    >>> hepmass.train.shape, hepmass.validation.shape, hepmass.test.shape
    ((36, 3), (4, 3), (40, 3))
    """
    train_path, test_path = _raw_paths(
        "hepmass", ["1000_train.csv", "1000_test.csv"], data_home, download_if_missing
    )
    pd = _load_pandas()
    train = _hepmass_signal(pd.read_csv(train_path, index_col=False))
    # The published test file has one column more than the training file.
    test = _hepmass_signal(pd.read_csv(test_path, index_col=False))[:, :-1]
    if train.shape[1] != test.shape[1]:
        raise ValueError(
            f"After dropping the label (and the extra last test column), the "
            f"HEPMASS files have {train.shape[1]} and {test.shape[1]} features; "
            f"expected the same number."
        )
    # pandas' std, i.e. with ddof=1, as published.
    mean, std = train.mean(axis=0), train.std(axis=0, ddof=1)
    train, test = (train - mean) / std, (test - mean) / std
    keep = _columns_with_few_repeats(train)
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


@_loader_doc(n_features=43, rows=(29_556, 3_284, 3_648), raw_files=["miniboone/data.npy"])
def load_miniboone(
    data_home: str | os.PathLike | None = None, download_if_missing: bool = True
) -> Bunch:
    """Load the MINIBOONE data set with the MAF preprocessing (43 features).

    MiniBooNE particle identification (UCI), signal events with outliers
    removed as published. Test rows are the last 10%, validation rows the
    last 10% of the rest, and all are standardized with the mean and
    standard deviation of the train and validation rows together.

    {splits_parameters_returns}

    Examples
    --------
    With a small random array in place of ``miniboone/data.npy``, the
    example runs offline; the real file gives 43 features as well:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from skflow.datasets import load_miniboone
    >>> data_home = Path(tempfile.mkdtemp())
    >>> (data_home / "maf" / "miniboone").mkdir(parents=True)
    >>> raw = np.random.RandomState(0).randn(200, 43)
    >>> np.save(data_home / "maf" / "miniboone" / "data.npy", raw)
    >>> miniboone = load_miniboone(data_home, download_if_missing=False)
    >>> miniboone.n_features, miniboone.test.shape
    (43, (20, 43))
    """
    (path,) = _raw_paths("miniboone", ["data.npy"], data_home, download_if_missing)
    data = np.load(path, allow_pickle=False).astype(np.float64)
    if data.ndim != 2:
        raise ValueError(
            f"Expected a 2-D array in {path}, got shape {data.shape}."
        )
    return _bunch(
        "MINIBOONE",
        *_split_and_standardize(data),
        "MiniBooNE particle identification (UCI), MAF preprocessing: last 10% "
        "test, last 10% of the rest validation, standardized with the "
        "train+validation mean and std.",
    )


@_loader_doc(
    n_features=63,
    rows=(1_000_000, 50_000, 250_000),
    raw_files=["BSDS300/BSDS300.hdf5"],
    raw_note=["Reading it requires the optional dependency h5py."],
)
def load_bsds300(
    data_home: str | os.PathLike | None = None, download_if_missing: bool = True
) -> Bunch:
    """Load the BSDS300 data set as published with MAF (63 features).

    8x8 patches of the Berkeley segmentation data set images, monochrome,
    with the bottom-right pixel dropped (63 features). The published splits
    are used as they are.

    {splits_parameters_returns}

    Raises
    ------
    ImportError
        If h5py is not installed.

    Examples
    --------
    With ``download_if_missing=False`` a missing raw file is an error that
    says where to put it, and nothing is downloaded:

    >>> import tempfile
    >>> from skflow.datasets import load_bsds300
    >>> load_bsds300(tempfile.mkdtemp(), download_if_missing=False)
    Traceback (most recent call last):
        ...
    FileNotFoundError: Raw file 'BSDS300.hdf5' of the BSDS300 data set is missing: ...

    Online, ``load_bsds300()`` downloads the archive (over a gigabyte) once
    and returns splits of 1,000,000, 50,000 and 250,000 rows.
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
