"""How many threads torch uses while skflow works.

A second thread made a default fit 1.15x faster and the scoring of 100,000 rows 2.3x faster on
an idle 2-core machine, but with both cores kept busy by other programs the fit took more than
5.8x as long as on one thread (``benchmarks/results/threads.md``): oversubscription costs more
than threads gain. So work
that is not tiny runs on the cores that other processes leave free, measured over a tenth of
a second when it starts, at most on the threads torch has (which follows ``OMP_NUM_THREADS``,
``torch.set_num_threads`` and ``threadpoolctl`` limits, and so a grid search's ``n_jobs``);
tiny work runs on one thread. The caller's setting is restored afterwards.
"""

import contextlib
import os
import time
from collections.abc import Iterator

import torch

# Rows times squared width of the largest matrix product per step (or per evaluation) below
# which one thread is used without measuring anything: a thread's start-up costs more there.
SMALL_WORK = 2 ** 20


def _cpu_ticks():
    """Busy and total time of all CPUs, in ticks (Linux); None where it cannot be read."""
    try:
        with open("/proc/stat") as stat:
            values = [int(v) for v in stat.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    idle = values[3] + values[4]  # idle and iowait
    return sum(values) - idle, sum(values)


def cores_busy_elsewhere(window: float = 0.1) -> float | None:
    """How many cores other processes kept busy over the next ``window`` seconds (None where
    the machine's CPU time cannot be read)."""
    before, own_before, start = _cpu_ticks(), time.process_time(), time.perf_counter()
    time.sleep(window)
    after, own_after, end = _cpu_ticks(), time.process_time(), time.perf_counter()
    if before is None or after is None or after[1] <= before[1]:
        return None
    cores = os.cpu_count() or 1
    busy = cores * (after[0] - before[0]) / (after[1] - before[1])
    return max(0.0, busy - (own_after - own_before) / (end - start))


def intra_op_threads(requested: int | None, rows: int, width: int) -> int:
    """``requested`` if given; else 1 for tiny work, and otherwise the cores other processes
    leave free (at most torch's current count)."""
    if requested is not None:
        return int(requested)
    limit = torch.get_num_threads()
    if limit == 1 or rows * width * width < SMALL_WORK:
        return 1
    busy = cores_busy_elsewhere()
    if busy is None:
        return limit
    return max(1, min(limit, int((os.cpu_count() or 1) - busy + 0.5)))


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads, then restore the caller's count."""
    before = torch.get_num_threads()
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
