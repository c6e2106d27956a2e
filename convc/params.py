"""Parameters: deterministic initial values, and checks of user-given params and inputs."""
from __future__ import annotations

import math
import zlib

import numpy as np

from .errors import ConvcError
from .layers import fmt_shape


def bilinear_kernel(shape) -> np.ndarray:
    """Caffe's bilinear filler: f = ceil(K/2), c = (K-1)/(2f), w = (1-|x/f-c|)(1-|y/f-c|)."""
    kh, kw = shape[-2:]

    def axis(k):
        f = math.ceil(k / 2)
        c = (k - 1) / (2 * f)
        return 1 - np.abs(np.arange(k) / f - c)

    return np.broadcast_to(np.outer(axis(kh), axis(kw)), shape).astype(np.float32)


def fixed_params(layer) -> dict[str, np.ndarray]:
    """Parameters a layer's source fixes (deconv filler=bilinear): used when the user gives none."""
    if layer.attrs.get("filler") == "bilinear":
        name = f"{layer.name}.weight"
        return {name: bilinear_kernel(layer.param_shapes()[name])}
    return {}


def _rng(seed: int, name: str) -> np.random.Generator:
    # Each array depends on the seed and its own name only: adding a layer changes no other.
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(name.encode())])


# Parameters that start at a constant: batchnorm/scale as the identity, prelu's slope at
# Caffe's and PyTorch's default 0.25.
_BATCHNORM_INIT = {"mean": 0.0, "var": 1.0, "scale": 1.0, "shift": 0.0, "slope": 0.25}


def init_layer_params(layer, seed: int) -> dict[str, np.ndarray]:
    fixed = fixed_params(layer)
    gain = math.sqrt(2.0) if layer.neuron is not None and layer.neuron.name in ("relu", "leaky") else 1.0
    std = gain / math.sqrt(max(1, layer.spec.fan_in(layer)))
    params = {}
    for name, shape in layer.param_shapes().items():
        suffix = name.rsplit(".", 1)[1]
        if name in fixed:
            params[name] = fixed[name].copy()
        elif suffix in _BATCHNORM_INIT:
            params[name] = np.full(shape, _BATCHNORM_INIT[suffix], np.float32)
        elif suffix == "bias":
            params[name] = _rng(seed, name).uniform(-0.1, 0.1, shape).astype(np.float32)
        else:
            params[name] = (_rng(seed, name).standard_normal(shape) * std).astype(np.float32)
    return params


def check_params(net, params) -> dict[str, np.ndarray]:
    """Every parameter present with its exact shape; errors name the layer's line and both shapes."""
    if params is None:
        params = {}
    if not hasattr(params, "keys"):
        raise ConvcError(f"params must be a dict of arrays, got {type(params).__name__}")
    errors, checked = [], {}
    for layer in net.layers:
        fixed = fixed_params(layer)
        for name, shape in layer.param_shapes().items():
            if name not in params:
                if name in fixed:
                    checked[name] = fixed[name]
                    continue
                errors.append(net.source.diagnostic(
                    f"params has no {name!r} (expected shape {fmt_shape(shape)})", layer.pos,
                    "net.init_params(seed) gives every parameter; net.param_shapes() lists them"))
                continue
            value = np.asarray(params[name])
            if tuple(value.shape) != tuple(shape):
                errors.append(net.source.diagnostic(
                    f"params[{name!r}] has shape {fmt_shape(value.shape) or '()'}, expected {fmt_shape(shape)}",
                    layer.pos, "see net.param_shapes() for the layout of each parameter"))
                continue
            if not np.issubdtype(value.dtype, np.number) or np.iscomplexobj(value):
                errors.append(net.source.diagnostic(
                    f"params[{name!r}] has dtype {value.dtype}, expected real numbers", layer.pos))
                continue
            checked[name] = value
    if errors:
        raise ConvcError(errors)
    return checked


def check_input(net, x, batch: int | None = None) -> np.ndarray:
    """x must be (N, C, H, W) with the input's C, H, W (and N = batch when one is fixed)."""
    arr = x if hasattr(x, "shape") else np.asarray(x)
    want = tuple(net.input_shape)
    shape = tuple(arr.shape)
    n = batch if batch is not None else (shape[0] if len(shape) == 4 else "N")
    if len(shape) != 4 or shape[1:] != want or (batch is not None and shape[0] != batch):
        raise net.source.error(
            f"input {net.input_name!r} has shape {fmt_shape(shape) or '()'}, expected {n}x{fmt_shape(want)}",
            net.input_pos,
            "inputs are NCHW arrays" + (f" with batch {batch} (the module was built for it)" if batch else ""))
    if shape[0] < 1:
        raise net.source.error("the input batch is empty", net.input_pos, "pass at least one image")
    return arr
