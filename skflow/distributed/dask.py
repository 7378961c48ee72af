"""Dask helpers: scoring, sampling and streaming training over Dask collections.

:func:`score_dask` scores a Dask array or DataFrame block by block, :func:`sample_dask` draws a
Dask array of samples, and :func:`fit_stream` feeds chunks (a Dask collection or any iterable
of arrays) to ``partial_fit`` one at a time. Dask is an optional dependency
(``pip install skflow[distributed]``), imported only by these functions. Model selection on a
cluster needs no helper: run ``GridSearchCV(...).fit`` inside
``joblib.parallel_backend("dask")`` with a ``dask.distributed.Client``; see docs/scaling.md.
"""

# ``import dask`` here is absolute: it finds the dask package, not this module.
from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

if TYPE_CHECKING:  # dask is optional: only type checkers import it here
    import dask.array as da
    import dask.dataframe as dd

__all__ = ["score_dask", "sample_dask", "fit_stream"]

_Estimator = TypeVar("_Estimator")


def _is_dask_array(X: Any) -> bool:
    try:
        import dask.array as da
    except ImportError:  # without dask, nothing is a Dask array
        return False
    return isinstance(X, da.Array)


def _is_dask_dataframe(X: Any) -> bool:
    # Duck-typed, so that neither dask.dataframe nor pandas is imported to ask.
    if not type(X).__module__.startswith("dask"):
        return False
    return hasattr(X, "map_partitions") and hasattr(X, "partitions")


def _score_block(block: np.ndarray, estimator: Any) -> np.ndarray:
    return estimator.score_samples(block)


def _score_partition(part: Any, estimator: Any) -> Any:
    import pandas as pd
    # Pass the frame only to a model fitted on one, so neither kind warns about feature names.
    data = part if hasattr(estimator, "feature_names_in_") else part.to_numpy()
    return pd.Series(estimator.score_samples(data), index=part.index, dtype="float64")


def score_dask(estimator: Any, X: da.Array | dd.DataFrame) -> da.Array | dd.Series:
    """Lazily score a Dask collection with a fitted estimator, one block at a time.

    Parameters
    ----------
    estimator : fitted estimator with ``score_samples`` (e.g. FFJORDDensity)
        Shipped to the workers with the task graph.
    X : dask.array.Array of shape (n_samples, n_features) or dask.dataframe.DataFrame
        The rows to score. An array split along its columns is first rechunked to whole rows.

    Returns
    -------
    log_density : dask.array.Array of shape (n_samples,) or dask.dataframe.Series
        ``estimator.score_samples`` of each row, computed block by block (``map_blocks``) or
        partition by partition (``map_partitions``); call ``.compute()`` or write it out.

    Raises
    ------
    TypeError
        If ``X`` is not a Dask array or DataFrame.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from skflow import FFJORDDensity
    >>> X = np.random.RandomState(0).normal(size=(200, 2))
    >>> est = FFJORDDensity(hidden_dims=(8,), max_iter=5, solver="rk4", n_steps=4,
    ...                     n_iter_no_change=None, random_state=0).fit(X)
    >>> scores = score_dask(est, da.from_array(X, chunks=(50, 2)))
    >>> scores.shape, scores.numblocks
    ((200,), (4,))
    >>> log_density = scores.compute(scheduler="synchronous")
    >>> bool(np.allclose(log_density, est.score_samples(X), atol=1e-5))
    True
    """
    from sklearn.utils.validation import check_is_fitted
    check_is_fitted(estimator)
    if _is_dask_array(X):
        if X.ndim != 2:
            raise ValueError(f"X must be a 2-D Dask array, got {X.ndim} dimension(s).")
        if X.numblocks[1] > 1:  # score_samples needs every feature of a row at once
            X = X.rechunk({1: -1})
        return X.map_blocks(_score_block, estimator, drop_axis=1, dtype=np.float64,
                            meta=np.empty((0,), dtype=np.float64))
    if _is_dask_dataframe(X):
        return X.map_partitions(_score_partition, estimator, meta=("log_density", "float64"))
    raise TypeError(f"score_dask expects a Dask array or DataFrame, got {type(X).__name__}; "
                    "call estimator.score_samples for data in memory.")


def _chunk_seeds(random_state: int | np.random.RandomState | None, n_chunks: int) -> list[int]:
    if isinstance(random_state, np.random.RandomState):
        random_state = int(random_state.randint(np.iinfo(np.int32).max))
    # SeedSequence.spawn: independent streams, reproducible from one integer.
    children = np.random.SeedSequence(random_state).spawn(n_chunks)
    return [int(child.generate_state(1)[0]) for child in children]


def sample_dask(estimator: Any, n_samples: int, chunk_size: int = 10_000,
                random_state: int | np.random.RandomState | None = None) -> da.Array:
    """Draw ``n_samples`` samples as a Dask array, ``chunk_size`` rows per independent task.

    Each chunk is ``estimator.sample(rows, random_state=seed)`` with its own seed, spawned from
    ``random_state`` by :class:`numpy.random.SeedSequence`, so the result is reproducible for an
    integer ``random_state`` whatever the cluster, and no two chunks share a seed.

    Parameters
    ----------
    estimator : fitted estimator with ``sample`` and ``n_features_in_`` (e.g. FFJORDDensity)
        Shipped to the workers with the task graph.
    n_samples : int
        The number of samples to draw.
    chunk_size : int, default=10_000
        Rows per chunk (the last chunk may be smaller); one task per chunk.
    random_state : int, RandomState instance or None, default=None
        Seeds the chunks' seeds; an integer makes the samples reproducible.

    Returns
    -------
    samples : dask.array.Array of shape (n_samples, n_features_in_)
        The samples, lazily; call ``.compute()`` or write them out.

    Raises
    ------
    ValueError
        If ``n_samples`` or ``chunk_size`` is less than 1.

    Examples
    --------
    >>> import numpy as np
    >>> from skflow import FFJORDDensity
    >>> X = np.random.RandomState(0).normal(size=(200, 2))
    >>> est = FFJORDDensity(hidden_dims=(8,), max_iter=5, solver="rk4", n_steps=4,
    ...                     n_iter_no_change=None, random_state=0).fit(X)
    >>> samples = sample_dask(est, 250, chunk_size=100, random_state=0)
    >>> samples.chunks
    ((100, 100, 50), (2,))
    >>> first = samples.compute(scheduler="synchronous")
    >>> again = sample_dask(est, 250, chunk_size=100, random_state=0)
    >>> bool(np.array_equal(first, again.compute(scheduler="synchronous")))
    True
    """
    import dask
    import dask.array as da
    from sklearn.utils.validation import check_is_fitted
    check_is_fitted(estimator)
    if int(n_samples) < 1 or int(chunk_size) < 1:
        raise ValueError("n_samples and chunk_size must be positive integers.")
    n_samples, chunk_size = int(n_samples), int(chunk_size)
    sizes = [min(chunk_size, n_samples - start) for start in range(0, n_samples, chunk_size)]
    seeds = _chunk_seeds(random_state, len(sizes))
    draw = dask.delayed(lambda est, n, seed: est.sample(n, random_state=seed), pure=True)
    blocks = [da.from_delayed(draw(estimator, n, seed), shape=(n, estimator.n_features_in_),
                              dtype=np.float64) for n, seed in zip(sizes, seeds)]
    return da.concatenate(blocks, axis=0)


def _iter_chunks(chunks: Any) -> Iterator[Any]:
    # One block or partition computed at a time, so only one chunk is ever in memory.
    if _is_dask_array(chunks):
        if chunks.ndim != 2:
            raise ValueError("a Dask array of chunks must be 2-D.")
        for block in chunks.rechunk({1: -1}).to_delayed().ravel():
            yield block.compute()
    elif _is_dask_dataframe(chunks):
        for i in range(chunks.npartitions):
            yield chunks.get_partition(i).compute()
    else:
        yield from chunks


def fit_stream(estimator: _Estimator, chunks: da.Array | dd.DataFrame | Iterable[Any],
               n_epochs: int = 1) -> _Estimator:
    """Train with ``partial_fit`` on one chunk at a time; return the estimator.

    ``chunks`` is a Dask array (one block of rows at a time), a Dask DataFrame (one partition at
    a time) or any iterable of arrays; only one chunk is in memory at once. With ``n_epochs`` >
    1 the chunks are visited again, so they must be re-iterable (not a one-shot generator).

    Parameters
    ----------
    estimator : estimator with ``partial_fit`` (e.g. FFJORDDensity)
        Trained in place, continuing from its current state.
    chunks : dask.array.Array, dask.dataframe.DataFrame or iterable of array-like
        The training rows, one chunk per ``partial_fit`` call.
    n_epochs : int, default=1
        The number of passes over the chunks.

    Returns
    -------
    estimator : estimator
        The same estimator, trained.

    Raises
    ------
    ValueError
        If ``n_epochs`` < 1, or ``n_epochs`` > 1 with a one-shot iterator.

    Examples
    --------
    >>> import numpy as np, dask, dask.array as da
    >>> from skflow import FFJORDDensity
    >>> X = np.random.RandomState(0).normal(size=(200, 2))
    >>> chunks = da.from_array(X, chunks=(100, 2))
    >>> with dask.config.set(scheduler="synchronous"):
    ...     est = fit_stream(FFJORDDensity(hidden_dims=(8,), batch_size=50, random_state=0),
    ...                      chunks, n_epochs=2)
    >>> est.n_iter_  # 2 epochs x 2 chunks x 2 minibatches
    8

    Any re-iterable collection of arrays works too:

    >>> fit_stream(FFJORDDensity(hidden_dims=(8,), batch_size=50, random_state=0),
    ...            [X[:100], X[100:]]).n_iter_
    4
    """
    n_epochs = int(n_epochs)
    if n_epochs < 1:
        raise ValueError(f"n_epochs must be a positive integer, got {n_epochs}.")
    if n_epochs > 1 and iter(chunks) is chunks:
        raise ValueError("n_epochs > 1 needs re-iterable chunks (a list or a Dask collection), "
                         "not a one-shot iterator.")
    for _ in range(n_epochs):
        for chunk in _iter_chunks(chunks):
            estimator.partial_fit(chunk)
    return estimator
