"""Shape rules (spec sections 2 and 3) with hand-checked numbers, param shapes and `convc info`."""
from __future__ import annotations

import json
import math
import re
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import convc
from conftest import ROOT, layer_net, net, parse_error


def out(line, shape=(3, 8, 8), convention="caffe"):
    n = layer_net(line, shape, convention)
    return n.layers[-1].out_shape


# ----------------------------------------------------------------------------- conv
def test_alexnet_conv1_floor_vs_ceil():
    # (224 - 11)/4 = 53.25: floor -> 54 (Caffe), 1 + ceil -> 55 (cuda-convnet, the 2012 paper)
    n = convc.parse_file(ROOT / "examples" / "alexnet_224.conv")
    assert n.convention == "cuda-convnet"
    assert n.layer("conv1").out_shape == (96, 55, 55)
    caffe = convc.parse(n.text.replace("convention cuda-convnet", "convention caffe"))
    assert caffe.layer("conv1").out_shape == (96, 54, 54)
    written = convc.parse(n.text.replace("stride=4 neuron=relu", "stride=4 round=floor neuron=relu", 1))
    assert written.layer("conv1").out_shape == (96, 54, 54)   # a key written on the layer wins


def test_alexnet_224_shapes_under_cuda_convnet():
    n = convc.parse_file(ROOT / "examples" / "alexnet_224.conv")
    # 55 -pool-> ceil(52/2)+1 = 27 -> 27 -pool-> ceil(24/2)+1 = 13 -> 13 -pool-> ceil(10/2)+1 = 6
    expected = {"conv1": (96, 55, 55), "pool1": (96, 27, 27), "conv2": (256, 27, 27), "pool2": (256, 13, 13),
                "conv5": (256, 13, 13), "pool5": (256, 6, 6), "fc6": (4096,), "prob": (1000,)}
    for name, shape in expected.items():
        assert n.layer(name).out_shape == shape, name


@pytest.mark.parametrize("convention, rounding", [("caffe", "floor"), ("torch", "floor"), ("cuda-convnet", "ceil")])
def test_conv_round_default_per_convention(convention, rounding):
    n = layer_net("conv c filters=2 size=3 stride=2", (3, 8, 8), convention)
    assert n.layer("c").attrs["round"] == rounding
    # (8 - 3)/2 = 2.5: floor -> 3, ceil -> 4
    assert n.layer("c").out_shape == {"floor": (2, 3, 3), "ceil": (2, 4, 4)}[rounding]


@pytest.mark.parametrize("line, shape, expected", [
    ("conv c filters=4 size=3", (3, 8, 8), (4, 6, 6)),
    ("conv c filters=4 size=3 pad=1", (3, 8, 8), (4, 8, 8)),
    ("conv c filters=4 size=3 stride=2 pad=1", (3, 8, 8), (4, 4, 4)),            # floor(7/2)+1
    ("conv c filters=4 size=3 dilation=2 pad=1", (3, 10, 10), (4, 8, 8)),        # floor((12-5)/1)+1
    ("conv c filters=4 size=3 dilation=2 stride=3", (3, 11, 11), (4, 3, 3)),     # floor(6/3)+1
    ("conv c filters=4 size=3x5 stride=2x1 pad=1x0", (3, 16, 16), (4, 8, 12)),
    ("conv c filters=4 size=3 stride=2 round=ceil", (3, 8, 8), (4, 4, 4)),       # 1+ceil(5/2)
    ("conv c filters=4 size=2 stride=3 round=ceil", (3, 8, 8), (4, 3, 3)),       # 1+ceil(6/3)
    ("conv c filters=4 size=8", (3, 8, 8), (4, 1, 1)),
    ("conv c filters=6 size=1 groups=3", (3, 8, 8), (6, 8, 8)),
])
def test_conv_shapes(line, shape, expected):
    assert out(line, shape) == expected


@pytest.mark.parametrize("c, h, w, f, k, s, p, d", [
    (3, 8, 8, 4, 3, 1, 0, 1), (3, 9, 7, 2, 3, 2, 1, 1), (2, 11, 11, 2, 3, 3, 2, 2), (1, 5, 6, 1, 5, 1, 2, 1),
])
def test_floor_conv_shape_matches_torch(c, h, w, f, k, s, p, d):
    y = F.conv2d(torch.zeros(1, c, h, w), torch.zeros(f, c, k, k), stride=s, padding=p, dilation=d)
    shape = out(f"conv c filters={f} size={k} stride={s} pad={p} dilation={d}", (c, h, w))
    assert shape == tuple(y.shape[1:])


# ----------------------------------------------------------------------------- pool
@pytest.mark.parametrize("convention, line, shape, expected", [
    # caffe: ceil; (6-3)/2 = 1.5 -> ceil 2 -> 3
    ("caffe", "pool p max size=3 stride=2", (3, 6, 6), (3, 3, 3)),
    ("caffe", "pool p max size=3 stride=2 round=floor", (3, 6, 6), (3, 2, 2)),
    # torch: floor by default
    ("torch", "pool p max size=3 stride=2", (3, 6, 6), (3, 2, 2)),
    ("torch", "pool p max size=3 stride=2 round=ceil", (3, 6, 6), (3, 3, 3)),
    ("cuda-convnet", "pool p max size=3 stride=2", (3, 6, 6), (3, 3, 3)),
    # Caffe's clip with pad > 0: ceil((5+2-2)/2)+1 = 4, and (4-1)*2 = 6 >= 5+1 drops the last one
    ("caffe", "pool p max size=2 stride=2 pad=1", (3, 5, 5), (3, 3, 3)),
    ("torch", "pool p max size=2 stride=2 pad=1 round=ceil", (3, 5, 5), (3, 3, 3)),
    # no clip needed: ceil((4+2-2)/2)+1 = 3, (3-1)*2 = 4 < 4+1
    ("caffe", "pool p max size=2 stride=2 pad=1", (3, 4, 4), (3, 3, 3)),
    # torch clips with pad 0 too: ceil(4/3)+1 = 3, (3-1)*3 = 6 >= 5 -> 2
    ("torch", "pool p max size=1 stride=3 round=ceil", (3, 5, 5), (3, 2, 2)),
    # cuda-convnet: no clip, ceil((12-3)/2)+1 = 6 (cifar10_11pct pool2)
    ("cuda-convnet", "pool p max size=3 stride=2", (3, 12, 12), (3, 6, 6)),
    # non-square windows
    ("caffe", "pool p avg size=2x3 stride=2x3", (3, 7, 9), (3, 4, 3)),
])
def test_pool_rounding(convention, line, shape, expected):
    assert out(line, shape, convention) == expected


def test_caffe_pool_without_pad_is_not_clipped():
    # Under caffe (pad 0) the ceil'd last window of size=1 stride=3 on 5 would start at 6, past the input:
    # Caffe would emit an empty window; convc reports it.
    err = parse_error("input d 3x5x5\npool p max size=1 stride=3\n")
    assert err.diagnostics[0].message == ("pool p: the last pooling window along H starts at 6, past the input (5), "
                                          "and would read only padding")


@pytest.mark.parametrize("h, k, s, p", [(5, 2, 2, 1), (6, 3, 2, 1), (7, 3, 2, 0), (5, 1, 3, 0), (13, 3, 2, 1),
                                        (8, 4, 3, 2), (9, 2, 2, 0)])
def test_torch_ceil_pool_shape_matches_torch(h, k, s, p):
    y = F.max_pool2d(torch.zeros(1, 1, h, h), k, s, p, ceil_mode=True)
    assert out(f"pool p max size={k} stride={s} pad={p} round=ceil", (1, h, h), "torch") == tuple(y.shape[1:])
    y = F.max_pool2d(torch.zeros(1, 1, h, h), k, s, p, ceil_mode=False)
    assert out(f"pool p max size={k} stride={s} pad={p}", (1, h, h), "torch") == tuple(y.shape[1:])


@pytest.mark.parametrize("convention, count", [("caffe", "pad"), ("torch", "pad"), ("cuda-convnet", "real")])
def test_pool_count_default_per_convention(convention, count):
    n = layer_net("pool p avg size=2 stride=2", (3, 8, 8), convention)
    assert n.layer("p").attrs["count"] == count
    n = layer_net("pool p avg size=2 stride=2 count=" + ("real" if count == "pad" else "pad"), (3, 8, 8), convention)
    assert n.layer("p").attrs["count"] != count


@pytest.mark.parametrize("convention, expected", [("caffe", (1, 1)), ("torch", (3, 3))])
def test_pool_stride_default_per_convention(convention, expected):
    n = layer_net("pool p max size=3", (3, 9, 9), convention)
    assert n.layer("p").attrs["stride"] == expected
    assert n.layer("p").out_shape == {(1, 1): (3, 7, 7), (3, 3): (3, 3, 3)}[expected]


def test_pool_stride_is_required_under_cuda_convnet():
    err = parse_error("convention cuda-convnet\ninput d 3x9x9\npool p max size=3\n")
    assert err.diagnostics[0].message == "pool p needs stride=... under convention cuda-convnet"
    assert layer_net("pool p max size=3 stride=3", (3, 9, 9), "cuda-convnet").layer("p").out_shape == (3, 3, 3)


@pytest.mark.parametrize("convention", ["caffe", "torch", "cuda-convnet"])
def test_global_pooling(convention):
    n = layer_net("pool g avg global", (5, 7, 9), convention)
    g = n.layer("g")
    assert g.out_shape == (5, 1, 1)
    assert g.attrs["size"] == (7, 9) and g.attrs["stride"] == (1, 1) and g.attrs["pad"] == (0, 0)


@pytest.mark.parametrize("convention, rounding", [("caffe", "ceil"), ("torch", "floor"), ("cuda-convnet", "ceil")])
def test_pool_round_default_per_convention(convention, rounding):
    assert layer_net("pool p max size=2 stride=2", (3, 8, 8), convention).layer("p").attrs["round"] == rounding


# ----------------------------------------------------------------------------- deconv, local, fc, others
@pytest.mark.parametrize("c, h, f, k, s, p, d, g", [
    (3, 7, 6, 4, 2, 1, 1, 1),     # 2·6 + 3 + 1 - 2 = 14
    (4, 7, 6, 4, 2, 1, 2, 2),     # 2·6 + 2·3 + 1 - 2 = 17
    (2, 5, 2, 3, 3, 0, 1, 2),     # 3·4 + 2 + 1 = 15
    (6, 4, 3, 1, 1, 0, 1, 3),     # 4
])
def test_deconv_shape(c, h, f, k, s, p, d, g):
    expected = s * (h - 1) + d * (k - 1) + 1 - 2 * p
    n = layer_net(f"deconv u filters={f} size={k} stride={s} pad={p} dilation={d} groups={g}", (c, h, h))
    assert n.layer("u").out_shape == (f, expected, expected)
    y = F.conv_transpose2d(torch.zeros(1, c, h, h), torch.zeros(c, f // g, k, k), stride=s, padding=p,
                           dilation=d, groups=g)
    assert tuple(y.shape[1:]) == (f, expected, expected)
    assert n.param_shapes() == {"u.weight": (c, f // g, k, k), "u.bias": (f,)}


def test_fcn_upsample_example():
    n = convc.parse_file(ROOT / "examples" / "fcn_upsample.conv")
    assert n.layer("up").out_shape == (48, 56, 56)      # 2·27 + 3 + 1 - 2
    assert n.param_shapes()["up.weight"] == (48, 1, 4, 4) and "up.bias" not in n.param_shapes()
    assert n.param_shapes()["a.weight"] == (32, 1, 3, 3)


def test_local_shapes_and_params():
    n = layer_net("local l filters=6 size=3 groups=2", (4, 6, 6))
    assert n.layer("l").out_shape == (6, 4, 4)
    assert n.param_shapes() == {"l.weight": (6, 4, 4, 2, 3, 3), "l.bias": (6, 4, 4)}
    n = layer_net("local l filters=2 size=3 stride=2 pad=1 bias=false", (3, 7, 5))
    assert n.layer("l").out_shape == (2, 4, 3)            # floor((7+2-3)/2)+1, floor((5+2-3)/2)+1
    assert n.param_shapes() == {"l.weight": (2, 4, 3, 3, 3, 3)}


def test_local_round_ceil():
    assert out("local l filters=2 size=3 stride=2", (3, 6, 6), "cuda-convnet") == (2, 3, 3)   # 1 + ceil(3/2)
    assert out("local l filters=2 size=3 stride=2", (3, 6, 6), "caffe") == (2, 2, 2)


def test_cifar10_11pct_shapes():
    n = convc.parse_file(ROOT / "examples" / "cifar10_11pct.conv")
    assert n.layer("pool1").out_shape == (64, 12, 12)     # 1 + ceil(21/2)
    assert n.layer("pool2").out_shape == (64, 6, 6)       # 1 + ceil(9/2)
    assert n.layer("local4").out_shape == (32, 6, 6)
    assert n.param_shapes()["local3.weight"] == (64, 6, 6, 64, 3, 3)
    assert n.param_shapes()["local3.bias"] == (64, 6, 6)
    assert n.param_shapes()["fc10.weight"] == (10, 32 * 6 * 6)


def test_cifar10_18pct_shapes():
    n = convc.parse_file(ROOT / "examples" / "cifar10_18pct.conv")
    assert [n.layer(p).out_shape[1] for p in ("pool1", "pool2", "pool3")] == [16, 8, 4]
    assert n.param_shapes()["fc10.weight"] == (10, 64 * 4 * 4)


def test_fc_flattens_chw():
    n = layer_net("fc f outputs=7\nfc g outputs=2 bias=false", (3, 4, 5))
    assert n.param_shapes() == {"f.weight": (7, 60), "f.bias": (7,), "g.weight": (2, 7)}
    assert n.layer("g").out_shape == (2,)


def test_batchnorm_params():
    assert layer_net("batchnorm b", (5, 3, 3)).param_shapes() == {
        "b.mean": (5,), "b.var": (5,), "b.scale": (5,), "b.shift": (5,)}


@pytest.mark.parametrize("line", ["lrn n", "lrn n region=within size=3", "softmax s", "dropout p", "relu r",
                                  "tanh t a=2", "batchnorm b"])
def test_same_shape_layers(line):
    assert out(line, (3, 5, 7)) == (3, 5, 7)


def test_concat_and_add_shapes():
    n = net("input d 3x8x8\nconv a filters=5 size=1\nconcat c from a, d, a\nconv e from c filters=13 size=1\n"
            "add s from c, e, e\n")
    assert n.layer("c").out_shape == (13, 8, 8) and n.layer("s").out_shape == (13, 8, 8)


def test_alexnet_param_shapes():
    n = convc.parse_file(ROOT / "examples" / "alexnet.conv")
    shapes = n.param_shapes()
    assert shapes == {
        "conv1.weight": (96, 3, 11, 11), "conv1.bias": (96,),
        "conv2.weight": (256, 48, 5, 5), "conv2.bias": (256,),
        "conv3.weight": (384, 256, 3, 3), "conv3.bias": (384,),
        "conv4.weight": (384, 192, 3, 3), "conv4.bias": (384,),
        "conv5.weight": (256, 192, 3, 3), "conv5.bias": (256,),
        "fc6.weight": (4096, 256 * 6 * 6), "fc6.bias": (4096,),
        "fc7.weight": (4096, 4096), "fc7.bias": (4096,),
        "fc8.weight": (1000, 4096), "fc8.bias": (1000,),
    }
    # the well-known AlexNet (Caffe, grouped) parameter count
    assert sum(math.prod(s) for s in shapes.values()) == 60_965_224


def test_mobilenet_and_resnext_params():
    m = convc.parse_file(ROOT / "examples" / "mobilenet_block.conv").param_shapes()
    assert m["dw.weight"] == (256, 1, 3, 3) and m["pw.weight"] == (512, 256, 1, 1) and "dw.bias" not in m
    assert m["pw_bn.scale"] == (512,)
    r = convc.parse_file(ROOT / "examples" / "resnext_block.conv")
    assert r.param_shapes()["grouped.weight"] == (128, 4, 3, 3)
    assert r.layer("sum").out_shape == (256, 56, 56)


# ----------------------------------------------------------------------------- convc info
ALEXNET_NEURONS = {"conv1": 96 * 55 * 55, "conv2": 256 * 27 * 27, "conv3": 384 * 13 * 13, "conv4": 384 * 13 * 13,
                   "conv5": 256 * 13 * 13, "fc6": 4096, "fc7": 4096, "fc8": 1000}


def test_alexnet_neuron_counts_by_hand():
    assert list(ALEXNET_NEURONS.values()) == [290_400, 186_624, 64_896, 64_896, 43_264, 4_096, 4_096, 1_000]


def _info(*args):
    r = subprocess.run([sys.executable, "-m", "convc.cli", "info", *args], capture_output=True, text=True,
                       cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_info_table_of_alexnet():
    text = _info("examples/alexnet.conv")
    rows = {line.split()[0]: line for line in text.splitlines() if line.strip()}
    for name, neurons in ALEXNET_NEURONS.items():
        assert re.search(rf"(^|\s){neurons:,}(\s|$)", rows[name]), (name, rows[name])
    assert "48+48" in rows["conv2"] and "128+128" in rows["conv2"]
    assert "192+192" in rows["conv4"] and "128+128" in rows["conv5"]
    assert "105,415,200" in rows["conv1"]
    assert "256x48x5x5" in rows["conv2"]
    assert "96x55x55" in rows["conv1"] and "256x6x6" in rows["pool5"]
    assert "60,965,224" in rows["total"]
    assert text == convc.parse_file(ROOT / "examples" / "alexnet.conv").summary() + "\n"


def test_info_json_of_alexnet():
    info = json.loads(_info("examples/alexnet.conv", "--json"))
    rows = {r["name"]: r for r in info["layers"]}
    assert info["network"] == "alexnet" and info["convention"] == "caffe"
    assert info["input"] == {"name": "data", "shape": [3, 227, 227]}
    for name, neurons in ALEXNET_NEURONS.items():
        assert rows[name]["neurons"] == neurons
    assert rows["conv2"]["split"] == {"groups": 2, "in": [48, 48], "out": [128, 128]}
    assert rows["conv1"]["split"] is None
    assert rows["conv1"]["macs"] == 96 * 55 * 55 * 3 * 11 * 11 == 105_415_200
    assert rows["conv2"]["macs"] == 256 * 27 * 27 * 48 * 5 * 5
    assert rows["fc6"]["macs"] == 4096 * 9216
    assert rows["conv2"]["params"] == {"conv2.weight": [256, 48, 5, 5], "conv2.bias": [256]}
    assert rows["conv2"]["output"] == [256, 27, 27]
    assert info["totals"]["params"] == 60_965_224
    assert info["totals"]["neurons"] == sum(r["neurons"] for r in info["layers"])
    assert info["totals"]["macs"] == sum(r["macs"] for r in info["layers"])


def test_macs_of_other_kinds():
    n = layer_net("deconv u filters=4 size=3 stride=2 groups=2\nlocal l filters=2 size=3 groups=2", (2, 5, 5))
    # deconv: every input value scatters into (F/G)·K² outputs: C·H·W·(F/G)·K²
    assert n.layer("u").macs == 2 * 5 * 5 * 2 * 9
    h = 2 * 4 + 3        # 11
    o = h - 2            # 9
    assert n.layer("l").macs == 2 * o * o * 2 * 9
    assert layer_net("pool p max size=2").layers[0].macs == 0


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.conv")), ids=lambda p: p.name)
def test_info_json_for_every_example(path):
    info = json.loads(_info(str(path), "--json"))
    n = convc.parse_file(path)
    assert [r["name"] for r in info["layers"]] == [l.name for l in n.layers]
    for r, layer in zip(info["layers"], n.layers):
        assert r["neurons"] == math.prod(layer.out_shape)
