"""Shared helpers for the benchmark scripts: timing, tables, result files."""

import os
import platform
import re
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

RESULTS = Path(__file__).resolve().parent / "results"

# One thread per benchmark process by default: small CNFs run best that way on a 2-core machine,
# and two benchmarks can then run side by side without oversubscribing it.
torch.set_num_threads(int(os.environ.get("SKFLOW_BENCH_THREADS", "1")))


@contextmanager
def stopwatch():
    """``with stopwatch() as elapsed: ...`` then ``elapsed()`` gives the seconds taken."""
    start = time.perf_counter()
    end = None

    def elapsed():
        return (end or time.perf_counter()) - start

    try:
        yield elapsed
    finally:
        end = time.perf_counter()


def machine():
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def markdown_table(rows, columns):
    """Rows of dicts -> a markdown table with the given column order."""
    def fmt(v):
        if not isinstance(v, float):
            return str(v)
        return f"{v:.3f}" if v == 0 or abs(v) >= 1e-3 else f"{v:.0e}"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def save(name, title, sections, command):
    """Print and write ``results/<name>.md``: a title, the command, the machine, and tables.
    A data home in the command is written as ``DATA_HOME``, a rows file as ``ROWS_FILE``: no
    saved output names a path of the machine it ran on."""
    command = re.sub(r"(--data-home[ =])\S+", r"\1DATA_HOME", command)
    command = re.sub(r"(--rows[ =])\S+", r"\1ROWS_FILE", command)
    text = [f"# {title}", "", f"Command: `{command}`", "", f"Machine: {machine()}", ""]
    for heading, table in sections:
        text += [f"## {heading}", "", table, ""]
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.md"
    path.write_text("\n".join(text))
    print("\n".join(text))
    print(f"written to {path}")


def paired_se(a, b):
    """Standard error of ``mean(a - b)`` over test rows that two models both scored (per-row
    log densities ``a`` and ``b``): the rows' own spread cancels, and what remains says whether
    a gap between the models is within the test rows' noise."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def random_network_data(n, d, seed=0, network_seed=0):
    """A non-Gaussian d-dimensional density: a Gaussian pushed through a random tanh network.
    ``network_seed`` fixes the density, ``seed`` the draw."""
    net = np.random.RandomState(network_seed)
    W1, W2 = net.standard_normal((d, d)) / np.sqrt(d), net.standard_normal((d, d)) / np.sqrt(d)
    Z = np.random.RandomState(seed).standard_normal((n, d))
    return Z + np.tanh(Z @ W1) @ W2 * 1.5
