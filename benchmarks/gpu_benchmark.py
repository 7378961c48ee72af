"""GPU against the CPU of the same machine: default fits and the scoring of many rows.

Three settings, each in a fresh process: the GPU (``device='cuda'``), one CPU core
(``device='cpu'``, ``n_threads=1``, torch and OpenMP held to one thread, the process pinned to
one core) and all CPU cores (``n_threads`` = the machine's cores). Each process first fits a
two-step model (start-up: imports, CUDA context, thread pools), then times (default fits:
``batch_size='auto'`` takes 4096 rows per step on the GPU, 1024 on the CPU):

1. the default ``FFJORDDensity(random_state=0)`` fit of a 100,000 x 10 table (a Gaussian
   pushed through a random tanh network, :func:`_common.random_network_data`), with its
   held-out log-likelihood. On one core of a 2-core development machine its first 500 of
   up to 10,000 steps (three blocks) took 46 s, so the CPU settings train it for 45 seconds
   (``max_time``);
2. ``score_samples`` of 1,000,000 new rows of that table with the model just fitted (the mean
   is a held-out log-likelihood too). A core scores a few hundred to a few thousand such rows
   a second, so the CPU settings score a stated share of the rows (``rows`` column) and are
   compared by rows per second;
3. the default fit of a 2-D toy density (pinwheel, 10,000 rows), with its held-out
   log-likelihood;
4. 100 steps of likelihood training (FFJORD's objective) on pinwheel with a fixed-grid solver
   (``solver='rk4', n_steps=8, adjoint=False``), the step that a GPU also captures as a graph
   (the GPU and one core).

The headline workloads come first, so that a setting cut by the time budget has done them.
A fit's speed-up is measured at equal quality: the CPU setting's training time to its best
validation loss over the GPU's training time to first reach that loss (the same seed, so the
same validation rows; from the fits' ``history_``). A GPU that never reaches it shows no
speed-up and says so.

The GPU process also scores rows with its GPU-fitted model on the CPU, and reports the largest
difference from the GPU's scores (float32 rounding); last, it fits pinwheel again, likelihood
and default, without the captured training steps (one eager step at a time), which shows what
the CUDA graphs buy. The
one-core and GPU processes run side by side on disjoint cores (the GPU's host thread needs a
core of its own, one core's run needs only one), the all-cores process alone afterwards, so
that the whole run fits in 5 minutes on a 16-core GPU machine; a setting that outruns
``--budget`` is stopped and shown with what it finished. Without CUDA the CPU settings run
and the GPU's are marked "no GPU".

    python benchmarks/gpu_benchmark.py [--quick] [--budget SECONDS]

Writes ``benchmarks/results/gpu.md`` (``gpu_quick.md`` with ``--quick``: small data and 100
steps per fit, a smoke test of the script that runs in under a minute).
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import torch
from _common import markdown_table, random_network_data, save, stopwatch

# Fit and score sizes: the full run, and --quick's.
SIZES = {
    False: dict(toy=10_000, table=100_000, held_out=5_000, score=1_000_000, max_iter=None,
                score_one_core=10_000, score_all_cores=100_000, check=2_000,
                likelihood_iter=100, cpu_table_seconds=45.0),
    True: dict(toy=2_000, table=5_000, held_out=2_000, score=20_000, max_iter=100,
               score_one_core=4_000, score_all_cores=8_000, check=1_000, likelihood_iter=10,
               cpu_table_seconds=None),
}
# What the issue asks of the GPU: its speed-up over one CPU core (default fits, scoring).
TARGETS = {"fit": 10.0, "score": 20.0}
# FFJORD's own objective on a fixed grid with direct backpropagation: the likelihood step that
# a GPU captures as a graph (100 steps: enough to time, not to converge).
LIKELIHOOD = dict(training="likelihood", solver="rk4", n_steps=8, adjoint=False)
LIKELIHOOD_WORKLOAD = "likelihood fit: pinwheel (rk4, 8 steps)"
N_FEATURES = 10


def _settings(cores):
    """Label -> (device, n_threads, cores to pin the process to)."""
    return {"GPU": ("cuda", None, set(range(1, cores)) or {0}),
            "one CPU core": ("cpu", 1, {0}),
            f"all CPU cores ({cores})": ("cpu", cores, set(range(cores)))}


def worker(device, n_threads, quick):
    """One setting, in its own process: print a JSON line per measurement as it finishes."""
    import numpy as np

    from skflow import FFJORDDensity
    from skflow.datasets import make_toy

    warnings.simplefilter("ignore")
    sizes = SIZES[quick]
    params = dict(random_state=0, device=device, n_threads=n_threads)
    if sizes["max_iter"] is not None:
        params["max_iter"] = sizes["max_iter"]

    def emit(**row):
        print(json.dumps(row), flush=True)

    toy = make_toy("pinwheel", sizes["toy"], random_state=0)
    toy_test = make_toy("pinwheel", sizes["held_out"], random_state=1)
    FFJORDDensity(**dict(params, max_iter=2, validation_interval=2)).fit(toy[:500])  # start-up

    def fit(workload, X, X_test, **extra):
        with stopwatch() as seconds:
            est = FFJORDDensity(**{**params, **extra}).fit(X)
        emit(workload=workload, rows=len(X), seconds=seconds(), loglik=est.score(X_test),
             steps=est.n_iter_, curve=[(h["time"], h["val_loss"]) for h in est.history_])
        return est

    table = random_network_data(sizes["table"], N_FEATURES)
    capped = device == "cpu" and sizes["cpu_table_seconds"] is not None
    est = fit(f"fit: table x {N_FEATURES}", table,
              random_network_data(sizes["held_out"], N_FEATURES, seed=1),
              **({"max_time": sizes["cpu_table_seconds"]} if capped else {}))
    n_score = sizes["score"] if device != "cpu" else sizes[
        "score_one_core" if n_threads == 1 else "score_all_cores"]
    rows = random_network_data(n_score, N_FEATURES, seed=2)
    with stopwatch() as seconds:
        scores = est.score_samples(rows)
    emit(workload=f"score: table x {N_FEATURES}", rows=n_score, seconds=seconds(),
         loglik=float(np.mean(scores)))
    if device != "cpu":  # the GPU-fitted model, scored on the CPU
        check = rows[:sizes["check"]]
        on_cpu = est.set_params(device="cpu", n_threads=1).score_samples(check)
        emit(workload="cross-device", rows=len(check),
             max_abs_diff=float(np.max(np.abs(on_cpu - scores[:len(check)]))))
    fit("fit: pinwheel", toy, toy_test)
    likelihood = dict(LIKELIHOOD, max_iter=sizes["likelihood_iter"],
                      validation_interval=sizes["likelihood_iter"] // 2)
    if device != "cpu" or n_threads == 1:
        fit(LIKELIHOOD_WORKLOAD, toy, toy_test, **likelihood)
    if device != "cpu":
        # What the captured steps buy: the likelihood and the default toy fits again, one
        # eager step at a time (last, so that the time budget cuts them first).
        from skflow import training
        training._captures = lambda *args: False
        fit(f"{LIKELIHOOD_WORKLOAD}, step by step", toy, toy_test, **likelihood)
        fit("fit: pinwheel, step by step", toy, toy_test)


def launch(device, n_threads, cores, quick):
    """The worker of one setting in a fresh process, pinned to ``cores``, with torch's and
    OpenMP's thread counts set before torch starts."""
    threads = str(n_threads or len(cores))
    env = dict(os.environ, OMP_NUM_THREADS=threads, SKFLOW_BENCH_THREADS=threads)

    def pin():
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores & os.sched_getaffinity(0) or os.sched_getaffinity(0))

    return subprocess.Popen(
        [sys.executable, __file__, "--worker", json.dumps([device, n_threads, quick])],
        stdout=subprocess.PIPE, text=True, env=env, preexec_fn=pin)


def collect(process, deadline):
    """The worker's measurements; one still running at ``deadline`` is stopped, and its
    finished measurements kept with a note."""
    try:
        out, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
        note = "" if process.returncode == 0 else f"worker failed ({process.returncode})"
    except subprocess.TimeoutExpired:
        process.kill()
        out, _ = process.communicate()
        note = "stopped at the time budget"
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return rows, note


def time_to_quality(cpu_curve, gpu_curve):
    """The CPU's training time to its best validation loss over the GPU's time to first reach
    that loss (curves of ``(time, validation loss)``); None when the GPU never reached it."""
    cpu_time, best = min(cpu_curve, key=lambda point: point[1])
    reached = [t for t, loss in gpu_curve if loss <= best]
    return cpu_time / reached[0] if reached and reached[0] > 0 else None


def tabulate(results, notes):
    """The timing table with speed-ups of the GPU over each CPU setting (fits at equal
    validation loss, scoring by rows per second), what the captured steps buy, and the
    cross-device check."""
    gpu = {r["workload"]: r for r in results.get("GPU", [])}
    timing, checks = [], []
    for setting, rows in results.items():
        for r in rows:
            if r["workload"] == "cross-device":
                checks.append(dict(rows=r["rows"], max_abs_diff=r["max_abs_diff"]))
                continue
            row = dict(workload=r["workload"], setting=setting, rows=r["rows"],
                       seconds=r["seconds"], heldout_loglik=r["loglik"],
                       steps=r.get("steps", ""))
            if r["workload"].startswith("score"):
                row["rows_per_s"] = r["rows"] / r["seconds"]
            eager_of = r["workload"].removesuffix(", step by step")
            if eager_of != r["workload"] and eager_of in gpu:
                row["note"] = (f"{r['seconds'] / gpu[eager_of]['seconds']:.1f}x the captured "
                               "fit's time")
            reference = gpu.get(r["workload"])
            if setting != "GPU" and reference is not None:
                if "curve" in r:  # a fit: at equal validation loss
                    speedup = time_to_quality(r["curve"], reference["curve"])
                else:  # by rows per second: a CPU setting may score only a share of the rows
                    speedup = (reference["rows"] / reference["seconds"]
                               / (r["rows"] / r["seconds"]))
                target = TARGETS.get(r["workload"].split(":")[0])
                if speedup is None:
                    row["note"] = "the GPU did not reach this setting's validation loss"
                else:
                    row["gpu_speedup"] = speedup
                    if setting == "one CPU core" and target is not None:
                        met = "met" if speedup >= target else "missed"
                        row["target"] = f">= {target:.0f}x: {met}"
            timing.append(row)
        if notes.get(setting):
            timing.append(dict(workload="(unfinished)", setting=setting, note=notes[setting]))
    if "GPU" not in results and not torch.cuda.is_available():
        timing.append(dict(workload="(all)", setting="GPU", note="no GPU"))
    return timing, checks


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data, 100 steps per fit")
    parser.add_argument("--budget", type=float, default=280.0,
                        help="seconds for the whole run; a setting past it is stopped")
    parser.add_argument("--settings", default="gpu,one,all",
                        help="comma-separated subset of gpu, one (CPU core), all (CPU cores)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(*json.loads(args.worker))
        return
    cores = os.cpu_count() or 1
    chosen = args.settings.split(",")
    settings = {label: setting for key, (label, setting) in zip(
        ("gpu", "one", "all"), _settings(cores).items()) if key in chosen}
    if not torch.cuda.is_available():
        settings.pop("GPU", None)
    start, results, notes = time.monotonic(), {}, {}
    # The one-core and GPU settings side by side on disjoint cores; all cores alone, after.
    side_by_side = [label for label in settings if label != f"all CPU cores ({cores})"]
    if cores < 2:
        side_by_side = side_by_side[:1]
    for batch in (side_by_side, [label for label in settings if label not in side_by_side]):
        processes = {label: launch(*settings[label], args.quick) for label in batch}
        for label, process in processes.items():
            results[label], notes[label] = collect(process, start + args.budget)
            print(label, results[label], notes[label], flush=True)
    sizes = SIZES[args.quick]
    timing, checks = tabulate(results, notes)
    steps = f"{sizes['max_iter']} steps" if sizes["max_iter"] else "default steps"
    sections = [(
        f"Default FFJORDDensity(random_state=0), {steps}: seconds, held-out mean log-likelihood, "
        f"and the GPU's speed-up over each CPU setting (fits: training time to the CPU "
        f"setting's best validation loss; scoring: rows per second; targets against one "
        f"core: fit {TARGETS['fit']:.0f}x, scoring {TARGETS['score']:.0f}x). "
        + (f"The CPU settings train the table for {sizes['cpu_table_seconds']:.0f} s "
           "(max_time). " if sizes["cpu_table_seconds"] else "")
        + f"Scoring: the GPU scores {sizes['score']:,} rows, one core "
        f"{sizes['score_one_core']:,}, all cores {sizes['score_all_cores']:,} (same density, "
        "held out)",
        markdown_table(timing, ["workload", "setting", "rows", "seconds", "rows_per_s",
                                "heldout_loglik", "steps", "gpu_speedup", "target", "note"]))]
    if checks:
        sections.append(("The GPU-fitted table model scored on the CPU: largest difference "
                         "from the GPU's log densities (nats; float32 rounding)",
                         markdown_table(checks, ["rows", "max_abs_diff"])))
    save("gpu" + ("_quick" if args.quick else ""),
         "GPU against one CPU core and all CPU cores of the same machine", sections,
         "python benchmarks/gpu_benchmark.py " + " ".join(sys.argv[1:] if argv is None
                                                          else argv))


if __name__ == "__main__":
    main()
