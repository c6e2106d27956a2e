"""convc's CUDA schedule rules, checked without a GPU.

- every example at batch 1 and 8 builds for cuda; nvcc compiles all kernels of one build in one
  call for sm_80 and sm_90a, and `ptxas -v` gives registers, spills and shared memory per kernel;
- no conv/local/fc/deconv kernel is left to DLight, each stages its operands in shared memory,
  and launch sizes are sane;
- the numbers: every scheduled kernel (thread bindings made serial loops, shared and local
  buffers made global) runs on the CPU and matches the NumPy oracle layer by layer. This checks
  the index math of every tiling (groups, strides, dilation, ceil-mode, partial tiles, the
  staged windows); it cannot check races or barriers, which need a GPU.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from functools import lru_cache

import numpy as np
import pytest
import tvm
from tvm import relax

import convc
from convc.build import META_FUNCTION, lower_network, make_target
from convc.emit import _cuda_function

from conftest import EXAMPLES

ARCHS = ("sm_80", "sm_90a")
SHARED_LIMIT = 48 * 1024            # static shared memory per block on sm_80 and sm_90a
# the flags TVM compiles with when a module is loaded (tvm/support/nvcc.py, NVRTC and nvcc alike)
TVM_FLAGS = ["--use_fast_math", "-Xptxas", "--register-usage-level=10"]
# ptxas, at its own register target, keeps 16 bytes of AlexNet's conv5 (batch 8, sm_90a) on the
# stack while using 80 of 255 registers (no flag TVM passes changes it): stack traffic of one
# value, not a kernel out of registers. Anything more fails.
SPILL_BUDGET = 32
HEAVY = {"conv", "local", "fc", "deconv"}
NVCC = shutil.which("nvcc")
needs_nvcc = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed: CUDA source not compiled")


# ----------------------------------------------------------------------------- one build, cached
@lru_cache(maxsize=None)
def cuda_build(path, batch: int):
    """(net, BuildReport, CUDA source) of one example, built once per session."""
    net = convc.parse_file(path)
    m = convc.compile(net, "cuda", batch=batch, records=None)
    return net, m.report, m.executable.mod.imports[0].imports[0].inspect_source()


@lru_cache(maxsize=None)
def ptxas(path, batch: int, tmp: str):
    """{(kernel, arch): {"registers", "spill", "smem"}} from one nvcc call for both archs."""
    _, _, source = cuda_build(path, batch)
    cu = f"{tmp}/{path.stem}_b{batch}.cu"
    with open(cu, "w") as f:
        f.write(source)
    gencode = [a for arch in ARCHS for a in ("-gencode", f"arch=compute_{arch[3:]},code={arch}")]
    done = subprocess.run([NVCC, "-fatbin", "-O3", *TVM_FLAGS, "-Xptxas", "-v", *gencode, "-o", cu + ".fatbin", cu],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return parse_ptxas(done.stderr)


def parse_ptxas(log: str) -> dict:
    info, current = {}, None
    for line in log.splitlines():
        entry = re.search(r"Compiling entry function '(\w+)' for '(\w+)'", line)
        if entry:
            current = (entry.group(1), entry.group(2))
            info[current] = {"registers": 0, "spill": 0, "smem": 0}
            continue
        if current is None:
            continue
        spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if spill:
            info[current]["spill"] = int(spill.group(1)) + int(spill.group(2))
        used = re.search(r"Used (\d+) registers", line)
        if used:
            info[current]["registers"] = int(used.group(1))
            smem = re.search(r"(\d+) bytes smem", line)
            info[current]["smem"] = int(smem.group(1)) if smem else 0
    return info


def kernel_kinds(net, report) -> dict[str, set[str]]:
    """{kernel: kinds of the layers it computes}."""
    kind = {layer.name: layer.kind for layer in net.layers}
    return {k: {kind[name] for name in layers} for k, layers in report.kernels.items()}


def heavy_kernels(net, report) -> list[str]:
    return [k for k, kinds in kernel_kinds(net, report).items() if kinds & HEAVY]


CASES = [pytest.param(p, b, id=f"{p.stem}-b{b}", marks=[pytest.mark.slow] if b == 8 else [])
         for b in (1, 8) for p in EXAMPLES]


# ----------------------------------------------------------------------------- rules
@pytest.mark.parametrize("path,batch", CASES)
def test_heavy_kernels_get_convc_rules_and_shared_memory(path, batch):
    net, report, source = cuda_build(path, batch)
    heavy = heavy_kernels(net, report)
    assert heavy, "every example has a conv, local, fc or deconv"
    for kernel in heavy:
        assert report.rules[kernel].startswith("convc."), (kernel, report.rules[kernel])
        body = _cuda_function(source, kernel)
        assert body is not source, f"no __global__ function found for {kernel}"
        assert "__shared__" in body, f"{kernel} ({report.rules[kernel]}) stages nothing in shared memory"
    for kernel, kinds in kernel_kinds(net, report).items():
        if kinds & {"pool", "lrn"}:
            assert report.rules[kernel] == "convc.Window", (kernel, report.rules[kernel])


@pytest.mark.parametrize("path,batch", CASES)
def test_launch_bounds_are_warps_and_within_limits(path, batch):
    net, report, source = cuda_build(path, batch)
    bounds = {m.group(2): int(m.group(1)) for m in
              re.finditer(r"__launch_bounds__\((\d+)\)\s+(\w+?)(?:_kernel\w*)?\(", source)}
    assert bounds
    for kernel in heavy_kernels(net, report) + [k for k, r in report.rules.items() if r == "convc.Window"]:
        threads = bounds[kernel]
        assert threads % 32 == 0 and threads <= 1024, (kernel, threads)


@needs_nvcc
@pytest.mark.parametrize("path,batch", CASES)
def test_nvcc_compiles_for_sm80_and_sm90a_within_limits(path, batch, tmp_path_factory):
    net, report, _ = cuda_build(path, batch)
    info = ptxas(path, batch, str(tmp_path_factory.mktemp("cu")))
    kernels = {name for name, _ in info}
    heavy = heavy_kernels(net, report)
    for arch in ARCHS:
        assert {(k, arch) in info for k in kernels} == {True}
        for (kernel, a), row in info.items():
            if a != arch:
                continue
            assert row["registers"] <= 255, (kernel, arch, row)
            assert row["smem"] <= SHARED_LIMIT, (kernel, arch, row)
        for kernel in heavy:
            names = [k for k in kernels if k == kernel or k.startswith(kernel + "_kernel")]
            assert names, f"ptxas reported no function for {kernel}"
            for name in names:
                assert info[(name, arch)]["spill"] <= SPILL_BUDGET, (name, arch, info[(name, arch)])


def test_convc_build_prints_the_rule_per_kernel(tmp_path):
    done = subprocess.run([sys.executable, "-m", "convc.cli", "build", str(EXAMPLES[0].parent / "cifar10_11pct.conv"),
                           "--target", "cuda",
                           "--no-records", "-o", str(tmp_path / "net.so")], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    for kernel, rule in (("conv1", "convc.ImplicitGemm"), ("local3", "convc.ImplicitGemm"),
                         ("fc10", "convc.Gemv"), ("pool1", "convc.Window"), ("rnorm1", "convc.Window")):
        assert re.search(rf"^\s+{kernel}\s+default {re.escape(rule)}\b", done.stdout, re.M), done.stdout


# ----------------------------------------------------------------------------- numbers on the CPU
THREAD = re.compile(r'T\.thread_binding\(((?:[^(),]|\([^()]*\))+), thread="[^"]+"\)')


def serial_twin(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The same scheduled kernel with every thread binding a serial loop and every shared or
    local buffer global: one CPU thread runs each GPU thread in turn, and each thread's
    cooperative copy of a tile copies the whole tile, so the values are those of the GPU run."""
    text = THREAD.sub(r"T.serial(\1)", func.script())
    text = re.sub(r'scope="(shared|local)"', 'scope="global"', text)
    # unrolling changes no value, and unrolled serial twins take LLVM minutes to compile
    text = re.sub(r", annotations=\{[^{}]*\}", "", text.replace("T.unroll(", "T.serial("))
    return tvm.script.from_source(text).with_attr("tirx.is_scheduled", True)


def emulate(net, batch: int, params, x) -> tuple[dict, object]:
    """Every layer's output of the CUDA-scheduled network, run on the CPU through serial twins."""
    fused, report, _ = lower_network(net, make_target("cuda"), batch, params=params, bind=True, records=None,
                                     all_outputs=True)
    del fused[META_FUNCTION]
    for gv, func in list(fused.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            fused[gv] = serial_twin(func)
    cpu = tvm.target.Target({"kind": "llvm"})
    ex = tvm.compile(fused, cpu, relax_pipeline=relax.get_default_pipeline(cpu))
    out = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(x))
    return {layer.name: out[i].numpy() for i, layer in enumerate(net.layers)}, report


# Small nets with every layer family and the awkward cases: groups, strides, dilation,
# ceil-mode zeros, partial tiles (odd sizes), depthwise, deconv (grouped and depthwise),
# local with groups, avg pool count=real, LRN across and within, fc from 4-D and 2-D inputs.
FAMILIES = {
    "conv": """convention cuda-convnet
input x 8x13x11
conv c1 filters=12 size=3 stride=2 pad=1 groups=2 neuron=relu
conv c2 filters=8 size=3 dilation=2 pad=1 round=ceil
batchnorm bn
relu r
conv dw filters=8 size=3 pad=1 groups=8 neuron=tanh
conv pw filters=20 size=1
""",
    "local_pool_fc": """input x 6x9x9
local l1 filters=8 size=3 pad=1 stride=2 groups=2 neuron=tanh
pool p1 avg size=3 stride=2 pad=1 count=real
lrn n1 size=3 alpha=0.01 beta=0.75 region=within
fc f1 outputs=7 neuron=relu
fc f2 outputs=5
softmax s
""",
    "deconv_window": """input x 4x7x7
deconv d1 filters=6 size=3 stride=2 pad=1 groups=2
deconv d2 filters=6 size=4 stride=2 pad=1 groups=6 bias=false
pool mp max size=3 stride=2
lrn ln size=5 alpha=0.001 beta=0.75
""",
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cuda_schedules_compute_the_oracle_numbers_on_the_cpu(name, batch):
    net = convc.parse(FAMILIES[name], filename=f"{name}.conv")
    params = net.init_params(1)
    x = np.random.default_rng(batch).standard_normal((batch, *net.input_shape)).astype(np.float32)
    got, report = emulate(net, batch, params, x)
    want = convc.oracle.run(net, x, params, all_layers=True)
    for kernel in heavy_kernels(net, report):
        assert report.rules[kernel].startswith("convc."), (kernel, report.rules[kernel])
    for layer in net.layers:
        np.testing.assert_allclose(got[layer.name], want[layer.name], rtol=1e-4, atol=1e-5, err_msg=layer.name)


@pytest.mark.parametrize("batch", [1, 8])
def test_cifar10_11pct_schedules_compute_the_oracle_numbers_on_the_cpu(batch):
    net = convc.parse_file(EXAMPLES[0].parent / "cifar10_11pct.conv")
    params = net.init_params(0)
    x = np.random.default_rng(0).standard_normal((batch, *net.input_shape)).astype(np.float32)
    got, report = emulate(net, batch, params, x)
    want = convc.oracle.run(net, x, params, all_layers=True)
    assert set(report.rules.values()) >= {"convc.ImplicitGemm", "convc.Window"}
    for layer in net.layers:
        np.testing.assert_allclose(got[layer.name], want[layer.name], rtol=1e-4, atol=1e-5, err_msg=layer.name)


def test_a_failing_rule_falls_back_to_dlight_with_a_warning(monkeypatch):
    from convc.schedule import cuda

    def broken(*args, **kwargs):
        raise tvm.s_tir.schedule.ScheduleError("broken on purpose")
    monkeypatch.setattr(cuda, "schedule_gemm", broken)
    net = convc.parse(FAMILIES["conv"], filename="conv.conv")
    with pytest.warns(UserWarning, match="falls back to DLight"):
        m = convc.compile(net, "cuda", batch=1, records=None)
    assert not any(r == "convc.ImplicitGemm" for r in m.report.rules.values())
