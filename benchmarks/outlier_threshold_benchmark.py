"""Outlier thresholds: the share of new inliers that each detector flags at a given
``contamination``, next to its ROC-AUC.

A detector fitted with ``contamination=c`` should flag about the share ``c`` of new rows from
the training distribution. For each set, the inliers are split in half: every detector fits the
first half (no anomalies), and the flagged share is measured on the second half; the ROC-AUC
(threshold-free) on the second half plus the anomalies. Detectors: FFJORDOutlierDetector with
its threshold calibrated on held-out rows (the default) and, from the same fit, the threshold a
calibration on its training rows gives (``calibration='training'``); IsolationForest and
LocalOutlierFactor (novelty=True, on standardized rows) with the same ``contamination``.

Sets: scikit-learn's breast cancer (benign rows are the inliers, malignant the anomalies),
digits in 15 PCA dimensions (digits 0-8 the inliers, 9 the anomalies), and, with
``--data-home``, the ODDS sets (normal rows the inliers).

    python benchmarks/outlier_threshold_benchmark.py [--data-home DIR] [--contamination 0.01,0.05]
"""

import argparse
import sys
import warnings

import numpy as np
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


def split(X, y, seed=0):
    rng = np.random.RandomState(seed)
    inliers = np.flatnonzero(y == 0)[rng.permutation(int((y == 0).sum()))]
    half = len(inliers) // 2
    train, new_inliers = inliers[:half], inliers[half:]
    keep = np.ptp(X[train], axis=0) > 0  # a feature constant on the training rows: dropped
    return X[train][:, keep], X[new_inliers][:, keep], X[y == 1][:, keep]


def detectors(c):
    return {
        "FFJORD": lambda: FFJORDOutlierDetector(contamination=c, random_state=0),
        "IsolationForest": lambda: IsolationForest(contamination=c, random_state=0),
        "LOF": lambda: make_pipeline(StandardScaler(),
                                     LocalOutlierFactor(novelty=True, contamination=c)),
    }


def run_set(name, X, y, contaminations):
    X_train, X_new, X_anomalies = split(X, y)
    labels = np.r_[np.zeros(len(X_new)), np.ones(len(X_anomalies))]
    rows = []
    for c in contaminations:
        row = dict(dataset=name, shape=f"{len(X_train)}x{X_train.shape[1]}", contamination=c)
        for label, make in detectors(c).items():
            with warnings.catch_warnings(), stopwatch() as seconds:
                warnings.simplefilter("ignore")
                model = make().fit(X_train)
                new_flagged = np.mean(model.predict(X_new) == -1)
                auc = roc_auc_score(labels, -model.score_samples(np.r_[X_new, X_anomalies]))
            row[f"{label} flagged"], row[f"{label} AUC"] = new_flagged, auc
            row[f"{label} s"] = seconds()
            if label == "FFJORD":  # the threshold of calibration='training', from the same fit
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    offset = np.percentile(model.score_samples(X_train), 100 * c)
                    row["FFJORD (training) flagged"] = np.mean(
                        model.score_samples(X_new) < offset)
        print(row, flush=True)
        rows.append(row)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", default=None)
    parser.add_argument("--contamination", default="0.01,0.05")
    args = parser.parse_args(argv)
    contaminations = [float(c) for c in args.contamination.split(",")]
    rows = [row for name, X, y in sets(args.data_home)
            for row in run_set(name, X, y, contaminations)]
    for row in rows:
        row["FFJORD within 1.5x"] = (row["contamination"] / 1.5 <= row["FFJORD flagged"]
                                     <= 1.5 * row["contamination"])
    columns = ["dataset", "shape", "contamination", "FFJORD flagged", "FFJORD within 1.5x",
               "FFJORD (training) flagged", "IsolationForest flagged", "LOF flagged",
               "FFJORD AUC", "IsolationForest AUC", "LOF AUC", "FFJORD s"]
    save("outlier_threshold", "Outlier thresholds: share of new inliers flagged, and ROC-AUC",
         [("Fit on half of the inliers; flagged share on the other half; ROC-AUC on the other "
           "half plus the anomalies. FFJORD (training): the same fit with the threshold of "
           "calibration='training'", markdown_table(rows, columns))],
         "python benchmarks/outlier_threshold_benchmark.py " + " ".join(
             sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
