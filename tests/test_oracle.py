"""The NumPy oracle against PyTorch (float64), and against direct loops where PyTorch has no such layer."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convc
from conftest import EXAMPLES, close, layer_net, net, rand, t64


def random_params(n, seed=1):
    """float64 parameters, uniform in [-1, 1) (variances in [0.5, 1.5))."""
    rng = np.random.default_rng(seed)
    params = {}
    for name, shape in n.param_shapes().items():
        params[name] = rng.uniform(0.5, 1.5, shape) if name.endswith(".var") else rng.uniform(-1, 1, shape)
    return params


def run(line, shape=(3, 8, 8), convention="caffe", batch=2, seed=0, x=None, params=None):
    """One layer on random input: (net, x, params, oracle output)."""
    n = layer_net(line, shape, convention)
    x = rand(batch, *shape, seed=seed) if x is None else x
    params = random_params(n, seed + 1) if params is None else params
    return n, x, params, convc.oracle.run(n, x, params)


def p(params, name):
    return t64(params[name]) if name in params else None


# ----------------------------------------------------------------------------- conv / deconv vs torch
@pytest.mark.parametrize("c, h, w, f, k, s, pad, d, g, bias", [
    (3, 8, 8, 4, 3, 1, 0, 1, 1, True),
    (4, 9, 7, 6, 3, 2, 1, 1, 2, True),
    (4, 10, 10, 4, 3, 1, 2, 2, 4, False),       # depthwise, dilated
    (6, 11, 9, 6, 5, 3, 2, 1, 3, True),
    (2, 7, 7, 4, 2, 2, 0, 3, 1, True),
    (4, 6, 9, 8, (3, 1), (1, 2), (1, 0), (2, 1), 2, True),
])
def test_conv_vs_torch(c, h, w, f, k, s, pad, d, g, bias):
    fmt = lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v)
    line = (f"conv c filters={f} size={fmt(k)} stride={fmt(s)} pad={fmt(pad)} dilation={fmt(d)} groups={g} "
            f"bias={'true' if bias else 'false'}")
    n, x, params, y = run(line, (c, h, w))
    expected = F.conv2d(t64(x), t64(params["c.weight"]), p(params, "c.bias"), stride=s, padding=pad, dilation=d,
                        groups=g)
    close(y, expected)


@pytest.mark.parametrize("c, h, f, k, s, pad, d, g", [
    (3, 5, 4, 3, 1, 0, 1, 1),
    (4, 4, 6, 4, 2, 1, 1, 2),
    (4, 5, 4, 3, 3, 2, 2, 4),
    (6, 3, 3, 5, 2, 1, 1, 3),
    (2, 4, 2, 2, 2, 0, 3, 2),
])
def test_deconv_vs_torch(c, h, f, k, s, pad, d, g):
    n, x, params, y = run(f"deconv u filters={f} size={k} stride={s} pad={pad} dilation={d} groups={g}", (c, h, h + 1))
    expected = F.conv_transpose2d(t64(x), t64(params["u.weight"]), t64(params["u.bias"]), stride=s, padding=pad,
                                  dilation=d, groups=g)
    close(y, expected)


def test_bilinear_deconv_upsamples_a_constant():
    # With the fixed bilinear kernel and stride 2 (K=4, P=1), the interior of a constant image stays constant.
    n = layer_net("deconv u filters=2 size=4 stride=2 pad=1 groups=2 bias=false filler=bilinear", (2, 5, 5))
    y = convc.oracle.run(n, np.ones((1, 2, 5, 5)), {})
    close(y[:, :, 1:-1, 1:-1], np.ones((1, 2, 8, 8)))


# ----------------------------------------------------------------------------- lrn
@pytest.mark.parametrize("c, size, alpha, beta, k", [(7, 5, 1e-2, 0.75, 1.0), (6, 3, 0.5, 0.6, 2.0), (5, 4, 1.0, 1.0, 1.5),
                                                     (3, 9, 0.3, 0.75, 1.0), (4, 1, 0.2, 0.5, 1.0)])
def test_lrn_across_vs_torch(c, size, alpha, beta, k):
    n, x, _, y = run(f"lrn n size={size} alpha={alpha} beta={beta} k={k}", (c, 5, 4), x=rand(2, c, 5, 4, low=-3, high=3))
    close(y, F.local_response_norm(t64(x), size, alpha=alpha, beta=beta, k=k))


@pytest.mark.parametrize("size, alpha, beta, k", [(3, 0.5, 0.75, 1.0), (5, 2.0, 0.6, 1.0), (1, 0.3, 1.0, 2.0),
                                                  (4, 1.0, 0.75, 1.0), (2, 0.7, 0.5, 1.0)])
def test_lrn_within_vs_caffe_construction(size, alpha, beta, k):
    # Caffe's WITHIN_CHANNEL: avg-pool x² over size×size (stride 1, zeros outside, divisor size² -
    # count_include_pad), then (k + alpha·avg)^-beta. Even sizes are centred as spec §2 says:
    # size//2 before, (size-1)//2 after.
    n, x, _, y = run(f"lrn n size={size} alpha={alpha} beta={beta} k={k} region=within", (3, 6, 7),
                     x=rand(2, 3, 6, 7, low=-3, high=3))
    sq = t64(x) ** 2
    if size % 2:
        avg = F.avg_pool2d(sq, size, stride=1, padding=(size - 1) // 2, count_include_pad=True)
    else:
        lo, hi = size // 2, (size - 1) // 2
        avg = F.avg_pool2d(F.pad(sq, (lo, hi, lo, hi)), size, stride=1)
    close(y, t64(x) * (k + alpha * avg) ** -beta)


# ----------------------------------------------------------------------------- pooling vs torch
@pytest.mark.parametrize("h, w, k, s, pad", [(6, 6, 3, 2, 1), (5, 7, 2, 2, 1), (7, 7, 3, 2, 0), (9, 8, 3, 3, 1),
                                             (13, 13, 3, 2, 0), (6, 5, 2, 1, 1)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_caffe_pool_vs_torch_ceil_mode(h, w, k, s, pad, mode):
    # Caffe's ceil rounding with its clip (pad > 0) is PyTorch's ceil_mode; Caffe's avg divides by the
    # window clipped to the padded extent, which is count_include_pad=True.
    n, x, _, y = run(f"pool p {mode} size={k} stride={s} pad={pad}", (3, h, w), "caffe")
    if mode == "max":
        expected = F.max_pool2d(t64(x), k, s, pad, ceil_mode=True)
    else:
        expected = F.avg_pool2d(t64(x), k, s, pad, ceil_mode=True, count_include_pad=True)
    close(y, expected)


@pytest.mark.parametrize("h, k, s, pad, rounding", [(6, 3, 2, 1, "floor"), (5, 2, 2, 1, "ceil"), (7, 3, 3, 1, "ceil"),
                                                    (8, 2, None, 0, "floor"), (5, 1, 3, 0, "ceil"), (9, 4, 3, 2, "ceil")])
@pytest.mark.parametrize("mode, count", [("max", None), ("avg", "pad"), ("avg", "real")])
def test_torch_pool_vs_torch(h, k, s, pad, rounding, mode, count):
    line = f"pool p {mode} size={k} pad={pad} round={rounding}" + (f" stride={s}" if s else "") + \
        (f" count={count}" if count else "")
    n, x, _, y = run(line, (2, h, h + 1), "torch")
    stride = s or k
    if mode == "max":
        expected = F.max_pool2d(t64(x), k, stride, pad, ceil_mode=rounding == "ceil")
    else:
        expected = F.avg_pool2d(t64(x), k, stride, pad, ceil_mode=rounding == "ceil",
                                count_include_pad=count == "pad")
    close(y, expected)


def test_pool_count_default_is_pad_under_torch():
    n, x, _, y = run("pool p avg size=3 stride=2 pad=1", (2, 6, 6), "torch")
    close(y, F.avg_pool2d(t64(x), 3, 2, 1, count_include_pad=True))


@pytest.mark.parametrize("mode", ["max", "avg"])
def test_global_pool_vs_torch(mode):
    n, x, _, y = run(f"pool g {mode} global", (3, 5, 7))
    expected = t64(x).amax(dim=(2, 3), keepdim=True) if mode == "max" else t64(x).mean(dim=(2, 3), keepdim=True)
    close(y, expected)


def test_max_pool_ignores_padding_for_negative_inputs():
    # All inputs negative: a zero from padding must never win.
    n, x, _, y = run("pool p max size=3 stride=2 pad=1", (1, 5, 5), x=rand(1, 1, 5, 5, low=-2, high=-1))
    assert (y < 0).all()
    close(y, F.max_pool2d(t64(x), 3, 2, 1, ceil_mode=True))


# ----------------------------------------------------------------------------- fc, softmax, batchnorm, branches
def test_fc_vs_torch():
    n, x, params, y = run("fc f outputs=5", (3, 4, 2))
    close(y, F.linear(t64(x).flatten(1), t64(params["f.weight"]), t64(params["f.bias"])))


def test_fc_after_fc_without_bias():
    n, x, params, y = run("fc f outputs=5\nfc g outputs=3 bias=false", (2, 3, 3))
    h = F.linear(t64(x).flatten(1), t64(params["f.weight"]), t64(params["f.bias"]))
    close(y, F.linear(h, t64(params["g.weight"])))


def test_softmax_vs_torch():
    n, x, _, y = run("softmax s", (5, 3, 2), x=rand(2, 5, 3, 2, low=-50, high=50))
    close(y, F.softmax(t64(x), dim=1))
    n, x, params, y = run("fc f outputs=6\nsoftmax s", (2, 2, 2))
    close(y, F.softmax(F.linear(t64(x).flatten(1), t64(params["f.weight"]), t64(params["f.bias"])), dim=1))


def test_softmax_is_stable_for_large_inputs():
    n = layer_net("softmax s", (3, 1, 1))
    y = convc.oracle.run(n, np.array([[[[1000.0]], [[1001.0]], [[-1000.0]]]]), {})
    assert np.isfinite(y).all()
    close(y.ravel(), F.softmax(torch.tensor([1000.0, 1001.0, -1000.0], dtype=torch.float64), 0))


@pytest.mark.parametrize("eps", [1e-5, 0.1])
def test_batchnorm_vs_torch(eps):
    n, x, params, y = run(f"batchnorm b eps={eps}", (4, 3, 5))
    expected = F.batch_norm(t64(x), t64(params["b.mean"]), t64(params["b.var"]), t64(params["b.scale"]),
                            t64(params["b.shift"]), training=False, eps=eps)
    close(y, expected)


def test_batchnorm_after_fc():
    n, x, params, y = run("fc f outputs=4\nbatchnorm b", (2, 2, 2))
    h = F.linear(t64(x).flatten(1), t64(params["f.weight"]), t64(params["f.bias"]))
    close(y, F.batch_norm(h, t64(params["b.mean"]), t64(params["b.var"]), t64(params["b.scale"]),
                          t64(params["b.shift"]), training=False, eps=1e-5))


def test_concat_add_dropout():
    n = net("input x 3x6x6\nconv a filters=2 size=1\nconcat c from a, x, a\nconv b from x filters=7 size=1\n"
            "add s from c, b, c\ndropout d ratio=0.3\n")
    x, params = rand(2, 3, 6, 6), random_params(n)
    ys = convc.oracle.run(n, x, params, all_layers=True)
    a = F.conv2d(t64(x), t64(params["a.weight"]), t64(params["a.bias"]))
    b = F.conv2d(t64(x), t64(params["b.weight"]), t64(params["b.bias"]))
    c = torch.cat([a, t64(x), a], dim=1)
    close(ys["c"], c)
    close(ys["s"], c + b + c)
    close(ys["d"], c + b + c)


# ----------------------------------------------------------------------------- activations
ACTS = {
    "relu": ("relu", F.relu),
    "logistic": ("logistic", torch.sigmoid),
    "tanh": ("tanh", torch.tanh),
    "tanh[a,b]": ("tanh[1.7159,0.6667]", lambda v: 1.7159 * torch.tanh(0.6667 * v)),
    "abs": ("abs", torch.abs),
    "square": ("square", torch.square),
    "sqrt": ("sqrt", torch.sqrt),
    "softrelu": ("softrelu", lambda v: torch.log1p(torch.exp(v))),
    "ident": ("ident", lambda v: v),
    "brelu[a]": ("brelu[0.5]", lambda v: torch.clamp(v, 0, 0.5)),
    "linear[a,b]": ("linear[2,-0.5]", lambda v: 2 * v - 0.5),
    "linear": ("linear", lambda v: v),
    "leaky[a]": ("leaky[0.2]", lambda v: F.leaky_relu(v, 0.2)),
    "leaky": ("leaky", lambda v: F.leaky_relu(v, 0.01)),
}
# the same activations written as layers with key=value parameters
AS_LAYER = {"tanh[1.7159,0.6667]": "tanh t a=1.7159 b=0.6667", "brelu[0.5]": "brelu t a=0.5",
            "linear[2,-0.5]": "linear t a=2 b=-0.5", "leaky[0.2]": "leaky t a=0.2"}


@pytest.mark.parametrize("key", list(ACTS))
def test_activation_layers_vs_torch(key):
    text, fn = ACTS[key]
    low = 0.01 if text == "sqrt" else -4
    n, x, _, y = run(AS_LAYER.get(text, f"{text} t"), (3, 4, 5), x=rand(2, 3, 4, 5, low=low, high=4))
    close(y, fn(t64(x)))


@pytest.mark.parametrize("key", list(ACTS))
def test_activations_as_neuron_vs_torch(key):
    text, fn = ACTS[key]
    n = layer_net(f"fc f outputs=7 neuron={text}", (2, 3, 3))
    x, params = rand(2, 2, 3, 3, low=-2, high=2), random_params(n)
    if text == "sqrt":      # keep the input of sqrt positive
        x, params = np.abs(x) + 0.01, {k: np.abs(v) for k, v in params.items()}
    y = convc.oracle.run(n, x, params)
    close(y, fn(F.linear(t64(x).flatten(1), t64(params["f.weight"]), t64(params["f.bias"]))))


@pytest.mark.parametrize("text", ["relu", "tanh[1.7159,0.6667]", "leaky[0.2]"])
def test_neuron_on_conv_deconv_local_pool(text):
    fn = dict(ACTS.values())[text]
    n, x, params, y = run(f"conv c filters=4 size=3 pad=1 neuron={text}", (2, 5, 5))
    close(y, fn(F.conv2d(t64(x), t64(params["c.weight"]), t64(params["c.bias"]), padding=1)))
    n, x, params, y = run(f"deconv u filters=4 size=3 stride=2 neuron={text}", (2, 3, 3))
    close(y, fn(F.conv_transpose2d(t64(x), t64(params["u.weight"]), t64(params["u.bias"]), stride=2)))
    n, x, params, y = run(f"pool p avg size=2 stride=2 neuron={text}", (2, 4, 4), "torch")
    close(y, fn(F.avg_pool2d(t64(x), 2)))
    n, x, params, y = run(f"local l filters=2 size=3 neuron={text}", (2, 4, 4))
    plain = layer_net("local l filters=2 size=3", (2, 4, 4))
    close(y, fn(torch.from_numpy(convc.oracle.run(plain, x, params))))


def test_sqrt_of_negative_is_nan():
    n, x, _, y = run("sqrt s", (1, 1, 2), x=np.array([[[[-1.0, 4.0]]]]))
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 0, 1] == 2.0


# ----------------------------------------------------------------------------- direct loops
def out_size(n, k_extent, s, p, rounding):
    span = n + 2 * p - k_extent
    return (math.floor(span / s) if rounding == "floor" else math.ceil(span / s)) + 1


def loop_conv(x, weight, bias, stride, pad, dilation, groups, out_hw, local=False):
    """Per output pixel: sum over taps; input taps outside [0, H) x [0, W) read zero.

    weight: (F, C/G, Kh, Kw), or (F, H', W', C/G, Kh, Kw) when `local`."""
    n, c, h, w = x.shape
    f = weight.shape[0]
    kh, kw = weight.shape[-2:]
    cg, fg = c // groups, f // groups
    y = np.zeros((n, f, *out_hw))
    for b in range(n):
        for o in range(f):
            g = o // fg
            for oy in range(out_hw[0]):
                for ox in range(out_hw[1]):
                    wk = weight[o, oy, ox] if local else weight[o]
                    acc = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            iy = oy * stride[0] - pad[0] + i * dilation[0]
                            ix = ox * stride[1] - pad[1] + j * dilation[1]
                            if 0 <= iy < h and 0 <= ix < w:
                                acc += float(x[b, g * cg:(g + 1) * cg, iy, ix] @ wk[:, i, j])
                    if bias is not None:
                        acc += bias[o, oy, ox] if local else bias[o]
                    y[b, o, oy, ox] = acc
    return y


def loop_pool(x, mode, k, s, pad, out_hw, count):
    n, c, h, w = x.shape
    y = np.zeros((n, c, *out_hw))
    for oy in range(out_hw[0]):
        for ox in range(out_hw[1]):
            y0, x0 = oy * s[0] - pad[0], ox * s[1] - pad[1]
            ys, ye = max(y0, 0), min(y0 + k[0], h)
            xs, xe = max(x0, 0), min(x0 + k[1], w)
            win = x[:, :, ys:ye, xs:xe]
            if mode == "max":
                y[:, :, oy, ox] = win.max(axis=(2, 3))
            elif count == "real":
                y[:, :, oy, ox] = win.sum(axis=(2, 3)) / ((ye - ys) * (xe - xs))
            else:
                div = (min(y0 + k[0], h + pad[0]) - y0) * (min(x0 + k[1], w + pad[1]) - x0)
                y[:, :, oy, ox] = win.sum(axis=(2, 3)) / div
    return y


def test_loop_conv_agrees_with_torch():
    # The loop reference itself, checked on a floor case before it is trusted for the ceil cases.
    x, wt, b = rand(2, 4, 7, 6), rand(6, 2, 3, 2, seed=1), rand(6, seed=2)
    ref = F.conv2d(t64(x), t64(wt), t64(b), stride=(2, 1), padding=(1, 1), dilation=(1, 2), groups=2)
    close(loop_conv(x, wt, b, (2, 1), (1, 1), (1, 2), 2, tuple(ref.shape[2:])), ref)


@pytest.mark.parametrize("c, h, w, f, k, s, pad, d, g", [
    (3, 8, 8, 4, 3, 2, 0, 1, 1),       # 1 + ceil(5/2) = 4: the last window hangs over by one row
    (4, 7, 9, 4, 3, 2, 1, 1, 2),
    (2, 9, 9, 2, 2, 3, 0, 2, 2),       # 1 + ceil(7/3) = 4
    (3, 24, 24, 4, 11, 4, 0, 1, 1),    # AlexNet conv1 geometry at 24: 1 + ceil(13/4) = 5
])
def test_cuda_convnet_ceil_conv_vs_loops(c, h, w, f, k, s, pad, d, g):
    n, x, params, y = run(f"conv c filters={f} size={k} stride={s} pad={pad} dilation={d} groups={g}", (c, h, w),
                          "cuda-convnet")
    ext = d * (k - 1) + 1
    out_hw = (out_size(h, ext, s, pad, "ceil"), out_size(w, ext, s, pad, "ceil"))
    assert n.layer("c").out_shape == (f, *out_hw)
    close(y, loop_conv(x, params["c.weight"], params["c.bias"], (s, s), (pad, pad), (d, d), g, out_hw))


def test_ceil_conv_extends_only_bottom_right():
    # The first output row must equal the floor conv's first row (no extra padding on top/left).
    n, x, params, y = run("conv c filters=2 size=3 stride=2 round=ceil", (1, 6, 6))
    floor = F.conv2d(t64(x), t64(params["c.weight"]), t64(params["c.bias"]), stride=2)
    close(y[:, :, :2, :2], floor)


@pytest.mark.parametrize("c, h, w, f, k, s, pad, g, rounding, bias", [
    (2, 5, 5, 3, 3, 1, 0, 1, "floor", True),
    (4, 6, 5, 4, 3, 2, 1, 2, "floor", True),
    (3, 6, 6, 2, 3, 2, 0, 1, "ceil", True),
    (4, 7, 6, 6, 2, 2, 1, 2, "ceil", False),
    (6, 4, 4, 3, 3, 1, 1, 3, "floor", True),
])
def test_local_vs_loops(c, h, w, f, k, s, pad, g, rounding, bias):
    n, x, params, y = run(f"local l filters={f} size={k} stride={s} pad={pad} groups={g} round={rounding} "
                          f"bias={str(bias).lower()}", (c, h, w))
    out_hw = (out_size(h, k, s, pad, rounding), out_size(w, k, s, pad, rounding))
    assert n.param_shapes()["l.weight"] == (f, *out_hw, c // g, k, k)
    close(y, loop_conv(x, params["l.weight"], params.get("l.bias"), (s, s), (pad, pad), (1, 1), g, out_hw,
                       local=True))


def test_local_with_shared_weights_is_a_conv():
    n, x, params, y = run("local l filters=4 size=3 stride=2 pad=1 groups=2", (4, 7, 7))
    shared = rand(4, 2, 3, 3, seed=5)
    params = {"l.weight": np.broadcast_to(shared[:, None, None], (4, 4, 4, 2, 3, 3)), "l.bias": np.zeros((4, 4, 4))}
    y = convc.oracle.run(n, x, params)
    close(y, F.conv2d(t64(x), t64(shared), stride=2, padding=1, groups=2))


@pytest.mark.parametrize("h, w, k, s, pad", [(6, 6, 3, 2, 0), (7, 5, 3, 2, 1), (8, 8, 2, 3, 0), (9, 7, 4, 3, 2),
                                             (12, 12, 3, 2, 0)])
@pytest.mark.parametrize("mode", ["max", "avg"])
def test_cuda_convnet_pool_vs_loops(h, w, k, s, pad, mode):
    # cuda-convnet: ceil rounding; avg divides by the real pixels in the window. Spec §2's clip for
    # pad > 0 drops a last window that would hold only padding (W=7, K=4, S=3, P=2: 4 -> 3).
    n, x, _, y = run(f"pool p {mode} size={k} stride={s} pad={pad}", (3, h, w), "cuda-convnet")
    assert n.layer("p").attrs["count"] == "real"

    def pool_out(size):
        o = out_size(size, k, s, pad, "ceil")
        return o - 1 if pad > 0 and (o - 1) * s >= size + pad else o
    out_hw = (pool_out(h), pool_out(w))
    assert n.layer("p").out_shape == (3, *out_hw)
    close(y, loop_pool(x, mode, (k, k), (s, s), (pad, pad), out_hw, "real"))


def test_caffe_avg_pool_count_pad_vs_loops():
    # ceil((6+2-3)/2)+1 = 4 and (4-1)·2 = 6 < 6+1: no clip. The last window [5, 8) divides by
    # min(8, 6+1) - 5 = 2 (count=pad), not by its 1 real pixel.
    n, x, _, y = run("pool p avg size=3 stride=2 pad=1", (2, 6, 6), "caffe")
    assert n.layer("p").out_shape == (2, 4, 4)
    close(y, loop_pool(x, "avg", (3, 3), (2, 2), (1, 1), (4, 4), "pad"))
    n, x, _, y = run("pool p avg size=3 stride=2 pad=1 count=real", (2, 6, 6), "caffe")
    close(y, loop_pool(x, "avg", (3, 3), (2, 2), (1, 1), (4, 4), "real"))


def test_loop_pool_agrees_with_torch():
    x = rand(2, 3, 7, 6)
    for count in ("pad", "real"):
        ref = F.avg_pool2d(t64(x), 3, 2, 1, ceil_mode=True, count_include_pad=count == "pad")
        close(loop_pool(x, "avg", (3, 3), (2, 2), (1, 1), tuple(ref.shape[2:]), count), ref)
    ref = F.max_pool2d(t64(x), 3, 2, 1, ceil_mode=True)
    close(loop_pool(x, "max", (3, 3), (2, 2), (1, 1), tuple(ref.shape[2:]), None), ref)


# ----------------------------------------------------------------------------- whole examples
@functools.cache
def example_run(path):
    n = convc.parse_file(path)
    x = np.random.default_rng(0).standard_normal((2, *n.input_shape)).astype(np.float32)
    return n, convc.oracle.run(n, x, n.init_params(seed=0), all_layers=True)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_oracle_runs_every_example(path):
    n, ys = example_run(path)
    assert list(ys) == [l.name for l in n.layers]
    for layer in n.layers:
        y = ys[layer.name]
        assert y.shape == (2, *layer.out_shape), layer.name
        assert np.isfinite(y).all(), layer.name


def test_all_layers_ends_with_the_plain_output():
    path = next(p for p in EXAMPLES if p.name == "cifar10_18pct.conv")
    n, ys = example_run(path)
    x = np.random.default_rng(0).standard_normal((2, *n.input_shape)).astype(np.float32)
    close(convc.oracle.run(n, x, n.init_params(seed=0)), ys["probs"])


def test_softmax_outputs_of_examples_sum_to_one():
    for path in EXAMPLES:
        n, ys = example_run(path)
        if n.output.kind == "softmax":
            close(ys[n.output.name].sum(axis=1), np.ones(2))


def test_activations_stay_order_one_through_alexnet():
    n, ys = example_run(next(p for p in EXAMPLES if p.name == "alexnet.conv"))
    for name in ("conv1", "conv5", "fc6", "fc7", "fc8"):
        assert 0.05 < ys[name].std() < 20, (name, ys[name].std())


# ----------------------------------------------------------------------------- init_params
def test_init_params_deterministic_per_seed():
    n = convc.parse_file(next(p for p in EXAMPLES if p.name == "cifar10_11pct.conv"))
    a, b, c = n.init_params(seed=0), n.init_params(seed=0), n.init_params(seed=1)
    assert list(a) == list(n.param_shapes())
    for name, shape in n.param_shapes().items():
        assert a[name].shape == shape and a[name].dtype == np.float32
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name]), name
        assert np.isfinite(a[name]).all()


def test_init_params_arrays_differ_between_layers():
    n = net("input d 4x6x6\nconv a filters=4 size=3\nconv b from d filters=4 size=3\n")
    p = n.init_params(0)
    assert not np.array_equal(p["a.weight"], p["b.weight"])


def test_init_params_default_seed():
    n = layer_net("conv c filters=2 size=3")
    np.testing.assert_array_equal(n.init_params()["c.weight"], n.init_params(seed=0)["c.weight"])


def caffe_bilinear(k):
    """Caffe's BilinearFiller (filler.hpp), transcribed: one K×K slice."""
    f = math.ceil(k / 2.0)
    c = (2 * f - 1 - f % 2) / (2.0 * f)
    w = np.zeros((k, k))
    for i in range(k * k):
        x, y = i % k, (i // k) % k
        w[y, x] = (1 - abs(x / f - c)) * (1 - abs(y / f - c))
    return w


def fcn_upsample_filt(k):
    """FCN's surgery.upsample_filt: the symmetric bilinear kernel."""
    factor = (k + 1) // 2
    center = factor - 1 if k % 2 == 1 else factor - 0.5
    og = np.ogrid[:k, :k]
    return (1 - abs(og[0] - center) / factor) * (1 - abs(og[1] - center) / factor)


@pytest.mark.parametrize("k", [1, 4, 5, 8, 9])
def test_bilinear_filler_is_caffes(k):
    # Caffe's kernel sizes for upsampling by f: K = 2f - f%2 (1, 4, 5, 8, 9, ...)
    n = layer_net(f"deconv u filters=3 size={k} stride=2 groups=3 bias=false filler=bilinear", (3, 6, 6))
    w = n.init_params(seed=7)["u.weight"]
    assert w.shape == (3, 1, k, k) and w.dtype == np.float32
    for s in range(3):
        close(w[s, 0], caffe_bilinear(k), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(w, n.init_params(seed=8)["u.weight"])     # fixed, not random


@pytest.mark.parametrize("k", [2, 3, 6, 7])
def test_bilinear_filler_other_sizes_follow_the_spec_formula(k):
    # spec §2: f = ceil(K/2), c = (K-1)/(2f); for these K it is FCN's symmetric kernel.
    n = layer_net(f"deconv u filters=2 size={k} stride=2 groups=1 bias=false filler=bilinear", (1, 4, 4))
    w = n.init_params(0)["u.weight"]
    for f in range(2):
        close(w[0, f], fcn_upsample_filt(k), rtol=1e-6, atol=1e-7)


def test_bilinear_weights_used_when_params_omit_them():
    n = layer_net("deconv u filters=1 size=4 stride=2 pad=1 bias=false filler=bilinear", (1, 3, 3))
    x = rand(1, 1, 3, 3)
    y = convc.oracle.run(n, x, {})
    close(y, F.conv_transpose2d(t64(x), t64(caffe_bilinear(4)[None, None]), stride=2, padding=1), rtol=1e-6,
          atol=1e-7)


def test_batchnorm_init():
    n = layer_net("batchnorm b", (5, 2, 2))
    p = n.init_params(seed=3)
    for name, value in (("mean", 0), ("var", 1), ("scale", 1), ("shift", 0)):
        np.testing.assert_array_equal(p[f"b.{name}"], np.full(5, value, np.float32))


def test_init_weight_scale_follows_fan_in():
    n = layer_net("conv c filters=64 size=3\nfc f outputs=64", (32, 12, 12))
    p = n.init_params(0)
    # He/Xavier-style: std about 1/sqrt(fan_in), fan_in = C/G·K² and the flattened input for fc
    assert 0.7 < p["c.weight"].std() * math.sqrt(32 * 9) < 1.5
    assert 0.7 < p["f.weight"].std() * math.sqrt(64 * 10 * 10) < 1.5
