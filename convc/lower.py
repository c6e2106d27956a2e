"""Stage 3: every layer kind as TVM tensor expressions (te.compute), beside oracle.py.

`LOWER[kind](layer, inputs, params)` takes te tensors (inputs in NCHW with the batch, params
keyed by suffix: "weight", "bias", ...) and returns the layer's output tensor, bias and neuron
included, so that one layer is one PrimFunc. Padding is a stage inside that PrimFunc (the
schedule inlines it); ceil rounding pads the bottom/right edge only, as in oracle.py.
"""
from __future__ import annotations

from dataclasses import dataclass

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
    fill = tirx.const(value, x.dtype)
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


@dataclass(frozen=True)
class _DeconvAxis:
    """One spatial axis of a transposed conv in gather form, split into output phases.

    The scatter y + p = s*i + d*k (input row i, tap k) read backwards: with y + p = s*q + r
    (phase r), output row y gets the taps k = r + t*s, t < ceil(K/s), from input rows
    i = q - t, when d = 1. Each phase is a small stride-1 correlation over only the taps that
    hit real input rows: no dilated input, no multiplications by its zeros. With d > 1 the axis
    keeps one phase and tests each tap for divisibility.
    """
    size: int       # input extent
    out: int        # output extent
    k: int
    s: int
    d: int
    p: int

    @property
    def phases(self) -> int:
        return self.s if self.d == 1 else 1

    @property
    def taps(self) -> int:
        return -(-self.k // self.s) if self.d == 1 else self.k

    @property
    def first(self) -> int:         # q of output row 0
        return self.p // self.s if self.d == 1 else 0

    @property
    def quotient(self) -> int:      # q values the output rows need
        return (self.out + self.p - 1) // self.s - self.first + 1 if self.d == 1 else self.out

    def _input_range(self) -> tuple[int, int]:
        if self.d == 1:
            return self.first - (self.taps - 1), self.first + self.quotient - 1
        return (self.p - (self.k - 1) * self.d) // self.s, (self.out - 1 + self.p) // self.s

    @property
    def pad(self) -> tuple[int, int]:
        """Zero rows before and after the input, so every tap reads inside the padded input."""
        lo, hi = self._input_range()
        return max(0, -lo), max(0, hi - (self.size - 1))

    def tap(self, q, r, t):
        """(kernel index, padded input index, validity or None) of tap t at (q, phase r)."""
        lo = self.pad[0]
        if self.d == 1:
            k = r + t * self.s
            valid = None if self.k % self.s == 0 else k < self.k
            return tirx.min(k, self.k - 1), q + (self.first + lo) - t, valid
        num = q + self.p - t * self.d
        return t, tirx.floordiv(num, self.s) + lo, tirx.floormod(num, self.s) == 0

    def where(self, y):
        """(q, phase) of output row y in the phase-split buffer, whose row-major order is y's."""
        if self.d == 1:
            return (y + self.p) // self.s - self.first, (y + self.p) % self.s
        return y, 0


def deconv(layer, inputs, params):
    """Transposed conv as one gather-form reduction per output phase (see _DeconvAxis): the
    `<layer>_deconv` block computes acc[n, f, qh, rh, qw, rw] (output row qh*sh + rh - pad,
    plus a shift), whose layout is the output's row-major order; the output block reads it
    back with the bias."""
    a, x, w = layer.attrs, inputs[0], params["weight"]
    n, c, h, wd = (int(d) for d in x.shape)
    f, oh, ow = layer.out_shape
    g = a["groups"]
    cg, fg = c // g, f // g
    ay, ax = (_DeconvAxis(size, out, k, s, d, p) for size, out, k, s, d, p in
              zip((h, wd), (oh, ow), a["size"], a["stride"], a["dilation"], a["pad"]))
    (py0, py1), (px0, px1) = ay.pad, ax.pad
    xp = x if py0 == py1 == px0 == px1 == 0 else te.compute(
        (n, c, h + py0 + py1, wd + px0 + px1),
        lambda i, j, y, z: tirx.if_then_else(
            tirx.all(y >= py0, y < h + py0, z >= px0, z < wd + px0),
            x[i, j, tirx.max(tirx.min(y - py0, h - 1), 0), tirx.max(tirx.min(z - px0, wd - 1), 0)],
            tirx.const(0.0, x.dtype)),
        name=layer.name + "_pad", tag="injective,pad")
    rc = te.reduce_axis((0, cg), "rc")
    ty = te.reduce_axis((0, ay.taps), "ty")
    tx = te.reduce_axis((0, ax.taps), "tx")

    def tap_sum(b, o, qh, rh, qw, rw):
        ky, iy, vy = ay.tap(qh, rh, ty)
        kx, ix, vx = ax.tap(qw, rw, tx)
        ci = o // fg * cg + rc
        prod = xp[b, ci, iy, ix] * w[ci, o % fg, ky, kx]
        valid = [v for v in (vy, vx) if v is not None]
        if valid:
            prod = tirx.if_then_else(tirx.all(*valid), prod, tirx.const(0.0, x.dtype))
        return te.sum(prod, axis=[rc, ty, tx])

    acc = te.compute((n, f, ay.quotient, ay.phases, ax.quotient, ax.phases), tap_sum,
                     name=layer.name + "_deconv", tag="conv2d_transpose_phases")
    bias = params.get("bias")
    return _finish(lambda b, o, y, z: acc[(b, o, *ay.where(y), *ax.where(z))],
                   (n, f, oh, ow), layer.name,
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
    fill = -float("inf") if is_max else 0.0      # as the oracle: padding never wins a max
    xp = _pad(x, a["pad"], ceil_extra(layer), layer.name, fill)
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    reducer = NAN_MAX if is_max else te.sum
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


# base^-beta from square roots (vector instructions) for the betas LRN uses, instead of pow
# (a libm call per element); any other beta keeps pow.
def _negative_power(base, beta: float):
    if beta == 0.75:                      # b^-3/4 = 1 / (sqrt(b) * sqrt(sqrt(b)))
        root = tirx.sqrt(base)
        return tirx.const(1.0, str(base.ty)) / (root * tirx.sqrt(root))
    if beta == 0.5:
        return tirx.const(1.0, str(base.ty)) / tirx.sqrt(base)
    if beta == 1.0:
        return tirx.const(1.0, str(base.ty)) / base
    return tirx.power(base, tirx.const(-beta, str(base.ty)))


def lrn(layer, inputs, params):
    """total = window sum of squares (block `<layer>_sum`), y = x * (k + alpha/n * total)^-beta.
    across: each window summed directly over `size` channel planes (vectorised over H*W).
    within: separable, as the sum of row sums: squares of a zero-padded copy (`<layer>_sq`),
    row sums over `size` columns (`<layer>_rows`), then sums of `size` row sums."""
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
        hp, wp = h + size - 1, w + size - 1

        def padded_square(b, o, y, z):
            v = x[b, o, tirx.max(tirx.min(y - lo, h - 1), 0), tirx.max(tirx.min(z - lo, w - 1), 0)]
            return tirx.if_then_else(tirx.all(y >= lo, y < h + lo, z >= lo, z < w + lo), v * v, zero)
        squares = te.compute((n, c, hp, wp), padded_square, name=layer.name + "_sq", tag="injective,pad")
        r2 = te.reduce_axis((0, size), "r2")
        rows = te.compute((n, c, hp, w), lambda b, o, y, z: te.sum(squares[b, o, y, z + r2], axis=r2),
                          name=layer.name + "_rows")
        total = te.compute((n, c, h, w), lambda b, o, y, z: te.sum(rows[b, o, y + r, z], axis=r),
                           name=layer.name + "_sum")
        alpha = a["alpha"] / size**2
    k = tirx.const(a["k"], x.dtype)
    return te.compute(x.shape, lambda *i: x(*i) * _negative_power(k + tirx.const(alpha, x.dtype) * total(*i), a["beta"]),
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


# ----------------------------------------------------------------------------- spec §2b layers
def _channelwise(layer, x, fn, tag="elemwise"):
    """y[b, c, ...] = fn(x[b, c, ...], c) for an (N, C) or (N, C, H, W) tensor."""
    return te.compute(x.shape, lambda b, c, *rest: fn(x(b, c, *rest), c), name=layer.name, tag=tag)


def prelu(layer, inputs, params):
    slope, shared = params["slope"], layer.attrs["shared"]
    zero = tirx.const(0.0, inputs[0].dtype)
    # Select(v > 0, v, s·v): NaN > 0 is false, so NaN gives s·NaN = NaN (as PyTorch)
    return _channelwise(layer, inputs[0],
                        lambda v, c: tirx.Select(v > zero, v, slope[0 if shared else c] * v))


def scale(layer, inputs, params):
    s, shift = params["scale"], params.get("shift")
    return _channelwise(layer, inputs[0], lambda v, c: v * s[c] + shift[c] if shift is not None else v * s[c])


def _nan_max(a, b):
    """max that returns NaN when either side is NaN (PyTorch's maximum); LLVM's maxnum would not."""
    return tirx.Select(tirx.any(a > b, tirx.isnan(a)), a, b)   # a != a would be simplified to false


def _elementwise(layer, inputs, combine):
    def value(*i):
        v = inputs[0](*i)
        for t in inputs[1:]:
            v = combine(v, t(*i))
        return v
    return te.compute(inputs[0].shape, value, name=layer.name, tag="elemwise")


def add_coeff(layer, inputs, params):
    """Σ coeff_i·x_i (Caffe Eltwise SUM); without coeff the plain sum."""
    coeff = layer.attrs.get("coeff")
    if coeff is None:
        return add(layer, inputs, params)
    dtype = inputs[0].dtype

    def value(*i):
        v = tirx.const(coeff[0], dtype) * inputs[0](*i)
        for c, t in zip(coeff[1:], inputs[1:]):
            v = v + tirx.const(c, dtype) * t(*i)
        return v
    return te.compute(inputs[0].shape, value, name=layer.name, tag="elemwise")


def slice_channels(layer, inputs, params):
    x, begin = inputs[0], layer.attrs["begin"]
    shape = (x.shape[0], *layer.out_shape)
    return te.compute(shape, lambda b, c, *rest: x(b, c + begin, *rest), name=layer.name, tag="injective")


def crop(layer, inputs, params):
    x, (dy, dx) = inputs[0], layer.attrs["offset"]
    shape = (x.shape[0], *layer.out_shape)
    return te.compute(shape, lambda b, c, y, z: x[b, c, y + dy, z + dx], name=layer.name, tag="injective")


def power(layer, inputs, params):
    x, a = inputs[0], layer.attrs
    dtype = x.dtype

    def value(*i):
        v = x(*i)
        if a["scale"] != 1.0:
            v = tirx.const(a["scale"], dtype) * v
        if a["shift"] != 0.0:
            v = v + tirx.const(a["shift"], dtype)
        if a["power"] == 1.0:
            return v
        if a["power"] == 2.0:
            return v * v
        return tirx.power(v, tirx.const(a["power"], dtype))
    return te.compute(x.shape, value, name=layer.name, tag="elemwise")


LOWER.update({
    "prelu": prelu,
    "scale": scale,
    "add": add_coeff,
    "max": lambda layer, inputs, params: _elementwise(layer, inputs, _nan_max),
    "mul": lambda layer, inputs, params: _elementwise(layer, inputs, lambda a, b: a * b),
    "slice": slice_channels,
    "crop": crop,
    "power": power,
})
