"""Stage 3: every layer kind as TVM tensor expressions (te.compute), beside oracle.py.

`LOWER[kind](layer, inputs, params)` takes te tensors (inputs in NCHW with the batch, params
keyed by suffix: "weight", "bias", ...) and returns the layer's output tensor, bias and neuron
included, so that one layer is one PrimFunc. Padding is a stage inside that PrimFunc (the
schedule inlines it); ceil rounding pads the bottom/right edge only, as in oracle.py.
"""
from __future__ import annotations

import tvm
from tvm import te, tirx, topi

from .layers import ceil_extra


# ----------------------------------------------------------------------------- activations
def _const(x, value):
    return tirx.const(value, str(x.ty))      # a scalar expression's type (PrimExpr.ty in TVM 0.27)


def nan_max(a, b):
    """max(a, b) with IEEE NaN propagation, as numpy.maximum and PyTorch: NaN if either is NaN.
    (tirx.max lowers to an ordered compare, which drops a NaN on one side.)"""
    return tirx.Select(tirx.Or(b > a, tirx.isnan(b)), b, a)


# A max reduction that keeps NaN (a NaN anywhere in the window gives NaN) and starts from -inf
# (a window of -inf gives -inf, not the lowest finite float).
NAN_MAX = te.comm_reducer(nan_max, lambda dtype: tirx.const(-float("inf"), dtype), name="nan_max")


def _max_reducer():
    """(reducer, padding value) of max pooling: NaN-propagating from -inf, as the oracle, except
    under a CUDA target, where DLight's cross-thread reductions accept only the built-in max
    (there, as in cuDNN's default, fmaxf drops a NaN: docs/language.md says so)."""
    target = tvm.target.Target.current(allow_none=True)
    if target is not None and target.kind.name == "cuda":
        return te.max, None
    return NAN_MAX, -float("inf")


def _relu(v):
    return tirx.Select(v < _const(v, 0), _const(v, 0), v)       # NaN < 0 is false: NaN stays NaN


ACTIVATIONS = {
    "relu": _relu,
    "logistic": lambda v: tirx.sigmoid(v),
    "tanh": lambda v, a, b: _const(v, a) * tirx.tanh(_const(v, b) * v),
    "abs": lambda v: tirx.abs(v),
    "square": lambda v: v * v,
    "sqrt": lambda v: tirx.sqrt(v),
    # log(1 + e^x) = max(x, 0) + log1p(e^-|x|): no overflow for large x
    "softrelu": lambda v: _relu(v) + tirx.log1p(tirx.exp(-tirx.abs(v))),
    "ident": lambda v: v,
    "brelu": lambda v, a: tirx.Select(v > _const(v, a), _const(v, a), _relu(v)),
    "linear": lambda v, a, b: _const(v, a) * v + _const(v, b),
    "leaky": lambda v, a: tirx.Select(v < _const(v, 0), _const(v, a) * v, v),
}


def activation_fn(act):
    """An elementwise function of one scalar expression, or None for no activation."""
    if act is None:
        return None
    return lambda v: ACTIVATIONS[act.name](v, *act.args)


def _finish(body, shape, name, bias_index=None, act=None, tag="elemwise"):
    """Wrap a scalar body (indices -> expr) with the bias and neuron in one te.compute."""
    act = activation_fn(act)

    def value(*idx):
        v = body(*idx)
        if bias_index is not None:
            v = v + bias_index(*idx)
        return act(v) if act else v

    return te.compute(shape, value, name=name, tag=tag)


# ----------------------------------------------------------------------------- padding
def _pad(x, pad, extra, name, value=0.0):
    """Zero (or `value`) padding: `pad` on top/left, `pad + extra` on bottom/right."""
    (ph, pw), (eh, ew) = pad, extra
    n, c, h, w = (int(d) for d in x.shape)
    if ph == pw == eh == ew == 0:
        return x
    fill = tirx.const(value, x.dtype) if value is not None else te.min_value(x.dtype)
    return te.compute(
        (n, c, h + 2 * ph + eh, w + 2 * pw + ew),
        lambda i, j, y, z: tirx.if_then_else(
            tirx.all(y >= ph, y < h + ph, z >= pw, z < w + pw), x[i, j, y - ph, z - pw], fill),
        name=name + "_pad", tag="injective,pad")


def _windowed_input(layer, x):
    return _pad(x, layer.attrs["pad"], ceil_extra(layer), layer.name)


# ----------------------------------------------------------------------------- layers
def conv(layer, inputs, params):
    a, x, w = layer.attrs, inputs[0], params["weight"]
    n = int(x.shape[0])
    f, oh, ow = layer.out_shape
    cg, fg = layer.in_shapes[0][0] // a["groups"], f // a["groups"]
    (sh, sw), (dh, dw) = a["stride"], a["dilation"]
    xp = _windowed_input(layer, x)
    rc = te.reduce_axis((0, cg), "rc")
    ry = te.reduce_axis((0, a["size"][0]), "ry")
    rx = te.reduce_axis((0, a["size"][1]), "rx")
    acc = te.compute(
        (n, f, oh, ow),
        lambda b, o, y, z: te.sum(xp[b, o // fg * cg + rc, y * sh + ry * dh, z * sw + rx * dw] * w[o, rc, ry, rx],
                                  axis=[rc, ry, rx]),
        name=layer.name + "_conv", tag="conv2d_nchw")
    bias = params.get("bias")
    return _finish(lambda *i: acc(*i), acc.shape, layer.name,
                   (lambda b, o, y, z: bias[o]) if bias is not None else None, layer.neuron)


def local(layer, inputs, params):
    """Unshared weights: output (y, z) of filter o uses W[o, y, z, c, i, j] and bias[o, y, z]."""
    a, x, w = layer.attrs, inputs[0], params["weight"]
    n = int(x.shape[0])
    f, oh, ow = layer.out_shape
    cg, fg = layer.in_shapes[0][0] // a["groups"], f // a["groups"]
    sh, sw = a["stride"]
    xp = _windowed_input(layer, x)
    rc = te.reduce_axis((0, cg), "rc")
    ry = te.reduce_axis((0, a["size"][0]), "ry")
    rx = te.reduce_axis((0, a["size"][1]), "rx")
    acc = te.compute(
        (n, f, oh, ow),
        lambda b, o, y, z: te.sum(xp[b, o // fg * cg + rc, y * sh + ry, z * sw + rx] * w[o, y, z, rc, ry, rx],
                                  axis=[rc, ry, rx]),
        name=layer.name + "_local", tag="local_nchw")
    bias = params.get("bias")
    return _finish(lambda *i: acc(*i), acc.shape, layer.name,
                   (lambda b, o, y, z: bias[o, y, z]) if bias is not None else None, layer.neuron)


def deconv(layer, inputs, params):
    """Transposed conv as dilate + pad + conv with the flipped kernel (as TOPI writes it)."""
    a, x, w = layer.attrs, inputs[0], params["weight"]
    n, c, h, wd = (int(d) for d in x.shape)
    f, oh, ow = layer.out_shape
    g = a["groups"]
    cg, fg = c // g, f // g
    (kh, kw), (sh, sw), (dh, dw), (ph, pw) = a["size"], a["stride"], a["dilation"], a["pad"]
    # offset of input pixel 0 inside the dilated, padded input the flipped conv reads
    qh, qw = dh * (kh - 1) - ph, dw * (kw - 1) - pw
    span_h, span_w = oh + dh * (kh - 1), ow + dw * (kw - 1)

    def dilated(i, j, y, z):
        u, v = y - qh, z - qw
        inside = tirx.all(u >= 0, v >= 0, u < sh * (h - 1) + 1, v < sw * (wd - 1) + 1,
                          tirx.floormod(u, sh) == 0, tirx.floormod(v, sw) == 0)
        uy = tirx.max(tirx.floordiv(u, sh), 0)
        vz = tirx.max(tirx.floordiv(v, sw), 0)
        return tirx.if_then_else(inside, x[i, j, tirx.min(uy, h - 1), tirx.min(vz, wd - 1)],
                                 tirx.const(0.0, x.dtype))

    xd = te.compute((n, c, span_h, span_w), dilated, name=layer.name + "_dilate", tag="injective,pad")
    rc = te.reduce_axis((0, cg), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    acc = te.compute(
        (n, f, oh, ow),
        lambda b, o, y, z: te.sum(
            xd[b, o // fg * cg + rc, y + ry * dh, z + rx * dw] * w[o // fg * cg + rc, o % fg, kh - 1 - ry, kw - 1 - rx],
            axis=[rc, ry, rx]),
        name=layer.name + "_deconv", tag="conv2d_transpose_nchw")
    bias = params.get("bias")
    return _finish(lambda *i: acc(*i), acc.shape, layer.name,
                   (lambda b, o, y, z: bias[o]) if bias is not None else None, layer.neuron)


def _pool_divisor(layer, y, axis_index, dtype):
    """The count an average divides by along one axis, as an expression of the output index."""
    a = layer.attrs
    n = layer.in_shapes[0][1 + axis_index]
    k, s, p = a["size"][axis_index], a["stride"][axis_index], a["pad"][axis_index]
    start = y * s - p
    if a["count"] == "pad":
        return tirx.min(start + k, n + p) - start
    return tirx.min(start + k, n) - tirx.max(start, 0)


def pool(layer, inputs, params):
    a, x = layer.attrs, inputs[0]
    n = int(x.shape[0])
    c, oh, ow = layer.out_shape
    (kh, kw), (sh, sw) = a["size"], a["stride"]
    is_max = a["mode"] == "max"
    reducer, fill = _max_reducer() if is_max else (te.sum, 0.0)
    xp = _pad(x, a["pad"], ceil_extra(layer), layer.name, fill)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    acc = te.compute((n, c, oh, ow),
                     lambda b, o, y, z: reducer(xp[b, o, y * sh + ry, z * sw + rx], axis=[ry, rx]),
                     name=layer.name + "_pool", tag="pool_max" if is_max else "pool_sum")
    if is_max:
        body = lambda *i: acc(*i)
    else:
        def body(b, o, y, z):
            count = _pool_divisor(layer, y, 0, x.dtype) * _pool_divisor(layer, z, 1, x.dtype)
            return acc[b, o, y, z] / tirx.Cast(x.dtype, count)
    return _finish(body, acc.shape, layer.name, None, layer.neuron)


def lrn(layer, inputs, params):
    a, x = layer.attrs, inputs[0]
    n, c, h, w = (int(d) for d in x.shape)
    size = a["size"]
    lo = size // 2
    zero = tirx.const(0.0, x.dtype)
    r = te.reduce_axis((0, size), "r")
    if a["region"] == "across":
        def sq(b, o, y, z):
            j = o - lo + r
            v = x[b, tirx.max(tirx.min(j, c - 1), 0), y, z]
            return tirx.if_then_else(tirx.all(j >= 0, j < c), v * v, zero)
        total = te.compute((n, c, h, w), lambda *i: te.sum(sq(*i), axis=r), name=layer.name + "_sum")
        alpha = a["alpha"] / size
    else:
        r2 = te.reduce_axis((0, size), "r2")

        def sq(b, o, y, z):
            yy, zz = y - lo + r, z - lo + r2
            v = x[b, o, tirx.max(tirx.min(yy, h - 1), 0), tirx.max(tirx.min(zz, w - 1), 0)]
            return tirx.if_then_else(tirx.all(yy >= 0, yy < h, zz >= 0, zz < w), v * v, zero)
        total = te.compute((n, c, h, w), lambda *i: te.sum(sq(*i), axis=[r, r2]), name=layer.name + "_sum")
        alpha = a["alpha"] / size**2
    k, beta = tirx.const(a["k"], x.dtype), tirx.const(-a["beta"], x.dtype)
    return te.compute(x.shape, lambda *i: x(*i) * tirx.power(k + tirx.const(alpha, x.dtype) * total(*i), beta),
                      name=layer.name, tag="elemwise")


def fc(layer, inputs, params):
    x, w = inputs[0], params["weight"]
    n = int(x.shape[0])
    dims = [int(d) for d in x.shape[1:]]
    if len(dims) > 1:   # flatten in C, H, W order
        c, h, wd = dims
        flat = te.compute((n, c * h * wd),
                          lambda b, k: x[b, k // (h * wd), k // wd % h, k % wd], name=layer.name + "_flat",
                          tag="injective")
    else:
        flat = x
    k = te.reduce_axis((0, int(flat.shape[1])), "k")
    outputs = layer.attrs["outputs"]
    acc = te.compute((n, outputs), lambda b, o: te.sum(flat[b, k] * w[o, k], axis=k), name=layer.name + "_dense",
                     tag="dense")
    bias = params.get("bias")
    return _finish(lambda *i: acc(*i), acc.shape, layer.name,
                   (lambda b, o: bias[o]) if bias is not None else None, layer.neuron)


def softmax(layer, inputs, params):
    return topi.nn.softmax(inputs[0], axis=1)


def batchnorm(layer, inputs, params):
    x = inputs[0]
    eps = tirx.const(layer.attrs["eps"], x.dtype)
    mean, var, scale, shift = (params[k] for k in ("mean", "var", "scale", "shift"))
    return te.compute(x.shape, lambda b, o, *rest: (x(b, o, *rest) - mean[o]) / tirx.sqrt(var[o] + eps) * scale[o]
                      + shift[o], name=layer.name, tag="elemwise")


def concat(layer, inputs, params):
    return topi.concatenate(inputs, axis=1)


def add(layer, inputs, params):
    def total(*i):
        v = inputs[0](*i)
        for t in inputs[1:]:
            v = v + t(*i)
        return v
    return te.compute(inputs[0].shape, total, name=layer.name, tag="elemwise")


def activation_layer(layer, inputs, params):
    x, act = inputs[0], activation_fn(layer.activation)
    return te.compute(x.shape, lambda *i: act(x(*i)), name=layer.name, tag="elemwise")


LOWER = {
    "conv": conv,
    "deconv": deconv,
    "local": local,
    "lrn": lrn,
    "pool": pool,
    "fc": fc,
    "softmax": softmax,
    "dropout": None,          # identity at inference: no kernel
    "concat": concat,
    "add": add,
    "batchnorm": batchnorm,
    **{name: activation_layer for name in ACTIVATIONS},
}
