"""Held-out log-likelihood on real tabular data: default FFJORDDensity vs GaussianMixture and
KernelDensity tuned on a validation split, with fit times (and the default with
``preprocessing='standardize'`` for reference).

Data: MINIBOONE in its published (MAF) preprocessing, read from
``<data_home>/maf_miniboone/{val,test}.npy`` (the train split is not used: fit on ``val``, test on
``test``), and the normal rows of the ODDS sets thyroid, cardio, mammography and annthyroid
(``skflow.datasets.load_odds``), split 60/20/20 into train / validation / test. Also a synthetic
15,000 x 10 set, to time a default fit of that size. ``--ensemble K`` fits a
``DensityEnsemble`` of K default flows in place of the standardized one (``--sets``: only the
sets whose names start with one of these).

    python benchmarks/tabular_benchmark.py --data-home DIR [--fast] [--ensemble K] [--sets a,b]
"""

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
from _common import markdown_table, random_network_data, save, stopwatch

from skflow import DensityEnsemble, FFJORDDensity
from skflow.baselines import tuned_gaussian_mixture, tuned_kernel_density
from skflow.datasets import load_odds


def splits(data_home):
    rng = np.random.RandomState(0)
    miniboone = Path(data_home) / "maf_miniboone"
    if miniboone.exists():
        fit_rows, test = np.load(miniboone / "val.npy"), np.load(miniboone / "test.npy")
        yield "miniboone", fit_rows, test
    for name in ("thyroid", "cardio", "mammography", "annthyroid"):
        X, y = load_odds(name, data_home=data_home, download_if_missing=False, return_X_y=True)
        normal = X[y == 0][rng.permutation((y == 0).sum())]
        n_test = len(normal) // 5
        yield f"{name} (normal rows)", normal[n_test:], normal[:n_test]
    X = random_network_data(18750, 10, seed=0)
    yield "synthetic 15000x10", X[:15000], X[15000:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", required=True)
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--ensemble", type=int, default=None)
    parser.add_argument("--sets", default=None)
    args = parser.parse_args(argv)
    fast = {"max_iter": 100} if args.fast else {}
    variants = [("ffjord", FFJORDDensity(random_state=0, **fast))]
    variants.append(
        ("ffjord_standardize", FFJORDDensity(random_state=0, preprocessing="standardize", **fast))
        if args.ensemble is None else
        ("ensemble", DensityEnsemble(FFJORDDensity(**fast), n_estimators=args.ensemble,
                                     random_state=0)))
    rows = []
    for name, X, X_test in splits(args.data_home):
        if args.sets and not name.startswith(tuple(args.sets.split(","))):
            continue
        # The flow holds out its own validation split; the baselines tune on the last 20%.
        n_val = len(X) // 4 if name.endswith("rows)") else len(X) // 10
        result = dict(dataset=name, shape=f"{X.shape[0]}x{X.shape[1]}")
        for label, model in variants:
            with warnings.catch_warnings(), stopwatch() as seconds:
                warnings.simplefilter("ignore")
                model.fit(X)
            result[label], result[f"{label}_fit_s"] = model.score(X_test), seconds()
            if label == "ffjord":
                result["auto_chose"] = model.preprocessing_
        for label, tune in (("gmm", tuned_gaussian_mixture), ("kde", tuned_kernel_density)):
            with stopwatch() as seconds:
                model = tune(X[:-n_val], X[-n_val:])
            result[label], result[f"{label}_fit_s"] = model.score(X_test), seconds()
        result["default_best"] = result["ffjord"] > max(result["gmm"], result["kde"])
        rows.append(result)
        print(result, flush=True)
    other = variants[1][0]
    columns = ["dataset", "shape", "ffjord", "auto_chose", other, "gmm", "kde",
               "default_best", "ffjord_fit_s", f"{other}_fit_s", "gmm_fit_s", "kde_fit_s"]
    save("tabular" + ("_fast" if args.fast else "")
         + (f"_ensemble{args.ensemble}" if args.ensemble else ""),
         "Tabular data: held-out mean log-likelihood (nats, higher is better)",
         [("Default FFJORDDensity (preprocessing='auto'; and "
           + ("with 'standardize'" if args.ensemble is None
              else f"a DensityEnsemble of {args.ensemble} of them") + ") vs tuned "
           "GaussianMixture and KernelDensity",
           markdown_table(rows, columns))],
         "python benchmarks/tabular_benchmark.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv))


if __name__ == "__main__":
    main()
