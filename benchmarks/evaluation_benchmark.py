"""The cost of one evaluation of the exact-trace dynamics, the choices behind the scoring path.

1. Exact trace by ``d`` vector-Jacobian products in one batched autograd call (the training
   path, ``skflow.cnf.divergence.exact_divergence``) against the evaluation path
   (``skflow.cnf.frozen.FrozenBlock``: weights prepared once per solve, trace met in the
   middle, no autograd), in float64 and float32, at 409 rows and at one row (the fixed cost of
   a call).
2. The evaluation solver on 20,000 rows of a fitted model (10 features, tolerance 1e-6,
   float32), by rows in flight (``Evaluator.chunk_rows``), the sizes
   alternated in one process.
3. The same solve as chunks solved one after another, each trailing off as its rows finish,
   against one batch refilled as rows finish (what ``score_samples`` does), alternated in one
   process.
4. ``torch.compile``: of the evaluation trace (dynamic shapes, as rows finish at different
   times) and of a flow-matching training step, with an empty compile cache.

Sections 1 and 4 use a 10-feature block with the default 64-64-64 network and random
weights (the cost does not depend on the weights).

    python benchmarks/evaluation_benchmark.py
"""

import os
import sys
import tempfile
import time
import warnings

# An empty inductor cache, so that compile times are those of a first compile.
os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="skflow-inductor-")

import torch  # noqa: E402
from _common import markdown_table, random_network_data, save, stopwatch
from torch.utils.benchmark import Timer

from skflow import FFJORDDensity
from skflow.cnf.divergence import exact_divergence
from skflow.cnf.flow import CNFBlock
from skflow.cnf.layers import DynamicsMLP

D, HIDDEN, ROWS = 10, (64, 64, 64), 409


def random_block(dtype):
    torch.manual_seed(0)
    block = CNFBlock(D, HIDDEN, "silu", 1.0, False)
    with torch.no_grad():
        for param in block.parameters():
            param.normal_(0.0, 0.3)
    return block.to(dtype)


def per_row_us(fn, rows, dtype):
    z, s = torch.randn(rows, D, dtype=dtype), torch.rand(rows, 1, dtype=dtype)
    with torch.no_grad():
        m = Timer("fn(s, z)", globals=dict(fn=fn, s=s, z=z)).blocked_autorange(min_run_time=2)
    return m.median / rows * 1e6


def trace_methods():
    rows = []
    for dtype in (torch.float64, torch.float32):
        block = random_block(dtype)
        def autograd(s, z, block=block):
            return exact_divergence(block.velocity, s, z, False)[:2]
        frozen = block.frozen().velocity_and_divergence
        for label, fn in (("autograd, d vector-Jacobian products", autograd),
                          ("frozen block (evaluation path)", frozen)):
            rows.append(dict(method=label, dtype=str(dtype).replace("torch.", ""),
                             us_per_row=per_row_us(fn, ROWS, dtype),
                             us_per_call_of_one_row=per_row_us(fn, 1, dtype)))
            print(rows[-1], flush=True)
    return rows


def fitted_flow():
    X = random_network_data(5000, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = FFJORDDensity(random_state=0, eval_atol=1e-6, eval_rtol=1e-6).fit(X)
    # The evaluator score_samples uses, on rows in flow space (the input map is not timed).
    x = est.input_map_.forward(random_network_data(20000, 10, seed=1))[0]
    return est._evaluator(), torch.as_tensor(x, dtype=torch.float32)


def best_of(candidates, repeats=3):
    """Best wall time of each ``label -> function``, the candidates alternated."""
    seconds = {label: [] for label in candidates}
    for _ in range(repeats):
        for label, fn in candidates.items():
            with torch.no_grad(), stopwatch() as elapsed:
                fn()
            seconds[label].append(elapsed())
            print(label, round(seconds[label][-1], 3), flush=True)
    return {label: min(times) for label, times in seconds.items()}


def rows_in_flight(evaluator, x):
    default = evaluator.chunk_rows

    def solve(rows):
        def run():
            evaluator.chunk_rows = rows
            evaluator.log_prob(x)
        return run

    sizes = (256, 409, 512, 820, 1024, 2048)
    best = best_of({rows: solve(rows) for rows in sizes})
    evaluator.chunk_rows = default
    return [dict(rows=rows, tangent_mib=rows * x.shape[1] * max(HIDDEN) * 4 / 2 ** 20,
                 seconds=best[rows]) for rows in sizes]


def refilled_batch(evaluator, x):
    chunk = evaluator.chunk_rows
    best = best_of({
        # each chunk a solve of its own, trailing off as its rows finish
        "chunk by chunk": lambda: [evaluator.log_prob(x[i:i + chunk])
                                   for i in range(0, x.shape[0], chunk)],
        "refilled batch": lambda: evaluator.log_prob(x),
    })
    return [dict(solve=label, rows=x.shape[0], rows_per_call=chunk, seconds=best[label],
                 speedup=best["chunk by chunk"] / best[label]) for label in best]


def compiled():
    rows = []
    block = random_block(torch.float32).frozen()
    eager, fast = block.velocity_and_divergence, torch.compile(block.velocity_and_divergence,
                                                               dynamic=True)
    z, s = torch.randn(ROWS, D), torch.rand(ROWS, 1)
    with torch.no_grad(), stopwatch() as first:
        fast(s, z)
    rows.append(dict(what=f"evaluation trace, {ROWS} rows (per call)", compile_s=first(),
                     eager_ms=per_row_us(eager, ROWS, torch.float32) * ROWS / 1e3,
                     compiled_ms=per_row_us(fast, ROWS, torch.float32) * ROWS / 1e3))
    print(rows[-1], flush=True)

    torch.manual_seed(0)
    net = DynamicsMLP(2, HIDDEN, "silu")
    optimizer = torch.optim.Adam(net.parameters(), 1e-3)
    x, eps, t = torch.randn(1024, 2), torch.randn(1024, 2), torch.rand(1024, 1)

    def step(model):
        loss = (model(t, (1 - t) * x + t * eps) - (eps - x)).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    timings = {}
    for label, model in (("eager", net), ("compiled", torch.compile(net))):
        with stopwatch() as first:
            step(model)
        start = time.perf_counter()
        for _ in range(300):
            step(model)
        timings[label] = ((time.perf_counter() - start) / 300 * 1e3, first())
    rows.append(dict(what="flow-matching step, 2-D, batch 1024 (per step)",
                     compile_s=timings["compiled"][1], eager_ms=timings["eager"][0],
                     compiled_ms=timings["compiled"][0]))
    print(rows[-1], flush=True)
    return rows


def main():
    fitted = fitted_flow()
    save("evaluation", "Cost of the exact-trace dynamics (one CPU thread)", [
        ("Exact trace, per row and evaluation (us), 409 rows; and a call of one row",
         markdown_table(trace_methods(), ["method", "dtype", "us_per_row",
                                          "us_per_call_of_one_row"])),
        ("Evaluation solver on 20,000 rows by rows in flight (seconds, best of 3)",
         markdown_table(rows_in_flight(*fitted), ["rows", "tangent_mib", "seconds"])),
        ("Evaluation solver: chunks one by one vs a refilled batch (seconds, best of 3)",
         markdown_table(refilled_batch(*fitted), ["solve", "rows", "rows_per_call", "seconds",
                                                  "speedup"])),
        ("torch.compile", markdown_table(compiled(), ["what", "compile_s", "eager_ms",
                                                       "compiled_ms"])),
    ], "python benchmarks/evaluation_benchmark.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
