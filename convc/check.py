"""`convc check`: build, run, and compare every layer with the NumPy oracle.

Each layer's error is measured relative to that layer's largest reference value:
    err = max |y - y_ref| / max |y_ref|
float32 kernels summing thousands of products land near 1e-6..1e-5; the default tolerance is
1e-4 for llvm and 1e-3 for cuda (other summation orders, fast-math intrinsics).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import oracle
from .build import _load_params, _records_arg, check_batch_fits, compile
from .errors import ConvcError

TOLERANCE = {"llvm": 1e-4, "cuda": 1e-3}


@dataclass
class LayerCheck:
    name: str
    shape: tuple
    max_abs: float
    max_rel: float
    scaled: float
    ok: bool
    nonfinite: str = ""        # how NaN/inf positions disagree, "" when they agree


def compare(name, got, ref, tol) -> LayerCheck:
    """Finite positions by the scaled error; NaN and inf positions must match exactly (NaN where
    the oracle has NaN, the same infinity where it has one)."""
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    if got.shape != ref.shape:
        return LayerCheck(name, got.shape, np.inf, np.inf, np.inf, False)
    finite = np.isfinite(got) & np.isfinite(ref)
    same_special = (np.isnan(got) & np.isnan(ref)) | (np.isinf(ref) & (got == ref))
    differ = ~finite & ~same_special
    diff = np.abs(np.where(finite, got - ref, 0.0))
    ref_finite = np.abs(np.where(np.isfinite(ref), ref, 0.0))
    max_abs = float(diff.max()) if diff.size else 0.0
    scale = float(ref_finite.max()) if ref.size else 0.0
    scaled = max_abs / scale if scale > 0 else max_abs
    max_rel = float((diff / np.maximum(ref_finite, 1e-30 + scale * 1e-3)).max()) if diff.size else 0.0
    nonfinite = _describe_nonfinite(got, ref, differ)
    return LayerCheck(name, ref.shape, max_abs, max_rel, scaled, not nonfinite and scaled <= tol, nonfinite)


def _describe_nonfinite(got, ref, differ) -> str:
    count = int(differ.sum())
    if not count:
        return ""
    where = tuple(int(i) for i in np.argwhere(differ)[0])
    return (f"{count} NaN/inf position{'s' if count > 1 else ''} differ{'s' if count == 1 else ''}, "
            f"first at {where}: got {got[where]:g}, oracle {ref[where]:g}")


def check(net, target="llvm", batch=1, params=None, seed=0, tol=None, records="auto", arch=None):
    """Per-layer comparison (an unfused build that returns every layer) and the deployed build."""
    tol = TOLERANCE.get(target, TOLERANCE["llvm"]) if tol is None else tol
    _check_arguments(net, batch, seed, tol)
    params = net.init_params(seed) if params is None else params
    x = np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)
    reference = oracle.run(net, x, params, all_layers=True)
    every = compile(net, target, batch, all_outputs=True, records=None, arch=arch)(x, params)
    rows = [compare(layer.name, every[layer.name], reference[layer.name], tol) for layer in net.layers]
    deployed = compile(net, target, batch, records=records, arch=arch)
    rows.append(compare(f"{net.output.name} (fused build)", deployed(x, params), reference[net.output.name], tol))
    return rows, deployed.report


def _check_arguments(net, batch, seed, tol):
    if not isinstance(batch, int) or isinstance(batch, bool) or batch < 1:
        raise ConvcError(f"batch must be a positive integer, got {batch!r}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ConvcError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(tol, (int, float)) or isinstance(tol, bool) or not (0 < tol < float("inf")):
        raise ConvcError(f"the tolerance must be a positive number, got {tol!r}")
    check_batch_fits(net, batch, host=True, bytes_per_value=8)      # the oracle keeps every layer in float64


def format_rows(rows, tol) -> str:
    width = max(len(r.name) for r in rows)
    out = [f"{'layer'.ljust(width)}  {'shape':>16}  {'max abs err':>11}  {'max rel err':>11}  {'err/max|ref|':>12}  result"]
    for r in rows:
        shape = "x".join(map(str, r.shape))
        out.append(f"{r.name.ljust(width)}  {shape:>16}  {r.max_abs:11.3e}  {r.max_rel:11.3e}  {r.scaled:12.3e}  "
                   f"{'ok' if r.ok else 'MISMATCH'}" + (f"  ({r.nonfinite})" if r.nonfinite else ""))
    bad = sum(not r.ok for r in rows)
    verdict = f"all {len(rows)} outputs match" if not bad else f"{bad} of {len(rows)} outputs MISMATCH"
    out.append(f"{verdict} the oracle (tolerance err/max|ref| <= {tol:g})")
    return "\n".join(out)


def cmd_check(args) -> int:
    from . import parse_file
    net = parse_file(args.file)
    tol = args.rtol if args.rtol is not None else TOLERANCE[args.target]
    _check_arguments(net, args.batch, args.seed, tol)      # before the params file is read
    rows, report = check(net, args.target, args.batch, _load_params(args.params), args.seed, tol,
                         _records_arg(args), args.arch)
    print(f"{net.name}: target {args.target}, batch {args.batch}")
    print(report.describe(net))
    print(format_rows(rows, tol))
    return 0 if all(r.ok for r in rows) else 1
