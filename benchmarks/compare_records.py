"""Whole-network time of one network built with each records directory, against the default
schedules, interleaved in one process (so load that comes and goes hits every build alike).

    CONVC_SCHEDULES=/tmp/empty python benchmarks/compare_records.py examples/alexnet.conv \\
        /tmp/r/alex10 /tmp/r/alex30 [--batch 1] [--rounds 8]

Prints, per build, the tuned kernels and the median of the rounds (each the median of 5 calls).
CONVC_SCHEDULES pointing at an empty directory keeps the shipped records out of every build.
"""
from __future__ import annotations

import argparse
from statistics import median

import numpy as np

import convc


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file")
    parser.add_argument("records", nargs="*", help="records directories, one build each")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    net = convc.parse_file(args.file)
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((args.batch, *net.input_shape)).astype(np.float32)
    builds = {"default": convc.compile(net, "llvm", args.batch, params=params, records=None)}
    for directory in args.records:
        builds[directory] = convc.compile(net, "llvm", args.batch, params=params, records=directory)
        print(f"{directory}: tuned {builds[directory].report.tuned}")
    times = {name: [] for name in builds}
    for _ in range(args.rounds):
        for name, module in builds.items():
            times[name].append(median(module.time(x, repeat=5)) * 1e3)
    base = median(times["default"])
    for name, runs in times.items():
        print(f"{name:24s} median {median(runs):.3f} ms ({base / median(runs):.2f}x the defaults)  "
              f"rounds {' '.join(f'{r:.2f}' for r in runs)}")


if __name__ == "__main__":
    main()
