"""fc at batch 1 is a GEMV bound by memory bandwidth: convc's default `dot` schedule against
NumPy's `np.dot` and PyTorch's `F.linear` on the same shapes, as GB/s of weights streamed.

    python3 benchmarks/gemv_bandwidth.py            # AlexNet fc6, fc7, fc8
"""
from __future__ import annotations

import time

import numpy as np

import convc
from convc.build import fuse, make_target, prim_funcs, relax_module
from convc.schedule import default_schedule
from convc.tuning import time_kernel

SHAPES = [(9216, 4096), (4096, 4096), (4096, 1000)]      # (inputs, outputs): AlexNet fc6, fc7, fc8


def median_ms(fn, runs: int = 21) -> float:
    fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[runs // 2] * 1e3


def main():
    import torch
    info = make_target("llvm")
    print(f"target {info.name}; GB/s = weight bytes / median time")
    print(f"{'K -> O':<14} {'convc ms':>9} {'GB/s':>6} {'np.dot ms':>10} {'GB/s':>6} {'torch ms':>9} {'GB/s':>6}")
    for k, o in SHAPES:
        net = convc.parse(f"input x {k}x1x1\nfc f outputs={o} bias=false\n")
        func, _ = default_schedule(prim_funcs(fuse(relax_module(net, 1)))["f"], info.target)
        convc_ms = time_kernel(func, info.target, info.device, repeat=15) * 1e3
        w = np.random.default_rng(0).standard_normal((o, k)).astype(np.float32)
        x = np.random.default_rng(1).standard_normal(k).astype(np.float32)
        numpy_ms = median_ms(lambda: np.dot(w, x))
        wt, xt = torch.from_numpy(w), torch.from_numpy(x[None])
        with torch.inference_mode():
            torch_ms = median_ms(lambda: torch.nn.functional.linear(xt, wt))
        gb = 4 * k * o / 1e9
        print(f"{k:>5} -> {o:<5} {convc_ms:9.2f} {gb / convc_ms * 1e3:6.1f} {numpy_ms:10.2f} {gb / numpy_ms * 1e3:6.1f} "
              f"{torch_ms:9.2f} {gb / torch_ms * 1e3:6.1f}")


if __name__ == "__main__":
    main()
