"""Data sets: FFJORD's 2-D toy densities, the MAF tabular benchmarks and
ODDS anomaly detection benchmarks, with a local data home for downloads."""

from ._base import RemoteFile, fetch_file, get_data_home
from ._odds import ODDS_DATASETS, load_odds
from ._tabular import (
    load_bsds300,
    load_gas,
    load_hepmass,
    load_miniboone,
    load_power,
)
from ._toy import TOY_DATASETS, make_toy

__all__ = [
    "ODDS_DATASETS",
    "TOY_DATASETS",
    "RemoteFile",
    "fetch_file",
    "get_data_home",
    "load_bsds300",
    "load_gas",
    "load_hepmass",
    "load_miniboone",
    "load_odds",
    "load_power",
    "make_toy",
]
