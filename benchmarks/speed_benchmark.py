"""Speed against peers, measured in one run as ratios (zuko must be installed: skflow[benchmarks]).

1. Time to quality: default FFJORDDensity vs zuko's CNF (same hidden widths) given 5x the wall
   time, held-out log-likelihood on toy densities.
2. Scoring: exact log densities of 100,000 rows x 10 features, FFJORDDensity vs zuko's CNF
   exact ``log_prob`` at the same tolerances.
3. NFE to score: plain FFJORD likelihood training vs regularized (kinetic energy + Jacobian
   Frobenius, fixed-grid rk4) vs flow matching, with their held-out log-likelihoods.

    python benchmarks/speed_benchmark.py [--fast]
"""

import argparse
import sys
import warnings

import numpy as np
import torch
import zuko
from _common import markdown_table, random_network_data, save, stopwatch

from skflow import FFJORDDensity
from skflow.datasets import make_toy

HIDDEN = (64, 64, 64)


def standardizer(X):
    mean, std = X.mean(0), X.std(0)
    return (lambda A: torch.as_tensor((A - mean) / std, dtype=torch.float32)), np.log(std).sum()


def train_zuko(X, seconds, atol=1e-6, rtol=1e-5, batch_size=512, seed=0):
    """zuko's CNF trained by maximum likelihood (its exact trace) for a wall-time budget."""
    torch.manual_seed(seed)
    to_tensor, log_scale = standardizer(X)
    flow = zuko.flows.CNF(X.shape[1], hidden_features=HIDDEN)
    flow.transform.atol, flow.transform.rtol = atol, rtol
    optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
    data, steps = to_tensor(X), 0
    with stopwatch() as elapsed:
        while elapsed() < seconds:
            batch = data[torch.randint(len(data), (batch_size,))]
            loss = -flow().log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1

    def score_samples(A, chunk=10000):
        flow.eval()
        with torch.no_grad():
            parts = [flow().log_prob(to_tensor(A[i:i + chunk])) for i in range(0, len(A), chunk)]
        return torch.cat(parts).double().numpy() - log_scale

    return score_samples, steps


def time_to_quality(names, n_train, fast):
    rows = []
    for name in names:
        X = make_toy(name, n_train, random_state=0)
        X_test = make_toy(name, 5000, random_state=1)
        with warnings.catch_warnings(), stopwatch() as seconds:
            warnings.simplefilter("ignore")
            ours = FFJORDDensity(random_state=0, **({"max_iter": 300} if fast else {})).fit(X)
        ours_s = seconds()
        zuko_score, zuko_steps = train_zuko(X, 5 * ours_s)
        ours_ll, zuko_ll = ours.score(X_test), float(np.mean(zuko_score(X_test)))
        rows.append(dict(dataset=name, skflow_fit_s=ours_s, skflow_loglik=ours_ll,
                         zuko_fit_s=5 * ours_s, zuko_steps=zuko_steps, zuko_loglik=zuko_ll,
                         skflow_better=ours_ll > zuko_ll))
        print(rows[-1], flush=True)
    return rows


def scoring(n_rows, fast):
    d, tol = 10, 1e-6
    X = random_network_data(5000, d)
    X_big = random_network_data(n_rows, d, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = FFJORDDensity(random_state=0, eval_atol=tol, eval_rtol=tol,
                             **({"max_iter": 300} if fast else {})).fit(X)
    zuko_score, _ = train_zuko(X, 30 if fast else 120, atol=tol, rtol=tol)
    with stopwatch() as ours_s:
        ours_ll = ours.score(X_big)
    with stopwatch() as zuko_s:
        zuko_ll = float(np.mean(zuko_score(X_big)))
    row = dict(rows=n_rows, features=d, tolerance=tol, eval_dtype=ours.eval_dtype,
               skflow_s=ours_s(), zuko_s=zuko_s(),
               speedup=zuko_s() / ours_s(), skflow_loglik=ours_ll, zuko_loglik=zuko_ll,
               skflow_nfe_per_row=float(ours.evaluation_nfe(X_big[:1000]).mean()))
    print(row, flush=True)
    return [row]


def nfe_comparison(name, fast):
    """Evaluation NFE per row at equal held-out log-likelihood.

    Plain FFJORD (likelihood, dopri5, adjoint, Hutchinson, its default 1,000 steps) sets the
    log-likelihood to match. RNODE-style regularized likelihood training runs as long; flow
    matching (plain and with minibatch OT pairing) is fitted with growing ``max_iter``, and the
    fits that reach plain FFJORD's log-likelihood are marked. The ratio is plain FFJORD's NFE per
    scored row over the method's own; all are scored by the same evaluation solver.
    """
    X = make_toy(name, 5000, random_state=0)
    X_test = make_toy(name, 5000, random_state=1)
    likelihood_iters = 50 if fast else "auto"
    variants = [
        ("likelihood (FFJORD: dopri5, adjoint, Hutchinson)",
         dict(training="likelihood", max_iter=likelihood_iters)),
        ("likelihood + kinetic + Jacobian (RNODE: rk4 x 8)",
         dict(training="likelihood", max_iter=likelihood_iters, solver="rk4", n_steps=8,
              kinetic_energy=0.01, jacobian_frobenius=0.01)),
    ]
    for training, sweep in (("flow_matching", (100, 200, 400, 800, 1600, 5000)),
                            ("ot_flow_matching", (100, 200, 400, 800, 1600))):
        for steps in ((25, 50, 300) if fast else sweep):
            variants.append((f"{training.replace('_', ' ')}, max_iter={steps}",
                             dict(training=training, max_iter=steps)))
    rows = []
    for label, params in variants:
        with warnings.catch_warnings(), stopwatch() as seconds:
            warnings.simplefilter("ignore")
            est = FFJORDDensity(random_state=0, **params).fit(X)
        rows.append(dict(dataset=name, training=label, fit_s=seconds(), steps=est.n_iter_,
                         test_loglik=est.score(X_test),
                         nfe_per_row_scoring=float(est.evaluation_nfe(X_test[:1000]).mean()),
                         train_nfe_per_step=float(np.mean([h["nfe_forward"] + h["nfe_backward"]
                                                           for h in est.history_]))))
        print(rows[-1], flush=True)
    plain = rows[0]
    for row in rows:
        row["nfe_ratio_vs_plain"] = plain["nfe_per_row_scoring"] / row["nfe_per_row_scoring"]
        row["loglik_at_least_plain"] = row["test_loglik"] >= plain["test_loglik"]
    return rows


SECTIONS = ("quality", "scoring", "nfe")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help="comma-separated subset of: " + ", ".join(SECTIONS))
    args = parser.parse_args(argv)
    chosen = args.sections.split(",")
    toy = ["8gaussians"] if args.fast else ["pinwheel", "8gaussians", "moons", "checkerboard"]
    sections = []
    if "quality" in chosen:
        sections.append((
            "Time to quality: default FFJORDDensity vs zuko CNF with 5x the wall time",
            markdown_table(time_to_quality(toy, 2000 if args.fast else 10000, args.fast),
                           ["dataset", "skflow_fit_s", "skflow_loglik", "zuko_fit_s", "zuko_steps",
                            "zuko_loglik", "skflow_better"])))
    if "scoring" in chosen:
        sections.append((
            "Exact scoring of many rows, same tolerances",
            markdown_table(scoring(10000 if args.fast else 100000, args.fast),
                           ["rows", "features", "tolerance", "eval_dtype", "skflow_s", "zuko_s",
                            "speedup", "skflow_loglik", "zuko_loglik", "skflow_nfe_per_row"])))
    if "nfe" in chosen:
        sections.append((
            "Function evaluations to score (per row, evaluation solver) by training method",
            markdown_table(nfe_comparison("8gaussians", args.fast),
                           ["dataset", "training", "fit_s", "steps", "train_nfe_per_step",
                            "test_loglik", "nfe_per_row_scoring", "nfe_ratio_vs_plain",
                            "loglik_at_least_plain"])))
    name = "speed" + ("_fast" if args.fast else "") + (
        "" if set(chosen) == set(SECTIONS) else "_" + "_".join(chosen))
    save(name, "Speed against peers", sections,
         "python benchmarks/speed_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
