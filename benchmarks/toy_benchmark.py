"""Held-out log-likelihood, fit time and NFE of FFJORDDensity on the 2-D toy densities, next to
a tuned GaussianMixture and KernelDensity. A baseline's ``flow_lead`` is the flow's score minus
its own, and ``flow_lead_se`` that gap's standard error over the held-out rows (a paired mean).

    python benchmarks/toy_benchmark.py [--fast] [--datasets pinwheel moons ...]
"""

import argparse
import sys
import warnings

import numpy as np
from _common import markdown_table, paired_se, save, stopwatch

from skflow import FFJORDDensity
from skflow.baselines import tuned_gaussian_mixture, tuned_kernel_density
from skflow.datasets import TOY_DATASETS, make_toy


def run(name, n_train, n_test, params):
    X = make_toy(name, n_train, random_state=0)
    X_test = make_toy(name, n_test, random_state=1)
    n_val = n_train // 10
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with stopwatch() as seconds:
            flow = FFJORDDensity(random_state=0, **params).fit(X)
    nfe_train = np.mean([h["nfe_forward"] + h["nfe_backward"] for h in flow.history_])
    flow_rows = flow.score_samples(X_test)
    rows.append(dict(dataset=name, model="FFJORDDensity", test_loglik=float(flow_rows.mean()),
                     fit_s=seconds(), steps=flow.n_iter_, nfe_per_step=float(nfe_train),
                     nfe_per_row_scoring=float(flow.evaluation_nfe(X_test[:1000]).mean())))
    for label, tune in (("GaussianMixture", tuned_gaussian_mixture),
                        ("KernelDensity", tuned_kernel_density)):
        with stopwatch() as seconds:
            model = tune(X[n_val:], X[:n_val])
        model_rows = model.score_samples(X_test)
        rows.append(dict(dataset=name, model=label, test_loglik=float(model_rows.mean()),
                         fit_s=seconds(), flow_lead=float(flow_rows.mean() - model_rows.mean()),
                         flow_lead_se=paired_se(flow_rows, model_rows)))
    for row in rows:
        print(row, flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(TOY_DATASETS))
    parser.add_argument("--fast", action="store_true", help="small data and few steps")
    parser.add_argument("--name", default="toy", help="results file name (without .md)")
    args = parser.parse_args(argv)
    n_train, n_test = (2000, 2000) if args.fast else (10000, 10000)
    params = {"max_iter": 200} if args.fast else {}
    rows = [row for name in args.datasets for row in run(name, n_train, n_test, params)]
    columns = ["dataset", "model", "test_loglik", "flow_lead", "flow_lead_se", "fit_s", "steps",
               "nfe_per_step", "nfe_per_row_scoring"]
    save(args.name + ("_fast" if args.fast else ""),
         f"Toy densities: {n_train} training rows, {n_test} held-out rows, default parameters",
         [("Held-out mean log-likelihood (higher is better)", markdown_table(rows, columns))],
         "python benchmarks/toy_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
