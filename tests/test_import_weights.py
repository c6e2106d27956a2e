"""Trained Caffe weights from a binary .caffemodel (`convc import caffe --weights`), the
--phase/--stage rules, transform_param, one report per cause, and cuda-convnet2's layer types."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import convc
from convc import importers
from convc.cli import main
from convc.importers.caffemodel import caffemodel_arrays, read_caffemodel, write_caffemodel
from convc.importers.weights import caffe_blobs

SHARED = next((d for d in (Path(__file__).resolve().parents[2] / "shared" / "testdata",  # beside the checkout
                            Path("/work/shared/testdata")) if d.is_dir()),
              Path(__file__).resolve().parents[2] / "shared" / "testdata")
LENET = SHARED / "caffe" / "mnist_lenet.prototxt"


def lenet_model(tmp_path, legacy_shapes=False, seed=3):
    r = importers.caffe(LENET)
    params = convc.parse(r.text).init_params(seed)
    path = tmp_path / "lenet.caffemodel"
    write_caffemodel(path, caffe_blobs(r, params), legacy_shapes=legacy_shapes)
    return r, params, path


# ----------------------------------------------------------------------------- .caffemodel
@pytest.mark.parametrize("legacy_shapes", [False, True])
def test_caffemodel_round_trip(tmp_path, legacy_shapes):
    r, params, path = lenet_model(tmp_path, legacy_shapes)
    got = importers.convert_weights(r, read_caffemodel(path))
    assert got.keys() == params.keys()
    for k in params:
        np.testing.assert_array_equal(got[k], params[k], err_msg=k)


def test_v1_layers_and_double_data():
    from convc.importers.caffe_proto import message_class
    net = message_class("NetParameter")()
    layer = net.layers.add(name="ip")                  # V1: `layers`
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.double_data.extend([1, 2, 3, 4, 5, 6])
    arrays = caffemodel_arrays(net.SerializeToString())
    np.testing.assert_array_equal(arrays["ip/0"], np.arange(1, 7, dtype=np.float32).reshape(1, 1, 2, 3))


def test_blob_whose_values_do_not_fill_its_shape():
    from convc.importers.caffe_proto import message_class
    net = message_class("NetParameter")()
    for name, count in (("a", 5), ("b", 7)):
        blob = net.layer.add(name=name).blobs.add()
        blob.shape.dim.extend([2, 3])
        blob.data.extend([0.5] * count)
    with pytest.raises(convc.ConvcError) as info:
        caffemodel_arrays(net.SerializeToString(), "m.caffemodel")
    assert [d.message for d in info.value.diagnostics] == [
        "blob 0 of layer 'a' has 5 values for its shape (2, 3)", "blob 0 of layer 'b' has 7 values for its shape (2, 3)"]


def test_wrong_shapes_and_missing_blobs_are_all_reported(tmp_path):
    r = importers.caffe(LENET)
    blobs = caffe_blobs(r, convc.parse(r.text).init_params(0))
    blobs["conv2"][0] = np.zeros((50, 20, 3, 3), np.float32)
    blobs["ip1"][1] = np.zeros((7,), np.float32)
    del blobs["ip2"]
    path = tmp_path / "bad.caffemodel"
    write_caffemodel(path, blobs)
    with pytest.raises(convc.ConvcError) as info:
        importers.convert_weights(r, read_caffemodel(path), filename=str(path), caffemodel=True)
    text = str(info.value)
    assert "(50, 20, 3, 3)" in text and "(50, 20, 5, 5)" in text and "(7,)" in text
    assert "no blob 0 in a layer named 'ip2'" in text
    assert len(info.value.diagnostics) == 4


def test_cli_weights_then_check(tmp_path, capsys):
    r, params, model = lenet_model(tmp_path)
    out = tmp_path / "lenet.conv"
    assert main(["import", "caffe", str(LENET), "--weights", str(model), "-o", str(out), "-q"]) == 0
    saved = np.load(tmp_path / "lenet.npz")
    assert sorted(saved.files) == sorted(params)
    assert main(["check", str(out), "--params", str(tmp_path / "lenet.npz"), "--no-records"]) == 0
    assert "match the oracle" in capsys.readouterr().out


@pytest.mark.parametrize("damage", ["truncated", "text", "empty-net"])
def test_cli_bad_caffemodel_is_a_clear_error(tmp_path, capsys, damage):
    r, params, model = lenet_model(tmp_path)
    data = {"truncated": model.read_bytes()[:5000], "text": LENET.read_bytes(), "empty-net": b"\n\x03net"}[damage]
    bad = tmp_path / "bad.caffemodel"
    bad.write_bytes(data)
    assert main(["import", "caffe", str(LENET), "--weights", str(bad), "-o", str(tmp_path / "x.conv")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: error:" in err and "Traceback" not in err
    assert ("no layer with weights" if damage == "empty-net" else "truncated or is not a binary Caffe") in err
    assert not (tmp_path / "x.npz").exists()


def test_cli_weights_needs_somewhere_to_write(capsys, tmp_path):
    assert main(["import", "caffe", str(LENET), "--weights", str(tmp_path / "m.caffemodel")]) == 2
    assert "--weights needs --params-out" in capsys.readouterr().err


# ----------------------------------------------------------------------------- phase, stage, data layers
TRAIN_VAL = """name: "tv"
layer { name: "train" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { mirror: true crop_size: 27 mean_value: 104 mean_value: 117 mean_value: 123 }
  data_param { source: "x" batch_size: 4 } }
layer { name: "val" type: "ImageData" top: "data" top: "label" include { phase: TEST stage: "val" }
  transform_param { crop_size: 19 scale: 0.00390625 } image_data_param { source: "y" is_color: false } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "extra" type: "ReLU" bottom: "ip" top: "ip" exclude { stage: "val" } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_phase_and_stage_choose_layers():
    train = importers.caffe("tv.prototxt", text=TRAIN_VAL, phase="TRAIN")
    assert "input data 3x27x27" in train.text and "neuron=relu" in train.text
    assert any("subtract the mean 104, 117, 123 per channel" in n for n in train.notes)
    assert any("mirror true is a training augmentation" in n for n in train.notes)
    val = importers.caffe("tv.prototxt", text=TRAIN_VAL, stages=["val"])
    assert "input data 1x19x19" in val.text and "relu" not in val.text
    assert any("multiply the images by 0.00390625" in n for n in val.notes)


def test_rules_that_leave_out_every_data_layer_say_so(capsys):
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("tv.prototxt", text=TRAIN_VAL)
    text = str(info.value)
    assert len(info.value.diagnostics) == 1
    assert "--phase TEST left out the data layer(s) 'train' (Data, line 2), 'val' (ImageData, line 5)" in text
    assert "help: choose the layers with --phase TEST|TRAIN and --stage NAME" in text


def test_cli_phase_and_stage(tmp_path, capsys):
    path = tmp_path / "tv.prototxt"
    path.write_text(TRAIN_VAL)
    assert main(["import", "caffe", str(path), "--phase", "train", "-q"]) == 0
    assert "input data 3x27x27" in capsys.readouterr().out
    assert main(["import", "caffe", str(path), "--stage", "val", "-q"]) == 0
    assert "input data 1x19x19" in capsys.readouterr().out


def test_two_inputs_are_reported_once():
    text = """input: "a" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
input: "b" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "s" }
layer { name: "r" type: "ReLU" bottom: "s" top: "r" }
layer { name: "c" type: "Convolution" bottom: "r" top: "c" convolution_param { num_output: 2 kernel_size: 1 } }
"""
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("two.prototxt", text=text)
    assert len(info.value.diagnostics) == 1
    assert "exactly one input; this net declares 2" in str(info.value)


def test_missing_blob_is_reported_once():
    text = """input: "data" input_dim: 1 input_dim: 3 input_dim: 4 input_dim: 4
layer { name: "r" type: "ReLU" bottom: "nothing" top: "r" }
layer { name: "s" type: "Sigmoid" bottom: "nothing" top: "s" }
layer { name: "e" type: "Eltwise" bottom: "r" bottom: "s" top: "e" }
"""
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("m.prototxt", text=text)
    assert len(info.value.diagnostics) == 1 and "'nothing'" in str(info.value)


def test_slice_even_split_and_errors():
    text = """input: "data" input_dim: 1 input_dim: 6 input_dim: 4 input_dim: 4
layer { name: "sl" type: "Slice" bottom: "data" top: "a" top: "b" top: "c" }
layer { name: "e" type: "Eltwise" bottom: "a" bottom: "c" top: "e" eltwise_param { operation: PROD } }
"""
    r = importers.caffe("s.prototxt", text=text)
    assert "slice a begin=0 end=2" in " ".join(r.text.split()) and "from data begin=4 end=6" in r.text
    assert "mul" in r.text
    bad = text.replace('top: "c" }', 'top: "c" slice_param { slice_point: 4 } }')
    with pytest.raises(convc.ConvcError, match="1 slice points for 3 tops"):
        importers.caffe("s.prototxt", text=bad)
    odd = text.replace("input_dim: 6", "input_dim: 5")
    with pytest.raises(convc.ConvcError, match="5 channels do not split evenly into 3 tops"):
        importers.caffe("s.prototxt", text=odd)


# ----------------------------------------------------------------------------- cuda-convnet2
CCN2_LAYERS = """[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[conv1]
type=conv
inputs=data
channels=3
filters=16
padding=2
stride=1
filterSize=5
neuron=relu

[crop1]
type=crop
inputs=conv1
channels=16
startX=1
startY=2
sizeX=6

[conv2]
type=conv
inputs=crop1
channels=16
filters=16
padding=1
filterSize=3

[max1]
type=eltmax
inputs=crop1,conv2

[sum1]
type=eltsum
inputs=crop1,conv2

[cat]
type=concat
inputs=max1,sum1

[pass1]
type=pass
inputs=cat

[fc1]
type=fc
inputs=pass1
outputs=10
neuron=relu

[drop1]
type=dropout
inputs=fc1

[drop2]
type=dropout2
inputs=drop1

[probs]
type=softmax
inputs=drop2

[logprob]
type=cost.logreg
inputs=labels,probs
"""
CCN2_PARAMS = """[sum1]
coeffs=0.5,-2

[drop1]
enable=true

[drop2]
enable=true
keep=0.75
"""


def test_cuda_convnet2_types_match_a_direct_computation():
    r = importers.cuda_convnet("layers.cfg", "params.cfg", (3, 8, 8), layers_text=CCN2_LAYERS,
                               params_text=CCN2_PARAMS)
    net = convc.parse(r.text)
    kinds = {layer.name: layer.kind for layer in net.layers}
    assert kinds["crop1"] == "crop" and kinds["max1"] == "max" and kinds["sum1"] == "add"
    assert kinds["cat"] == "concat" and "pass1" not in kinds and kinds["drop1"] == "dropout"
    assert net.layer("crop1").out_shape == (16, 6, 6) and net.layer("sum1").attrs["coeff"] == (0.5, -2.0)
    params = net.init_params(1)
    x = np.random.default_rng(2).standard_normal((2, 3, 8, 8))
    ys = convc.oracle.run(net, x, params, all_layers=True)
    conv1 = ys["conv1"]
    crop = conv1[:, :, 2:8, 1:7]
    np.testing.assert_allclose(ys["crop1"], crop)
    conv2 = ys["conv2"]
    cat = np.concatenate([np.maximum(crop, conv2), 0.5 * crop - 2 * conv2], axis=1)
    fc = np.maximum(cat.reshape(2, -1) @ params["fc1.weight"].T + params["fc1.bias"], 0)
    logits = 0.75 * fc
    e = np.exp(logits - logits.max(1, keepdims=True))
    np.testing.assert_allclose(ys[net.output.name], e / e.sum(1, keepdims=True), rtol=1e-10)


def test_cuda_convnet2_unsupported_types_are_named():
    text = CCN2_LAYERS.replace("type=eltmax", "type=cmpool").replace("[cat]\ntype=concat", "[cat]\ntype=cnorm")
    with pytest.raises(convc.ConvcError) as info:
        importers.cuda_convnet("layers.cfg", "params.cfg", (3, 8, 8), layers_text=text, params_text=CCN2_PARAMS)
    messages = [d.message for d in info.value.diagnostics]
    # each type named once; the layers reading them (cat, pass1, fc1, ...) are not reported again
    assert [m.split(":")[0] for m in messages] == ["layer 'max1' (cmpool)", "layer 'cat' (cnorm)"]


def test_shared_cuda_convnet2_file_imports():
    layers = SHARED / "more" / "cuda-convnet2" / "layers-cifar10-11pct.cfg"
    r = importers.cuda_convnet(layers, layers.with_name("layer-params-cifar10-11pct.cfg"), (3, 24, 24))
    net = convc.parse(r.text)
    assert net.output.out_shape == (10,)


MULTI_INPUT = """[data]
type=data
dataIdx=0

[a]
type=conv
inputs=data
channels=3
filters=16
filterSize=3
padding=1

[b]
type=conv
inputs=data
channels=3
filters=16
filterSize=1

[c]
type=conv
inputs=a,b
channels=16,16
filters=32,32
filterSize=3,3
padding=1,1
stride=2,2
neuron=relu

[f]
type=fc
inputs=c,a
outputs=5
"""


def test_cuda_convnet2_several_inputs_sum_one_product_each():
    """conv and fc with several inputs: Σ_i W_i·x_i, with cuda-convnet's per-input weight layouts."""
    import torch
    import torch.nn.functional as F
    text = MULTI_INPUT.replace("inputs=c,a", "inputs=c,c").replace("stride=2,2", "stride=1,1")
    r = importers.cuda_convnet("l.cfg", None, (3, 6, 6), layers_text=text)
    assert "concat c_inputs from a, b" in " ".join(r.text.split())
    rng = np.random.default_rng(0)
    arrays = {"a/weights": rng.standard_normal((27, 16)), "a/biases": rng.standard_normal((16, 1)),
              "b/weights": rng.standard_normal((3, 16)), "b/biases": rng.standard_normal((16, 1)),
              "c/weights/0": rng.standard_normal((16 * 9, 32)), "c/weights/1": rng.standard_normal((16 * 9, 32)),
              "c/biases": rng.standard_normal((32, 1)),
              "f/weights/0": rng.standard_normal((32 * 36, 5)), "f/weights/1": rng.standard_normal((32 * 36, 5)),
              "f/biases": rng.standard_normal((1, 5))}
    params = importers.convert_weights(r, arrays)
    net = convc.parse(r.text)
    x = rng.standard_normal((2, 3, 6, 6))
    y = convc.oracle.run(net, x, {k: v.astype(np.float64) for k, v in params.items()})

    def conv(t, w, cin, k, pad, stride=1):       # cuda-convnet's (C·K·K, F) layout, rows (c, y, x)
        return F.conv2d(t, torch.from_numpy(w.reshape(cin, k, k, -1).transpose(3, 0, 1, 2).copy()),
                        padding=pad, stride=stride)
    t = torch.from_numpy(x)
    a = conv(t, arrays["a/weights"], 3, 3, 1) + torch.from_numpy(arrays["a/biases"].reshape(1, 16, 1, 1))
    b = conv(t, arrays["b/weights"], 3, 1, 0) + torch.from_numpy(arrays["b/biases"].reshape(1, 16, 1, 1))
    c = torch.relu(conv(a, arrays["c/weights/0"], 16, 3, 1) + conv(b, arrays["c/weights/1"], 16, 3, 1)
                   + torch.from_numpy(arrays["c/biases"].reshape(1, 32, 1, 1)))
    flat = c.reshape(2, -1)
    f = (flat @ torch.from_numpy(arrays["f/weights/0"]) + flat @ torch.from_numpy(arrays["f/weights/1"])
         + torch.from_numpy(arrays["f/biases"]))
    np.testing.assert_allclose(y, f.numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(convc.ConvcError, match="differ"):
        importers.cuda_convnet("l.cfg", None, (3, 6, 6), layers_text=MULTI_INPUT.replace("filterSize=3,3", "filterSize=3,1"))
    with pytest.raises(convc.ConvcError, match="different height or width"):
        importers.cuda_convnet("l.cfg", None, (3, 6, 6), layers_text=MULTI_INPUT)      # fc of c (4x4) and a (6x6)


def test_slice_after_an_unsupported_layer_adds_no_error():
    text = """input: "data" input_dim: 1 input_dim: 6 input_dim: 4 input_dim: 4
layer { name: "x" type: "MVN" bottom: "data" top: "x" }
layer { name: "sl" type: "Slice" bottom: "x" top: "a" top: "b" }
layer { name: "e" type: "Eltwise" bottom: "a" bottom: "b" top: "e" }
"""
    with pytest.raises(convc.ConvcError) as info:
        importers.caffe("s.prototxt", text=text)
    assert [d.message.split(":")[0] for d in info.value.diagnostics] == ["layer 'x' (MVN)"]


@pytest.mark.parametrize("path", sorted(SHARED.glob("caffe/*.prototxt")) + sorted(SHARED.glob("more/caffe/*.prototxt")),
                         ids=lambda p: p.name)
def test_every_shared_prototxt_imports_and_checks(path):
    net = convc.parse(importers.caffe(path).text)
    assert net.output.out_shape and net.param_shapes()
