"""Density quality on a broad development suite: default FFJORDDensity against GaussianMixture
and KernelDensity tuned on a validation split, held-out mean log-likelihood per set.

The suite mixes kinds of tables on purpose: scikit-learn's bundled tables (a hundred to a
few thousand rows), the development tables of ``<data_home>/tables`` (measurements with heavy
tails, exact zeros, repeated values, 1,000 to 10,000 rows, 6 to 33 columns), MINIBOONE (43
columns), 2-D toy densities and a synthetic set with a known density. Each set is split 70/10/20
with a fixed seed: the baselines tune on the 10% and refit on the 80%, the flow fits the 80%
(holding out its own validation rows); all are scored on the 20%. With ``nsf`` among the
methods, zuko's neural spline flow (5 transforms, 128-128 hidden, Adam 1e-3, batch 512,
best-validation restore, on standardized rows) trains on the 70%, validated on the 10%, for
exactly the wall time of skflow's fit in the same run. ``margin`` is skflow's lead over the
better tuned baseline and ``vs_nsf`` over NSF; each ``_se`` column is that gap's standard
error over the test rows (the models score the same rows, so the gap is a paired mean). With
``--ensemble K`` skflow's column is a ``DensityEnsemble`` of K default flows (fitted one after
another, so NSF gets K fits' time). Sets named by ``--holdout`` (by default ``airfoil`` and
``treasury``) are left out unless asked for: they are kept aside as a final check on defaults
chosen on the others.

    python benchmarks/quality_benchmark.py --data-home DIR [--sets a,b] [--params JSON]
        [--ensemble K] [--jobs 2] [--name quality]
"""

import argparse
import json
import os
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from _common import markdown_table, paired_se, random_network_data, save

BUNDLED = ("iris", "wine", "breast_cancer", "diabetes", "digits_pca15")
TABLES = ("compactiv", "winequality_red", "winequality_white", "concrete", "puma32h", "wizmir",
          "electrical_grid", "airfoil", "treasury")
TOYS = ("pinwheel", "checkerboard", "2spirals", "8gaussians")
HOLDOUT = ("airfoil", "treasury")


def load(name, data_home):
    """The rows of one development set, float64 (``data_home`` only for the tables)."""
    from sklearn import datasets
    if name in TABLES:
        return np.load(Path(data_home) / "tables" / f"{name}.npy")
    if name == "miniboone":
        home = Path(data_home) / "maf_miniboone"
        return np.concatenate([np.load(home / "val.npy"), np.load(home / "test.npy")])
    if name == "synthetic10":
        return random_network_data(6000, 10)
    if name in TOYS:
        from skflow.datasets import make_toy
        return make_toy(name, 6000, random_state=0)
    if name == "diabetes":
        bunch = datasets.load_diabetes(scaled=False)
        return np.c_[bunch.data, bunch.target]
    if name == "digits_pca15":
        from sklearn.decomposition import PCA
        return PCA(15, random_state=0).fit_transform(datasets.load_digits().data)
    return getattr(datasets, f"load_{name}")().data.astype(np.float64)


def split(X, seed=0):
    order = np.random.RandomState(seed).permutation(len(X))
    n_test, n_val = len(X) // 5, len(X) // 10
    test, val, train = order[:n_test], order[n_test:n_test + n_val], order[n_test + n_val:]
    return X[train], X[val], X[test]


def train_nsf(X_train, X_val, seconds, seed=0):
    """zuko's NSF trained for ``seconds`` of wall time; returns its per-row log density
    function (data units) and the number of steps taken."""
    import torch
    import zuko
    torch.manual_seed(seed)
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0

    def to_tensor(A):
        return torch.as_tensor((A - mean) / std, dtype=torch.float32)

    flow = zuko.flows.NSF(X_train.shape[1], transforms=5, hidden_features=(128, 128))
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    data, val = to_tensor(X_train), to_tensor(X_val)
    best, best_state, steps, start = -np.inf, None, 0, time.perf_counter()
    while True:
        batch = data[torch.randint(len(data), (min(512, len(data)),))]
        loss = -flow().log_prob(batch).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        out_of_time = time.perf_counter() - start >= seconds
        if steps % 100 == 0 or out_of_time:
            with torch.no_grad():
                score = float(flow().log_prob(val).mean())
            if np.isfinite(score) and score > best:
                best, best_state = score, {k: v.clone() for k, v in flow.state_dict().items()}
        if out_of_time:
            break
    if best_state is not None:
        flow.load_state_dict(best_state)

    def score_samples(A):
        with torch.no_grad():
            return flow().log_prob(to_tensor(A)).double().numpy() - np.log(std).sum()

    return score_samples, steps


def run_set(name, data_home, params, methods, ensemble=None):
    import torch
    torch.set_num_threads(1)
    from skflow import DensityEnsemble, FFJORDDensity
    from skflow.baselines import tuned_gaussian_mixture, tuned_kernel_density
    X = load(name, data_home)
    X_train, X_val, X_test = split(X)
    row = dict(dataset=name, shape=f"{X.shape[0]}x{X.shape[1]}")
    per_row = {}
    if "skflow" in methods:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            start = time.perf_counter()
            est = (FFJORDDensity(random_state=0, **params) if ensemble is None else
                   DensityEnsemble(FFJORDDensity(**params), n_estimators=ensemble,
                                   random_state=0))
            est.fit(np.r_[X_train, X_val])
            row["skflow_s"] = time.perf_counter() - start
        per_row["skflow"] = est.score_samples(X_test)
        row["skflow"] = float(per_row["skflow"].mean())
        members = [est] if ensemble is None else est.estimators_
        row["chose"] = members[0].preprocessing_
        for column, attribute in (("blocks", "n_blocks_"), ("lr", "learning_rate_"),
                                  ("n_iter", "n_iter_")):
            row[column] = "/".join(str(getattr(m, attribute)) for m in members)
        row["warnings"] = sorted({type(w.message).__name__ for w in caught})
    for label, tune in (("gmm", tuned_gaussian_mixture), ("kde", tuned_kernel_density)):
        if label in methods:
            start = time.perf_counter()
            model = tune(X_train, X_val)
            row[f"{label}_s"] = time.perf_counter() - start
            per_row[label] = model.score_samples(X_test)
            row[label] = float(per_row[label].mean())
    if "nsf" in methods and "skflow_s" in row:
        score_samples, row["nsf_steps"] = train_nsf(X_train, X_val, row["skflow_s"])
        per_row["nsf"] = score_samples(X_test)
        row["nsf"] = float(per_row["nsf"].mean())
        row["vs_nsf"] = row["skflow"] - row["nsf"]
        row["vs_nsf_se"] = paired_se(per_row["skflow"], per_row["nsf"])
    if {"skflow", "gmm", "kde"} <= set(methods):
        best = max(("gmm", "kde"), key=lambda label: row[label])
        row["margin"] = row["skflow"] - row[best]
        row["margin_se"] = paired_se(per_row["skflow"], per_row[best])
    print(json.dumps(row), flush=True)
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", required=True)
    parser.add_argument("--sets", default=None, help="comma-separated (default: all but holdout)")
    parser.add_argument("--holdout", default=",".join(HOLDOUT))
    parser.add_argument("--params", default="{}", help="FFJORDDensity parameters, JSON")
    parser.add_argument("--methods", default="skflow,gmm,kde")
    parser.add_argument("--ensemble", type=int, default=None,
                        help="skflow as a DensityEnsemble of this many flows")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--name", default="quality")
    args = parser.parse_args(argv)
    everything = BUNDLED + TABLES + ("miniboone", "synthetic10") + TOYS
    holdout = set(filter(None, args.holdout.split(",")))
    sets = (args.sets.split(",") if args.sets
            else [s for s in everything if s not in holdout])
    params, methods = json.loads(args.params), args.methods.split(",")
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_set, sets, [args.data_home] * len(sets),
                             [params] * len(sets), [methods] * len(sets),
                             [args.ensemble] * len(sets)))
    columns = ["dataset", "shape", "skflow", "chose", "gmm", "kde", "margin", "margin_se", "nsf",
               "vs_nsf", "vs_nsf_se", "skflow_s", "blocks", "lr", "n_iter", "nsf_steps", "warnings"]
    tallies = [f"at or above both tuned baselines on "
               f"{sum(row['margin'] >= 0 for row in rows)} of {len(rows)} sets"
               if all("margin" in row for row in rows) else "",
               f"at or above NSF at equal time on "
               f"{sum(row['vs_nsf'] >= 0 for row in rows)} of {len(rows)}"
               if all("vs_nsf" in row for row in rows) else ""]
    tally = "; ".join(filter(None, tallies))
    save(args.name, "Density quality on the development suite: held-out mean log-likelihood "
         "(nats, higher is better)",
         [(("" if args.ensemble is None else f"DensityEnsemble of {args.ensemble} x ")
           + f"FFJORDDensity({args.params}): {', '.join(methods)}" + (f" ({tally})" if tally
                                                                     else ""),
           markdown_table(rows, [c for c in columns if any(c in r for r in rows)]))],
         "python benchmarks/quality_benchmark.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
