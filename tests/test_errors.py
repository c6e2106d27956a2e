"""Golden tests for every user error of spec section 6: message, line, column, quoted line, caret, help.

Each expected diagnostic is laid out by hand (`expected_render`): the column and the caret's
length come from the token the error must point at, found in the source text here.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import convc
from conftest import ROOT, expected_render, net, parse_error


def golden(text, line, at, message, help=None, *, nth=0, count=1, occurrence=0):
    """Parse `text`; diagnostic `nth` must point at the `occurrence`-th `at` on `line`."""
    err = parse_error(text)
    assert len(err.diagnostics) == count, str(err)
    src = text.splitlines()[line - 1]
    col = -1
    for _ in range(occurrence + 1):
        col = src.index(at, col + 1)
    col += 1
    assert err.diagnostics[nth].render() == expected_render(text, line, col, len(at), message, help)
    if nth == 0:
        assert (err.line, err.col) == (line, col)
        if count == 1:
            assert str(err) == expected_render(text, line, col, len(at), message, help)
    return err


def test_convc_error_is_a_value_error():
    assert issubclass(convc.ConvcError, ValueError)
    assert isinstance(parse_error(""), ValueError)


# ----------------------------------------------------------------------------- shapes
def test_groups_do_not_divide_channels():
    golden("input d 3x8x8\nconv c filters=4 size=3 groups=2\n", 2, "groups=2",
           "conv c: groups=2 does not divide the 3 input channels",
           "groups is the number of groups; it must divide both the input channels (3) and filters (4)")


def test_groups_do_not_divide_filters():
    golden("input d 4x8x8\nconv c filters=3 size=3 groups=2\n", 2, "groups=2",
           "conv c: groups=2 does not divide filters=3",
           "filters is the total over all groups; make it a multiple of 2")


@pytest.mark.parametrize("kind", ["deconv", "local"])
def test_groups_checked_on_deconv_and_local(kind):
    err = parse_error(f"input d 6x8x8\n{kind} c filters=4 size=3 groups=4\n")
    assert err.diagnostics[0].message == f"{kind} c: groups=4 does not divide the 6 input channels"


def test_output_size_below_one():
    # deconv: H' = S(H-1) + D(K-1) + 1 - 2P = 1·0 + 1·1 + 1 - 2 = 0
    golden("input d 3x1x1\ndeconv u filters=2 size=2 pad=1\n", 2, "pad=1",
           "deconv u: the output would be 0x0: pad=1x1 crops away everything",
           "deconv output = stride·(H-1) + dilation·(size-1) + 1 - 2·pad; use a smaller pad")


def test_kernel_larger_than_padded_input():
    golden("input d 3x4x4\nconv c filters=2 size=7 pad=1\n", 2, "size=7",
           "conv c: the 7x7 kernel (extent 7 along H) is larger than the padded input (4 + 2·1 = 6)",
           "use a smaller size, more pad, or a larger input")


def test_dilated_kernel_larger_than_input_along_width():
    # extent along W = 2·(3-1) + 1 = 5 > 4; along H 1 fits
    golden("input d 3x9x4\nconv c filters=2 size=1x3 dilation=2\n", 2, "size=1x3",
           "conv c: the 1x3 kernel (extent 5 along W) is larger than the padded input (4 + 2·0 = 4)",
           "use a smaller size, more pad, or a larger input")


def test_pool_window_larger_than_input():
    golden("input d 3x4x4\npool p max size=5 stride=1\n", 2, "size=5",
           "pool p: the 5x5 kernel (extent 5 along H) is larger than the padded input (4 + 2·0 = 4)",
           "use a smaller size, more pad, or a larger input")


def test_shape_error_after_a_chain_of_layers():
    # 8 -> conv 3: 6 -> pool 2/2: 3 -> conv 5 does not fit
    golden("input d 3x8x8\nconv a filters=4 size=3\npool p max size=2 stride=2\nconv b filters=4 size=5\n",
           4, "size=5", "conv b: the 5x5 kernel (extent 5 along H) is larger than the padded input (3 + 2·0 = 3)",
           "use a smaller size, more pad, or a larger input")


def test_concat_of_different_height_width():
    golden("input d 3x8x8\nconv a filters=2 size=3\nconcat c from a, d\n", 3, "concat",
           "concat c: concat needs inputs of equal height and width, but a is 2x6x6 and d is 3x8x8",
           "concat joins channels; pool or crop the inputs to the same HxW first")


def test_add_of_different_shapes():
    golden("input d 3x8x8\nconv a filters=3 size=1 stride=2\nadd s from a, d\n", 3, "add",
           "add s: add needs inputs of the same shape, but a is 3x4x4 and d is 3x8x8",
           "use a 1x1 conv (and stride) on one branch to match the other")


def test_add_of_different_channels():
    err = parse_error("input d 3x8x8\nconv a filters=4 size=1\nadd s from d, a\n")
    assert err.diagnostics[0].message == "add s: add needs inputs of the same shape, but d is 3x8x8 and a is 4x8x8"


def test_spatial_layer_after_fc():
    golden("input d 3x8x8\nfc f outputs=3\nconv a filters=2 size=1\n", 3, "conv",
           "conv a: conv needs a CxHxW input, but f gives 3",
           "an fc layer's output has no height and width; put spatial layers before it")


def test_pool_pad_not_below_size():
    golden("input d 3x8x8\npool p max size=3 pad=3\n", 2, "pad=3",
           "pool p: pad=3 must be smaller than the pooling size 3",
           "Caffe and PyTorch require pad < size (PyTorch: pad ≤ size/2)")


def test_global_pool_with_a_size():
    golden("input d 3x8x8\npool p max global size=3\n", 2, "size=3", "pool p: global pooling takes no size",
           "global pools the whole HxW; drop the key or the `global` flag")


# ----------------------------------------------------------------------------- params and inputs
PARAM_NET = "input d 3x8x8\nconv c1 filters=4 size=3\nfc f outputs=5\n"


def test_params_missing_key():
    n = net(PARAM_NET)
    params = n.init_params(0)
    del params["c1.bias"]
    with pytest.raises(convc.ConvcError) as info:
        convc.oracle.run(n, np.zeros((1, 3, 8, 8)), params)
    assert str(info.value) == expected_render(PARAM_NET, 2, 1, len("conv"),
                                              "params has no 'c1.bias' (expected shape 4)",
                                              "net.init_params(seed) gives every parameter; "
                                              "net.param_shapes() lists them")


def test_params_wrong_shape_names_both_shapes():
    n = net(PARAM_NET)
    params = {**n.init_params(0), "f.weight": np.zeros((5, 100), np.float32)}
    with pytest.raises(convc.ConvcError) as info:
        convc.oracle.run(n, np.zeros((1, 3, 8, 8)), params)
    # fc flattens 4x6x6 = 144 inputs
    assert str(info.value) == expected_render(PARAM_NET, 3, 1, len("fc"),
                                              "params['f.weight'] has shape 5x100, expected 5x144",
                                              "see net.param_shapes() for the layout of each parameter")
    assert (info.value.line, info.value.col) == (3, 1)


def test_params_errors_are_reported_together():
    n = net(PARAM_NET)
    with pytest.raises(convc.ConvcError) as info:
        n.check_params({"c1.weight": np.zeros((4, 3, 3))})
    messages = [d.message for d in info.value.diagnostics]
    assert messages == ["params['c1.weight'] has shape 4x3x3, expected 4x3x3x3",
                        "params has no 'c1.bias' (expected shape 4)",
                        "params has no 'f.weight' (expected shape 5x144)",
                        "params has no 'f.bias' (expected shape 5)"]
    assert str(info.value).endswith("\n\n4 errors")


def test_params_not_a_dict():
    with pytest.raises(convc.ConvcError, match="params must be a dict of arrays, got list"):
        net(PARAM_NET).check_params([1, 2])


def test_fixed_bilinear_weights_need_not_be_given():
    n = net("input d 2x4x4\ndeconv u filters=2 size=4 stride=2 pad=1 groups=2 bias=false filler=bilinear\n")
    assert set(n.check_params({})) == {"u.weight"}


def test_input_of_the_wrong_shape():
    n = net(PARAM_NET)
    with pytest.raises(convc.ConvcError) as info:
        convc.oracle.run(n, np.zeros((2, 3, 8, 9)), n.init_params(0))
    assert str(info.value) == expected_render(PARAM_NET, 1, 1, len("input"),
                                              "input 'd' has shape 2x3x8x9, expected 2x3x8x8",
                                              "inputs are NCHW arrays")


def test_input_without_a_batch_axis():
    n = net(PARAM_NET)
    with pytest.raises(convc.ConvcError) as info:
        n.check_input(np.zeros((3, 8, 8)))
    assert info.value.diagnostics[0].message == "input 'd' has shape 3x8x8, expected Nx3x8x8"


def test_input_for_a_fixed_batch():
    n = net(PARAM_NET)
    with pytest.raises(convc.ConvcError) as info:
        n.check_input(np.zeros((1, 3, 8, 8)), batch=4)
    assert info.value.diagnostics[0].message == "input 'd' has shape 1x3x8x8, expected 4x3x8x8"
    assert "with batch 4" in info.value.diagnostics[0].help


def test_empty_input_batch():
    with pytest.raises(convc.ConvcError, match="the input batch is empty"):
        net(PARAM_NET).check_input(np.zeros((0, 3, 8, 8)))


# ----------------------------------------------------------------------------- names, keys, kinds
def test_unknown_key():
    golden("input d 3x8x8\nconv a filters=2 size=3 strid=2\n", 2, "strid=2", "unknown key 'strid' for conv",
           "did you mean 'stride'?")


def test_unknown_key_far_from_any():
    golden("input d 3x8x8\nconv a filters=2 size=3 bogus=1\n", 2, "bogus=1", "unknown key 'bogus' for conv",
           "known: bias, dilation, filters, groups, neuron, pad, round, size, stride")


def test_neuron_on_an_activation_layer():
    golden("input d 3x8x8\nrelu r neuron=relu\n", 2, "neuron=relu", "unknown key 'neuron' for relu",
           "neuron= goes on conv, deconv, local, fc, pool; add a separate activation layer instead")


def test_dilation_on_local_is_unknown():
    err = parse_error("input d 3x8x8\nlocal l filters=2 size=3 dilation=2\n")
    assert err.diagnostics[0].message == "unknown key 'dilation' for local"


def test_unknown_kind():
    golden("input d 3x8x8\ncnov a filters=2 size=3\n", 2, "cnov", "unknown layer kind 'cnov'",
           "did you mean 'conv'?")


def test_unknown_kind_is_one_error_only():
    # The layer with the unknown kind is still a layer: no "the network has no layers" on top.
    golden("input d 3x8x8\nconvolution a filters=2 size=3\n", 2, "convolution",
           "unknown layer kind 'convolution'",
           "known: abs, add, batchnorm, brelu, concat, conv, crop, deconv, dropout, fc, ident, leaky, linear, local, "
           "logistic, lrn, max, mul, pool, power, prelu, relu, scale, slice, softmax, softrelu, sqrt, square, tanh")


def test_layer_after_an_unknown_kind_is_not_blamed():
    err = parse_error("input d 3x8x8\nfoo a\nconv b filters=2 size=3\nrelu c from a\n")
    assert [d.message for d in err.diagnostics] == ["unknown layer kind 'foo'"]


def test_unknown_flag():
    golden("input d 3x8x8\npool p max size=2 stride=2 ceil\n", 2, "ceil", "unknown flag 'ceil' for pool",
           "pool takes the flags max, avg, global")


def test_unknown_flag_on_a_kind_without_flags():
    golden("input d 3x8x8\nsoftmax s max\n", 2, "max", "unknown flag 'max' for softmax",
           "softmax takes no flags; did you mean max=VALUE?", occurrence=1)


def test_pool_without_mode():
    golden("input d 3x8x8\npool p size=2\n", 2, "pool", "pool needs exactly one of the flags max, avg",
           "e.g. `pool p max size=3 stride=2`")


def test_pool_with_two_modes():
    golden("input d 3x8x8\npool p max avg size=2\n", 2, "avg", "pool needs exactly one of the flags max, avg",
           "e.g. `pool p max size=3 stride=2`")


def test_missing_required_key():
    golden("input d 3x8x8\nconv a size=3\n", 2, "conv", "conv a needs filters=...",
           "filters: number of output channels, total over all groups")


def test_missing_pool_size():
    golden("input d 3x8x8\npool p max stride=2\n", 2, "pool", "pool p needs size=...",
           "size: window size K or KhxKw (not with global)")


def test_missing_pool_stride_under_cuda_convnet():
    golden("convention cuda-convnet\ninput d 3x8x8\npool p max size=3\n", 3, "pool",
           "pool p needs stride=... under convention cuda-convnet", "stride: window stride")


def test_missing_activation_parameter():
    golden("input d 3x8x8\nconv a filters=2 size=1 neuron=brelu\n", 2, "brelu",
           "neuron: brelu needs its parameter a", "write brelu[a]")
    golden("input d 3x8x8\nbrelu b\n", 2, "brelu", "brelu b needs a=...", "a: parameter a")


def test_too_many_activation_parameters():
    golden("input d 3x8x8\nconv a filters=2 size=1 neuron=tanh[1,2,3]\n", 2, "tanh[1,2,3]",
           "neuron: tanh takes 2 parameter(s), got 3", "write tanh[a,b]")


def test_unknown_activation():
    golden("input d 3x8x8\nfc f outputs=2 neuron=foo\n", 2, "foo", "neuron: unknown activation 'foo'",
           "one of relu, logistic, tanh[a,b], abs, square, sqrt, softrelu, ident, brelu[a], linear[a,b], leaky[a]")


def test_key_given_twice():
    golden("input d 3x8x8\nconv a filters=2 size=3 size=5\n", 2, "size=5", "'size' is given twice",
           "first given at column 18")


@pytest.mark.parametrize("line, at, message", [
    ("conv a filters=2.5 size=1", "2.5", "filters: expected a whole number, got 2.5"),
    ("conv a filters=2 size=1 bias=maybe", "maybe", "bias: expected one of true, false, got 'maybe'"),
    ("conv a filters=2 size=3 round=up", "up", "round: expected one of floor, ceil, got 'up'"),
    ("conv a filters=2 size=3x3x3", "3x3x3", "size: expected N or HxW, got 3x3x3"),
    ("conv a filters=x size=3", "x", "filters: expected a number, got 'x'"),
    ("dropout p ratio=1", "1", "ratio: must lie in [0, 1), got 1"),
    ("batchnorm b eps=0", "0", "eps: must be above 0, got 0"),
    ("lrn n region=both", "both", "region: expected one of across, within, got 'both'"),
    ("pool p avg size=2 count=all", "all", "count: expected one of pad, real, got 'all'"),
    ("tanh t a=x", "x", "a: expected a number, got 'x'"),
])
def test_bad_values_point_at_the_value(line, at, message):
    text = f"input d 3x8x8\n{line}\n"
    err = parse_error(text)
    d = err.diagnostics[0]
    assert len(err.diagnostics) == 1
    assert d.message == message
    assert (d.pos.line, d.pos.col, d.pos.length) == (2, line.rindex(at) + 1, len(at))
    assert d.help


def test_undefined_from():
    golden("input d 3x8x8\nconv conv1 filters=2 size=3\nrelu r from conv_1\n", 3, "conv_1",
           "'conv_1' is not defined", "did you mean 'conv1'?")


def test_undefined_from_lists_known_names():
    golden("input d 3x8x8\nconv a from e filters=2 size=3\n", 2, "e", "'e' is not defined", "known: d")


def test_from_names_a_later_layer():
    golden("input d 3x8x8\nconv a from b filters=2 size=3\nconv b from d filters=2 size=3\n", 2, "b",
           "'b' is defined later (line 3); a layer can only read layers above it",
           "networks have no cycles; reorder the lines", occurrence=0)


def test_from_names_itself():
    golden("input d 3x8x8\nconv a from a filters=1 size=1\n", 2, "a", "'a' reads its own output",
           "networks have no cycles; name a layer above this one", occurrence=1)


def test_redefined_name():
    golden("input d 3x8x8\nconv a filters=2 size=3\nconv a filters=2 size=1\n", 3, "a",
           "'a' is already defined on line 2", "every layer needs its own name")


def test_layer_named_like_the_input():
    golden("input d 3x8x8\nrelu r\nrelu d\n", 3, "d", "'d' is already defined on line 1",
           "every layer needs its own name")


def test_wrong_number_of_inputs():
    golden("input d 3x8x8\nrelu r from d, d\n", 2, "relu", "relu takes exactly 1 input(s), got 2",
           "write `relu r from LAYER` with one layer")
    golden("input d 3x8x8\nconcat c from d\n", 2, "concat", "concat takes at least 2 input(s), got 1",
           "write `concat c from a, b`")


# ----------------------------------------------------------------------------- whole-file structure
def test_empty_file():
    err = parse_error("")
    assert str(err) == ("net.conv:1:1: error: the file has no statements\n\n^\n"
                        "help: a network needs at least `input NAME CxHxW` and one layer")
    assert (err.line, err.col) == (1, 1)


def test_file_of_comments_only():
    golden("# nothing here\n\n   # still nothing\n", 1, "#", "the file has no statements",
           "a network needs at least `input NAME CxHxW` and one layer")


def test_no_input():
    err = parse_error("network n\n")
    assert [d.message for d in err.diagnostics] == ["the network has no input"]


def test_no_layers():
    golden("input d 3x8x8\n", 1, "input", "the network has no layers",
           "add layers after the input, e.g. `conv c1 filters=16 size=3`")


def test_two_inputs():
    golden("input d 3x8x8\ninput e 3x8x8\nconv a filters=2 size=3\n", 2, "e",
           "a second input 'e'; convc v1 networks have exactly one input", "the input is 'd' (line 1)")


def test_input_shape_must_be_chw():
    golden("input d 3x8\nrelu r\n", 1, "3x8",
           "the input shape must be CxHxW with every size at least 1, got 3x8",
           "e.g. `input data 3x224x224` (the batch is chosen at build time)")
    err = parse_error("input d 0x8x8\nrelu r\n")
    assert err.diagnostics[0].message == "the input shape must be CxHxW with every size at least 1, got 0x8x8"


def test_layer_before_the_input():
    err = parse_error("relu r\ninput d 3x8x8\n")
    assert [(d.message, d.pos.line) for d in err.diagnostics] == [
        ("a layer before the input", 1), ("the input must come before the layers", 2)]


def test_unknown_convention():
    golden("convention caffe2\ninput d 3x8x8\nrelu r\n", 1, "caffe2", "unknown convention 'caffe2'",
           "one of caffe, torch, cuda-convnet")


def test_convention_after_a_layer():
    golden("input d 3x8x8\nrelu r\nconvention torch\n", 3, "torch",
           "`convention` must come before the first layer",
           "it sets the defaults of the layers that follow; move it up")


def test_network_not_first():
    golden("input d 3x8x8\nnetwork n\nrelu r\n", 2, "n", "`network` must be the first statement",
           "move it to the top of the file", occurrence=1)


def test_output_too_large():
    golden("input d 3x40000x40000\nconv a filters=4096 size=1\n", 2, "conv",
           "conv a: the output of 4096x40000x40000 is too large",
           "a layer's output must have at most 2147483647 elements per image")


# ----------------------------------------------------------------------------- numbers
def test_huge_number():
    golden("input d 3x8x8\nconv a filters=99999999999999 size=3\n", 2, "99999999999999",
           "number 99999999999999 is too large", "numbers must lie within ±2147483647")


def test_huge_number_inside_a_shape():
    golden("input d 3x8x99999999999\nrelu r\n", 1, "3x8x99999999999", "number 99999999999 is too large",
           "numbers must lie within ±2147483647")


def test_huge_float():
    golden("input d 3x8x8\nlrn a alpha=1e400\n", 2, "1e400", "number 1e400 is too large",
           "use a finite value below 1e30")


def test_negative_size():
    golden("input d 3x8x8\nconv a filters=2 size=-3\n", 2, "-3", "size: must be at least 1, got -3",
           "size: kernel size K or KhxKw (N or HxW, ≥ 1)")


def test_negative_pad():
    err = parse_error("input d 3x8x8\nconv a filters=2 size=3 pad=-1\n")
    assert err.diagnostics[0].message == "pad: must be at least 0, got -1"


def test_zero_in_a_size_pair():
    err = parse_error("input d 3x8x8\nconv a filters=2 size=3x0\n")
    assert err.diagnostics[0].message == "size: must be at least 1, got 3x0"


def test_groups_zero():
    golden("input d 3x8x8\nconv a filters=2 size=3 groups=0\n", 2, "0", "groups: must be at least 1, got 0",
           "groups: number of groups (not the size of a group) (int ≥ 1)", occurrence=0)


def test_stride_zero():
    golden("input d 3x8x8\nconv a filters=2 size=3 stride=0\n", 2, "0", "stride: must be at least 1, got 0",
           "stride: stride S or SyxSx (N or HxW, ≥ 1)")


def test_filters_zero():
    err = parse_error("input d 3x8x8\nfc f outputs=0\n")
    assert err.diagnostics[0].message == "outputs: must be at least 1, got 0"


# ----------------------------------------------------------------------------- syntax
def test_spaces_inside_a_shape():
    golden("input d 3 x 8 x 8\nrelu r\n", 1, "3", "unexpected number '3'",
           "write sizes and shapes with no spaces inside, e.g. 3x224x224 or size=5x5")


def test_stray_equal_sign():
    golden("input d 3x8x8\nconv a filters=2 size=3 =4\n", 2, "=", "unexpected '='",
           "write key=value after the layer's kind and name: `conv conv1 filters=96 size=11`", occurrence=2)


def test_stray_comma():
    golden("input d 3x8x8\nconv a, filters=2\n", 2, ",", "unexpected ','",
           "commas separate the layers after `from`: `from a, b`")


def test_statement_ends_too_early():
    err = parse_error("input d\n")
    assert str(err) == expected_render("input d\n", 1, 8, 1, "this statement ends too early",
                                       "an input needs its shape: `input data 3x224x224`")


def test_unexpected_character():
    err = parse_error("input d 3x8x8\nconv a filters=2 size=3 ; relu\n")
    d = err.diagnostics[0]
    assert d.message == "unexpected character ';'"
    assert (d.pos.line, d.pos.col) == (2, len("conv a filters=2 size=3 ") + 1)
    assert d.help == "a statement is `KIND NAME [from A, B] [FLAG ...] [key=value ...]`"


def test_caret_keeps_tabs():
    text = "input d 3x8x8\nconv\tc\tfilters=2\tgroups=0\tsize=3\n"
    err = parse_error(text)
    lines = str(err).splitlines()
    assert lines[1] == "conv\tc\tfilters=2\tgroups=0\tsize=3"
    assert lines[2] == "    \t \t         \t       ^"


# ----------------------------------------------------------------------------- several errors at once
def test_several_errors_reported_together():
    text = ("input d 3x8x8\n"
            "conv a filters=2 size=3 groups=0\n"
            "conv b filters=2 size=3 bogus=1\n"
            "foo c\n"
            "relu e from nowhere\n"
            "conv a filters=2 size=1\n")
    err = parse_error(text)
    assert [(d.pos.line, d.message) for d in err.diagnostics] == [
        (2, "groups: must be at least 1, got 0"),
        (3, "unknown key 'bogus' for conv"),
        (4, "unknown layer kind 'foo'"),
        (5, "'nowhere' is not defined"),
        (6, "'a' is already defined on line 2"),
    ]
    rendered = str(err)
    assert rendered.count(": error: ") == 5
    assert rendered.endswith("\n\n5 errors")
    assert rendered.split("\n\n")[1] == err.diagnostics[1].render()
    assert (err.line, err.col) == (2, len("conv a filters=2 size=3 groups=") + 1)


def test_several_syntax_errors_reported_together():
    text = "input d 3 x 8x8\nconv c filters=2 size=3\nconv e filters=2 size=3 = 4\nrelu\n"
    err = parse_error(text)
    assert [(d.pos.line, d.pos.col, d.message) for d in err.diagnostics] == [
        (1, 9, "unexpected number '3'"), (3, 25, "unexpected '='"), (4, 5, "this statement ends too early")]
    assert str(err).endswith("\n\n3 errors")


def test_several_shape_errors_reported_together():
    text = ("input d 3x8x8\nconv a filters=4 size=3 groups=2\nconv b from d filters=4 size=9\n"
            "conv c from d filters=2 size=1\nadd s from c, d\n")
    err = parse_error(text)
    assert [d.pos.line for d in err.diagnostics] == [2, 3, 5]


# ----------------------------------------------------------------------------- files
def test_not_utf8_file(tmp_path):
    p = tmp_path / "bad.conv"
    p.write_bytes(b"input d 3x8x8\nconv c1 filters=4 size=3 # caf\xe9\n")
    with pytest.raises(convc.ConvcError) as info:
        convc.parse_file(p)
    col = len(b"conv c1 filters=4 size=3 # caf") + 1
    lines = str(info.value).splitlines()
    assert lines[0] == f"{p}:2:{col}: error: the file is not UTF-8 text (byte 0xe9)"
    assert lines[2] == " " * (col - 1) + "^"
    assert lines[3] == "help: save the file as UTF-8; .conv files use ASCII names"
    assert (info.value.line, info.value.col) == (2, col)


def test_not_utf8_bytes_to_parse():
    with pytest.raises(convc.ConvcError) as info:
        convc.parse(b"input d 3x8x8\n\xff\xfe\n", filename="b.conv")
    assert str(info.value).splitlines()[0] == "b.conv:2:1: error: the file is not UTF-8 text (byte 0xff)"


def test_missing_file(tmp_path):
    p = tmp_path / "nope.conv"
    with pytest.raises(convc.ConvcError) as info:
        convc.parse_file(p)
    assert str(info.value) == f"{p}: error: no such file"
    assert info.value.line is None and info.value.col is None


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(convc.ConvcError, match="is a directory"):
        convc.parse_file(tmp_path)


def test_errors_name_the_file(tmp_path):
    p = tmp_path / "g.conv"
    p.write_text("input d 3x8x8\nconv c filters=3 size=3 groups=2\n")
    with pytest.raises(convc.ConvcError) as info:
        convc.parse_file(p)
    assert str(info.value).startswith(f"{p}:2:25: error: conv c: groups=2 does not divide the 3 input channels\n")


# ----------------------------------------------------------------------------- command line
def convc_cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "convc.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, timeout=60)


def test_cli_bad_file_exits_2_without_traceback(tmp_path):
    text = "input d 3x8x8\nconv c filters=3 size=3 groups=2\nrelu r from nowhere\n"
    p = tmp_path / "bad.conv"
    p.write_text(text)
    r = convc_cli("info", p)
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    with pytest.raises(convc.ConvcError) as info:
        convc.parse_file(p)
    assert r.stderr == str(info.value) + "\n"
    assert r.stderr.startswith(f"{p}:2:25: error: conv c: groups=2 does not divide the 3 input channels\n"
                               "conv c filters=3 size=3 groups=2\n"
                               "                        ^~~~~~~~\n"
                               "help: ")
    assert r.stderr.endswith("\n\n2 errors\n")


def test_cli_missing_file_exits_2(tmp_path):
    r = convc_cli("info", tmp_path / "missing.conv")
    assert r.returncode == 2
    assert r.stderr == f"{tmp_path / 'missing.conv'}: error: no such file\n"
    assert "Traceback" not in r.stderr


def test_cli_not_utf8_exits_2(tmp_path):
    p = tmp_path / "latin1.conv"
    p.write_bytes(b"input d 3x8x8\n# \xe9\nrelu r\n")
    r = convc_cli("info", p)
    assert r.returncode == 2 and "not UTF-8" in r.stderr and "Traceback" not in r.stderr


def test_cli_good_file_exits_0():
    r = convc_cli("info", "examples/alexnet.conv")
    assert r.returncode == 0 and r.stderr == ""
    assert "conv1" in r.stdout
