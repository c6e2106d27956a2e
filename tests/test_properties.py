"""Properties over random small layer configurations, and a fuzz test of the parser.

Each layer property draws a configuration, decides by the spec's rules (written here) whether it is
valid, checks that convc agrees, and compares the oracle with PyTorch or with direct loops.
"""
from __future__ import annotations


import numpy as np
from hypothesis import HealthCheck, assume, given, settings, strategies as st
import torch.nn.functional as F

import convc
from conftest import EXAMPLES, close, t64
from test_oracle import loop_conv, loop_pool, random_params

LAYERS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def sliding(n, extent, s, p, rounding):
    span = n + 2 * p - extent
    return (span // s if rounding == "floor" else -(-span // s)) + 1


def build(text):
    """The network, or None when convc rejects it (with a ConvcError, never anything else)."""
    try:
        return convc.parse(text)
    except convc.ConvcError:
        return None


# ----------------------------------------------------------------------------- conv
@st.composite
def conv_configs(draw):
    g = draw(st.integers(1, 3))
    return dict(g=g, c=g * draw(st.integers(1, 2)), f=g * draw(st.integers(1, 2)),
                h=draw(st.integers(1, 9)), w=draw(st.integers(1, 9)),
                kh=draw(st.integers(1, 4)), kw=draw(st.integers(1, 4)),
                s=draw(st.integers(1, 3)), p=draw(st.integers(0, 2)), d=draw(st.integers(1, 2)),
                rounding=draw(st.sampled_from(["floor", "ceil"])), bias=draw(st.booleans()),
                seed=draw(st.integers(0, 2**16)))


@LAYERS
@given(conv_configs())
def test_conv_property(cfg):
    c, g, f, h, w, s, p, d = (cfg[k] for k in "c g f h w s p d".split())
    ext = (d * (cfg["kh"] - 1) + 1, d * (cfg["kw"] - 1) + 1)
    valid = ext[0] <= h + 2 * p and ext[1] <= w + 2 * p
    text = (f"input x {c}x{h}x{w}\nconv c filters={f} size={cfg['kh']}x{cfg['kw']} stride={s} pad={p} "
            f"dilation={d} groups={g} round={cfg['rounding']} bias={str(cfg['bias']).lower()}\n")
    n = build(text)
    assert (n is not None) == valid, text
    if not valid:
        return
    out_hw = (sliding(h, ext[0], s, p, cfg["rounding"]), sliding(w, ext[1], s, p, cfg["rounding"]))
    assert n.layer("c").out_shape == (f, *out_hw)
    x = np.random.default_rng(cfg["seed"]).uniform(-1, 1, (2, c, h, w))
    params = random_params(n, cfg["seed"])
    y = convc.oracle.run(n, x, params)
    if cfg["rounding"] == "floor":
        expected = F.conv2d(t64(x), t64(params["c.weight"]), t64(params["c.bias"]) if cfg["bias"] else None,
                            stride=s, padding=p, dilation=d, groups=g)
    else:
        expected = loop_conv(x, params["c.weight"], params.get("c.bias"), (s, s), (p, p), (d, d), g, out_hw)
    close(y, expected)


@LAYERS
@given(conv_configs())
def test_deconv_property(cfg):
    c, g, f, h, w, s, p, d = (cfg[k] for k in "c g f h w s p d".split())
    out_hw = [s * (n - 1) + d * (k - 1) + 1 - 2 * p for n, k in ((h, cfg["kh"]), (w, cfg["kw"]))]
    text = (f"input x {c}x{h}x{w}\ndeconv u filters={f} size={cfg['kh']}x{cfg['kw']} stride={s} pad={p} "
            f"dilation={d} groups={g}\n")
    n = build(text)
    assert (n is not None) == (min(out_hw) >= 1), text
    if n is None:
        return
    x = np.random.default_rng(cfg["seed"]).uniform(-1, 1, (1, c, h, w))
    params = random_params(n, cfg["seed"])
    expected = F.conv_transpose2d(t64(x), t64(params["u.weight"]), t64(params["u.bias"]), stride=s, padding=p,
                                  dilation=d, groups=g)
    close(convc.oracle.run(n, x, params), expected)


@LAYERS
@given(conv_configs())
def test_local_property(cfg):
    c, g, f, h, w, s, p = (cfg[k] for k in "c g f h w s p".split())
    kh, kw = cfg["kh"], cfg["kw"]
    assume(kh <= h + 2 * p and kw <= w + 2 * p)
    n = convc.parse(f"input x {c}x{h}x{w}\nlocal l filters={f} size={kh}x{kw} stride={s} pad={p} groups={g} "
                    f"round={cfg['rounding']}\n")
    out_hw = (sliding(h, kh, s, p, cfg["rounding"]), sliding(w, kw, s, p, cfg["rounding"]))
    assert n.param_shapes()["l.weight"] == (f, *out_hw, c // g, kh, kw)
    x = np.random.default_rng(cfg["seed"]).uniform(-1, 1, (1, c, h, w))
    params = random_params(n, cfg["seed"])
    close(convc.oracle.run(n, x, params),
          loop_conv(x, params["l.weight"], params["l.bias"], (s, s), (p, p), (1, 1), g, out_hw, local=True))


# ----------------------------------------------------------------------------- pool
def spec_pool_out(n, k, s, p, rounding, convention):
    """Spec §2: floor, or ceil with the clip (pad > 0, or always under torch)."""
    o = sliding(n, k, s, p, rounding)
    if rounding == "ceil" and (p > 0 or convention == "torch") and (o - 1) * s >= n + p:
        o -= 1
    return o


@LAYERS
@given(st.sampled_from(["caffe", "torch", "cuda-convnet"]), st.sampled_from(["max", "avg"]),
       st.sampled_from(["floor", "ceil"]), st.sampled_from(["pad", "real"]), st.integers(1, 9), st.integers(1, 9),
       st.integers(1, 4), st.integers(1, 4), st.integers(0, 3), st.integers(0, 2**16))
def test_pool_property(convention, mode, rounding, count, h, k, s, p, extra_w, seed):
    w = max(1, h + extra_w - 1)
    text = (f"convention {convention}\ninput x 2x{h}x{w}\npool q {mode} size={k} stride={s} pad={p} round={rounding} "
            f"count={count}\n")
    n = build(text)
    outs = [spec_pool_out(m, k, s, p, rounding, convention) for m in (h, w)]
    valid = p < k and k <= min(h, w) + 2 * p and all((o - 1) * s - p < m for o, m in zip(outs, (h, w)))
    assert (n is not None) == valid, text
    if not valid:
        return
    assert n.layer("q").out_shape == (2, *outs)
    x = np.random.default_rng(seed).uniform(-1, 1, (2, 2, h, w))
    y = convc.oracle.run(n, x, {})
    close(y, loop_pool(x, mode, (k, k), (s, s), (p, p), tuple(outs), count))
    # PyTorch agrees wherever it accepts the configuration (pad <= size/2): its ceil_mode always clips,
    # and without pad the clip only drops windows past the input, which convc rejects under caffe.
    if 2 * p <= k:
        ceil = rounding == "ceil"
        if mode == "max":
            expected = F.max_pool2d(t64(x), k, s, p, ceil_mode=ceil)
        else:
            expected = F.avg_pool2d(t64(x), k, s, p, ceil_mode=ceil, count_include_pad=count == "pad")
        close(y, expected)


# ----------------------------------------------------------------------------- lrn
@LAYERS
@given(st.integers(1, 8), st.integers(1, 6), st.integers(1, 6), st.integers(1, 7),
       st.floats(1e-4, 2.0), st.floats(0.1, 1.5), st.floats(0.5, 3.0), st.sampled_from(["across", "within"]),
       st.integers(0, 2**16))
def test_lrn_property(c, h, w, size, alpha, beta, k, region, seed):
    n = convc.parse(f"input x {c}x{h}x{w}\nlrn n size={size} alpha={alpha!r} beta={beta!r} k={k!r} region={region}\n")
    x = np.random.default_rng(seed).uniform(-3, 3, (2, c, h, w))
    y = convc.oracle.run(n, x, {})
    if region == "across":
        expected = F.local_response_norm(t64(x), size, alpha=alpha, beta=beta, k=k)
    else:
        lo, hi = size // 2, (size - 1) // 2
        window = F.avg_pool2d(F.pad(t64(x) ** 2, (lo, hi, lo, hi)), size, stride=1)
        expected = t64(x) * (k + alpha * window) ** -beta
    close(y, expected)


# ----------------------------------------------------------------------------- fuzz
EXAMPLE_TEXTS = [p.read_text() for p in EXAMPLES]
SNIPPETS = ["from", "x", "=", ",", "[", "]", "global", "max", "avg", "neuron=", "groups=", "0", "-1", "1e99",
            "2147483648", "size=", "stride=", "pad=", "round=ceil", "tanh[1,2]", "brelu", "input d 3x4x4\n",
            "convention torch\n", "network n\n", "concat c from a, b", "\n", "fc", "conv", "deconv", "local", "lrn",
            "pool", "3x3", "0x3", "1x1x1", "region=within", "count=real", "filler=bilinear", "bias=false",
            "dilation=3", "99999", "#", "\t", "\r\n", "é", "\x00", "1.5e", "..", "x-1"]


def exercise(text):
    """Parse; anything but a network or a ConvcError fails. A network must also report and size itself."""
    try:
        n = convc.parse(text)
    except convc.ConvcError as err:
        rendered = str(err)
        assert ": error: " in rendered
        assert err.diagnostics
        return
    n.summary()
    n.summary_dict()
    for layer in n.layers:
        assert all(d >= 1 for d in layer.out_shape)
        assert all(d >= 1 for shape in layer.param_shapes().values() for d in shape)


@st.composite
def mutated_examples(draw):
    text = draw(st.sampled_from(EXAMPLE_TEXTS))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "snippet", "swap", "drop_line", "dup_line", "bytes"]))
        i = draw(st.integers(0, len(text)))
        lines = text.split("\n")
        a, b = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
        if op == "delete":
            text = text[:i] + text[i + draw(st.integers(1, 8)):]
        elif op == "insert":
            text = text[:i] + draw(st.text(alphabet="abcxyz0189 =,.#[]-+_\nex", min_size=1, max_size=4)) + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.characters()) + text[i + 1:]
        elif op == "snippet":
            text = text[:i] + draw(st.sampled_from(SNIPPETS)) + text[i:]
        elif op == "swap":
            lines[a], lines[b] = lines[b], lines[a]
            text = "\n".join(lines)
        elif op == "drop_line":
            del lines[a]
            text = "\n".join(lines)
        elif op == "dup_line":
            lines.insert(b, lines[a])
            text = "\n".join(lines)
        else:
            text = text[:i] + draw(st.binary(min_size=1, max_size=4)).decode("latin-1") + text[i:]
    return text


@FUZZ
@given(mutated_examples())
def test_fuzz_mutated_examples(text):
    exercise(text)


@FUZZ
@given(st.lists(st.sampled_from(list("abcdefinoprtuvx0123456789 =,.#[]-+_\n\t") +
                                ["input d 3x8x8\n", "conv ", "pool ", "from ", "filters=", "size="]),
                max_size=60))
def test_fuzz_random_text(pieces):
    exercise("".join(pieces))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=80))
def test_fuzz_any_unicode(text):
    exercise(text)


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=120))
def test_fuzz_random_bytes(data):
    try:
        convc.parse(data)
    except convc.ConvcError:
        pass


def test_fuzz_random_bytes_in_a_file(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(30):
        data = bytearray(EXAMPLE_TEXTS[i % len(EXAMPLE_TEXTS)].encode())
        for _ in range(3):
            data[int(rng.integers(len(data)))] = int(rng.integers(256))
        path = tmp_path / f"f{i}.conv"
        path.write_bytes(bytes(data))
        try:
            convc.parse_file(path)
        except convc.ConvcError:
            pass
