"""Threads: what a user gets from the default thread policy, on an idle and on a loaded machine.

The demo's default fit (pinwheel, 10,000 rows) and the scoring of 100,000 rows with the fitted
model, each in a fresh process, with three settings: skflow's default policy
(``n_threads=None``), one thread (``n_threads=1``) and torch's own default (as many threads as
cores, ``n_threads=os.cpu_count()``). Each is measured on the idle machine and with every core
kept busy by another process (one busy loop per core, started before and stopped after the
measurement). Times are compared as ratios to the best setting of the same condition, in one
run. Target: the default policy is never more than 1.2x the best.

    python benchmarks/threads_benchmark.py [--max-iter N]
"""

import argparse
import json
import os
import subprocess
import sys
from contextlib import contextmanager

from _common import markdown_table, save

MEASURE = r"""
import json, sys, time, warnings
import numpy as np
from skflow import FFJORDDensity
from skflow.datasets import make_toy
warnings.simplefilter("ignore")
n_threads, max_iter = json.loads(sys.argv[1]), json.loads(sys.argv[2])
X = make_toy("pinwheel", 10000, random_state=0)
params = {} if max_iter is None else {"max_iter": max_iter}
start = time.perf_counter()
est = FFJORDDensity(random_state=0, n_threads=n_threads, **params).fit(X)
fit_s = time.perf_counter() - start
Y = make_toy("pinwheel", 100000, random_state=1)
start = time.perf_counter()
score = est.score(Y)
print(json.dumps(dict(fit_s=fit_s, score_s=time.perf_counter() - start, loglik=score)))
"""


@contextmanager
def busy_cores(n):
    """``n`` processes that each keep a core busy until the block ends."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def measure(n_threads, max_iter, limit):
    """Fit and score in a fresh process (torch's thread pool and caches start as a user's
    would, with the machine's environment: no OMP_NUM_THREADS from this script). A run past
    ``limit`` seconds is stopped and reported as taking at least that long."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS",
                                                             "SKFLOW_BENCH_THREADS")}
    try:
        out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(n_threads),
                              json.dumps(max_iter)], capture_output=True, text=True, env=env,
                             check=True, timeout=limit)
    except subprocess.TimeoutExpired:
        return dict(fit_s=float(limit), score_s=float("nan"), loglik=float("nan"),
                    note=f"stopped after {limit} s")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-iter", type=int, default=None, help="shorter fits (default: the "
                        "estimator's own)")
    parser.add_argument("--limit", type=int, default=300, help="seconds after which a "
                        "setting's run is stopped (oversubscribed threads can take minutes)")
    args = parser.parse_args(argv)
    cores = os.cpu_count()
    settings = {"default policy (n_threads=None)": None, "one thread": 1,
                f"torch's default ({cores} threads)": cores}
    rows = []
    for condition in ("idle", f"loaded ({cores} busy processes)"):
        with busy_cores(cores if condition != "idle" else 0):
            results = {}
            for label, n_threads in settings.items():
                results[label] = measure(n_threads, args.max_iter, args.limit)
                print(condition, label, results[label], flush=True)
        best_fit = min(r["fit_s"] for r in results.values())
        best_score = min(r["score_s"] for r in results.values() if r["score_s"] == r["score_s"])
        for label, r in results.items():
            rows.append(dict(condition=condition, setting=label, fit_s=r["fit_s"],
                             fit_ratio=r["fit_s"] / best_fit, score_s=r["score_s"],
                             score_ratio=r["score_s"] / best_score, loglik=r["loglik"],
                             note=r.get("note", "")))
    save("threads", "Threads: the default policy against one thread and torch's default",
         [("Default fit (pinwheel, 10,000 rows) and scoring of 100,000 rows, each in a fresh "
           "process; ratios to the best setting of the same condition",
           markdown_table(rows, ["condition", "setting", "fit_s", "fit_ratio", "score_s",
                                 "score_ratio", "loglik", "note"]))],
         "python benchmarks/threads_benchmark.py " + " ".join(sys.argv[1:] if argv is None
                                                              else argv))


if __name__ == "__main__":
    main()
