"""How many threads torch uses while skflow works.

skflow's models are small: a 64-wide network on a batch of 1,024 rows gains little from a second
thread and loses badly to oversubscription when other programs (or other fits of a grid
search) keep the cores busy (``benchmarks/results/threads.md``). So work whose largest matrix
product is small runs on one thread, larger work on the threads torch has (which follows
``OMP_NUM_THREADS``, ``torch.set_num_threads`` and ``threadpoolctl`` limits), and the caller's
setting is restored afterwards.
"""

import contextlib
from collections.abc import Iterator

import torch

# Rows times squared width of the largest matrix product per step (or per evaluation) below
# which one thread is used: 1,024 rows of a 64-wide network are 4.2e6.
SMALL_WORK = 2 ** 25


def intra_op_threads(requested: int | None, rows: int, width: int) -> int:
    """``requested`` if given, else 1 for small work and torch's current count otherwise."""
    if requested is not None:
        return int(requested)
    limit = torch.get_num_threads()
    return 1 if rows * width * width < SMALL_WORK else limit


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
