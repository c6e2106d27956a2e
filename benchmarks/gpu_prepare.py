"""The CPU half of the one-call GPU check (`bash benchmarks/gpu.sh prepare` runs it).

Builds every example's CUDA module with the default rules (parameters passed per call, so a
module is kilobytes, not the weights) at batch 1 and 8, plus the timing-only builds (AlexNet and
cifar10_11pct at batch 128), and the NumPy oracle's reference outputs of the checked cases.
Writes DIR/manifest.json, DIR/<case>.so (+ .json) and DIR/refs.npz; nothing needs a GPU.

Inputs and weights are not stored: both are regenerated on the GPU machine from the same seed
(`np.random.default_rng(0)`, `net.init_params(0)`), and their checksums are stored to prove it.
Large outputs are stored as a fixed random sample of elements plus the exact sum of squares.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import convc  # noqa: E402

CHECK_BATCHES = (1, 8)
TIMING = [("alexnet", 128), ("cifar10_11pct", 128)]          # timed only (the oracle is too slow here)
PER_KERNEL = {("alexnet", 128), ("cifar10_11pct", 128), ("alexnet", 1), ("cifar10_11pct", 1)}
SAMPLE = 65536           # outputs larger than this many elements are stored as a sample
SEED = 0


def case_input(net, batch: int, seed: int = SEED) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)


def params_checksum(params: dict) -> float:
    return float(sum(np.asarray(v, np.float64).sum() for v in params.values()))


def reference(y: np.ndarray) -> dict:
    """What the GPU run compares against: sampled (or all) elements and the sum of squares."""
    flat = np.asarray(y, np.float64).ravel()
    if flat.size <= SAMPLE:
        idx = np.arange(flat.size)
    else:
        idx = np.sort(np.random.default_rng(1).choice(flat.size, SAMPLE, replace=False))
    return {"idx": idx.astype(np.int64), "val": flat[idx], "sumsq": np.array([np.square(flat).sum()]),
            "shape": np.array(y.shape, np.int64)}


def cases(examples: list[str], quick: bool) -> list[dict]:
    out = [{"name": f"{e}_b{b}", "example": e, "batch": b, "check": True} for e in examples for b in CHECK_BATCHES]
    if not quick:
        out += [{"name": f"{e}_b{b}", "example": e, "batch": b, "check": False} for e, b in TIMING]
    for c in out:
        c["per_kernel"] = (c["example"], c["batch"]) in PER_KERNEL
    return out


def prepare(out: Path, examples: list[str], quick: bool = False) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    refs, manifest = {}, {"seed": SEED, "sample": SAMPLE, "cases": []}
    for case in cases(examples, quick):
        net = convc.parse_file(ROOT / "examples" / f"{case['example']}.conv")
        started = time.perf_counter()
        m = convc.compile(net, "cuda", batch=case["batch"], records=None)
        m.export(out / f"{case['name']}.so")
        kind = {layer.name: layer.kind for layer in net.layers}
        kinds = {k: sorted({kind[n] for n in layers}) for k, layers in m.report.kernels.items()}
        case.update(file=f"{case['name']}.so", rules=m.report.rules, kernels=m.report.kernels, kinds=kinds,
                    build_s=round(time.perf_counter() - started, 2))
        params = net.init_params(SEED)
        x = case_input(net, case["batch"])
        case.update(x_sum=float(x.astype(np.float64).sum()), params_sum=params_checksum(params))
        if case["check"]:
            started = time.perf_counter()
            y = convc.oracle.run(net, x, params)
            case["oracle_s"] = round(time.perf_counter() - started, 2)
            for key, value in reference(y).items():
                refs[f"{case['name']}.{key}"] = value
        manifest["cases"].append(case)
        print(f"{case['name']:<24} built in {case['build_s']:.1f} s"
              + (f", oracle {case['oracle_s']:.1f} s" if case["check"] else ", timing only"), flush=True)
    np.savez_compressed(out / "refs.npz", **refs)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / ".gpucheck"), help="folder for the modules and references")
    ap.add_argument("--examples", nargs="*", default=sorted(p.stem for p in (ROOT / "examples").glob("*.conv")))
    ap.add_argument("--quick", action="store_true", help="no batch-128 timing builds (rehearsals)")
    args = ap.parse_args(argv)
    prepare(Path(args.out), args.examples, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
