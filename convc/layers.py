"""The layer table: for every kind, its keys and defaults, shape rule, parameters and MACs.

Adding a layer kind means adding one `LayerKind` entry here, one NumPy function in
`oracle.py` and one TE function in `lower.py`. Shapes are per image: (C, H, W), or (C,)
after an `fc`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

REQUIRED = object()
CONVENTIONS = ("caffe", "torch", "cuda-convnet")


class Problem(Exception):
    """A check that failed; `key` says which `key=value` to point at (None: the layer's kind)."""

    def __init__(self, message: str, key: str | None = None, help: str | None = None):
        super().__init__(message)
        self.message, self.key, self.help = message, key, help


# ----------------------------------------------------------------------------- value parsers
def _number(v) -> float:
    if v.form != "number":
        raise Problem(f"expected a number, got {v.text!r}")
    return v.value


def integer(minimum: int) -> Callable:
    def parse(v):
        n = _number(v)
        if not isinstance(n, int):
            raise Problem(f"expected a whole number, got {v.text}")
        if n < minimum:
            raise Problem(f"must be at least {minimum}, got {n}")
        return n
    parse.doc = f"int ≥ {minimum}"
    return parse


def pair(minimum: int) -> Callable:
    """`N` or `AxB` -> (A, B): sizes, strides, pads and dilations per axis (H, W)."""
    def parse(v):
        if v.form == "shape":
            if len(v.value) != 2:
                raise Problem(f"expected N or HxW, got {v.text}")
            dims = v.value
        else:
            n = integer(minimum)(v)
            dims = (n, n)
        if min(dims) < minimum:
            raise Problem(f"must be at least {minimum}, got {v.text}")
        return tuple(dims)
    parse.doc = f"N or HxW, ≥ {minimum}"
    return parse


def real(minimum: float = -math.inf, strict: bool = False) -> Callable:
    def parse(v):
        x = float(_number(v))
        if x < minimum or (strict and x == minimum):
            raise Problem(f"must be {'above' if strict else 'at least'} {minimum:g}, got {v.text}")
        return x
    parse.doc = "number"
    return parse


def fraction(v):
    x = float(_number(v))
    if not 0 <= x < 1:
        raise Problem(f"must lie in [0, 1), got {v.text}")
    return x


def choice(*words: str) -> Callable:
    def parse(v):
        if v.form != "word" or v.value not in words:
            raise Problem(f"expected one of {', '.join(words)}, got {v.text!r}")
        return v.value
    parse.doc = "|".join(words)
    return parse


boolean = choice("true", "false")


def numbers(v) -> tuple:
    """`[a,b,...]` (or one number) -> a tuple of floats."""
    if v.form == "list":
        return tuple(float(x) for x in v.value)
    if v.form == "number":
        return (float(v.value),)
    raise Problem(f"expected a list of numbers [a,b,...], got {v.text!r}")


numbers.doc = "[a,b,...]"


def flag_bool(v) -> bool:
    return boolean(v) == "true"


# ----------------------------------------------------------------------------- activations
@dataclass(frozen=True)
class Activation:
    """A neuron: `name` and its parameters in order (e.g. tanh: a, b)."""

    name: str
    args: tuple = ()

    def __str__(self):
        return f"{self.name}[{','.join(f'{a:g}' for a in self.args)}]" if self.args else self.name


# name -> ((param, default), ...); the formulas live in oracle.py and lower.py.
ACTIVATIONS: dict[str, tuple] = {
    "relu": (),
    "logistic": (),
    "tanh": (("a", 1.0), ("b", 1.0)),       # a·tanh(b·x)
    "abs": (),
    "square": (),
    "sqrt": (),
    "softrelu": (),                          # log(1 + e^x)
    "ident": (),
    "brelu": (("a", REQUIRED),),             # min(a, max(0, x))
    "linear": (("a", 1.0), ("b", 0.0)),      # a·x + b
    "leaky": (("a", 0.01),),                 # x < 0 ? a·x : x
}


def make_activation(name: str, given: tuple) -> Activation:
    params = ACTIVATIONS[name]
    if len(given) > len(params):
        raise Problem(f"{name} takes {len(params)} parameter(s), got {len(given)}",
                      help=f"write {_activation_usage(name)}")
    args = []
    for i, (pname, default) in enumerate(params):
        if i < len(given):
            args.append(float(given[i]))
        elif default is REQUIRED:
            raise Problem(f"{name} needs its parameter {pname}", help=f"write {_activation_usage(name)}")
        else:
            args.append(float(default))
    return Activation(name, tuple(args))


def _activation_usage(name: str) -> str:
    params = ACTIVATIONS[name]
    return f"{name}[{','.join(p for p, _ in params)}]" if params else name


def activation(v) -> Activation:
    if v.form == "word" and v.value in ACTIVATIONS:
        return make_activation(v.value, ())
    if v.form == "call" and v.value[0] in ACTIVATIONS:
        return make_activation(*v.value)
    raise Problem(f"unknown activation {v.text!r}",
                  help="one of " + ", ".join(_activation_usage(a) for a in ACTIVATIONS))


activation.doc = "activation"


# ----------------------------------------------------------------------------- kinds
@dataclass(frozen=True)
class Key:
    parse: Callable
    default: Any = REQUIRED          # a value, REQUIRED, or {convention: value} (value may be a callable(attrs))
    doc: str = ""

    def default_for(self, convention: str, attrs: dict):
        d = self.default
        if isinstance(d, dict):
            d = d[convention]
        return d(attrs) if callable(d) else d


@dataclass(frozen=True)
class LayerKind:
    name: str
    keys: dict[str, Key]
    shape: Callable                              # (layer) -> out shape, raises Problem
    doc: str = ""
    arity: tuple[int, int] = (1, 1)              # min, max number of inputs
    modes: tuple[str, ...] = ()                  # one required flag word (pool: max|avg)
    switches: tuple[str, ...] = ()               # optional flag words (pool: global)
    params: Callable = lambda layer: {}          # (layer) -> {suffix: shape}
    macs: Callable = lambda layer: 0             # per image
    fan_in: Callable = lambda layer: 1           # for init_params
    needs_image: bool = True                     # input must be CxHxW


def _image(layer) -> tuple[int, int, int]:
    shape = layer.in_shapes[0]
    if len(shape) != 3:
        raise Problem(f"{layer.kind} needs a CxHxW input, but {layer.inputs[0]} gives {fmt_shape(shape)}",
                      help="an fc layer's output has no height and width; put spatial layers before it")
    return shape


def fmt_shape(shape) -> str:
    return "x".join(str(d) for d in shape)


def _check_groups(layer, channels: int):
    g, f = layer.attrs["groups"], layer.attrs["filters"]
    if channels % g:
        raise Problem(f"groups={g} does not divide the {channels} input channels", "groups",
                      f"groups is the number of groups; it must divide both the input channels ({channels}) "
                      f"and filters ({f})")
    if f % g:
        raise Problem(f"groups={g} does not divide filters={f}", "groups",
                      f"filters is the total over all groups; make it a multiple of {g}")


def _window_fits(layer, size_in, kernel_extent, pad, axis):
    if kernel_extent > size_in + 2 * pad:
        raise Problem(f"the {'x'.join(map(str, layer.attrs['size']))} kernel (extent {kernel_extent} along {axis}) "
                      f"is larger than the padded input ({size_in} + 2·{pad} = {size_in + 2 * pad})", "size",
                      "use a smaller size, more pad, or a larger input")


def _sliding_out(n, k_extent, s, p, rounding):
    span = n + 2 * p - k_extent
    return (span // s if rounding == "floor" else -(-span // s)) + 1


def ceil_extra(layer) -> tuple[int, int]:
    """Rows and columns past `pad` on the bottom/right that the last window reads (round=ceil:
    cuda-convnet's taps past the edge read zeros). Shared by the oracle, the TE lowering and
    the PyTorch baseline, so the three pad alike."""
    a = layer.attrs
    dilation = a.get("dilation", (1, 1))
    return tuple(max(0, (o - 1) * s + d * (k - 1) + 1 - n - 2 * p)
                 for o, s, k, d, n, p in zip(layer.out_shape[1:], a["stride"], a["size"], dilation,
                                             layer.in_shapes[0][1:], a["pad"]))


def conv_like_shape(layer, dilated=True):
    c, h, w = _image(layer)
    _check_groups(layer, c)
    a = layer.attrs
    dil = a["dilation"] if dilated else (1, 1)
    out = []
    for axis, n, k, s, p, d in zip("HW", (h, w), a["size"], a["stride"], a["pad"], dil):
        ext = d * (k - 1) + 1
        _window_fits(layer, n, ext, p, axis)
        out.append(_sliding_out(n, ext, s, p, a["round"]))
    return (a["filters"], *out)


def deconv_shape(layer):
    c, h, w = _image(layer)
    _check_groups(layer, c)
    a = layer.attrs
    out = [s * (n - 1) + d * (k - 1) + 1 - 2 * p
           for n, k, s, p, d in zip((h, w), a["size"], a["stride"], a["pad"], a["dilation"])]
    if min(out) < 1:
        raise Problem(f"the output would be {fmt_shape(out)}: pad={fmt_shape(a['pad'])} crops away everything",
                      "pad", "deconv output = stride·(H-1) + dilation·(size-1) + 1 - 2·pad; use a smaller pad")
    return (a["filters"], *out)


def pool_shape(layer):
    c, h, w = _image(layer)
    a = layer.attrs
    if a["global"]:
        for key in ("size", "stride", "pad"):
            if key in layer.given:
                raise Problem(f"global pooling takes no {key}", key,
                              "global pools the whole HxW; drop the key or the `global` flag")
        a.update(size=(h, w), stride=(1, 1), pad=(0, 0))
        return (c, 1, 1)
    out = []
    for axis, n, k, s, p in zip("HW", (h, w), a["size"], a["stride"], a["pad"]):
        if p >= k:
            raise Problem(f"pad={p} must be smaller than the pooling size {k}", "pad",
                          "Caffe and PyTorch require pad < size (PyTorch: pad ≤ size/2)")
        _window_fits(layer, n, k, p, axis)
        o = _sliding_out(n, k, s, p, a["round"])
        clip = p > 0 or layer.convention == "torch"
        if a["round"] == "ceil" and clip and (o - 1) * s >= n + p:
            o -= 1   # Caffe's / PyTorch's clip: the last window must start inside the image or left pad
        if (o - 1) * s - p >= n:
            raise Problem(f"the last pooling window along {axis} starts at {(o - 1) * s - p}, past the input "
                          f"({n}), and would read only padding", "stride", "use round=floor or a smaller stride")
        out.append(o)
    return (c, *out)


def same_shape(layer):
    return layer.in_shapes[0]


def lrn_shape(layer):
    _image(layer)
    return layer.in_shapes[0]


def fc_shape(layer):
    return (layer.attrs["outputs"],)


def concat_shape(layer):
    shapes = layer.in_shapes
    first = shapes[0]
    for name, shape in zip(layer.inputs[1:], shapes[1:]):
        if len(shape) != len(first) or shape[1:] != first[1:]:
            raise Problem(f"concat needs inputs of equal height and width, but {layer.inputs[0]} is "
                          f"{fmt_shape(first)} and {name} is {fmt_shape(shape)}",
                          help="concat joins channels; pool or crop the inputs to the same HxW first")
    return (sum(s[0] for s in shapes), *first[1:])


def elementwise_shape(layer):
    """add, max, mul: inputs of one shape; add's coeff has one number per input."""
    first = layer.in_shapes[0]
    for name, shape in zip(layer.inputs[1:], layer.in_shapes[1:]):
        if shape != first:
            raise Problem(f"{layer.kind} needs inputs of the same shape, but {layer.inputs[0]} is {fmt_shape(first)} "
                          f"and {name} is {fmt_shape(shape)}",
                          help="use a 1x1 conv (and stride) on one branch to match the other")
    coeff = layer.attrs.get("coeff")
    if coeff is not None and len(coeff) != len(layer.inputs):
        raise Problem(f"coeff has {len(coeff)} number(s) but add has {len(layer.inputs)} inputs", "coeff",
                      "give one coefficient per input, in the order of `from`")
    return first


def slice_shape(layer):
    c, *rest = layer.in_shapes[0]
    begin, end = layer.attrs["begin"], layer.attrs["end"]
    if end > c:
        raise Problem(f"end={end} is past the {c} channels of {layer.inputs[0]}", "end",
                      f"channels are [begin, end) with end ≤ {c}")
    if begin >= end:
        raise Problem(f"begin={begin} must be below end={end}", "begin", "slice keeps channels [begin, end)")
    return (end - begin, *rest)


def crop_shape(layer):
    """HxW from the reference (second input) or, with one input, from `size`."""
    c, h, w = _image(layer)
    size = layer.attrs["size"]
    if len(layer.inputs) == 2:
        if size is not None:
            raise Problem("crop takes its size from the second input or from size=, not both", "size",
                          "drop size= or the reference layer")
        ref = layer.in_shapes[1]
        if len(ref) != 3:
            raise Problem(f"crop needs a CxHxW reference, but {layer.inputs[1]} gives {fmt_shape(ref)}")
        size, whence = ref[1:], f"from {layer.inputs[1]}"
    elif size is None:
        raise Problem("crop needs a reference layer (`from X, REF`) or size=HxW", "size",
                      "e.g. `crop c from x, ref offset=2` or `crop c from x size=24 offset=4`")
    else:
        whence = "size"
    for axis, n, want, off in zip("HW", (h, w), size, layer.attrs["offset"]):
        if off + want > n:
            raise Problem(f"the crop does not fit along {axis}: offset {off} + {want} ({whence}) "
                          f"> {n} (from {layer.inputs[0]})", "offset",
                          "the cropped window must lie inside the first input")
    return (c, *size)


# parameter shapes ------------------------------------------------------------
def _with_bias(layer, weight, bias_shape):
    return {"weight": weight, **({"bias": bias_shape} if layer.attrs["bias"] else {})}


def conv_params(layer):
    a, c = layer.attrs, layer.in_shapes[0][0]
    return _with_bias(layer, (a["filters"], c // a["groups"], *a["size"]), (a["filters"],))


def deconv_params(layer):
    a, c = layer.attrs, layer.in_shapes[0][0]
    return _with_bias(layer, (c, a["filters"] // a["groups"], *a["size"]), (a["filters"],))


def local_params(layer):
    a, c = layer.attrs, layer.in_shapes[0][0]
    f, oh, ow = layer.out_shape
    return _with_bias(layer, (f, oh, ow, c // a["groups"], *a["size"]), (f, oh, ow))


def fc_params(layer):
    return _with_bias(layer, (layer.attrs["outputs"], math.prod(layer.in_shapes[0])), (layer.attrs["outputs"],))


def batchnorm_params(layer):
    c = layer.in_shapes[0][0]
    return {"mean": (c,), "var": (c,), "scale": (c,), "shift": (c,)}


def per_channel_params(*suffixes):
    """prelu/scale: one value per channel (axis 1), or one shared value (prelu shared=true)."""
    def params(layer):
        c = 1 if layer.attrs.get("shared") else layer.in_shapes[0][0]
        return {s: (c,) for s in suffixes if s != "shift" or layer.attrs.get("bias", False)}
    return params


def conv_macs(layer):
    a = layer.attrs
    return math.prod(layer.out_shape) * layer.in_shapes[0][0] // a["groups"] * math.prod(a["size"])


def deconv_macs(layer):
    a = layer.attrs
    return math.prod(layer.in_shapes[0]) * a["filters"] // a["groups"] * math.prod(a["size"])


def fc_macs(layer):
    return layer.attrs["outputs"] * math.prod(layer.in_shapes[0])


def conv_fan_in(layer):
    return layer.in_shapes[0][0] // layer.attrs["groups"] * math.prod(layer.attrs["size"])


def deconv_fan_in(layer):
    return max(1, conv_fan_in(layer) // math.prod(layer.attrs["stride"]))


# key sets ---------------------------------------------------------------------
_FILTERS = Key(integer(1), doc="number of output channels, total over all groups")
_SIZE = Key(pair(1), doc="kernel size K or KhxKw")
_STRIDE = Key(pair(1), (1, 1), "stride S or SyxSx")
_PAD = Key(pair(0), (0, 0), "zero padding P or PhxPw on each side")
_DILATION = Key(pair(1), (1, 1), "spacing between kernel taps")
_GROUPS = Key(integer(1), 1, "number of groups (not the size of a group)")
_BIAS = Key(flag_bool, True, "add a learned bias per output")
_NEURON = Key(activation, None, "activation applied to the output")
_ROUND_CONV = Key(choice("floor", "ceil"), {"caffe": "floor", "torch": "floor", "cuda-convnet": "ceil"},
                  "output size rounding")

CONV_KEYS = dict(filters=_FILTERS, size=_SIZE, stride=_STRIDE, pad=_PAD, dilation=_DILATION,
                 groups=_GROUPS, bias=_BIAS, round=_ROUND_CONV, neuron=_NEURON)
DECONV_KEYS = dict(filters=_FILTERS, size=_SIZE, stride=_STRIDE, pad=_PAD, dilation=_DILATION,
                   groups=_GROUPS, bias=_BIAS, neuron=_NEURON,
                   filler=Key(choice("bilinear"), None, "fixed weights: the bilinear upsampling kernel"))
LOCAL_KEYS = dict(filters=_FILTERS, size=_SIZE, stride=_STRIDE, pad=_PAD, groups=_GROUPS, bias=_BIAS,
                  round=_ROUND_CONV, neuron=_NEURON)


def _unless_global(value):
    return lambda attrs: None if attrs["global"] else value(attrs) if callable(value) else value


POOL_KEYS = dict(
    size=Key(pair(1), _unless_global(REQUIRED), "window size K or KhxKw (not with global)"),
    stride=Key(pair(1), {"caffe": (1, 1), "torch": _unless_global(lambda attrs: attrs["size"]),
                         "cuda-convnet": _unless_global(REQUIRED)}, "window stride"),
    pad=_PAD,
    round=Key(choice("floor", "ceil"), {"caffe": "ceil", "torch": "floor", "cuda-convnet": "ceil"},
              "output size rounding"),
    count=Key(choice("pad", "real"), {"caffe": "pad", "torch": "pad", "cuda-convnet": "real"},
              "avg divisor: window clipped to the padded input, or real pixels only"),
    neuron=_NEURON,
)

LRN_KEYS = dict(size=Key(integer(1), 5, "window size (channels, or pixels per side)"),
                alpha=Key(real(), 1.0, "scale; divided by size (across) or size² (within)"),
                beta=Key(real(), 0.75, "exponent"),
                k=Key(real(), 1.0, "additive constant"),
                region=Key(choice("across", "within"), "across", "across channels or within a channel"))


def _activation_kind(name: str) -> LayerKind:
    keys = {p: Key(real(), d, f"parameter {p}") for p, d in ACTIVATIONS[name]}
    return LayerKind(name, keys, same_shape, f"activation {name}", needs_image=False)


LAYER_KINDS: dict[str, LayerKind] = {k.name: k for k in [
    LayerKind("conv", CONV_KEYS, conv_like_shape, "convolution (cross-correlation), grouped, dilated",
              params=conv_params, macs=conv_macs, fan_in=conv_fan_in),
    LayerKind("deconv", DECONV_KEYS, deconv_shape, "transposed convolution",
              params=deconv_params, macs=deconv_macs, fan_in=deconv_fan_in),
    LayerKind("local", LOCAL_KEYS, lambda layer: conv_like_shape(layer, dilated=False),
              "locally connected: a convolution whose weights differ at every output position",
              params=local_params, macs=conv_macs, fan_in=conv_fan_in),
    LayerKind("lrn", LRN_KEYS, lrn_shape, "local response normalization"),
    LayerKind("pool", POOL_KEYS, pool_shape, "max or average pooling", modes=("max", "avg"),
              switches=("global",)),
    LayerKind("fc", dict(outputs=Key(integer(1), doc="number of outputs"), bias=_BIAS, neuron=_NEURON),
              fc_shape, "fully connected (inner product)", params=fc_params, macs=fc_macs,
              fan_in=lambda layer: math.prod(layer.in_shapes[0]), needs_image=False),
    LayerKind("softmax", {}, same_shape, "softmax over channels", needs_image=False),
    LayerKind("dropout", dict(ratio=Key(fraction, 0.5, "drop ratio (training only)")), same_shape,
              "identity at inference", needs_image=False),
    LayerKind("concat", {}, concat_shape, "channel concatenation", arity=(2, 1 << 30), needs_image=False),
    LayerKind("add", dict(coeff=Key(numbers, None, "one coefficient per input (all 1)")), elementwise_shape,
              "elementwise sum, Σ coeff_i·x_i", arity=(2, 1 << 30), needs_image=False),
    LayerKind("max", {}, elementwise_shape, "elementwise maximum (NaN propagates)", arity=(2, 1 << 30),
              needs_image=False),
    LayerKind("mul", {}, elementwise_shape, "elementwise product", arity=(2, 1 << 30), needs_image=False),
    LayerKind("prelu", dict(shared=Key(flag_bool, False, "one slope for all channels")), same_shape,
              "x > 0 ? x : slope_c·x", params=per_channel_params("slope"), needs_image=False),
    LayerKind("scale", dict(bias=Key(flag_bool, True, "add a learned shift per channel")), same_shape,
              "x·scale_c + shift_c", params=per_channel_params("scale", "shift"), needs_image=False),
    LayerKind("slice", dict(begin=Key(integer(0), doc="first channel (0-based)"),
                            end=Key(integer(1), doc="one past the last channel")), slice_shape,
              "channels [begin, end)", needs_image=False),
    LayerKind("crop", dict(offset=Key(pair(0), (0, 0), "offset N or HxW of the window in the first input"),
                           size=Key(pair(1), None, "the window N or HxW, when there is no reference layer")),
              crop_shape, "the first input cut to the second's HxW (or size)", arity=(1, 2)),
    LayerKind("power", dict(power=Key(real(), 1.0, "exponent"), scale=Key(real(), 1.0, "multiplies x"),
                            shift=Key(real(), 0.0, "added after scaling")), same_shape,
              "(shift + scale·x)^power", needs_image=False),
    LayerKind("batchnorm", dict(eps=Key(real(0.0, strict=True), 1e-5, "added to the variance")), same_shape,
              "inference batch normalization", params=batchnorm_params, needs_image=False),
    *[_activation_kind(name) for name in ACTIVATIONS],
]}

NEURON_KINDS = ("conv", "deconv", "local", "fc", "pool")
