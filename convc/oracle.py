"""The NumPy reference: what every layer computes, exactly as docs/language.md defines it.

Computed in float64 and vectorized (one matmul per kernel tap, strided window views for
LRN and pooling, each window summed on its own: no running sums), so AlexNet at batch 1
runs well under a second.
The compiled kernels and the outside implementations in the tests are checked against it.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .layers import ceil_extra


# ----------------------------------------------------------------------------- activations
ACTIVATIONS = {
    "relu": lambda x: np.maximum(x, 0),
    "logistic": lambda x: 0.5 * (1 + np.tanh(0.5 * x)),      # 1/(1+e^-x) without overflow
    "tanh": lambda x, a, b: a * np.tanh(b * x),
    "abs": np.abs,
    "square": np.square,
    "sqrt": np.sqrt,
    "softrelu": lambda x: np.logaddexp(0, x),                 # log(1 + e^x), stable
    "ident": lambda x: x,
    "brelu": lambda x, a: np.minimum(a, np.maximum(0, x)),
    "linear": lambda x, a, b: a * x + b,
    "leaky": lambda x, a: np.where(x < 0, a * x, x),
}


def apply_activation(act, x):
    with np.errstate(invalid="ignore"):   # sqrt of a negative is NaN, as in every framework
        return ACTIVATIONS[act.name](x, *act.args)


# ----------------------------------------------------------------------------- helpers
def _padded(layer, x, value=0.0):
    """Pad top/left by `pad`; bottom/right by `pad` plus what round=ceil needs (ceil_extra)."""
    (ph, pw), (eh, ew) = layer.attrs["pad"], ceil_extra(layer)
    return np.pad(x, ((0, 0), (0, 0), (ph, ph + eh), (pw, pw + ew)), constant_values=value)


def _tap(xp, i, j, layer, dilation=(1, 1)):
    """The input pixels that kernel tap (i, j) meets at every output position: (N, C, H', W')."""
    (sh, sw), (dh, dw) = layer.attrs["stride"], dilation
    oh, ow = layer.out_shape[1:]
    return xp[:, :, i * dh: i * dh + (oh - 1) * sh + 1: sh, j * dw: j * dw + (ow - 1) * sw + 1: sw]


def _grouped(x, groups):
    n, c = x.shape[:2]
    return x.reshape(n, groups, c // groups, -1)      # (N, G, C/G, pixels)


def _bias(y, params, shape):
    return y + params["bias"].reshape(shape) if "bias" in params else y


# ----------------------------------------------------------------------------- layers
def conv(layer, inputs, params):
    x, a = inputs[0], layer.attrs
    dilation = a["dilation"]
    g, (f, oh, ow), n = a["groups"], layer.out_shape, x.shape[0]
    xp = _padded(layer, x)
    w = params["weight"].reshape(g, f // g, -1, *a["size"])           # (G, F/G, C/G, Kh, Kw)
    out = np.zeros((n, g, f // g, oh * ow))
    for i in range(a["size"][0]):
        for j in range(a["size"][1]):
            out += w[:, :, :, i, j] @ _grouped(_tap(xp, i, j, layer, dilation), g)
    return _bias(out.reshape(n, f, oh, ow), params, (1, f, 1, 1))


def local(layer, inputs, params):
    """Like conv, but output position (y, x) has its own weights W[f, y, x, c, i, j]."""
    x, a = inputs[0], layer.attrs
    g, (f, oh, ow), n = a["groups"], layer.out_shape, x.shape[0]
    xp = _padded(layer, x)
    w = params["weight"].reshape(g, f // g, oh, ow, -1, *a["size"])   # (G, F/G, H', W', C/G, Kh, Kw)
    out = np.zeros((n, g, f // g, oh, ow))
    for i in range(a["size"][0]):
        for j in range(a["size"][1]):
            tap = _tap(xp, i, j, layer).reshape(n, g, -1, oh, ow)
            out += np.einsum("gfyxc,ngcyx->ngfyx", w[..., i, j], tap, optimize=True)
    return _bias(out.reshape(n, f, oh, ow), params, (1, f, oh, ow))


def deconv(layer, inputs, params):
    """Transposed conv: every input pixel scatters its kernel, then `pad` is cropped per side."""
    x, a = inputs[0], layer.attrs
    g, (f, oh, ow), (n, c, h, w) = a["groups"], layer.out_shape, x.shape
    (sh, sw), (dh, dw), (ph, pw) = a["stride"], a["dilation"], a["pad"]
    full = np.zeros((n, g, f // g, sh * (h - 1) + dh * (a["size"][0] - 1) + 1,
                     sw * (w - 1) + dw * (a["size"][1] - 1) + 1))
    weight = params["weight"].reshape(g, c // g, f // g, *a["size"])  # (G, C/G, F/G, Kh, Kw)
    xg = _grouped(x, g)
    for i in range(a["size"][0]):
        for j in range(a["size"][1]):
            contrib = np.swapaxes(weight[:, :, :, i, j], 1, 2) @ xg            # (N, G, F/G, H*W)
            full[:, :, :, i * dh: i * dh + sh * (h - 1) + 1: sh, j * dw: j * dw + sw * (w - 1) + 1: sw] += \
                contrib.reshape(n, g, f // g, h, w)
    out = full.reshape(n, f, *full.shape[3:])[:, :, ph: ph + oh, pw: pw + ow]
    return _bias(out, params, (1, f, 1, 1))


def _pool_divisor(layer, in_hw):
    """Per-axis window sizes an average divides by (Caffe's clipped window, or real pixels)."""
    a = layer.attrs
    counts = []
    for n, o, k, s, p in zip(in_hw, layer.out_shape[1:], a["size"], a["stride"], a["pad"]):
        start = np.arange(o) * s - p
        if a["count"] == "pad":
            counts.append(np.minimum(start + k, n + p) - start)
        else:
            counts.append(np.minimum(start + k, n) - np.maximum(start, 0))
    return np.outer(*counts)


def pool(layer, inputs, params):
    x, a = inputs[0], layer.attrs
    oh, ow = layer.out_shape[1:]
    is_max = a["mode"] == "max"
    xp = _padded(layer, x, -np.inf if is_max else 0.0)
    (sh, sw), (kh, kw) = a["stride"], a["size"]
    windows = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, : (oh - 1) * sh + 1: sh, : (ow - 1) * sw + 1: sw]
    if is_max:
        return windows.max(axis=(-2, -1))
    return windows.sum(axis=(-2, -1)) / _pool_divisor(layer, x.shape[2:])


def _window_sum(v, axis, size):
    """Sum over [i - size//2, i + (size-1)//2] along `axis`, zeros outside: each window summed
    on its own in float64 (a running cumulative sum would lose small values beside large ones
    and spread one inf or NaN along the whole axis)."""
    lo, hi = size // 2, (size - 1) // 2
    pads = [(0, 0)] * v.ndim
    pads[axis] = (lo, hi)
    padded = np.pad(np.asarray(v, np.float64), pads)
    return sliding_window_view(padded, size, axis=axis).sum(axis=-1)


def lrn(layer, inputs, params):
    x, a = inputs[0], layer.attrs
    size, sq = a["size"], np.square(inputs[0])
    if a["region"] == "across":
        scale = a["k"] + a["alpha"] / size * _window_sum(sq, 1, size)
    else:
        scale = a["k"] + a["alpha"] / size**2 * _window_sum(_window_sum(sq, 2, size), 3, size)
    return x * scale ** -a["beta"]


def fc(layer, inputs, params):
    x = inputs[0].reshape(inputs[0].shape[0], -1)        # C, H, W order
    y = x @ params["weight"].T
    return y + params["bias"] if "bias" in params else y


def softmax(layer, inputs, params):
    x = inputs[0]
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def batchnorm(layer, inputs, params):
    x = inputs[0]
    shape = (1, -1) + (1,) * (x.ndim - 2)
    p = {k: v.reshape(shape) for k, v in params.items()}
    return (x - p["mean"]) / np.sqrt(p["var"] + layer.attrs["eps"]) * p["scale"] + p["shift"]


def _activation_layer(layer, inputs, params):
    return apply_activation(layer.activation, inputs[0])


ORACLE = {
    "conv": conv,
    "deconv": deconv,
    "local": local,
    "lrn": lrn,
    "pool": pool,
    "fc": fc,
    "softmax": softmax,
    "dropout": lambda layer, inputs, params: inputs[0],
    "concat": lambda layer, inputs, params: np.concatenate(inputs, axis=1),
    "add": lambda layer, inputs, params: np.sum(inputs, axis=0),
    "batchnorm": batchnorm,
    **{name: _activation_layer for name in ACTIVATIONS},
}


def run_layer(layer, inputs, params) -> np.ndarray:
    """One layer (and its neuron) on float64 arrays; params keyed by suffix ("weight")."""
    y = ORACLE[layer.kind](layer, inputs, params)
    if layer.neuron is not None:
        y = apply_activation(layer.neuron, y)
    return y


def run(net, x, params, all_layers: bool = False):
    """Run `net` on x (N, C, H, W): the last layer's output, or {layer name: output}."""
    x = net.check_input(x)
    params = net.check_params(params)
    values = {net.input_name: np.asarray(x, dtype=np.float64)}
    for layer in net.layers:
        prefix = layer.name + "."
        own = {k[len(prefix):]: np.asarray(v, dtype=np.float64) for k, v in params.items() if k.startswith(prefix)
               and k[len(prefix):] in layer.spec.params(layer)}
        values[layer.name] = run_layer(layer, [values[n] for n in layer.inputs], own)
    if all_layers:
        return {layer.name: values[layer.name] for layer in net.layers}
    return values[net.output.name]


# ----------------------------------------------------------------------------- spec §2b layers
def _per_channel(v, ndim):
    """A per-channel (or one shared) vector, shaped to broadcast along axis 1 of an ndim array."""
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def prelu(layer, inputs, params):
    x = inputs[0]
    return np.where(x > 0, x, _per_channel(params["slope"], x.ndim) * x)    # NaN: slope·NaN = NaN


def scale(layer, inputs, params):
    x = inputs[0]
    y = x * _per_channel(params["scale"], x.ndim)
    return y + _per_channel(params["shift"], x.ndim) if "shift" in params else y


def add(layer, inputs, params):
    coeff = layer.attrs.get("coeff") or (1.0,) * len(inputs)
    return sum(c * x for c, x in zip(coeff, inputs))


def power(layer, inputs, params):
    a = layer.attrs
    with np.errstate(invalid="ignore", divide="ignore"):   # a negative base to a fractional power: NaN
        return np.power(a["shift"] + a["scale"] * inputs[0], a["power"])


def crop(layer, inputs, params):
    (oh, ow), (dy, dx) = layer.out_shape[1:], layer.attrs["offset"]
    return inputs[0][:, :, dy: dy + oh, dx: dx + ow]


ORACLE.update({
    "prelu": prelu,
    "scale": scale,
    "add": add,
    "max": lambda layer, inputs, params: np.maximum.reduce(inputs),     # NaN propagates
    "mul": lambda layer, inputs, params: np.prod(inputs, axis=0),
    "slice": lambda layer, inputs, params: inputs[0][:, layer.attrs["begin"]: layer.attrs["end"]],
    "crop": crop,
    "power": power,
})
