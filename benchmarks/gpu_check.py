"""The GPU half of the one-call GPU check (`bash benchmarks/gpu.sh device` runs it).

For every case that benchmarks/gpu_prepare.py built: load the prebuilt CUDA module, regenerate
the input and weights from the seed (their checksums must match the ones stored at build time),
run, compare with the oracle's stored reference, and time it against PyTorch with cuDNN in fp32
(`torch.backends.cudnn.allow_tf32 = False`, `torch.backends.cuda.matmul.allow_tf32 = False`).
Each case runs in its own process, so a kernel that faults cannot take the others with it.
Writes one results file (Markdown, with the raw JSON at the end).

Correct means: max |y - ref| / max |ref| <= TOLERANCE over the stored elements (all of them for
outputs up to 65,536 elements, a fixed random sample of 65,536 otherwise) and the sum of squares
of the whole output within TOLERANCE of the reference's.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

TOLERANCE = 1e-3          # fp32 on the GPU against the float64 oracle (K up to 9,216 products)
CASE_TIMEOUT_S = 150
REPEAT = 15


# ----------------------------------------------------------------------------- environment
def torch_cuda() -> tuple[object | None, str]:
    """(torch, description) when torch with a CUDA device is importable, else (None, why not)."""
    try:
        import torch
    except Exception as err:   # noqa: BLE001 - any import failure means no baseline
        return None, f"PyTorch is not importable ({type(err).__name__}: {err})"
    if not torch.cuda.is_available():
        return None, f"PyTorch {torch.__version__} sees no CUDA device"
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    return torch, (f"PyTorch {torch.__version__}, cuDNN {torch.backends.cudnn.version()}, "
                   f"{torch.cuda.get_device_name(0)}; fp32 with cudnn.allow_tf32=False, "
                   "cuda.matmul.allow_tf32=False, cudnn.benchmark=True")


def environment() -> dict:
    env = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    try:
        import tvm
        env["tvm"] = tvm.__version__
        env["tvm_cuda_device"] = bool(tvm.cuda().exist)
        if tvm.cuda().exist:
            env["gpu"] = tvm.cuda().device_name
            env["compute_version"] = tvm.cuda().compute_version
    except Exception as err:   # noqa: BLE001
        env["tvm"] = f"not importable: {err}"
    _, env["torch"] = torch_cuda()
    try:
        env["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm",
                                            "--format=csv,noheader"], capture_output=True, text=True,
                                           timeout=20).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        env["nvidia_smi"] = "not available"
    return env


# ----------------------------------------------------------------------------- one case
def regenerate(case: dict, manifest: dict):
    """The case's network, input and weights, rebuilt from the seed and checked against the
    checksums stored at build time."""
    import convc
    from gpu_prepare import case_input, params_checksum
    net = convc.parse_file(ROOT / "examples" / f"{case['example']}.conv")
    x = case_input(net, case["batch"], manifest["seed"])
    params = net.init_params(manifest["seed"])
    problems = []
    if not np.isclose(float(x.astype(np.float64).sum()), case["x_sum"], rtol=1e-9, atol=1e-6):
        problems.append("the regenerated input differs from the one the reference was made with")
    if not np.isclose(params_checksum(params), case["params_sum"], rtol=1e-9, atol=1e-6):
        problems.append("the regenerated weights differ from the ones the reference was made with")
    return net, x, params, problems


def compare(y: np.ndarray, refs, name: str) -> dict:
    shape = tuple(refs[f"{name}.shape"])
    if tuple(y.shape) != shape:
        return {"ok": False, "error": f"shape {tuple(y.shape)} != reference {shape}"}
    flat = np.asarray(y, np.float64).ravel()
    want = refs[f"{name}.val"]
    err = float(np.abs(flat[refs[f"{name}.idx"]] - want).max() / max(np.abs(want).max(), 1e-30))
    sumsq, want_sumsq = float(np.square(flat).sum()), float(refs[f"{name}.sumsq"][0])
    sumsq_err = abs(sumsq - want_sumsq) / max(want_sumsq, 1e-30)
    finite = bool(np.isfinite(flat).all())
    return {"ok": finite and err <= TOLERANCE and sumsq_err <= TOLERANCE, "rel_err": err,
            "sumsq_rel_err": sumsq_err, "finite": finite}


def run_case(directory: Path, name: str, dry: bool = False, cpu: bool = False) -> dict:
    import convc
    from convc.baselines import median
    manifest = json.loads((directory / "manifest.json").read_text())
    case = next(c for c in manifest["cases"] if c["name"] == name)
    result = {"case": name, "batch": case["batch"], "rules": case["rules"]}
    net, x, params, problems = regenerate(case, manifest)
    if problems:
        return {**result, "ok": False, "error": "; ".join(problems)}
    if dry:                                  # the rehearsal on a machine without a GPU stops here
        return {**result, "ok": None, "note": "dry run: inputs and weights regenerated and checksums match"}
    if cpu and case["batch"] != 1:
        return {**result, "ok": None, "note": "CPU rehearsal: batch-1 cases only (untuned llvm builds are slow)"}
    # the CPU rehearsal runs the same network built for llvm in place of the CUDA module
    m = convc.compile(net, "llvm", case["batch"], records=None) if cpu else convc.load(directory / case["file"])
    started = time.perf_counter()
    y = m(x, params)
    result["first_run_s"] = round(time.perf_counter() - started, 2)   # includes NVRTC compiling the kernels
    if case["check"]:
        result.update(compare(y, np.load(directory / "refs.npz"), name))
    result["convc_ms"] = median(m.time(x, params, repeat=REPEAT)) * 1e3
    torch, why = torch_cuda()
    if cpu:
        result["torch"] = "CPU rehearsal: no cuDNN timing"
    elif torch is None:
        result["torch"] = why
    else:
        result.update(torch_timing(torch, net, params, x, y, case))
    if case.get("per_kernel") and not cpu:
        result["kernels"] = kernel_times(net, case)
    return result


def torch_timing(torch, net, params, x, y, case) -> dict:
    from convc.bench import _timer
    from convc.baselines import TorchNet
    model = TorchNet(net, params, "cuda")
    xt = torch.as_tensor(x, device="cuda")
    sync = torch.cuda.synchronize
    out = {}
    with torch.inference_mode():
        values = model(xt, all_layers=True)
        out["torch_ms"] = _timer(lambda: model(xt), REPEAT, sync) * 1e3
        yt = values[net.output.name].cpu().numpy()
        out["torch_vs_convc_rel"] = float(np.abs(yt - y).max() / max(np.abs(yt).max(), 1e-30))
        if case.get("per_kernel"):
            values[net.input_name] = xt
            per_layer = {}
            for layer in net.layers:
                inputs = [values[n] for n in layer.inputs]
                per_layer[layer.name] = _timer(lambda: model.run_layer(layer, inputs), 5, sync) * 1e3
            out["torch_layer_ms"] = per_layer
    return out


def kernel_times(net, case) -> dict:
    """Each kernel of the default build timed alone (built here from the same TIR)."""
    from convc.build import lower_network, make_target, prim_funcs
    from convc.tuning import time_kernel
    info = make_target("cuda")
    fused, report, _ = lower_network(net, info, case["batch"], records=None)
    times = {}
    for name, func in prim_funcs(fused).items():
        if name == "convc_meta":
            continue
        try:
            times[name] = report.launches.get(name, 1) * time_kernel(func, info.target, info.device, repeat=5) * 1e3
        except Exception as err:   # noqa: BLE001 - one kernel's failure is a result, not a crash
            times[name] = f"failed: {str(err).splitlines()[0][:200]}"
    return times


# ----------------------------------------------------------------------------- all cases
def run_all(directory: Path, out: Path, dry: bool, cpu: bool = False) -> list[dict]:
    manifest = json.loads((directory / "manifest.json").read_text())
    results = []
    for case in manifest["cases"]:
        cmd = ([sys.executable, __file__, "--dir", str(directory), "--one", case["name"]]
               + (["--dry"] if dry else []) + (["--cpu"] if cpu else []))
        started = time.perf_counter()
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=CASE_TIMEOUT_S)
            lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"case": case["name"], "ok": False,
                                                       "error": f"exit {done.returncode}: {done.stderr[-1500:]}"}
        except subprocess.TimeoutExpired:
            row = {"case": case["name"], "ok": False, "error": f"timed out after {CASE_TIMEOUT_S} s"}
        row["wall_s"] = round(time.perf_counter() - started, 1)
        results.append(row)
        print(summary_line(row), flush=True)
    return results


def summary_line(row: dict) -> str:
    status = {True: "ok", False: "FAIL", None: "dry"}[row.get("ok")] if "ok" in row else "timed"
    parts = [f"{row['case']:<24} {status:<5}"]
    if "rel_err" in row:
        parts.append(f"err {row['rel_err']:.1e}")
    if "convc_ms" in row:
        parts.append(f"convc {row['convc_ms']:.3f} ms")
    if isinstance(row.get("torch_ms"), float):
        parts.append(f"cuDNN {row['torch_ms']:.3f} ms ({row['torch_ms'] / row['convc_ms']:.2f}x)")
    if row.get("error"):
        parts.append(row["error"].splitlines()[-1][:300])
    return "  ".join(parts)


GOAL_KINDS = {"lrn", "pool", "local"}     # kernels the issue wants at >= 2x PyTorch


def goals(results: list[dict]) -> list[str]:
    """The issue's goals, read off the results (default rules, no tuning)."""
    lines = []
    for name in ("alexnet_b128", "cifar10_11pct_b128"):
        row = next((r for r in results if r["case"] == name), None)
        if row and isinstance(row.get("torch_ms"), float) and row.get("convc_ms"):
            ratio = row["torch_ms"] / row["convc_ms"]
            lines.append(f"- {name}: {ratio:.2f}x cuDNN (goal >= 0.5x untuned): {'met' if ratio >= 0.5 else 'NOT met'}")
    for row in results:
        layer_ms, kinds = row.get("torch_layer_ms") or {}, row.get("kernel_kinds", {})
        for kernel, ms in (row.get("kernels") or {}).items():
            members = row.get("kernel_layers", {}).get(kernel, [])
            if not isinstance(ms, float) or not set(kinds.get(kernel, [])) & GOAL_KINDS or not members:
                continue
            torch_ms = sum(layer_ms.get(m, 0.0) for m in members)
            if torch_ms:
                lines.append(f"- {row['case']} {kernel} ({', '.join(members)}): {torch_ms / ms:.2f}x PyTorch "
                             f"(goal >= 2x): {'met' if torch_ms / ms >= 2 else 'NOT met'}")
    return lines


def _cell(row: dict) -> list[str]:
    torch_ms, convc_ms = row.get("torch_ms"), row.get("convc_ms")
    return [row["case"], {True: "yes", False: "NO", None: "dry"}.get(row.get("ok"), "-"),
            f"{row['rel_err']:.1e}" if "rel_err" in row else "-",
            f"{convc_ms:.3f}" if convc_ms else "-",
            f"{torch_ms:.3f}" if isinstance(torch_ms, float) else "-",
            f"{torch_ms / convc_ms:.2f}x" if isinstance(torch_ms, float) and convc_ms else "-"]


def write_report(out: Path, env: dict, results: list[dict], dry: bool) -> None:
    ok = [r for r in results if r.get("ok") is True]
    checked = [r for r in results if "rel_err" in r or r.get("ok") is False]
    lines = [f"# convc on a GPU: {env.get('gpu', 'no GPU')}{' (DRY RUN: nothing ran on a GPU)' if dry else ''}", "",
             f"- date: {env['date']}", f"- TVM: {env.get('tvm')}; CUDA device seen by TVM: {env.get('tvm_cuda_device')}",
             f"- baseline: {env.get('torch')}", f"- nvidia-smi: {env.get('nvidia_smi')}",
             f"- tolerance: max |y - ref| / max |ref| <= {TOLERANCE} (and the sum of squares within it)",
             f"- correct: {len(ok)} of {len(checked)} checked cases", "",
             "| case | correct | rel. error | convc ms | cuDNN ms | cuDNN / convc |", "|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(r)) + " |" for r in results]
    lines += ["", "## Goals", ""] + (goals(results) or ["- no timings (see the errors below)"])
    errors = [f"- {r['case']}: {r['error']}" for r in results if r.get("error")]
    if errors:
        lines += ["", "## Errors", ""] + errors
    lines += ["", "## Raw results", "", "```json", json.dumps({"environment": env, "results": results}, indent=1),
              "```", ""]
    out.write_text("\n".join(lines))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=str(ROOT / ".gpucheck"), help="what gpu_prepare.py wrote")
    ap.add_argument("--out", default=os.environ.get("OUT", "."), help="folder for gpu-results.md")
    ap.add_argument("--one", help="run one case and print its JSON (used by the driver)")
    ap.add_argument("--dry", action="store_true", help="rehearsal without a GPU: everything up to running")
    ap.add_argument("--cpu", action="store_true", help="rehearsal without a GPU: each checked case built for "
                    "llvm instead of the CUDA module, compared with the same references")
    args = ap.parse_args(argv)
    directory = Path(args.dir)
    if args.one:
        print(json.dumps(run_case(directory, args.one, args.dry, args.cpu), default=str), flush=True)
        return 0
    env = environment()
    print(json.dumps(env), flush=True)
    dry = args.dry or not (env.get("tvm_cuda_device") or args.cpu)
    if dry and not args.dry:
        print("no CUDA device visible to TVM: a dry run (nothing is timed or compared)", flush=True)
    results = run_all(directory, Path(args.out), dry, args.cpu)
    manifest = json.loads((directory / "manifest.json").read_text())
    for row in results:      # kernel -> layers and kinds, for the per-layer goals
        case = next((c for c in manifest["cases"] if c["name"] == row["case"]), {})
        row["kernel_layers"], row["kernel_kinds"] = case.get("kernels", {}), case.get("kinds", {})
    out = Path(args.out) / "gpu-results.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_report(out, env, results, dry or args.cpu)
    print(f"wrote {out}", flush=True)
    bad = [r for r in results if r.get("ok") is False]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
