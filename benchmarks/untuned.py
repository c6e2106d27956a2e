"""Untuned convc (no tuning records: TVM's default lowering) beside the NumPy oracle, per example.

    python3 benchmarks/untuned.py
"""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import convc  # noqa: E402
from convc.baselines import median  # noqa: E402

print("| example | batch | kernel launches / layers | build s | convc untuned ms | NumPy oracle ms |")
print("|---|---|---|---|---|---|")
for path in sorted((ROOT / "examples").glob("*.conv")):
    net = convc.parse_file(path)
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((1, *net.input_shape)).astype(np.float32)
    t = time.perf_counter()
    m = convc.compile(net, "llvm", batch=1, params=params, records=None)
    build = time.perf_counter() - t
    untuned = median(m.time(x, repeat=3)) * 1e3
    t = time.perf_counter()
    convc.oracle.run(net, x, params)
    numpy_ms = (time.perf_counter() - t) * 1e3
    launches = sum(m.report.launches.values())
    print(f"| {path.stem} | 1 | {launches} / {len(net.layers)} | {build:.2f} | {untuned:.2f} | {numpy_ms:.2f} |",
          flush=True)
