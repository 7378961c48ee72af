"""Fit FFJORDDensity on a 2-D toy density and compare it with a Gaussian mixture.

Run ``python -m skflow.demo`` (``--help`` for options). Prints the held-out mean
log-likelihood of each model and saves a picture of data, density and samples.
"""

import argparse
import time

from sklearn.mixture import GaussianMixture

from . import FFJORDDensity
from .baselines import tuned_gaussian_mixture
from .datasets import TOY_DATASETS, make_toy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="pinwheel", choices=TOY_DATASETS)
    parser.add_argument("--n-samples", type=int, default=10000, help="training rows")
    parser.add_argument("--max-iter", type=int, default=None, help="override max_iter")
    parser.add_argument("--output", default="skflow_demo.png", help="picture to save")
    args = parser.parse_args(argv)

    X = make_toy(args.dataset, args.n_samples, random_state=0)
    X_test = make_toy(args.dataset, 10000, random_state=1)

    params = {} if args.max_iter is None else {"max_iter": args.max_iter}
    start = time.perf_counter()
    flow = FFJORDDensity(random_state=0, **params).fit(X)
    flow_time = time.perf_counter() - start

    n_val = len(X) // 10
    start = time.perf_counter()
    gmm = tuned_gaussian_mixture(X[n_val:], X[:n_val])
    gmm_time = time.perf_counter() - start
    gaussian = GaussianMixture(1).fit(X)

    print(f"{args.dataset}: {len(X)} training rows, {len(X_test)} held-out rows")
    print(f"{'model':<32} {'held-out log-lik':>17} {'fit time (s)':>13}")
    rows = [("FFJORDDensity (defaults)", flow.score(X_test), flow_time),
            (f"GaussianMixture ({gmm.n_components} comp., tuned)", gmm.score(X_test), gmm_time),
            ("single Gaussian", gaussian.score(X_test), float("nan"))]
    for name, score, seconds in rows:
        print(f"{name:<32} {score:>17.3f} {seconds:>13.1f}")
    print(f"FFJORDDensity: {flow.n_iter_} optimizer steps, training={flow.training!r}, "
          f"{flow.evaluation_nfe(X_test[:500]).mean():.0f} function evaluations per row to score")

    try:
        from .plotting import plot_grid
    except ImportError:  # matplotlib is an optional extra
        print("matplotlib not installed: no picture (pip install skflow[plot])")
        return
    figure = plot_grid(flow, X_test[:2000])
    figure.savefig(args.output, dpi=120, bbox_inches="tight")
    print(f"saved {args.output}")


if __name__ == "__main__":
    main()
