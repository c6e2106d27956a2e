"""`convc bench`: whole-network and per-kernel latency, GFLOP/s and % of the machine's FP32
peak, against PyTorch, the NumPy oracle and convc untuned, all measured in the same run.

Every figure is a median over repeated runs after a warm-up. The peak is measured too (a
float32 matrix product in NumPy), so percentages mean something on the machine at hand.
"""
from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np

from . import oracle
from .baselines import TorchNet, flops, measured_peak, median
from .build import _records_arg, compile, kernel_functions, lower_network, make_target


@dataclass
class KernelBench:
    kernel: str
    layers: list[str]
    tuned: bool
    convc_ms: float
    gflops: float | None
    peak_pct: float | None
    torch_ms: float | None = None
    launches: int = 1

    @property
    def vs_torch(self):
        return self.torch_ms / self.convc_ms if self.torch_ms and self.convc_ms else None


@dataclass
class BenchResult:
    network: str
    target: str
    batch: int
    peak_gflops: float | None
    peak_source: str | None
    convc_ms: float
    baselines_ms: dict = field(default_factory=dict)
    kernels: list[KernelBench] = field(default_factory=list)
    errors: dict = field(default_factory=dict)         # max |y - oracle| / max |oracle|
    tuned: int = 0
    untuned: int = 0
    versions: dict = field(default_factory=dict)

    def speedup(self, baseline):
        ms = self.baselines_ms.get(baseline)
        return ms / self.convc_ms if ms else None

    def table(self) -> str:
        peak = (f"{self.peak_gflops:.0f} GFLOP/s ({self.peak_source} 2048³, measured now)" if self.peak_gflops
                else "n/a")
        lines = [f"{self.network}, batch {self.batch}, target {self.target}; FP32 peak {peak}",
                 f"kernels: {self.tuned} tuned, {self.untuned} untuned (default schedule)"]
        rows = [("kernel", "layers", "convc ms", "GFLOP/s", "% peak", "torch ms", "vs torch")]
        for k in self.kernels:
            rows.append((k.kernel + ("" if k.tuned else " (untuned)"), ",".join(k.layers), f"{k.convc_ms:.3f}",
                         f"{k.gflops:.1f}" if k.gflops else "-", f"{k.peak_pct:.0f}%" if k.peak_pct else "-",
                         f"{k.torch_ms:.3f}" if k.torch_ms else "-", f"{k.vs_torch:.2f}x" if k.vs_torch else "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines += ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                  for r in rows]
        total = [f"network: convc {self.convc_ms:.3f} ms"]
        for name, ms in self.baselines_ms.items():
            total.append(f"{name} {ms:.3f} ms ({ms / self.convc_ms:.2f}x)")
        lines.append(" | ".join(total))
        lines.append("max |y - oracle| / max |oracle|: " + ", ".join(f"{k} {v:.1e}" for k, v in self.errors.items()))
        return "\n".join(lines)


def _timer(fn, repeat: int, sync=lambda: None, budget: float = 0.05) -> float:
    """Median seconds per call of fn(); each repeat runs fn enough times to fill `budget`."""
    fn()
    sync()
    t = time.perf_counter()
    fn()
    sync()
    once = max(time.perf_counter() - t, 1e-7)
    number = max(1, int(budget / once))
    runs = []
    for _ in range(repeat):
        t = time.perf_counter()
        for _ in range(number):
            fn()
        sync()
        runs.append((time.perf_counter() - t) / number)
    return median(runs)


def _relative(y, ref) -> float:
    ref = np.asarray(ref, np.float64)
    return float(np.abs(np.asarray(y, np.float64) - ref).max() / max(np.abs(ref).max(), 1e-30))


def _torch_setup(target):
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    if target == "cuda":
        # fp32 as fp32: no TF32 in cuDNN convolutions or matmuls
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.benchmark = True
        return torch, "cuda", torch.cuda.synchronize
    return torch, "cpu", lambda: None


def _torch_baseline(net, params, x, target, repeat, kernels_layers):
    """Whole network and per layer in PyTorch; returns (ms, {layer: ms}, output)."""
    torch, device, sync = _torch_setup(target)
    model = TorchNet(net, params, device)
    xt = torch.as_tensor(x, device=device)
    with torch.inference_mode():
        values = model(xt, all_layers=True)
        values[net.input_name] = xt
        whole = _timer(lambda: model(xt), repeat, sync)
        per_layer = {}
        for layer in net.layers:
            inputs = [values[n] for n in layer.inputs]
            per_layer[layer.name] = _timer(lambda: model.run_layer(layer, inputs), max(3, repeat // 2), sync)
        out = values[net.output.name].cpu().numpy()
    return whole * 1e3, {k: v * 1e3 for k, v in per_layer.items()}, out


def bench(net, target: str = "llvm", batch: int = 1, records="auto", against=("torch", "numpy", "untuned"),
          repeat: int = 15, seed: int = 0, arch: str | None = None) -> BenchResult:
    from .tuning import time_kernel
    params = net.init_params(seed)
    x = np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)
    info = make_target(target, arch)
    peak, peak_source = measured_peak() if target == "llvm" else (None, None)
    started = time.perf_counter()
    reference = oracle.run(net, x, params)
    numpy_ms = (time.perf_counter() - started) * 1e3      # one run: the oracle is the slow baseline

    module = compile(net, target, batch, params=params, records=records, arch=arch)
    y = module(x)
    convc_ms = median(module.time(x, repeat=repeat)) * 1e3
    result = BenchResult(net.name, info.name, batch, peak, peak_source, convc_ms, errors={"convc": _relative(y, reference)},
                         tuned=len(module.report.tuned), untuned=len(module.report.untuned), versions=_versions())

    fused, report, _ = lower_network(net, info, batch, records=records)
    for name, func in kernel_functions(fused).items():
        if name == "convc_meta":
            continue
        layers = report.kernels.get(name, [name])
        launches = report.launches.get(name, 1)      # a kernel shared by layers of one shape runs once each
        seconds = launches * time_kernel(func, info.target, info.device, repeat=max(3, repeat // 3))
        work = batch * flops(net, layers)               # flops() counts one image
        gflops = work / seconds / 1e9 if work else None
        result.kernels.append(KernelBench(name, layers, name in report.tuned, seconds * 1e3, gflops,
                                          100 * gflops / peak if gflops and peak else None, launches=launches))

    if "torch" in against and _has_torch():
        torch_ms, per_layer, out = _torch_baseline(net, params, x, target, repeat, report.kernels)
        result.baselines_ms["torch"] = torch_ms
        result.errors["torch"] = _relative(out, reference)
        for k in result.kernels:
            k.torch_ms = sum(per_layer.get(layer, 0.0) for layer in k.layers) or None
    if "untuned" in against:
        untuned = compile(net, target, batch, params=params, records=None, arch=arch)
        result.baselines_ms["convc untuned"] = median(untuned.time(x, repeat=max(3, repeat // 3))) * 1e3
    if "numpy" in against:
        result.baselines_ms["numpy oracle"] = numpy_ms
    return result


def _has_torch() -> bool:
    try:
        import torch  # noqa: F401
        return True
    except ImportError:
        return False


def _versions() -> dict:
    import platform

    import tvm
    versions = {"tvm": tvm.__version__, "numpy": np.__version__, "python": platform.python_version(),
                "cpu": _cpu_name(), "cores": os.cpu_count()}
    try:
        import torch
        versions["torch"] = torch.__version__
    except ImportError:
        pass
    return versions


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown"


def _busy_warning():
    try:
        import psutil
    except ImportError:
        return
    load = psutil.cpu_percent(interval=1.0)
    if load > 20:
        print(f"warning: the CPU is {load:.0f}% busy with other work; timings will be noisy "
              "(benchmarks/run.py waits for a quiet machine)", file=sys.stderr)


def cmd_bench(args) -> int:
    from . import parse_file
    net = parse_file(args.file)
    _busy_warning()
    against = tuple(a.strip() for a in args.against.split(",") if a.strip())
    unknown = set(against) - {"torch", "numpy", "untuned"}
    if unknown:
        from .errors import ConvcError
        raise ConvcError(f"--against takes torch, numpy, untuned; got {', '.join(sorted(unknown))}")
    result = bench(net, args.target, args.batch, _records_arg(args), against, args.repeat, arch=args.arch)
    print(result.table())
    if args.json:
        data = asdict(result)
        data["speedups"] = {k: result.speedup(k) for k in result.baselines_ms}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
        print(f"wrote {args.json}")
    return 0
