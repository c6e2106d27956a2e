"""The surface syntax of spec section 1: every statement form, and the spec's own examples."""
from __future__ import annotations

import re

import pytest

import convc
from convc.layers import Activation
from conftest import ROOT, EXAMPLES, layer_net, net

# The three examples of docs/language.md section 1 and 2, copied verbatim.
SPEC_CIFAR = """\
# cuda-convnet's conv-local CIFAR-10 net (layers-conv-local-11pct), 24x24 crops
network cifar10_11pct
convention cuda-convnet
input data 3x24x24

conv  conv1  filters=64 size=5 pad=2 neuron=relu
pool  pool1  max size=3 stride=2
lrn   rnorm1 size=9 alpha=0.001 beta=0.75
conv  conv2  filters=64 size=5 pad=2 neuron=relu
lrn   rnorm2 size=9 alpha=0.001 beta=0.75
pool  pool2  max size=3 stride=2
local local3 filters=64 size=3 pad=1 neuron=relu
local local4 filters=32 size=3 pad=1 neuron=relu
fc    fc10   outputs=10
softmax probs
"""

SPEC_ALEXNET = """\
# AlexNet as in Caffe's bvlc_alexnet: filter groups on conv2, conv4, conv5
network alexnet
input data 3x227x227

conv  conv1 filters=96 size=11 stride=4 neuron=relu
lrn   norm1 size=5 alpha=0.0001 beta=0.75
pool  pool1 max size=3 stride=2
conv  conv2 filters=256 size=5 pad=2 groups=2 neuron=relu
lrn   norm2 size=5 alpha=0.0001 beta=0.75
pool  pool2 max size=3 stride=2
conv  conv3 filters=384 size=3 pad=1 neuron=relu
conv  conv4 filters=384 size=3 pad=1 groups=2 neuron=relu
conv  conv5 filters=256 size=3 pad=1 groups=2 neuron=relu
pool  pool5 max size=3 stride=2
fc    fc6   outputs=4096 neuron=relu
dropout drop6 ratio=0.5
fc    fc7   outputs=4096 neuron=relu
dropout drop7 ratio=0.5
fc    fc8   outputs=1000
softmax prob
"""

SPEC_BRANCHES = """\
# branches: residual add, channel concat, depthwise conv, bilinear upsampling
input x 32x28x28
conv   a   filters=32 size=3 pad=1 groups=32 neuron=relu     # depthwise
conv   b   from x filters=32 size=1
add    s   from a, b
conv   c   from x filters=16 size=1
concat cat from s, c
deconv up  filters=48 size=4 stride=2 pad=1 groups=48 bias=false filler=bilinear
"""

SPEC_EXAMPLES = [SPEC_CIFAR, SPEC_ALEXNET, SPEC_BRANCHES]


def test_spec_cifar_example():
    n = net(SPEC_CIFAR)
    assert (n.name, n.convention, n.input_name, n.input_shape) == ("cifar10_11pct", "cuda-convnet", "data", (3, 24, 24))
    assert [(l.kind, l.name) for l in n.layers] == [
        ("conv", "conv1"), ("pool", "pool1"), ("lrn", "rnorm1"), ("conv", "conv2"), ("lrn", "rnorm2"),
        ("pool", "pool2"), ("local", "local3"), ("local", "local4"), ("fc", "fc10"), ("softmax", "probs")]
    conv1 = n.layer("conv1")
    assert conv1.inputs == ["data"]
    assert conv1.attrs["filters"] == 64 and conv1.attrs["size"] == (5, 5) and conv1.attrs["pad"] == (2, 2)
    assert conv1.attrs["round"] == "ceil"            # cuda-convnet default
    assert conv1.neuron == Activation("relu")
    pool1 = n.layer("pool1")
    assert pool1.attrs["mode"] == "max" and pool1.attrs["stride"] == (2, 2) and pool1.attrs["size"] == (3, 3)
    rnorm1 = n.layer("rnorm1")
    assert rnorm1.attrs["size"] == 9 and rnorm1.attrs["alpha"] == 0.001 and rnorm1.attrs["beta"] == 0.75
    assert rnorm1.attrs["k"] == 1 and rnorm1.attrs["region"] == "across"
    assert n.layer("local4").inputs == ["local3"]
    assert n.layer("fc10").attrs["outputs"] == 10
    assert n.layer("probs").inputs == ["fc10"]


def test_spec_alexnet_example():
    n = net(SPEC_ALEXNET)
    assert (n.name, n.convention, n.input_shape) == ("alexnet", "caffe", (3, 227, 227))
    assert len(n.layers) == 16
    assert [l.groups for l in n.layers if l.kind == "conv"] == [1, 2, 1, 2, 2]
    assert n.layer("conv1").attrs["stride"] == (4, 4)
    assert n.layer("drop6").attrs["ratio"] == 0.5
    assert n.layer("fc8").neuron is None
    assert n.layer("prob").out_shape == (1000,)


def test_spec_branches_example():
    n = net(SPEC_BRANCHES)
    assert n.name == "net" and n.convention == "caffe"      # both statements are optional
    assert n.layer("a").inputs == ["x"]
    assert n.layer("b").inputs == ["x"]
    assert n.layer("s").inputs == ["a", "b"]
    assert n.layer("cat").inputs == ["s", "c"]
    assert n.layer("up").inputs == ["cat"]                   # no `from`: the previous statement
    up = n.layer("up")
    assert up.attrs["bias"] is False and up.attrs["filler"] == "bilinear" and up.attrs["groups"] == 48
    assert up.out_shape == (48, 56, 56)
    assert n.layer("cat").out_shape == (48, 28, 28)


def test_spec_examples_match_the_spec_file():
    """The copies above are the spec's text (when the shared spec is around to compare)."""
    for spec in (ROOT.parent / "shared" / "spec" / "language.md", ROOT / "docs" / "language.md"):
        if spec.exists():
            blocks = re.findall(r"```\n(.*?)```", spec.read_text(), re.S)
            for example in SPEC_EXAMPLES:
                assert example in blocks
            return
    pytest.skip("the spec is not in this checkout")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_file_parses(path):
    n = convc.parse_file(path)
    assert n.layers and all(l.out_shape for l in n.layers)
    assert n.filename == str(path)


def test_examples_exist():
    assert len(EXAMPLES) >= 7


# ----------------------------------------------------------------------------- statements
def test_network_and_convention_are_optional():
    n = net("input d 3x4x4\nrelu r\n")
    assert n.name == "net" and n.convention == "caffe" and n.input_name == "d"


@pytest.mark.parametrize("conv", ["caffe", "torch", "cuda-convnet"])
def test_all_three_conventions(conv):
    n = net(f"network n1\nconvention {conv}\ninput d 3x4x4\nrelu r\n")
    assert n.convention == conv and n.name == "n1"


def test_comments_and_blank_lines():
    text = ("# a comment first\n\n   \n\t\nnetwork n # trailing comment\n# between\n"
            "input d 3x8x8   # shape\n\n\nconv c filters=2 size=3 # neuron=relu is commented out\n#\n")
    n = net(text)
    assert n.name == "n"
    assert n.layer("c").neuron is None and n.layer("c").out_shape == (2, 6, 6)
    assert n.layer("c").pos.line == 10


def test_windows_line_endings_and_tabs():
    n = net("input\td\t3x8x8\r\nconv\tc\tfilters=2\tsize=3\r\n")
    assert n.layer("c").out_shape == (2, 6, 6)


def test_no_trailing_newline():
    assert net("input d 3x8x8\nrelu r").layer("r").out_shape == (3, 8, 8)


def test_from_one_and_many():
    n = net("input d 4x8x8\nconv a filters=4 size=1\nconv b from d filters=4 size=1\n"
            "add s from a,b\nconcat c from a ,  b,d\nrelu r\n")
    assert n.layer("b").inputs == ["d"]
    assert n.layer("s").inputs == ["a", "b"]
    assert n.layer("c").inputs == ["a", "b", "d"] and n.layer("c").out_shape == (12, 8, 8)
    assert n.layer("r").inputs == ["c"]


def test_from_the_input_after_other_layers():
    n = net("input d 3x8x8\nrelu r\nconv c from d filters=2 size=1\n")
    assert n.layer("c").inputs == ["d"]


def test_flags():
    n = net("convention torch\ninput d 3x8x8\npool a max size=2\npool b from d avg size=2\n"
            "pool g from d avg global\npool h from d global max\n")
    assert n.layer("a").attrs["mode"] == "max" and n.layer("a").attrs["global"] is False
    assert n.layer("b").attrs["mode"] == "avg"
    assert n.layer("g").attrs["global"] is True and n.layer("g").out_shape == (3, 1, 1)
    assert n.layer("h").attrs["mode"] == "max" and n.layer("h").attrs["global"] is True


def test_flags_and_keys_in_any_order():
    n = net("input d 3x8x8\npool p size=2 stride=2 max pad=0\n")
    assert n.layer("p").attrs["mode"] == "max" and n.layer("p").out_shape == (3, 4, 4)


@pytest.mark.parametrize("text, expected", [
    ("1e-4", 1e-4), ("0.75", 0.75), ("5e3", 5000.0), ("2E-2", 0.02), (".5", 0.5), ("3.", 3.0), ("2", 2.0),
])
def test_number_forms(text, expected):
    a = net(f"input d 3x8x8\nlrn n alpha={text}\n").layer("n").attrs["alpha"]
    assert a == pytest.approx(expected) and isinstance(a, float)


def test_negative_and_signed_numbers():
    n = net("input d 3x8x8\nlinear l a=-2 b=-7\nlinear m a=+1.5 b=-1e-3\n")
    assert (n.layer("l").attrs["a"], n.layer("l").attrs["b"]) == (-2.0, -7.0)
    assert (n.layer("m").attrs["a"], n.layer("m").attrs["b"]) == (1.5, -0.001)


def test_key_value_forms():
    n = net("input d 4x16x16\nconv c filters=4 size=3x5 stride=2x1 pad=1x0 dilation=1x2 groups=2 "
            "bias=false round=ceil neuron=leaky[0.1]\n")
    a = n.layer("c").attrs
    assert a["filters"] == 4 and isinstance(a["filters"], int)
    assert a["size"] == (3, 5) and a["stride"] == (2, 1) and a["pad"] == (1, 0) and a["dilation"] == (1, 2)
    assert a["groups"] == 2 and a["bias"] is False and a["round"] == "ceil"
    assert a["neuron"] == Activation("leaky", (0.1,))
    assert n.layer("c").given == {"filters", "size", "stride", "pad", "dilation", "groups", "bias", "round", "neuron"}


def test_single_number_sizes_mean_square():
    a = net("input d 3x8x8\nconv c filters=2 size=3 stride=2 pad=1 dilation=2\n").layer("c").attrs
    assert (a["size"], a["stride"], a["pad"], a["dilation"]) == ((3, 3), (2, 2), (1, 1), (2, 2))


def test_defaults_when_keys_are_absent():
    a = net("input d 3x8x8\nconv c filters=2 size=3\n").layer("c").attrs
    assert (a["stride"], a["pad"], a["dilation"], a["groups"], a["bias"], a["round"], a["neuron"]) == \
        ((1, 1), (0, 0), (1, 1), 1, True, "floor", None)
    a = net("input d 3x8x8\nlrn n\n").layer("n").attrs
    assert (a["size"], a["alpha"], a["beta"], a["k"], a["region"]) == (5, 1.0, 0.75, 1.0, "across")
    assert net("input d 3x8x8\ndropout p\n").layer("p").attrs["ratio"] == 0.5
    assert net("input d 3x8x8\nbatchnorm b\n").layer("b").attrs["eps"] == 1e-5


@pytest.mark.parametrize("text, expected", [
    ("relu", Activation("relu")),
    ("logistic", Activation("logistic")),
    ("tanh", Activation("tanh", (1.0, 1.0))),
    ("tanh[1.7159,0.6667]", Activation("tanh", (1.7159, 0.6667))),
    ("tanh[2]", Activation("tanh", (2.0, 1.0))),
    ("abs", Activation("abs")),
    ("square", Activation("square")),
    ("sqrt", Activation("sqrt")),
    ("softrelu", Activation("softrelu")),
    ("ident", Activation("ident")),
    ("brelu[6]", Activation("brelu", (6.0,))),
    ("linear[2,-1]", Activation("linear", (2.0, -1.0))),
    ("linear", Activation("linear", (1.0, 0.0))),
    ("leaky[0.2]", Activation("leaky", (0.2,))),
    ("leaky", Activation("leaky", (0.01,))),
])
def test_neuron_values(text, expected):
    assert layer_net(f"conv c filters=2 size=1 neuron={text}").layer("c").neuron == expected


def test_activation_call_with_spaces_inside_brackets():
    assert layer_net("fc f outputs=2 neuron=tanh[ 1.7159 , 0.6667 ]").layer("f").neuron == \
        Activation("tanh", (1.7159, 0.6667))


@pytest.mark.parametrize("kind", ["conv", "deconv", "local", "fc", "pool"])
def test_neuron_on_every_kind_that_takes_it(kind):
    line = {"conv": "conv l filters=2 size=1", "deconv": "deconv l filters=3 size=2 stride=2",
            "local": "local l filters=2 size=3", "fc": "fc l outputs=3",
            "pool": "pool l max size=2 stride=2"}[kind]
    assert layer_net(f"{line} neuron=tanh[1.7159,0.6667]").layer("l").neuron == Activation("tanh", (1.7159, 0.6667))


def test_activation_layers():
    n = net("input d 3x8x8\nrelu r\ntanh t a=1.7159 b=0.6667\nbrelu b a=6\nlinear l a=2\nleaky k\n"
            "logistic g\nabs a\nsquare q\nsqrt s\nsoftrelu f\nident i\n")
    assert n.layer("t").activation == Activation("tanh", (1.7159, 0.6667))
    assert n.layer("b").activation == Activation("brelu", (6.0,))
    assert n.layer("l").activation == Activation("linear", (2.0, 0.0))
    assert n.layer("k").activation == Activation("leaky", (0.01,))
    assert n.layer("r").activation == Activation("relu")
    assert all(l.out_shape == (3, 8, 8) and l.neuron is None for l in n.layers)
    assert [l.inputs[0] for l in n.layers] == ["d", "r", "t", "b", "l", "k", "g", "a", "q", "s", "f"]


def test_activation_layer_after_fc_keeps_the_vector_shape():
    n = net("input d 3x4x4\nfc f outputs=7\nrelu r\ndropout p\nsoftmax s\nbatchnorm b\n")
    assert [l.out_shape for l in n.layers] == [(7,)] * 5


def test_names_with_digits_and_underscores():
    n = net("input _in0 3x4x4\nrelu Relu_1\nrelu r2d2 from _in0\n")
    assert [l.name for l in n.layers] == ["Relu_1", "r2d2"]


def test_keywords_are_not_reserved_as_layer_names():
    # `from`, `input` and kind names may name layers: only the position in the statement matters.
    n = net("input d 3x4x4\nrelu conv\nrelu pool from conv\n")
    assert n.layer("pool").inputs == ["conv"]


def test_positions_are_kept():
    line = "  conv   c1 filters=2 size=3"
    c1 = net(f"input d 3x8x8\n\n{line}\n").layer("c1")
    assert (c1.pos.line, c1.pos.col) == (3, 3)
    pos = c1.position_of("size")
    assert (pos.line, pos.col, pos.length) == (3, line.index("size") + 1, len("size=3"))


def test_parse_file_and_parse_agree(tmp_path):
    p = tmp_path / "n.conv"
    p.write_text(SPEC_ALEXNET)
    a, b = convc.parse_file(p), convc.parse(SPEC_ALEXNET, filename=str(p))
    assert a.param_shapes() == b.param_shapes() and a.filename == str(p)


def test_parse_accepts_utf8_bytes():
    n = convc.parse("# caf\u00e9\ninput d 3x4x4\nrelu r\n".encode("utf-8"))
    assert n.layer("r").out_shape == (3, 4, 4)


def test_repr_and_summary_run():
    n = net(SPEC_CIFAR)
    assert "cifar10_11pct" in repr(n)
    assert "local3" in n.summary()
