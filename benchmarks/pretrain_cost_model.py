"""Fit a cost model on record sets (default: every shipped one, schedules/*), for
`convc tune --cost-model DIR` or for measuring whether a pre-trained model helps
(benchmarks/cost_model_ranking.py; docs/performance.md has the result: not enough to ship one).

    python benchmarks/pretrain_cost_model.py -o /tmp/model
    python benchmarks/pretrain_cost_model.py --leave-out examples/cifar10_11pct.conv:1 -o /tmp/loo
        # without one network's kernels (to measure whether the model helps on a network it never saw)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import convc
from convc import tuning
from convc.build import fuse, prim_funcs, relax_module


def _hashes(spec: str) -> set[str]:
    path, _, batch = spec.partition(":")
    net = convc.parse_file(path)
    return {tuning.workload_key(f)[1] for f in prim_funcs(fuse(relax_module(net, int(batch or 1)))).values()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", nargs="*", default=None, help="record directories (default: schedules/*)")
    parser.add_argument("--leave-out", action="append", default=[], metavar="NET.conv:BATCH")
    parser.add_argument("-o", "--output", required=True)
    args = parser.parse_args()
    dirs = args.records or [d for d in sorted(tuning.SCHEDULES.iterdir()) if (d / tuning.RECORDS).exists()]
    exclude = set().union(*(_hashes(s) for s in args.leave_out)) if args.leave_out else set()
    started = time.time()
    count = tuning.pretrain_cost_model(dirs, Path(args.output), frozenset(exclude))
    print(f"fitted on {count} measured candidates of {', '.join(Path(d).name for d in dirs)} "
          f"({len(exclude)} kernels left out) in {time.time() - started:.0f} s -> {args.output}")


if __name__ == "__main__":
    main()
