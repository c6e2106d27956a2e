"""OpenCV's dnn module as an independent Caffe: every published prototxt in shared/testdata
(caffe/ and more/caffe/) gets random weights of the imported net's shapes, written as a real
.caffemodel with protobuf; OpenCV reads prototxt + caffemodel and runs the forward pass, convc
reads the same .caffemodel back (`--weights`) and runs its oracle (and, for small nets, the
compiled module). This also tests the .caffemodel reader against files protobuf wrote."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import convc
from convc import importers
from convc.importers.caffemodel import read_caffemodel, write_caffemodel
from convc.importers.weights import caffe_blobs

cv2 = pytest.importorskip("cv2")
if not hasattr(cv2, "dnn") or not hasattr(cv2.dnn, "readNetFromCaffe"):
    pytest.skip("this OpenCV has no Caffe reader (5.x dropped it): install opencv-python-headless<5",
                allow_module_level=True)

SHARED = next((d for d in (Path(__file__).resolve().parents[2] / "shared" / "testdata",  # beside the checkout
                            Path("/work/shared/testdata")) if d.is_dir()),
              Path(__file__).resolve().parents[2] / "shared" / "testdata")
FILES = sorted(SHARED.glob("caffe/*.prototxt")) + sorted(SHARED.glob("more/caffe/*.prototxt"))
# Nets whose float64 oracle takes more than a few seconds on 2 cores: run with -m slow.
SLOW = {"voc_fcn8s_deploy.prototxt", "resnet50_deploy.prototxt", "densenet121_deploy.prototxt"}


def random_params(result, seed=0) -> dict[str, np.ndarray]:
    """Random params that keep activations in range: He-scaled weights (init_params), random
    batchnorm statistics, scales, shifts and slopes. A batchnorm with no Scale after it keeps
    scale 1, shift 0 (Caffe's BatchNorm has no such blobs)."""
    net = convc.parse(result.text)
    params = net.init_params(seed)
    rng = np.random.default_rng(seed)
    lone_bn = {e["layer"] for e in result.plan if e["kind"] == "batchnorm" and not e.get("scale_src")}
    draw = {"mean": lambda s: rng.normal(0, 0.1, s), "var": lambda s: rng.uniform(0.5, 2, s),
            "scale": lambda s: rng.uniform(0.5, 1.5, s), "shift": lambda s: rng.normal(0, 0.1, s),
            "slope": lambda s: rng.uniform(0, 0.5, s)}
    for name, value in params.items():
        layer, suffix = name.rsplit(".", 1)
        if suffix in draw and not (layer in lone_bn and suffix in ("scale", "shift")):
            params[name] = draw[suffix](value.shape).astype(np.float32)
    return params


def without_training_layers(prototxt: Path, out: Path) -> Path:
    """The prototxt without the layers only training uses (an Accuracy reading a `label` no
    deploy net has stops OpenCV; Caffe and convc skip it). Read and written with protobuf's
    own text format, so OpenCV sees the file as Caffe would."""
    from google.protobuf import text_format
    from convc.importers.caffe_proto import message_class
    from convc.importers.from_caffe import TRAINING_ONLY, V1_TYPES
    try:
        net = text_format.Parse(prototxt.read_text(), message_class("NetParameter")())
    except text_format.ParseError:       # a fork's field (ceil_mode): OpenCV's own caffe.proto has it
        return prototxt
    for layers, type_name in ((net.layer, lambda l: l.type),
                              (net.layers, lambda l: V1_TYPES.get(l.DESCRIPTOR.fields_by_name["type"]
                                                                  .enum_type.values_by_number[l.type].name))):
        keep = [l for l in layers if type_name(l) not in TRAINING_ONLY]
        del layers[:]
        layers.extend(keep)
    out.write_text(text_format.MessageToString(net))
    return out


def opencv_forward(prototxt: Path, caffemodel: Path, x: np.ndarray) -> np.ndarray:
    prototxt = without_training_layers(prototxt, caffemodel.with_suffix(".opencv.prototxt"))
    cvnet = cv2.dnn.readNetFromCaffe(str(prototxt), str(caffemodel))
    cvnet.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
    cvnet.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
    cvnet.setInput(x)
    return cvnet.forward()


def both(prototxt: Path, tmp_path: Path, text: str | None = None, seed=0):
    """(imported net, params read back from the .caffemodel, input, OpenCV's output)."""
    if text is not None:
        prototxt = tmp_path / prototxt.name
        prototxt.write_text(text)
    result = importers.caffe(prototxt)
    net = convc.parse(result.text)
    model = tmp_path / "random.caffemodel"
    write_caffemodel(model, caffe_blobs(result, random_params(result, seed)))
    params = importers.convert_weights(result, read_caffemodel(model), filename=str(model))
    x = np.random.default_rng(seed + 1).standard_normal((1, *net.input_shape)).astype(np.float32)
    return net, params, x, opencv_forward(prototxt, model, x)


def assert_close(actual, expected, what: str):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.size == expected.size, f"{what}: {actual.shape} vs OpenCV's {expected.shape}"
    err = np.abs(actual.reshape(expected.shape) - expected).max() / max(np.abs(expected).max(), 1e-30)
    assert err <= 1e-4, f"{what}: max error {err:.3g} of max|OpenCV| (float32 tolerance 1e-4)"


@pytest.mark.parametrize("path", [pytest.param(f, marks=[pytest.mark.slow] if f.name in SLOW else [], id=f.name)
                                  for f in FILES])
def test_oracle_matches_opencv(path, tmp_path):
    net, params, x, expected = both(path, tmp_path)
    assert_close(convc.oracle.run(net, x, params), expected, f"{path.name}: oracle")


def test_compiled_matches_opencv(tmp_path):
    name = "cifar10_cifar10_full.prototxt"
    net, params, x, expected = both(SHARED / "caffe" / name, tmp_path)
    assert_close(convc.compile(net, target="llvm", batch=1, records=None)(x, params), expected, f"{name}: compiled")


# Every layer type of spec §2b as Caffe writes it, in one small net.
NEW_LAYERS = """name: "new_layers"
input: "data"
input_shape { dim: 1 dim: 6 dim: 11 dim: 11 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "prelu1" type: "PReLU" bottom: "conv1" top: "prelu1" }
layer { name: "slice1" type: "Slice" bottom: "prelu1" top: "s1" top: "s2" top: "s3"
        slice_param { axis: 1 slice_point: 2 slice_point: 6 } }
layer { name: "conv2" type: "Convolution" bottom: "s2" top: "conv2"
        convolution_param { num_output: 2 kernel_size: 1 } }
layer { name: "max1" type: "Eltwise" bottom: "s1" bottom: "conv2" bottom: "s3" top: "max1"
        eltwise_param { operation: MAX } }
layer { name: "prod1" type: "Eltwise" bottom: "s1" bottom: "s3" top: "prod1" eltwise_param { operation: PROD } }
layer { name: "sum1" type: "Eltwise" bottom: "max1" bottom: "prod1" top: "sum1"
        eltwise_param { operation: SUM coeff: 0.5 coeff: -2 } }
layer { name: "scale1" type: "Scale" bottom: "sum1" top: "scale1" scale_param { bias_term: true } }
layer { name: "prelu2" type: "PReLU" bottom: "scale1" top: "scale1" prelu_param { channel_shared: true } }
layer { name: "scale2" type: "Scale" bottom: "scale1" top: "scale2" }
layer { name: "pool1" type: "Pooling" bottom: "scale2" top: "pool1"
        pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
layer { name: "crop1" type: "Crop" bottom: "scale2" bottom: "pool1" top: "crop1" crop_param { axis: 2 offset: 1 offset: 3 } }
layer { name: "power1" type: "Power" bottom: "crop1" top: "power1" power_param { power: 2 scale: 0.5 shift: 1.5 } }
layer { name: "power2" type: "Power" bottom: "power1" top: "power2" power_param { power: 0.5 scale: 2 shift: 0.25 } }
layer { name: "ip" type: "InnerProduct" bottom: "power2" top: "ip" inner_product_param { num_output: 5 } }
layer { name: "prelu3" type: "PReLU" bottom: "ip" top: "prelu3" }
"""


def test_new_layers_match_opencv_oracle_and_compiled(tmp_path):
    net, params, x, expected = both(Path("new_layers.prototxt"), tmp_path, NEW_LAYERS)
    kinds = {layer.kind for layer in net.layers}
    assert {"prelu", "slice", "max", "mul", "add", "scale", "crop", "power"} <= kinds
    assert net.layer("pool1").out_shape == (2, 5, 5)           # ceil_mode: false is floor (ceil gives 6)
    assert_close(convc.oracle.run(net, x, params), expected, "oracle")
    assert_close(convc.compile(net, target="llvm", batch=1, records=None)(x, params), expected, "compiled")
