"""Throughput of one Module called from 1, 2 and 4 Python threads (issue 13).

    python3 benchmarks/threads.py [examples/cifar10_11pct.conv] [--seconds 2] [--rounds 3]
    TVM_NUM_THREADS=1 python3 benchmarks/threads.py ...     # one core per call

Each round runs every thread count for `--seconds`; the figure printed is the median over the
rounds of calls per second (all threads together), and each thread's results are checked
against the single-thread result.
"""
import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import convc  # noqa: E402


def throughput(module, x, expected, threads: int, seconds: float) -> float:
    counts, wrong = [0] * threads, []
    stop = time.perf_counter() + seconds

    def work(i):
        while time.perf_counter() < stop:
            if not np.array_equal(module(x), expected):
                wrong.append(i)
            counts[i] += 1

    started = time.perf_counter()
    pool = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if wrong:
        raise SystemExit(f"{len(wrong)} wrong results with {threads} threads")
    return sum(counts) / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("file", nargs="?", default=str(ROOT / "examples" / "cifar10_11pct.conv"))
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    net = convc.parse_file(args.file)
    m = convc.compile(net, "llvm", batch=args.batch, params=net.init_params(0))
    x = np.random.default_rng(0).standard_normal((args.batch, *net.input_shape)).astype(np.float32)
    expected = m(x)
    counts = (1, 2, 4)
    runs = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            runs[n].append(throughput(m, x, expected, n, args.seconds))
    import os
    print(f"{net.name} batch {args.batch}, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS', 'unset')}, "
          f"median of {args.rounds} rounds of {args.seconds:g} s")
    base = statistics.median(runs[1])
    for n in counts:
        med = statistics.median(runs[n])
        print(f"  {n} thread{'s' if n > 1 else ' '}: {med:8.1f} calls/s  ({med / base:.2f}x)  "
              f"[{', '.join(f'{r:.0f}' for r in runs[n])}]")


if __name__ == "__main__":
    main()
