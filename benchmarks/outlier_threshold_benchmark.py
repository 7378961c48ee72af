"""Outlier thresholds: the share of new inliers that each detector flags at a given
``contamination``, next to its ROC-AUC.

A detector fitted with ``contamination=c`` should flag about the share ``c`` of new rows from
the training distribution. For each set and each of ``--splits`` random splits, the inliers
are split in half: every detector fits the first half (no anomalies), and the flagged share is
measured on the second half; the ROC-AUC (threshold-free) on the second half plus the
anomalies. The table gives the means over the splits (a 1% share of a few hundred new rows is
a handful of rows: one split alone mostly measures their sampling noise). Detectors:
FFJORDOutlierDetector with its default calibration (``'auto'``: held-out rows, cross-fitted
when the validation split is small) and, from the same fit, the threshold a calibration on its
training rows gives (``calibration='training'``); IsolationForest and LocalOutlierFactor
(novelty=True, on standardized rows) with the same ``contamination``.

Sets: scikit-learn's breast cancer (benign rows are the inliers, malignant the anomalies),
digits in 15 PCA dimensions (digits 0-8 the inliers, 9 the anomalies), and, with
``--data-home``, the ODDS sets (normal rows the inliers).

    python benchmarks/outlier_threshold_benchmark.py [--data-home DIR]
        [--contamination 0.01,0.05] [--splits 3] [--jobs 1] [--rows FILE]
"""

import argparse
import json
import os
import sys
import warnings
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch
from _common import markdown_table, save, stopwatch
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.decomposition import PCA
from sklearn.ensemble import IsolationForest
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import LocalOutlierFactor
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skflow import FFJORDOutlierDetector
from skflow.datasets import ODDS_DATASETS, load_odds


def sets(data_home):
    X, y = load_breast_cancer(return_X_y=True)
    yield "breast_cancer", X, (y == 0).astype(int)  # malignant rows are the anomalies
    digits = load_digits()
    yield "digits_pca15", PCA(15, random_state=0).fit_transform(digits.data), (
        digits.target == 9).astype(int)
    if data_home:
        for name in ODDS_DATASETS:
            X, y = load_odds(name, data_home=data_home, download_if_missing=False,
                             return_X_y=True)
            yield name, X, y


def split(X, y, seed):
    rng = np.random.RandomState(seed)
    inliers = np.flatnonzero(y == 0)[rng.permutation(int((y == 0).sum()))]
    half = len(inliers) // 2
    train, new_inliers = inliers[:half], inliers[half:]
    keep = np.ptp(X[train], axis=0) > 0  # a feature constant on the training rows: dropped
    return X[train][:, keep], X[new_inliers][:, keep], X[y == 1][:, keep]


def detectors(c, seed):
    return {
        "FFJORD": lambda: FFJORDOutlierDetector(contamination=c, random_state=seed),
        "IsolationForest": lambda: IsolationForest(contamination=c, random_state=seed),
        "LOF": lambda: make_pipeline(StandardScaler(),
                                     LocalOutlierFactor(novelty=True, contamination=c)),
    }


def run_split(task):
    """Every detector on one split of one set, for each contamination: one row each."""
    name, X, y, contaminations, seed = task
    torch.set_num_threads(1)
    X_train, X_new, X_anomalies = split(X, y, seed)
    labels = np.r_[np.zeros(len(X_new)), np.ones(len(X_anomalies))]
    rows = []
    for c in contaminations:
        row = dict(dataset=name, shape=f"{len(X_train)}x{X_train.shape[1]}", contamination=c,
                   split=seed)
        for label, make in detectors(c, seed).items():
            with warnings.catch_warnings(), stopwatch() as seconds:
                warnings.simplefilter("ignore")
                model = make().fit(X_train)
                new_flagged = np.mean(model.predict(X_new) == -1)
                auc = roc_auc_score(labels, -model.score_samples(np.r_[X_new, X_anomalies]))
            row[f"{label} flagged"], row[f"{label} AUC"] = float(new_flagged), float(auc)
            row[f"{label} s"] = seconds()
            if label == "FFJORD":  # the threshold of calibration='training', from the same fit
                row["calibration"] = model.calibration_
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    offset = np.percentile(model.score_samples(X_train), 100 * c)
                    row["FFJORD (training) flagged"] = float(np.mean(
                        model.score_samples(X_new) < offset))
        print(row, flush=True)
        rows.append(row)
    return rows


def summarize(rows):
    """One row per set and contamination: the means over the splits, and FFJORD's share on
    each split."""
    groups = {}
    for row in rows:
        groups.setdefault((row["dataset"], row["contamination"]), []).append(row)
    summary = []
    for (name, c), group in groups.items():
        mean = {key: float(np.mean([r[key] for r in group])) for key in group[0]
                if key.endswith(("flagged", "AUC", " s"))}
        mean.update(dataset=name, shape=group[0]["shape"], contamination=c,
                    calibration=",".join(sorted({r["calibration"] for r in group})),
                    splits=len(group),
                    **{"FFJORD flagged per split": " ".join(
                        f"{r['FFJORD flagged']:.3f}" for r in group)})
        mean["FFJORD within 1.5x"] = c / 1.5 <= mean["FFJORD flagged"] <= 1.5 * c
        summary.append(mean)
    return summary


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--contamination", default="0.01,0.05")
    parser.add_argument("--splits", type=int, default=3, help="random splits per set")
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--rows", default=None,
                        help="JSON-lines file of per-split rows: splits found there are not "
                             "run again, new ones are appended (to resume a long run)")
    args = parser.parse_args(argv)
    contaminations = [float(c) for c in args.contamination.split(",")]
    done = []
    if args.rows and os.path.exists(args.rows):
        with open(args.rows) as lines:
            done = [json.loads(line) for line in lines if line.strip()]
    finished = {(row["dataset"], row["split"]) for row in done}
    tasks = [(name, X, y, contaminations, seed) for name, X, y in sets(args.data_home)
             for seed in range(args.splits) if (name, seed) not in finished]
    rows = list(done)
    with ProcessPoolExecutor(args.jobs) as pool:
        for split_rows in pool.map(run_split, tasks):
            rows += split_rows
            if args.rows:
                with open(args.rows, "a") as lines:
                    lines.writelines(json.dumps(row) + "\n" for row in split_rows)
    summary = summarize(rows)
    within = sum(row["FFJORD within 1.5x"] for row in summary)
    columns = ["dataset", "shape", "contamination", "calibration", "FFJORD flagged",
               "FFJORD within 1.5x", "FFJORD flagged per split", "FFJORD (training) flagged",
               "IsolationForest flagged", "LOF flagged", "FFJORD AUC", "IsolationForest AUC",
               "LOF AUC", "FFJORD s"]
    save("outlier_threshold", "Outlier thresholds: share of new inliers flagged, and ROC-AUC",
         [(f"Means over {args.splits} random splits, each fitting on half of the inliers; "
           "flagged share on the other half; ROC-AUC on the other half plus the anomalies. "
           "FFJORD (training): the same fit with the threshold of calibration='training'. "
           f"FFJORD within 1.5x of the contamination on {within} of {len(summary)}",
           markdown_table(summary, columns))],
         "python benchmarks/outlier_threshold_benchmark.py " + " ".join(
             sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
