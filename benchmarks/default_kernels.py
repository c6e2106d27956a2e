"""Per-kernel side by side: convc's default schedules (no records) against PyTorch's same layers.

    python3 benchmarks/default_kernels.py examples/alexnet.conv --batch 1 [--kinds pool,lrn,fc]

Medians of repeated runs, both measured in this process; each kernel is timed alone (its
inputs in cache as a lone call would find them), PyTorch per layer through convc.baselines.
"""
from __future__ import annotations

import argparse

import numpy as np

import convc
from convc.bench import _torch_baseline, _timer
from convc.build import lower_network, make_target, prim_funcs
from convc.schedule import inspect_kernel
from convc.tuning import time_kernel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--kinds", default="", help="comma-separated kernel kinds (pool,lrn,fc,local,deconv,none); all if empty")
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    net = convc.parse_file(args.file)
    info = make_target("llvm")
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((args.batch, *net.input_shape)).astype(np.float32)
    fused, report, _ = lower_network(net, info, args.batch, records=None)
    _, per_layer, _ = _torch_baseline(net, params, x, "llvm", args.repeat, report.kernels)
    kinds = set(filter(None, args.kinds.split(",")))
    print(f"{net.name} batch {args.batch}, target {info.name}")
    print(f"{'kernel':<24} {'rule':<10} {'convc ms':>9} {'torch ms':>9} {'torch/convc':>11}")
    for name, func in prim_funcs(fused).items():
        kind = str(inspect_kernel(func).kind)
        if kinds and kind not in kinds:
            continue
        ms = report.launches.get(name, 1) * time_kernel(func, info.target, info.device, repeat=args.repeat) * 1e3
        torch_ms = sum(per_layer.get(layer, 0.0) for layer in report.kernels.get(name, [name]))
        ratio = f"{torch_ms / ms:10.2f}x" if torch_ms else ""
        print(f"{name:<24} {report.rules.get(name, '?'):<10} {ms:9.3f} {torch_ms:9.3f} {ratio:>11}")


if __name__ == "__main__":
    main()
