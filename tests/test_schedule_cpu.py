"""Default CPU schedules for the non-conv kernels (convc/schedule/cpu.py): each family matches
the oracle at batch 1 and 3 on odd shapes (channels and widths that no vector width divides,
1x1 inputs, widths below one vector), each kernel is taken by its own rule (not the parallel
fallback), and the rules compile for AVX2, AVX-512 and aarch64 with vector registers in the
assembly."""
from __future__ import annotations

import re

import numpy as np
import pytest
import tvm

import convc
from convc.build import fuse, prim_funcs, relax_module
from convc.check import TOLERANCE, compare
from convc.schedule import apply_default_schedules
from convc.schedule.cpu import ISA, dot_tile, isa, vector_factor

# the rule each layer kind's kernel must get (a fused kernel is named by its first layer)
RULE_OF_KIND = {"pool": "pool", "lrn": "lrn", "fc": "dot", "local": "dot", "deconv": "deconv",
                "softmax": "softmax", "concat": "injective", "add": "injective", "batchnorm": "injective",
                "relu": "injective", "tanh": "injective", "leaky": "injective", "logistic": "injective",
                "abs": "injective"}

NETS = {
    "injective": """
input x 5x7x3
relu r
tanh t from x a=1.7 b=0.6
add s from r, t
batchnorm bn
concat cat from bn, x
leaky lk a=0.1
abs ab from x
""",
    "pool": """
input x 5x9x7
pool a max size=3 stride=2
pool b from x avg size=3 stride=2 pad=1
pool c from x max size=2 stride=2 pad=1 round=ceil
pool d from x avg global
pool e from x max global
pool f from x avg size=3 stride=1 pad=1 count=real neuron=relu
pool g from x avg size=2 stride=2 round=floor
""",
    "pool_1x1": """
input x 17x1x1
pool a max size=1 stride=1
pool b from x avg global
""",
    "lrn": """
input x 5x7x3
lrn a size=5 alpha=0.1 beta=0.75
lrn b size=3 alpha=0.3 beta=0.75 region=within k=2
lrn c size=4 alpha=0.2 beta=0.6 region=within
lrn d size=9 alpha=0.001 beta=0.5
lrn e size=2 alpha=0.01 beta=1
""",
    "softmax": """
input x 19x3x5
softmax s
""",
    "fc_softmax": """
input x 7x1x1
fc a outputs=13 neuron=relu
fc b outputs=1
fc c outputs=33
softmax s
""",
    "fc_flat": """
input x 5x3x3
fc a outputs=7 neuron=logistic
""",
    "local": """
input x 5x6x7
local a filters=6 size=3 pad=1 stride=2 neuron=relu
local b filters=4 size=2 groups=2
""",
    "deconv": """
input x 5x7x9
deconv a filters=6 size=4 stride=2 pad=1 neuron=relu
deconv b filters=6 size=3 stride=3 groups=3
deconv c filters=4 size=5 stride=2 pad=2 dilation=2 groups=2
deconv d filters=4 size=3 stride=1 pad=1
deconv e filters=4 size=2 stride=2 dilation=3 pad=2 bias=false
""",
}


def _check_against_oracle(net, batch):
    params = net.init_params(1)
    x = np.random.default_rng(batch).standard_normal((batch, *net.input_shape)).astype(np.float32)
    ref = convc.oracle.run(net, x, params, all_layers=True)
    m = convc.compile(net, "llvm", batch, all_outputs=True, records=None)
    got = m(x, params)
    bad = [r for r in (compare(layer.name, got[layer.name], ref[layer.name], TOLERANCE["llvm"])
                       for layer in net.layers) if not r.ok]
    assert not bad, f"{net.name}: layers differ from the oracle: {bad}"
    return m.report


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", sorted(NETS))
def test_default_schedules_match_the_oracle_and_use_their_rule(name, batch):
    net = convc.parse(NETS[name], f"{name}.conv")
    report = _check_against_oracle(net, batch)
    kinds = {layer.name: layer.kind for layer in net.layers}
    for kernel, layers in report.kernels.items():
        expected = RULE_OF_KIND[kinds[layers[0]]]
        assert report.rules[kernel] == expected, f"{kernel} ({layers}) got rule {report.rules[kernel]!r}"


def test_vector_factor_covers_the_extent_without_a_tail_when_it_can():
    assert vector_factor(64, 16) == 16
    assert vector_factor(27, 16) == 27          # short: one (split by LLVM) vector
    assert vector_factor(3025, 16) == 55        # 55x55 plane: a divisor between 1x and 4x lanes
    assert vector_factor(1009, 8) == 8          # prime: guarded tail
    for extent in (7, 13, 100, 729, 4096):
        v = vector_factor(extent, 8)
        assert v >= min(extent, 8) and (extent % v == 0 or v == 8)


def test_dot_tile_fits_the_register_file():
    for cpu in (ISA(8, 16, 2), ISA(16, 32, 2), ISA(4, 32, 4)):
        for batch, outputs in ((1, 4096), (16, 4096), (128, 10), (3, 7)):
            bt, ot = dot_tile(batch, outputs, cpu)
            assert batch % bt == 0 and outputs % ot == 0
            assert bt * ot + bt + ot <= cpu.registers


# ----------------------------------------------------------------------------- cross-compiling
CROSS = """
input x 32x33x33
lrn n size=5 alpha=0.0001 beta=0.75
pool p max size=3 stride=2
local l filters=8 size=3 pad=1
deconv d from p filters=32 size=4 stride=2 pad=1 groups=32
relu r from d
fc f from l outputs=64
softmax s
"""

TARGETS = {
    "avx2": ({"kind": "llvm", "mcpu": "znver3", "mtriple": "x86_64-linux-gnu", "num-cores": 2}, r"%ymm\d+", 8),
    "avx512": ({"kind": "llvm", "mcpu": "skylake-avx512", "mtriple": "x86_64-linux-gnu", "num-cores": 2},
               r"%zmm\d+", 16),
    "aarch64": ({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4},
                r"\bv\d+\.4s\b", 4),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_rules_compile_to_vector_code_for_each_isa(name):
    config, register, lanes = TARGETS[name]
    target = tvm.target.Target(config)
    assert isa(target).lanes == lanes
    net = convc.parse(CROSS, "cross.conv")
    mod, rules = apply_default_schedules(fuse(relax_module(net, 1)), target)
    for kernel, func in prim_funcs(mod).items():
        assert rules[kernel] not in ("parallel", "none"), f"{kernel}: no rule of its own"
        lib = tvm.tirx.build(tvm.IRModule({"main": func.with_attr("global_symbol", kernel)}), target=target)
        asm = lib.inspect_source("asm")
        assert re.search(register, asm), f"{kernel} ({rules[kernel]}) has no {register} in its {name} assembly"
