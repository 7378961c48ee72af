"""Data-parallel speed-up: a fixed number of likelihood-training steps, 1 process vs N (torchrun).

Each configuration runs in fresh processes launched by ``torchrun`` (``python -m
torch.distributed.run``), so that the timing includes the collectives but not the start-up:
every rank first fits a 2-step warm-up model, then times ``FFJORDDensity.fit`` with
``max_iter=--iters`` steps of likelihood training (Hutchinson probe, adjoint, fixed-grid rk4 so
that every step costs the same, one sharded validation at the end) at the same *global*
minibatch, which the ranks split between them. The speed-up is the 1-process, 1-thread time
over the N-process time; 1 process with N intra-op threads is shown for comparison.

    python benchmarks/distributed_speedup.py                        # 1 vs 2 processes, CPU
    python benchmarks/distributed_speedup.py --procs 1,2,4,8 --name distributed_16core
    python benchmarks/distributed_speedup.py --device cuda --procs 1   # one GPU, for reference

Writes ``benchmarks/results/<name>.md`` (default ``distributed``).
"""

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def worker(args):
    """One rank: warm up, then time the fit; rank 0 writes the result."""
    import torch

    from skflow import FFJORDDensity
    from skflow.datasets import make_toy

    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    X = make_toy("8gaussians", n_samples=args.rows, random_state=0)
    X_test = make_toy("8gaussians", n_samples=2000, random_state=1)
    params = dict(training="likelihood",
                  hidden_dims=tuple(int(h) for h in args.hidden.split(",")), solver="rk4",
                  n_steps=args.n_steps, batch_size=args.batch_size, learning_rate=1e-3,
                  validation_fraction=args.validation_fraction, n_iter_no_change=None,
                  device=args.device, random_state=0)
    FFJORDDensity(**dict(params, max_iter=2, validation_interval=2)).fit(X[:2000])  # warm-up
    if args.device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    est = FFJORDDensity(**dict(params, max_iter=args.iters, validation_interval=args.iters)).fit(X)
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        rank = torch.distributed.get_rank()
    else:
        rank = 0
    if rank == 0:
        result = dict(seconds=seconds, world_size=est.world_size_, device=est.device_,
                      threads=torch.get_num_threads(), iters=est.n_iter_,
                      val_loss=est.best_validation_loss_,
                      test_loglik=float(est.score(X_test[:500])))
        Path(args.worker).write_text(json.dumps(result))


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(args, procs, threads, batch_size):
    """Run this script as ``procs`` torchrun workers with ``threads`` threads each."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK",
                                                                 "LOCAL_RANK",
                                                                 "SKFLOW_DISTRIBUTED")}
        env.update(OMP_NUM_THREADS=str(threads),
                   PYTHONPATH=os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={procs}",
                   "--nnodes=1", "--master_addr=127.0.0.1", f"--master_port={free_port()}",
                   str(Path(__file__).resolve()), "--worker", str(out), "--threads", str(threads),
                   "--iters", str(args.iters), "--batch-size", str(batch_size),
                   "--rows", str(args.rows), "--hidden", args.hidden, "--n-steps",
                   str(args.n_steps), "--validation-fraction", str(args.validation_fraction),
                   "--device", args.device]
        run = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True,
                             timeout=args.timeout)
        if run.returncode != 0:
            raise RuntimeError(f"torchrun failed ({procs} x {threads}):\n"
                               f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}")
        return json.loads(out.read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--procs", default="1,2", help="process counts, comma-separated")
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--batch-size", default="1024",
                        help="global minibatch; several, comma-separated, make several tables")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--hidden", default="64,64,64")
    parser.add_argument("--n-steps", type=int, default=8)
    parser.add_argument("--validation-fraction", type=float, default=0.05)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=1, help="take the best of this many")
    parser.add_argument("--name", default="distributed")
    parser.add_argument("--timeout", type=int, default=1200)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        args.batch_size = int(args.batch_size)
        return worker(args)

    procs = [int(p) for p in args.procs.split(",")]
    # (processes, threads per process): data-parallel runs use one thread per process; a single
    # process with as many threads is the intra-op alternative on the same cores.
    configs = [(1, 1)] + [(p, 1) for p in procs if p > 1]
    if args.device == "cpu":
        configs += [(1, p) for p in procs if p > 1]
    batch_sizes = [int(b) for b in args.batch_size.split(",")]
    tables = []
    for batch_size in batch_sizes:
        rows = []
        for p, t in configs:
            best = None
            for _ in range(args.repeats):
                result = launch(args, p, t, batch_size)
                print(f"batch {batch_size}, {p} process(es) x {t} thread(s): "
                      f"{result['seconds']:.2f} s", flush=True)
                if best is None or result["seconds"] < best["seconds"]:
                    best = result
            rows.append(dict(best, procs=p, threads_per_proc=t))
        tables.append((batch_size, rows))
    load = os.getloadavg()
    try:
        import torch
        torch_version = torch.__version__
        gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    except Exception:  # pragma: no cover
        torch_version, gpu = "?", "?"
    lines = [
        "# Data-parallel training speed-up (torchrun)", "",
        f"Command: `python benchmarks/distributed_speedup.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"Machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch_version}, {gpu}; "
        f"load average {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min) "
        "at the end of the run.", "",
        f"Workload: {args.iters} steps of likelihood training (Hutchinson probe, adjoint, rk4 "
        f"with {args.n_steps} steps) of an FFJORD flow with hidden layers ({args.hidden}) on "
        f"{args.rows} rows of the 2-D '8gaussians' density, device {args.device}; time of "
        f"`fit` after a warm-up fit, including one validation on "
        f"{args.validation_fraction:.0%} of the rows (sharded too). Best of {args.repeats}.",
    ]
    for batch_size, rows in tables:
        base = rows[0]["seconds"]
        lines += [
            "", f"## Global minibatch {batch_size}", "",
            "| processes | threads / process | rows / step / process | seconds | steps / s "
            "| speed-up vs 1 x 1 | held-out log-lik |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['procs']} | {row['threads_per_proc']} | "
                f"{batch_size // row['procs']} | {row['seconds']:.2f} | "
                f"{row['iters'] / row['seconds']:.2f} | {base / row['seconds']:.2f}x | "
                f"{row['test_loglik']:.3f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    path = HERE / "results" / f"{args.name}.md"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
