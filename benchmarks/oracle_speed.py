"""Speed of the NumPy oracle (issue 2's goals: AlexNet batch 1 < 1 s, cifar10_11pct batch 128 < 5 s).

    python3 benchmarks/oracle_speed.py
"""
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import convc  # noqa: E402

for name, batch in [("alexnet", 1), ("alexnet", 16), ("cifar10_11pct", 1), ("cifar10_11pct", 128),
                    ("mobilenet_block", 1), ("resnext_block", 1)]:
    net = convc.parse_file(ROOT / "examples" / f"{name}.conv")
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((batch, *net.input_shape)).astype(np.float32)
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        convc.oracle.run(net, x, params)
        runs.append(time.perf_counter() - t)
    print(f"{name:16s} batch {batch:4d}: median {sorted(runs)[1]:.3f} s of 3 runs (float64)")
