"""Scaling out, one module per engine (see docs/scaling.md for the user's guide).

* :mod:`skflow.distributed.torchrun`: data-parallel training over ``torch.distributed``. Run
  the script that calls ``fit`` under ``torchrun``; these are the collectives the training loop
  uses (each a no-op in a single process).
* :mod:`skflow.distributed.dask`: :func:`score_dask`, :func:`sample_dask` and
  :func:`fit_stream` over Dask collections. Dask is optional
  (``pip install skflow[distributed]``) and imported only when these functions run.

The public names of both modules are re-exported here, so ``skflow.distributed.score_dask`` is
``skflow.distributed.dask.score_dask``. Code that must see a patched function (tests) should
patch it on its own module, where the training code looks it up.
"""

from .dask import fit_stream, sample_dask, score_dask
from .torchrun import (
                       WorldInfo,
                       any_across_ranks,
                       average_gradients,
                       broadcast_object,
                       broadcast_training_state,
                       check_same_data,
                       gather_values,
                       setup,
                       shard_rows,
                       world_info,
)

__all__ = ["WorldInfo", "world_info", "setup", "shard_rows", "average_gradients",
           "any_across_ranks", "gather_values", "broadcast_object", "check_same_data",
           "broadcast_training_state", "score_dask", "sample_dask", "fit_stream"]
