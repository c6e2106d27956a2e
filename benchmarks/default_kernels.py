"""Per-kernel side by side: convc's default schedules (no records) against PyTorch's same layers.

    python3 benchmarks/default_kernels.py examples/alexnet.conv --batch 1 [--kinds pool,lrn,fc,softmax] [--threads 1]

Medians of repeated runs, both measured in this process with the same thread count; each
kernel is timed alone (its inputs in cache as a lone call would find them), PyTorch per layer
through convc.baselines.TorchNet.
"""
from __future__ import annotations

import argparse
import os
import sys


def _threads_from_argv() -> int | None:
    if "--threads" in sys.argv:
        return int(sys.argv[sys.argv.index("--threads") + 1])
    return None


if _threads_from_argv():      # before TVM's thread pool starts (convc.build reads it at import)
    os.environ["TVM_NUM_THREADS"] = str(_threads_from_argv())

import numpy as np  # noqa: E402

import convc  # noqa: E402
from convc.baselines import TorchNet  # noqa: E402
from convc.bench import _timer  # noqa: E402
from convc.build import lower_network, make_target, prim_funcs  # noqa: E402
from convc.tuning import time_kernel  # noqa: E402


def torch_per_layer(net, params, x, threads: int, repeat: int) -> dict[str, float]:
    import torch
    torch.set_num_threads(threads)
    model = TorchNet(net, params, "cpu")
    xt = torch.as_tensor(x)
    with torch.inference_mode():
        values = model(xt, all_layers=True)
        values[net.input_name] = xt
        return {layer.name: _timer(lambda: model.run_layer(layer, [values[n] for n in layer.inputs]), repeat) * 1e3
                for layer in net.layers}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("file")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--kinds", default="", help="comma-separated layer kinds of the kernels' first layers "
                    "(pool,lrn,fc,local,deconv,softmax,concat,...); all if empty")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="for TVM and PyTorch alike")
    args = ap.parse_args()
    net = convc.parse_file(args.file)
    info = make_target("llvm")
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((args.batch, *net.input_shape)).astype(np.float32)
    fused, report, _ = lower_network(net, info, args.batch, records=None)
    per_layer = torch_per_layer(net, params, x, args.threads, args.repeat)
    kinds = set(filter(None, args.kinds.split(",")))
    kind_of = {layer.name: layer.kind for layer in net.layers}
    print(f"{net.name} batch {args.batch}, target {info.name}, {args.threads} thread(s)")
    print(f"{'kernel':<24} {'rule':<10} {'convc ms':>9} {'torch ms':>9} {'torch/convc':>11}")
    for name, func in prim_funcs(fused).items():
        layers = report.kernels.get(name, [name])
        if kinds and kind_of.get(layers[0]) not in kinds:
            continue
        ms = report.launches.get(name, 1) * time_kernel(func, info.target, info.device, repeat=args.repeat) * 1e3
        torch_ms = sum(per_layer.get(layer, 0.0) for layer in layers)
        ratio = f"{torch_ms / ms:10.2f}x" if torch_ms else ""
        print(f"{name:<24} {report.rules.get(name, '?'):<10} {ms:9.3f} {torch_ms:9.3f} {ratio:>11}")


if __name__ == "__main__":
    main()
