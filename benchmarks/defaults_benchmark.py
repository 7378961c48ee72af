"""The defaults, checked on real tabular data: each row changes one setting from the default.

Data as in ``tabular_benchmark.py`` (MINIBOONE fitted on its validation split and tested on its
test split; ODDS normal rows split 80/20). Reports held-out mean log-likelihood, fit time,
scoring time of the test rows and the evaluation solver's function evaluations per row.

    python benchmarks/defaults_benchmark.py --data-home DIR [--datasets miniboone,cardio,...]
"""

import argparse
import sys
import warnings

import numpy as np
from _common import markdown_table, save, stopwatch
from tabular_benchmark import splits

from skflow import FFJORDDensity

VARIANTS = {
    "defaults": {},
    "max_iter=2500": dict(max_iter=2500),
    "max_iter=10000": dict(max_iter=10000),
    "batch_size=512": dict(batch_size=512),
    "batch_size=2048": dict(batch_size=2048),
    "learning_rate=2e-3": dict(learning_rate=2e-3),
    "learning_rate=1e-2": dict(learning_rate=1e-2),
    "hidden_dims=(64, 64)": dict(hidden_dims=(64, 64)),
    "hidden_dims=(128, 128, 128)": dict(hidden_dims=(128, 128, 128)),
    "eval tolerances 1e-5": dict(eval_atol=1e-5, eval_rtol=1e-5),
}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", required=True)
    parser.add_argument("--datasets", default="miniboone,cardio,mammography")
    args = parser.parse_args(argv)
    wanted = args.datasets.split(",")
    rows = []
    for name, X, X_test in splits(args.data_home):
        if not any(name.startswith(w) for w in wanted):
            continue
        for label, params in VARIANTS.items():
            with warnings.catch_warnings(), stopwatch() as fit_s:
                warnings.simplefilter("ignore")
                est = FFJORDDensity(random_state=0, **params).fit(X)
            with stopwatch() as score_s:
                loglik = est.score(X_test)
            rows.append(dict(dataset=name, setting=label, test_loglik=loglik, fit_s=fit_s(),
                             steps=est.n_iter_, score_s=score_s(),
                             nfe_per_row=float(np.mean(est.evaluation_nfe(X_test[:500])))))
            print(rows[-1], flush=True)
    save("defaults", "Defaults on real tabular data: one setting changed at a time",
         [("Held-out mean log-likelihood (nats), fit and scoring time (s), evaluation NFE",
           markdown_table(rows, ["dataset", "setting", "test_loglik", "fit_s", "steps",
                                 "score_s", "nfe_per_row"]))],
         "python benchmarks/defaults_benchmark.py " + " ".join(sys.argv[1:] if argv is None
                                                               else argv))


if __name__ == "__main__":
    main()
