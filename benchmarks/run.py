"""The benchmark suite: `python3 benchmarks/run.py [--target llvm|cuda] [--repeat N]`.

Runs `convc bench` on every suite entry, waits for a quiet machine first (other processes on
the CPU make the numbers meaningless), and writes benchmarks/RESULTS.md (or RESULTS-cuda.md).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import convc  # noqa: E402
from convc.bench import bench  # noqa: E402

SUITE = [("alexnet", 1), ("alexnet", 16), ("cifar10_11pct", 1), ("cifar10_11pct", 128),
         ("mobilenet_block", 1), ("resnext_block", 1)]
GPU_EXTRA = [("alexnet", 128)]


def wait_for_quiet(limit_s: float = 180, busy_pct: float = 20.0, quiet_s: int = 5) -> tuple[bool, float]:
    """Wait until the machine's CPU use (other processes) stays under busy_pct for quiet_s s."""
    import psutil
    started, calm = time.time(), 0
    last = 100.0
    while time.time() - started < limit_s:
        last = psutil.cpu_percent(interval=1.0)
        calm = calm + 1 if last < busy_pct else 0
        if calm >= quiet_s:
            return True, last
    return False, last


def goals(results: dict) -> list[tuple[str, str, bool | None]]:
    """The suite's goals (issue 5), each with the measured figure and whether it is met."""
    out = []
    for (name, batch), r in results.items():
        s = r.speedup("torch")
        if s:
            out.append((f"{name} b{batch}: convc at or ahead of PyTorch", f"{s:.2f}x", s >= 1.0))
    for (name, batch), r in results.items():
        for k in r.kernels:
            if any(l.startswith("local") for l in k.layers) and k.vs_torch:
                out.append((f"{name} b{batch} {k.kernel}: local layer at least 3x PyTorch unfold+einsum",
                            f"{k.vs_torch:.2f}x", k.vs_torch >= 3))
            if name == "alexnet" and k.kernel.startswith("conv") and k.vs_torch:
                out.append((f"alexnet b{batch} {k.kernel}: at least 60% of oneDNN's GFLOP/s",
                            f"{100 * k.vs_torch:.0f}%", k.vs_torch >= 0.6))
    return out


def markdown(results: dict, machine: dict, command: str, quiet: tuple[bool, float]) -> str:
    lines = ["# Benchmark results", "",
             f"- date: {machine['date']}", f"- machine: {machine['cpu']}, {machine['cores']} cores; target "
             f"{machine['target']}", f"- versions: convc {convc.__version__}, TVM {machine['tvm']}, PyTorch "
             f"{machine.get('torch', 'n/a')}, NumPy {machine['numpy']}, Python {machine['python']}",
             "- FP32 peak measured in each run (the faster of NumPy's and PyTorch's float32 2048³ matrix "
             "product; a practical reference, not the hardware limit): "
             + ", ".join(f"{r.peak_gflops:.0f}" for r in results.values() if r.peak_gflops) + " GFLOP/s",
             f"- command: `{command}`",
             f"- machine quiet before the run: {'yes' if quiet[0] else f'NO (CPU {quiet[1]:.0f}% busy after waiting): treat these numbers with care'}",
             "- every figure is a median over repeated runs after a warm-up; ratios are measured in the same run",
             "", "## Whole network", "",
             "| network | batch | tuned kernels | convc ms | PyTorch ms | vs PyTorch | NumPy oracle ms | convc default ms |",
             "|---|---|---|---|---|---|---|---|"]
    for (name, batch), r in results.items():
        b = r.baselines_ms
        lines.append(f"| {name} | {batch} | {r.tuned}/{r.tuned + r.untuned} | {r.convc_ms:.3f} | "
                     f"{b.get('torch', float('nan')):.3f} | {r.speedup('torch') or float('nan'):.2f}x | "
                     f"{b.get('numpy oracle', float('nan')):.1f} | {b.get('convc default', r.convc_ms if not r.tuned else float('nan')):.2f} |")
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {'yes' if ok else 'no'} |" for g, m, ok in goals(results)]
    for (name, batch), r in results.items():
        lines += ["", f"## {name}, batch {batch}", "", "```", r.table(), "```"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--target", default="llvm", choices=["llvm", "cuda"])
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--only", help="comma-separated NAME:BATCH entries, e.g. alexnet:16")
    parser.add_argument("--no-wait", action="store_true", help="do not wait for a quiet machine")
    parser.add_argument("--no-records", action="store_true",
                        help="measure the default schedules: ignore every tuning record")
    parser.add_argument("-o", "--output", default=None)
    args = parser.parse_args(argv)
    suite = SUITE + (GPU_EXTRA if args.target == "cuda" else [])
    if args.only:
        suite = [(n, int(b)) for n, b in (e.split(":") for e in args.only.split(","))]
    quiet = (True, 0.0) if args.no_wait else wait_for_quiet()
    if not quiet[0]:
        print(f"warning: the machine is busy ({quiet[1]:.0f}% CPU); results will be noisy", file=sys.stderr)
    results = {}
    for name, batch in suite:
        net = convc.parse_file(ROOT / "examples" / f"{name}.conv")
        print(f"== {name} batch {batch}", file=sys.stderr, flush=True)
        results[(name, batch)] = bench(net, args.target, batch, records=None if args.no_records else "auto",
                                       repeat=args.repeat)
        print(results[(name, batch)].table(), flush=True)
    first = next(iter(results.values()))
    machine = {**first.versions, "target": first.target, "date": datetime.date.today().isoformat()}
    command = "python3 benchmarks/run.py" + "".join(f" {a}" for a in (argv or sys.argv[1:]))
    output = Path(args.output or ROOT / "benchmarks" / ("RESULTS.md" if args.target == "llvm" else "RESULTS-cuda.md"))
    output.write_text(markdown(results, machine, command, quiet))
    (output.with_suffix(".json")).write_text(json.dumps(
        {f"{n}:{b}": asdict(r) for (n, b), r in results.items()}, indent=1, default=str))
    print(f"wrote {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
