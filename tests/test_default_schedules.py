"""Default schedules (no tuning records): every example and every conv form matches the oracle,
the rule table picks the intended rule, and the code uses the vector ISA of the target."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax

import convc
import convc.build as B
from convc.check import check
from convc.schedule.cpu import ConvShape, ISA, isa, register_block

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "examples").glob("*.conv"))

CROSS = {   # name: (target, what the assembly must contain)
    "avx2": ({"kind": "llvm", "mcpu": "znver3", "mtriple": "x86_64-linux-gnu", "num-cores": 2},
             r"vfmadd\d+ps\s+[^\n]*%ymm"),
    "avx512": ({"kind": "llvm", "mcpu": "skylake-avx512", "mtriple": "x86_64-linux-gnu", "num-cores": 2},
               r"vfmadd\d+ps\s+[^\n]*%zmm"),
    "aarch64": ({"kind": "llvm", "mcpu": "cortex-a72", "mtriple": "aarch64-linux-gnu", "num-cores": 4},
                r"fmla\s+v\d+\.4s"),
}


def _x(net, batch, seed=0):
    return np.random.default_rng(seed).standard_normal((batch, *net.input_shape)).astype(np.float32)


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_matches_the_oracle_untuned(path, batch):
    net = convc.parse_file(path)
    rows, report = check(net, "llvm", batch, records=None)
    bad = [r for r in rows if not r.ok]
    assert not bad, bad
    assert not report.tuned and set(report.rules) == set(report.kernels)


CONVS = {   # odd shapes: channels not a multiple of the vector, 1x1 inputs, widths below the block
    "dense": "input d 5x9x7\nconv c filters=32 size=3 pad=1 neuron=relu",
    "odd_filters": "input d 5x9x7\nconv c filters=10 size=3 pad=1 stride=2 neuron=leaky[0.1]",
    "grouped": "input d 6x11x13\nconv c filters=64 size=3 pad=1 groups=2 neuron=relu",
    "depthwise": "input d 24x10x9\nconv c filters=24 size=3 pad=1 groups=24",
    "one_by_one_input": "input d 16x1x1\nconv c filters=32 size=1",
    "pointwise": "input d 20x6x5\nconv c filters=48 size=1 neuron=tanh",
    "strided_ceil": "convention cuda-convnet\ninput d 3x23x23\nconv c filters=16 size=5 stride=3 pad=1",
    "dilated": "input d 4x15x15\nconv c filters=16 size=3 dilation=2 pad=2",
    "wide_kernel": "input d 3x31x29\nconv c filters=48 size=11 stride=4 neuron=relu",
    "fused_add": "input d 8x7x7\nconv a filters=16 size=3 pad=1\nconv b from d filters=16 size=1\nadd s from a, b\nrelu r",
}


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(CONVS))
def test_conv_forms_match_the_oracle(name, batch):
    net = convc.parse(CONVS[name], f"{name}.conv")
    params = net.init_params(1)
    x = _x(net, batch)
    ref = convc.oracle.run(net, x, params, all_layers=True)
    for bound in (False, True):
        m = convc.compile(net, "llvm", batch=batch, records=None, all_outputs=True,
                          params=params if bound else None)
        got = m(x) if bound else m(x, params)
        for layer in net.layers:
            want = ref[layer.name]
            err = np.abs(got[layer.name] - want).max() / max(np.abs(want).max(), 1e-30)
            assert err < 1e-5, (layer.name, bound, err)


def test_rules_chosen_for_convs():
    dense = convc.compile(convc.parse(CONVS["dense"]), "llvm", batch=1, records=None)
    depthwise = convc.compile(convc.parse(CONVS["depthwise"]), "llvm", batch=1, records=None)
    assert set(dense.report.rules.values()) == {"direct_conv"}
    assert set(depthwise.report.rules.values()) == {"conv_rows"}


def test_isa_read_from_the_target_features():
    lanes_and_registers = {name: (isa(tvm.target.Target(t)).lanes, isa(tvm.target.Target(t)).registers)
                           for name, (t, _) in CROSS.items()}
    assert lanes_and_registers == {"avx2": (8, 16), "avx512": (16, 32), "aarch64": (4, 32)}


@pytest.mark.parametrize("width", [1, 5, 13, 24, 27, 55, 112])
def test_register_block_fits_the_register_file(width):
    shape = ConvShape(1, 64, width, width, 64, (16, 3, 3))
    for machine in (ISA(8, 16, 2), ISA(16, 32, 2, embedded_broadcast=True), ISA(4, 32, 4)):
        nv, cols = register_block(shape, machine)
        live = cols * nv + nv + (0 if machine.embedded_broadcast else 1)
        assert live <= machine.registers - 2 and 1 <= cols <= width
        assert shape.per_group % (nv * machine.lanes) == 0
    assert register_block(ConvShape(1, 10, 5, 5, 10, (3, 3, 3)), ISA(8, 16, 2)) is None


def _assembly(net, target_dict) -> tuple[str, dict]:
    target = tvm.target.Target(target_dict)
    info = B.TargetInfo("llvm", target, "llvm-cross")
    mod, report, _ = B.lower_network(net, info, 1, None, False, None)
    ex = tvm.compile(mod, target, relax_pipeline=relax.get_default_pipeline(target))
    return "".join(_sources(ex.mod)), report.rules


def _sources(module):
    for m in [module, *module.imports]:
        try:
            yield m.inspect_source("asm")
        except Exception:   # noqa: BLE001 - modules without assembly (the VM executable)
            yield ""


@pytest.mark.parametrize("machine", sorted(CROSS))
def test_conv_code_uses_the_target_vectors(machine):
    net = convc.parse("input d 64x13x13\nconv c filters=64 size=3 pad=1 neuron=relu")
    asm, rules = _assembly(net, CROSS[machine][0])
    assert rules == {"c": "direct_conv"}
    assert len(re.findall(CROSS[machine][1], asm)) >= 8, machine
