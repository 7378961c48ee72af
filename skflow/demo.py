"""Fit FFJORDDensity on a 2-D toy density and compare it with a Gaussian mixture.

Run ``python -m skflow.demo`` (``--help`` for options). Prints the held-out mean
log-likelihood of each model and saves a picture of data, density and samples.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
from sklearn.mixture import GaussianMixture

from . import FFJORDDensity
from .baselines import tuned_gaussian_mixture
from .datasets import TOY_DATASETS, make_toy

__all__ = ["main"]

_Model = TypeVar("_Model")


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pinwheel", choices=TOY_DATASETS)
    parser.add_argument("--n-samples", type=int, default=10000, help="training rows")
    parser.add_argument("--max-iter", type=int, default=None, help="override max_iter")
    parser.add_argument("--output", default="skflow_demo.png", help="picture to save")
    return parser.parse_args(argv)


def _timed_fit(fit: Callable[..., _Model], *args: np.ndarray) -> tuple[_Model, float]:
    """The model ``fit(*args)`` returns and the seconds it took."""
    start = time.perf_counter()
    model = fit(*args)
    return model, time.perf_counter() - start


def _print_scores(flow: FFJORDDensity, flow_time: float, gmm: GaussianMixture,
                  gmm_time: float, gaussian: GaussianMixture, X_test: np.ndarray) -> None:
    print(f"{'model':<32} {'held-out log-lik':>17} {'fit time (s)':>13}")
    rows = [("FFJORDDensity (defaults)", flow.score(X_test), flow_time),
            (f"GaussianMixture ({gmm.n_components} comp., tuned)", gmm.score(X_test), gmm_time),
            ("single Gaussian", gaussian.score(X_test), float("nan"))]
    for name, score, seconds in rows:
        print(f"{name:<32} {score:>17.3f} {seconds:>13.1f}")
    print(f"FFJORDDensity: {flow.n_iter_} optimizer steps, training={flow.training!r}, "
          f"{flow.evaluation_nfe(X_test[:500]).mean():.0f} function evaluations per row to score")


def _save_picture(flow: FFJORDDensity, X_test: np.ndarray, output: str) -> None:
    try:
        from .plotting import plot_grid
    except ImportError:  # matplotlib is an optional extra
        print("matplotlib not installed: no picture (pip install skflow[plot])")
        return
    figure = plot_grid(flow, X_test[:2000])
    figure.savefig(output, dpi=120, bbox_inches="tight")
    print(f"saved {output}")


def main(argv: Sequence[str] | None = None) -> None:
    """Run the demo: fit, compare held-out log-likelihoods, save a picture.

    Fits :class:`~skflow.FFJORDDensity` (default parameters, ``random_state=0``) to a 2-D toy
    density, a :class:`~sklearn.mixture.GaussianMixture` tuned on the first 10% of the rows
    and a single Gaussian, prints their mean log-likelihood on 10,000 held-out rows and
    their fit times, and saves the data | density | samples panels of :func:`plot_grid`
    (when matplotlib is installed).

    Parameters
    ----------
    argv : sequence of str, default=None
        Command-line arguments (``--dataset``, ``--n-samples``, ``--max-iter``,
        ``--output``); those of the process, ``sys.argv[1:]``, when None.

    Examples
    --------
    From a shell, ``python -m skflow.demo --dataset moons``. The same from Python,
    ``main(["--dataset", "moons"])``, fits for a while; here, only the options are listed:

    >>> import contextlib
    >>> import io
    >>> from skflow.demo import main
    >>> help_text = io.StringIO()
    >>> with contextlib.redirect_stdout(help_text), contextlib.suppress(SystemExit):
    ...     main(["--help"])
    >>> [option for option in ("--dataset", "--n-samples", "--max-iter", "--output")
    ...  if option in help_text.getvalue()]
    ['--dataset', '--n-samples', '--max-iter', '--output']
    """
    args = _parse_args(argv)
    X = make_toy(args.dataset, args.n_samples, random_state=0)
    X_test = make_toy(args.dataset, 10000, random_state=1)

    params = {} if args.max_iter is None else {"max_iter": args.max_iter}
    flow, flow_time = _timed_fit(FFJORDDensity(random_state=0, **params).fit, X)
    n_val = len(X) // 10
    gmm, gmm_time = _timed_fit(tuned_gaussian_mixture, X[n_val:], X[:n_val])
    gaussian = GaussianMixture(1).fit(X)

    print(f"{args.dataset}: {len(X)} training rows, {len(X_test)} held-out rows")
    _print_scores(flow, flow_time, gmm, gmm_time, gaussian, X_test)
    _save_picture(flow, X_test, args.output)


if __name__ == "__main__":
    main()
