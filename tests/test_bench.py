"""convc bench: figures for every kernel and baseline, outputs that agree."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

import convc
from convc.bench import bench

NET = """
network tiny
convention cuda-convnet
input data 3x12x12
conv  c1 filters=8 size=3 pad=1 neuron=relu
pool  p1 max size=3 stride=2
lrn   n1 size=3 alpha=0.001 beta=0.75
lrn   n2 size=3 alpha=0.001 beta=0.75
local l1 filters=4 size=3 pad=1
fc    f1 outputs=10
"""


def test_bench_measures_every_kernel_and_baseline():
    pytest.importorskip("torch")
    net = convc.parse(NET, "tiny.conv")
    r = bench(net, "llvm", batch=2, records=None, repeat=3)
    assert r.convc_ms > 0 and r.peak_gflops > 1
    # without records convc IS the default build: no second "convc default" column
    assert set(r.baselines_ms) == {"torch", "numpy oracle"}
    assert r.errors["convc"] < 1e-4 and r.errors["torch"] < 1e-4
    layers = [l for k in r.kernels for l in k.layers]
    assert sorted(layers) == sorted(layer.name for layer in net.layers)
    shared = [k for k in r.kernels if k.layers == ["n1", "n2"]]      # one kernel, launched twice
    assert shared and shared[0].launches == 2
    conv = next(k for k in r.kernels if k.layers == ["c1"])
    assert conv.gflops > 0 and conv.torch_ms > 0 and 0 < conv.peak_pct < 200
    assert "network: convc" in r.table()


def test_cli_bench_json(tmp_path):
    (tmp_path / "tiny.conv").write_text(NET)
    done = subprocess.run([sys.executable, "-m", "convc.cli", "bench", str(tmp_path / "tiny.conv"), "--no-records",
                           "--against", "numpy", "--repeat", "2", "--json", str(tmp_path / "b.json")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["speedups"]["numpy oracle"] > 0 and data["batch"] == 1
    done = subprocess.run([sys.executable, "-m", "convc.cli", "bench", str(tmp_path / "tiny.conv"), "--against", "caffe"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--against takes" in done.stderr
