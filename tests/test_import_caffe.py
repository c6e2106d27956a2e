"""`convc import caffe`: the published prototxts import with Caffe's shapes, and the imported
net's oracle equals a direct PyTorch implementation of the Caffe network (written here layer
by layer from Caffe's layer code) on random weights saved under Caffe's names."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convc
from convc import importers

DATA = next((d for d in (Path(__file__).resolve().parents[2] / "shared" / "testdata" / "caffe",  # beside the checkout
                          Path("/work/shared/testdata/caffe")) if d.is_dir()),
            Path(__file__).resolve().parents[2] / "shared" / "testdata" / "caffe")
FILES = sorted(DATA.glob("*.prototxt"))


def t(a):
    return torch.from_numpy(np.asarray(a, dtype=np.float64))


def rand_arrays(shapes: dict, seed=0, scale=0.2) -> dict:
    rng = np.random.default_rng(seed)
    return {k: (rng.standard_normal(s) * scale).astype(np.float32) for k, s in shapes.items()}


def compare(result, arrays, reference, shape, batch=2, seed=1):
    params = importers.convert_weights(result, arrays)
    net = convc.parse(result.text)
    x = np.random.default_rng(seed).standard_normal((batch, *shape)).astype(np.float32)
    y = np.asarray(convc.oracle.run(net, x, params))
    expected = reference(t(x), {k: t(v) for k, v in arrays.items()}).numpy()
    np.testing.assert_allclose(y, expected.reshape(y.shape), rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- Caffe layers in torch
def caffe_pool(x, k, s, mode, pad=0):
    """Caffe's PoolingLayer: ceil rounding, clip when padded, AVE divides by the window clipped
    to the padded extent, MAX ignores padding."""
    h = x.shape[2]
    o = -(-(h + 2 * pad - k) // s) + 1
    if pad and (o - 1) * s >= h + pad:
        o -= 1
    y = torch.empty(x.shape[0], x.shape[1], o, o, dtype=x.dtype)
    for i in range(o):
        for j in range(o):
            hs, ws = i * s - pad, j * s - pad
            he, we = min(hs + k, h + pad), min(ws + k, h + pad)
            size = (he - hs) * (we - ws)
            win = x[:, :, max(hs, 0):min(he, h), max(ws, 0):min(we, h)]
            y[:, :, i, j] = win.amax((2, 3)) if mode == "max" else win.sum((2, 3)) / size
    return y


def caffe_lrn_within(x, size, alpha, beta):
    """Caffe's WITHIN_CHANNEL: x · (1 + alpha/size² Σ_{size×size} x²)^-beta (k is fixed at 1)."""
    p = (size - 1) // 2
    c = x.shape[1]
    box = torch.ones(c, 1, size, size, dtype=x.dtype)
    acc = F.conv2d(x * x, box, padding=p, groups=c)
    return x * (1 + alpha / size ** 2 * acc) ** (-beta)


def caffe_lrn_across(x, size, alpha, beta, k=1.0):
    pre = (size - 1) // 2
    sq = F.pad((x * x).transpose(1, 3), (pre, size - pre - 1)).transpose(1, 3)
    acc = sum(sq[:, j:j + x.shape[1]] for j in range(size))
    return x * (k + alpha / size * acc) ** (-beta)


def ip(x, w, b):
    return x.reshape(x.shape[0], -1) @ w.T + b


# ----------------------------------------------------------------------------- the published files
@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_published_prototxt_imports_and_parses(path):
    r = importers.caffe(path)
    assert "convention caffe" in r.text
    net = convc.parse(r.text, filename=path.stem + ".conv")
    assert net.layers[-1].name == "prob"


def test_alexnet_shapes_are_caffes():
    r = importers.caffe(DATA / "bvlc_alexnet_deploy.prototxt")
    net = convc.parse(r.text)
    got = [net.shape_of(n)[1:] for n in ("conv1", "pool1", "pool2", "pool5")]
    assert got == [(55, 55), (27, 27), (13, 13), (6, 6)]
    assert net.param_shapes()["conv2.weight"] == (256, 48, 5, 5)
    assert net.param_shapes()["fc6.weight"] == (4096, 9216)
    assert "input data 3x227x227" in r.text and "conv1 filters=96 size=11 stride=4 neuron=relu" in " ".join(r.text.split())
    assert any("folded 'relu1' (ReLU) into 'conv1'" in n for n in r.notes)


def test_lenet_matches_torch():
    r = importers.caffe(DATA / "mnist_lenet.prototxt")
    arrays = rand_arrays({"conv1/0": (20, 1, 5, 5), "conv1/1": (20,), "conv2_w": (50, 20, 5, 5), "conv2_b": (50,),
                          "ip1/0": (500, 800), "ip1/1": (500,), "ip2/0": (10, 500), "ip2/1": (10,)}, scale=0.1)

    def lenet(x, w):
        x = caffe_pool(F.conv2d(x, w["conv1/0"], w["conv1/1"]), 2, 2, "max")
        x = caffe_pool(F.conv2d(x, w["conv2_w"], w["conv2_b"]), 2, 2, "max")
        x = torch.relu(ip(x, w["ip1/0"], w["ip1/1"]))
        return torch.softmax(ip(x, w["ip2/0"], w["ip2/1"]), 1)
    compare(r, arrays, lenet, (1, 28, 28))


def test_cifar10_full_matches_torch():
    r = importers.caffe(DATA / "cifar10_cifar10_full.prototxt")
    net = convc.parse(r.text)
    assert [net.shape_of(n)[1] for n in ("pool1", "pool2", "pool3")] == [16, 8, 4]
    arrays = rand_arrays({"conv1/0": (32, 3, 5, 5), "conv1/1": (32,), "conv2/0": (32, 32, 5, 5), "conv2/1": (32,),
                          "conv3/0": (64, 32, 5, 5), "conv3/1": (64,), "ip1/0": (10, 1024), "ip1/1": (10,)}, scale=0.1)

    def cifar(x, w):
        x = torch.relu(caffe_pool(F.conv2d(x, w["conv1/0"], w["conv1/1"], padding=2), 3, 2, "max"))
        x = caffe_lrn_within(x, 3, 5e-05, 0.75)
        x = caffe_pool(torch.relu(F.conv2d(x, w["conv2/0"], w["conv2/1"], padding=2)), 3, 2, "avg")
        x = caffe_lrn_within(x, 3, 5e-05, 0.75)
        x = caffe_pool(torch.relu(F.conv2d(x, w["conv3/0"], w["conv3/1"], padding=2)), 3, 2, "avg")
        return torch.softmax(ip(x, w["ip1/0"], w["ip1/1"]), 1)
    compare(r, arrays, cifar, (3, 32, 32))


def test_alexnet_front_matches_torch():
    """AlexNet's first layers (grouped conv, LRN across channels, overlapping pools) on a small input."""
    text = (DATA / "bvlc_alexnet_deploy.prototxt").read_text()
    front = text[:text.index('layer {\n  name: "relu3"')].replace("dim: 227 dim: 227", "dim: 67 dim: 67")
    r = importers.caffe("alexnet_front.prototxt", text=front)
    arrays = rand_arrays({"conv1/0": (96, 3, 11, 11), "conv1/1": (96,), "conv2/0": (256, 48, 5, 5), "conv2/1": (256,),
                          "conv3/0": (384, 256, 3, 3), "conv3/1": (384,)}, scale=0.05)

    def alex(x, w):
        x = caffe_pool(caffe_lrn_across(torch.relu(F.conv2d(x, w["conv1/0"], w["conv1/1"], stride=4)), 5, 1e-4, 0.75), 3, 2, "max")
        x = F.conv2d(x, w["conv2/0"], w["conv2/1"], padding=2, groups=2)
        x = caffe_pool(caffe_lrn_across(torch.relu(x), 5, 1e-4, 0.75), 3, 2, "max")
        return F.conv2d(x, w["conv3/0"], w["conv3/1"], padding=1)
    compare(r, arrays, alex, (3, 67, 67))


# ----------------------------------------------------------------------------- other syntax and layers
V1_NET = """# old V1 format, input_dim, in-place layers, a branch that reads a pre-activation
name: "v1net"
input: "data"
input_dim: 5
input_dim: 4
input_dim: 9
input_dim: 9
layers {
  name: "conv1"  type: CONVOLUTION  bottom: "data"  top: "conv1"
  blobs_lr: 1  blobs_lr: 2
  convolution_param { num_output: 8 kernel_h: 3 kernel_w: 2 pad_h: 1 pad_w: 0 stride: 1 group: 2 }
}
layers { name: "split" type: SPLIT bottom: "conv1" top: "c1a" top: "c1b" }
layers { name: "relu1" type: RELU bottom: "c1a" top: "r1" relu_param { negative_slope: 0.1 } }
layers { name: "sig" type: SIGMOID bottom: "c1b" top: "s1" }
layers { name: "sum" type: ELTWISE bottom: "r1" bottom: "s1" top: "sum" eltwise_param { coeff: 1 coeff: 1 } }
layers { name: "pool" type: POOLING bottom: "sum" top: "pool"
         pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 } }
layers { name: "pw" type: POWER bottom: "pool" top: "pool" power_param { power: 2 scale: 0.5 shift: 1 } }
layers { name: "cat" type: CONCAT bottom: "pool" bottom: "pool" top: "cat" }
layers { name: "tanh" type: TANH bottom: "cat" top: "cat" }
layers { name: "flat" type: FLATTEN bottom: "cat" top: "flat" }
layers { name: "ip" type: INNER_PRODUCT bottom: "flat" top: "ip" inner_product_param { num_output: 6 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip" bottom: "label" top: "loss" include: { phase: TRAIN } }
layers { name: "prob" type: SOFTMAX bottom: "ip" top: "prob" }
"""


def test_v1_format_and_graph_features_match_torch():
    r = importers.caffe("v1.prototxt", text=V1_NET)
    text = " ".join(r.text.split())
    assert "input data 4x9x9" in text
    assert "size=3x2" in text and "pad=1x0" in text
    assert "leaky" in text and "logistic" in text          # conv1's output feeds two activations: not folded
    net = convc.parse(r.text)
    assert net.shape_of("pool") == (8, 5, 5)
    arrays = rand_arrays({"conv1/0": (8, 2, 3, 2), "conv1/1": (8,), "ip_w": (6, 400), "ip_b": (6,)})

    def ref(x, w):
        c = F.conv2d(x, w["conv1/0"], w["conv1/1"], padding=(1, 0), groups=2)
        s = F.leaky_relu(c, 0.1) + torch.sigmoid(c)
        p = F.avg_pool2d(s, 3, 2, padding=1, ceil_mode=True, count_include_pad=True)
        p = (1 + 0.5 * p) ** 2
        cat = torch.tanh(torch.cat([p, p], 1))
        return torch.softmax(ip(cat, w["ip_w"], w["ip_b"]), 1)
    compare(r, arrays, ref, (4, 9, 9))


BN_NET = """name: "bn"
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }
layer { name: "conv/1" type: "Convolution" bottom: "x" top: "c" convolution_param { num_output: 4 kernel_size: 3 pad: 1 bias_term: false dilation: 2 } }
layer { name: "bn1" type: "BatchNorm" bottom: "c" top: "c" batch_norm_param { eps: 0.001 } }
layer { name: "sc1" type: "Scale" bottom: "c" top: "c" scale_param { bias_term: true } }
layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
layer { name: "up" type: "Deconvolution" bottom: "c" top: "up"
        param { lr_mult: 0 }
        convolution_param { num_output: 4 group: 4 kernel_size: 4 stride: 2 pad: 1 bias_term: false
                            weight_filler { type: "bilinear" } } }
layer { name: "abs" type: "AbsVal" bottom: "up" top: "a" }
layer { name: "pg" type: "Pooling" bottom: "a" top: "pg" pooling_param { pool: MAX global_pooling: true } }
"""


def test_batchnorm_scale_deconv_match_torch():
    r = importers.caffe("bn.prototxt", text=BN_NET)
    text = " ".join(r.text.split())
    assert "batchnorm bn1" in text and "eps=0.001" in text and "filler=bilinear" in text
    assert "conv/1" not in text and any("renamed layer 'conv/1' to 'conv_1'" in n for n in r.notes)
    assert any("merged Scale 'sc1' into batchnorm 'bn1'" in n for n in r.notes)
    rng = np.random.default_rng(3)
    arrays = rand_arrays({"conv/1/0": (4, 3, 3, 3), "sc1/0": (4,), "sc1/1": (4,)})
    arrays.update({"bn1/0": rng.standard_normal(4).astype(np.float32) * 2,
                   "bn1/1": rng.uniform(0.5, 2, 4).astype(np.float32) * 2, "bn1/2": np.array([2.0], np.float32)})
    from convc.importers.weights import bilinear

    def ref(x, w):
        c = F.conv2d(x, w["conv/1/0"], padding=1, dilation=2)
        mean, var = w["bn1/0"] / 2, w["bn1/1"] / 2
        c = (c - mean[:, None, None]) / torch.sqrt(var[:, None, None] + 0.001)
        c = torch.relu(c * w["sc1/0"][:, None, None] + w["sc1/1"][:, None, None])
        up = F.conv_transpose2d(c, t(bilinear((4, 1, 4, 4))), stride=2, padding=1, groups=4)
        return up.abs().amax((2, 3), keepdim=True)
    compare(r, arrays, ref, (3, 8, 8))


# ----------------------------------------------------------------------------- errors
BAD_NET = """name: "bad"
input: "data"
input_shape { dim: 1 dim: 3 dim: 16 dim: 16 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 axis: 2 } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 } }
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" slice_param { axis: 2 } }
layer { name: "elt" type: "Eltwise" bottom: "data" bottom: "data" top: "elt" eltwise_param { operation: MAX coeff: 2 } }
layer { name: "weird" type: "PriorBox" bottom: "data" top: "weird" }
layer { name: "lrn" type: "LRN" bottom: "data" top: "lrn" lrn_param { local_size: 5 frob: 1 } }
layer { name: "sc" type: "Scale" bottom: "data" top: "sc" scale_param { axis: 2 } }
layer { name: "ip" type: "InnerProduct" bottom: "nothing" top: "ip" inner_product_param { num_output: 2 } }
"""


def test_unsupported_things_are_reported_all_at_once():
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("bad.prototxt", text=BAD_NET)
    diags = info.value.diagnostics
    found = {(d.pos.line, d.message.split(":")[0]) for d in diags}
    assert found == {(5, "layer 'conv1' (Convolution)"), (7, "layer 'pool1' (Pooling)"), (8, "layer 'sl' (Slice)"),
                     (9, "layer 'elt' (Eltwise)"), (10, "layer 'weird' (PriorBox)"), (11, "layer 'lrn' (LRN)"),
                     (12, "layer 'sc' (Scale)"), (13, "layer 'ip' (InnerProduct)")}
    text = str(info.value)
    assert "bad.prototxt:10:29: error: layer 'weird' (PriorBox): layer type 'PriorBox' has no .conv equivalent" in text
    assert "lrn_param.frob has no .conv equivalent" in text
    assert "bottom blob 'nothing'" in text and text.rstrip().endswith("8 errors")


def test_syntax_errors_point_at_the_place():
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("s.prototxt", text='layer {\n  name: "x"\n  bottom "a"\n}\n')
    assert str(info.value).startswith("s.prototxt:3:10: error: unexpected")
    with pytest.raises(convc.ConvcError, match="ends inside a message"):
        importers.caffe("s.prototxt", text='layer {\n  name: "x"\n')


def test_data_layer_needs_input_size():
    text = """layer { name: "d" type: "Data" top: "data" top: "label" data_param { source: "x" batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""
    with pytest.raises(convc.ConvcError, match="--input"):
        importers.caffe("tv.prototxt", text=text)
    r = importers.caffe("tv.prototxt", text=text, input_shape="1x4x4")
    assert "input data 1x4x4" in r.text
    assert any("dropped training-only layer 'loss' (SoftmaxWithLoss)" in n for n in r.notes)
    convc.parse(r.text)


def test_weights_errors_name_both_shapes():
    r = importers.caffe(DATA / "mnist_lenet.prototxt")
    arrays = rand_arrays({"conv1/0": (20, 1, 5, 5), "conv1/1": (20,), "conv2/0": (50, 20, 3, 3), "conv2/1": (50,),
                          "ip1/0": (500, 800), "ip1/1": (500,), "ip2/0": (10, 500)})
    with pytest.raises(convc.ConvcError) as info:
        importers.convert_weights(r, arrays, filename="w.npz")
    msg = str(info.value)
    assert "(50, 20, 3, 3)" in msg and "(50, 20, 5, 5)" in msg and "'ip2/1'" in msg


def test_cli_caffe(tmp_path, capsys):
    from convc.cli import main
    r = importers.caffe(DATA / "mnist_lenet.prototxt")
    shapes = convc.parse(r.text).param_shapes()
    np.savez(tmp_path / "w.npz", **rand_arrays({k.replace(".weight", "_w").replace(".bias", "_b"): v
                                                   for k, v in shapes.items()}))
    rc = main(["import", "caffe", str(DATA / "mnist_lenet.prototxt"), "-o", str(tmp_path / "lenet.conv"),
               "--params-from", str(tmp_path / "w.npz"), "--params-out", str(tmp_path / "p.npz")])
    assert rc == 0
    assert "note: folded 'relu1' (ReLU) into 'ip1'" in capsys.readouterr().err
    p = np.load(tmp_path / "p.npz")
    assert {k: p[k].shape for k in p.files} == shapes
    assert main(["import", "caffe", str(tmp_path / "missing.prototxt")]) == 2
    assert "missing.prototxt: error: no such file" in capsys.readouterr().err


def test_reading_a_dropped_blob_is_reported():
    text = """input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "d" type: "Data" top: "x" top: "label" }
layer { name: "r" type: "ReLU" bottom: "label" top: "r" }
"""
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("n.prototxt", text=text)
    assert "reads 'label', data read by the dropped layer 'd'" in str(info.value)
