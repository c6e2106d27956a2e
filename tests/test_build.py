"""The compiler: every example builds for llvm and matches the oracle; modules round-trip;
inputs and params are validated; CUDA source compiles with nvcc where it is installed."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import convc
from convc.check import check

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.conv"))
SMALL = """
network small
input data 3x12x12
conv  c1 filters=8 size=3 pad=1 groups=1 neuron=relu
lrn   n1 size=3 alpha=0.01 beta=0.75
pool  p1 max size=3 stride=2
local l2 filters=4 size=3 pad=1 neuron=tanh[1.7159,0.6667]
fc    f3 outputs=5
softmax prob
"""


def _x(net, batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)


@pytest.fixture(scope="module")
def small():
    net = convc.parse(SMALL, "small.conv")
    return net, net.init_params(3), convc.compile(net, "llvm", batch=2, records=None)


@pytest.mark.parametrize("batch", [1, 2])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_matches_the_oracle_per_layer(path, batch):
    net = convc.parse_file(path)
    rows, report = check(net, "llvm", batch)
    bad = [r for r in rows if not r.ok]
    assert not bad, bad
    assert len(rows) == len(net.layers) + 1


def test_fusion_gives_fewer_kernels_than_layers():
    net = convc.parse_file(ROOT / "examples" / "resnext_block.conv")
    m = convc.compile(net, "llvm", batch=1, records=None)
    assert len(m.report.kernels) < len(net.layers)
    # the batchnorm and relu after each conv run inside the conv's kernel
    fused = [layers for layers in m.report.kernels.values() if "reduce" in layers][0]
    assert {"reduce", "bn1", "r1"} <= set(fused)


def test_bound_params_give_the_same_numbers(small):
    net, params, m = small
    x = _x(net, 2)
    bound = convc.compile(net, "llvm", batch=2, params=params, records=None)
    np.testing.assert_array_equal(bound(x), m(x, params))
    with pytest.raises(convc.ConvcError, match="bound"):
        bound(x, params)
    with pytest.raises(convc.ConvcError, match="m\\(x, params\\)"):
        m(x)


def test_torch_tensor_input(small):
    torch = pytest.importorskip("torch")
    net, params, m = small
    x = _x(net, 2)
    want = m(x, params)
    np.testing.assert_array_equal(m(torch.from_numpy(x.copy()), params), want)
    np.testing.assert_array_equal(m(torch.from_numpy(x.copy()).double(), params), want)
    # a sliced (non-contiguous, offset) torch tensor is copied, not read out of bounds
    wide = torch.zeros((2, 3, 12, 14))
    wide[..., 1:13] = torch.from_numpy(x)
    np.testing.assert_array_equal(m(wide[..., 1:13], params), want)


def test_misaligned_and_non_contiguous_numpy_inputs(small):
    net, params, m = small
    x = _x(net, 2)
    want = m(x, params)
    raw = np.zeros(x.size + 1, np.float32)
    misaligned = raw[1:].reshape(x.shape)          # 4-byte offset from an aligned buffer
    misaligned[...] = x
    assert misaligned.ctypes.data % 64 != 0
    np.testing.assert_array_equal(m(misaligned, params), want)
    strided = np.zeros((2, 3, 12, 24), np.float32)
    strided[..., ::2] = x
    np.testing.assert_array_equal(m(strided[..., ::2], params), want)
    fortran = np.asfortranarray(x)
    np.testing.assert_array_equal(m(fortran, params), want)
    misaligned_params = {}
    for k, v in params.items():
        buf = np.zeros(v.size + 1, np.float32)[1:].reshape(v.shape)
        buf[...] = v
        misaligned_params[k] = buf
    np.testing.assert_array_equal(m(x, misaligned_params), want)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 3, 12, 11), np.float32), r"has shape 2x3x12x11, expected 2x3x12x12"),
    (np.zeros((1, 3, 12, 12), np.float32), r"has shape 1x3x12x12, expected 2x3x12x12"),
    (np.zeros((3, 12, 12), np.float32), r"has shape 3x12x12, expected 2x3x12x12"),
    (np.zeros((2, 3, 12, 12), np.complex64), r"dtype complex64"),
])
def test_bad_inputs_are_named(small, bad, message):
    net, params, m = small
    with pytest.raises(convc.ConvcError, match=message) as err:
        m(bad, params)
    assert err.value.diagnostics[0].pos.line == 3       # the `input` statement


def test_bad_params_name_both_shapes(small):
    net, params, m = small
    wrong = dict(params, **{"c1.weight": np.zeros((8, 3, 5, 5), np.float32)})
    with pytest.raises(convc.ConvcError, match=r"params\['c1.weight'\] has shape 8x3x5x5, expected 8x3x3x3"):
        m(_x(net, 2), wrong)
    missing = {k: v for k, v in params.items() if k != "l2.bias"}
    with pytest.raises(convc.ConvcError, match=r"no 'l2.bias'"):
        m(_x(net, 2), missing)


def test_export_and_load_in_a_new_process(small, tmp_path):
    net, params, _ = small
    m = convc.compile(net, "llvm", batch=2, records=None)
    path = m.export(tmp_path / "small.so")
    meta = json.loads(Path(str(path) + ".json").read_text())
    assert meta["batch"] == 2 and meta["network"] == net.text
    x = _x(net, 2)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "p.npz", **params)
    script = (f"import convc, numpy as np, sys\n"
              f"m = convc.load({str(path)!r})\n"
              f"y = m(np.load({str(tmp_path / 'x.npy')!r}), dict(np.load({str(tmp_path / 'p.npz')!r})))\n"
              f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
              f"print(m.batch, m.net.name)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["2", "small"]
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), convc.oracle.run(net, x, params), rtol=1e-4, atol=1e-6)


def test_load_without_sidecar_reads_the_embedded_metadata(small, tmp_path):
    net, params, m = small
    path = m.export(tmp_path / "m.so")
    Path(str(path) + ".json").unlink()
    again = convc.load(path)
    assert again.batch == 2 and again.net.text == net.text
    x = _x(net, 2)
    np.testing.assert_array_equal(again(x, params), m(x, params))


def test_load_errors(tmp_path):
    with pytest.raises(convc.ConvcError, match="no such file"):
        convc.load(tmp_path / "missing.so")
    junk = tmp_path / "junk.so"
    junk.write_bytes(b"not a library")
    with pytest.raises(convc.ConvcError, match="junk.so: error"):
        convc.load(junk)


def test_compile_rejects_bad_batch_and_target(small):
    net = small[0]
    with pytest.raises(convc.ConvcError, match="batch"):
        convc.compile(net, "llvm", batch=0)
    with pytest.raises(convc.ConvcError, match="unknown target"):
        convc.compile(net, "opencl")


# ----------------------------------------------------------------------------- CLI
def convc_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convc.cli", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def small_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    (d / "small.conv").write_text(SMALL)
    net = convc.parse(SMALL, "small.conv")
    np.savez(d / "p.npz", **net.init_params(1))
    np.save(d / "x.npy", _x(net, 1))
    return d, net


def test_cli_build_run_check_emit(small_files):
    d, net = small_files
    done = convc_cli("build", d / "small.conv", "-o", d / "small.so", "--no-records")
    assert done.returncode == 0, done.stderr
    assert "kernel launches for 6 layers" in done.stdout
    done = convc_cli("run", d / "small.so", "--input", d / "x.npy", "--params", d / "p.npz", "-o", d / "y.npy")
    assert done.returncode == 0, done.stderr
    want = convc.oracle.run(net, np.load(d / "x.npy"), dict(np.load(d / "p.npz")))
    np.testing.assert_allclose(np.load(d / "y.npy"), want, rtol=1e-4, atol=1e-6)
    done = convc_cli("check", d / "small.conv", "--batch", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISMATCH" not in done.stdout and "all 7 outputs match" in done.stdout
    done = convc_cli("emit", d / "small.conv", "--layer", "l2", "--tir")
    assert done.returncode == 0 and "l2_local" in done.stdout
    done = convc_cli("emit", d / "small.conv", "--target", "cuda", "--layer", "c1")
    assert done.returncode == 0 and "__global__" in done.stdout


def test_cli_check_fails_on_a_mismatch(small_files):
    d, net = small_files
    done = convc_cli("check", d / "small.conv", "--rtol", "1e-12")
    assert done.returncode == 1 and "MISMATCH" in done.stdout


def test_cli_file_errors(small_files, tmp_path):
    d, net = small_files
    cases = [
        (["build", tmp_path / "nope.conv", "-o", tmp_path / "x.so"], "nope.conv: error: no such file"),
        (["run", tmp_path / "nope.so", "--input", d / "x.npy"], "no such file"),
        (["run", d / "small.so", "--input", tmp_path / "nope.npy", "--params", d / "p.npz"], "no such file"),
        (["check", d / "small.conv", "--params", tmp_path / "nope.npz"], "no such file"),
    ]
    # params with a wrong key and a wrong shape
    params = net.init_params(0)
    params["c1.weight"] = np.zeros((8, 3, 2, 2), np.float32)
    del params["f3.bias"]
    np.savez(tmp_path / "bad.npz", **params)
    cases.append((["check", d / "small.conv", "--params", tmp_path / "bad.npz"], "expected 8x3x3x3"))
    # an npz holding a pickled object is refused, never unpickled
    np.savez(tmp_path / "pickled.npz", obj=np.array([{"a": 1}], dtype=object))
    cases.append((["check", d / "small.conv", "--params", tmp_path / "pickled.npz"], "cannot read parameters"))
    (tmp_path / "garbage.npz").write_bytes(b"garbage")
    cases.append((["check", d / "small.conv", "--params", tmp_path / "garbage.npz"], "cannot read parameters"))
    np.save(tmp_path / "wrong_x.npy", np.zeros((1, 3, 5, 5), np.float32))
    cases.append((["run", d / "small.so", "--input", tmp_path / "wrong_x.npy", "--params", d / "p.npz"],
                   "expected 1x3x12x12"))
    for args, message in cases:
        done = convc_cli(*args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert message in done.stderr, (args, done.stderr)
        assert "Traceback" not in done.stderr


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed: CUDA source not compiled")
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_cuda_source_compiles_with_nvcc(path, tmp_path):
    net = convc.parse_file(path)
    m = convc.compile(net, "cuda", batch=2, records=None)
    source = m.executable.mod.imports[0].imports[0].inspect_source()
    assert "__global__" in source
    (tmp_path / "k.cu").write_text(source)
    done = subprocess.run(["nvcc", "-cubin", "-arch=sm_90a", "-O3", "-o", str(tmp_path / "k.cubin"),
                           str(tmp_path / "k.cu")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "k.cubin").stat().st_size > 0


def test_cuda_export_works_without_a_gpu(small, tmp_path):
    net = small[0]
    m = convc.compile(net, "cuda", batch=1, records=None)
    path = m.export(tmp_path / "small_cuda.so")
    assert path.stat().st_size > 0
    assert json.loads(Path(str(path) + ".json").read_text())["target"] == "cuda-sm_90a"
