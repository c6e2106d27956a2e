"""What users would run instead: the same network in PyTorch (oneDNN on CPU, cuDNN on GPU),
built from the same weights, one function per layer kind. Used by `convc bench`.

Locally connected layers have no PyTorch op: they run as unfold + einsum, the usual recipe.
"""
from __future__ import annotations

import math
import os

from .layers import ceil_extra


def _torch():
    import torch
    import torch.nn.functional as F
    return torch, F


def _ceil_pad(layer, x, value=0.0):
    """Pad top/left by pad, bottom/right by pad plus what round=ceil needs (cuda-convnet)."""
    torch, F = _torch()
    (ph, pw), (eh, ew) = layer.attrs["pad"], ceil_extra(layer)
    return F.pad(x, (pw, pw + ew, ph, ph + eh), value=value)


def conv(layer, inputs, p):
    torch, F = _torch()
    a = layer.attrs
    x = _ceil_pad(layer, inputs[0])
    return F.conv2d(x, p["weight"], p.get("bias"), stride=a["stride"], dilation=a["dilation"], groups=a["groups"])


def deconv(layer, inputs, p):
    torch, F = _torch()
    a = layer.attrs
    return F.conv_transpose2d(inputs[0], p["weight"], p.get("bias"), stride=a["stride"], padding=a["pad"],
                              dilation=a["dilation"], groups=a["groups"])


def local(layer, inputs, p):
    torch, F = _torch()
    a = layer.attrs
    x = _ceil_pad(layer, inputs[0])
    n, g = x.shape[0], a["groups"]
    f, oh, ow = layer.out_shape
    cols = F.unfold(x, a["size"], stride=a["stride"])                      # (N, C*Kh*Kw, H'*W')
    cols = cols.view(n, g, -1, oh * ow)                                     # (N, G, C/G*Kh*Kw, P)
    w = p["weight"].view(g, f // g, oh * ow, -1)                            # (G, F/G, P, C/G*Kh*Kw)
    y = torch.einsum("ngkp,gfpk->ngfp", cols, w).reshape(n, f, oh, ow)
    return y + p["bias"].unsqueeze(0) if "bias" in p else y


def lrn(layer, inputs, p):
    torch, F = _torch()
    a, x = layer.attrs, inputs[0]
    if a["region"] == "across":
        return F.local_response_norm(x, a["size"], alpha=a["alpha"], beta=a["beta"], k=a["k"])
    s, lo = a["size"], a["size"] // 2
    sq = F.pad(x * x, (lo, s - 1 - lo, lo, s - 1 - lo))
    total = F.avg_pool2d(sq, s, stride=1) * (s * s)
    return x * (a["k"] + a["alpha"] / (s * s) * total).pow(-a["beta"])


def pool(layer, inputs, p):
    torch, F = _torch()
    a, x = layer.attrs, inputs[0]
    if a["global"]:
        return x.amax((2, 3), keepdim=True) if a["mode"] == "max" else x.mean((2, 3), keepdim=True)
    ceil = a["round"] == "ceil"
    if a["mode"] == "max":
        return F.max_pool2d(x, a["size"], a["stride"], a["pad"], ceil_mode=ceil)
    return F.avg_pool2d(x, a["size"], a["stride"], a["pad"], ceil_mode=ceil, count_include_pad=a["count"] == "pad")


def fc(layer, inputs, p):
    torch, F = _torch()
    return F.linear(inputs[0].flatten(1), p["weight"], p.get("bias"))


def batchnorm(layer, inputs, p):
    torch, F = _torch()
    return F.batch_norm(inputs[0], p["mean"], p["var"], p["scale"], p["shift"], training=False, eps=layer.attrs["eps"])


ACTIVATIONS = {
    "relu": lambda t, F, x: F.relu(x),
    "logistic": lambda t, F, x: torch_sigmoid(t, x),
    "tanh": lambda t, F, x, a, b: a * t.tanh(b * x),
    "abs": lambda t, F, x: x.abs(),
    "square": lambda t, F, x: x * x,
    "sqrt": lambda t, F, x: x.sqrt(),
    "softrelu": lambda t, F, x: F.softplus(x),
    "ident": lambda t, F, x: x,
    "brelu": lambda t, F, x, a: x.clamp(0, a),
    "linear": lambda t, F, x, a, b: a * x + b,
    "leaky": lambda t, F, x, a: F.leaky_relu(x, a),
}


def torch_sigmoid(t, x):
    return t.sigmoid(x)


def activation(act, x):
    torch, F = _torch()
    return ACTIVATIONS[act.name](torch, F, x, *act.args)


TORCH = {
    "conv": conv,
    "deconv": deconv,
    "local": local,
    "lrn": lrn,
    "pool": pool,
    "fc": fc,
    "softmax": lambda layer, inputs, p: _torch()[1].softmax(inputs[0], dim=1),
    "dropout": lambda layer, inputs, p: inputs[0],
    "concat": lambda layer, inputs, p: _torch()[0].cat(inputs, dim=1),
    "add": lambda layer, inputs, p: sum(inputs[1:], inputs[0]),
    "batchnorm": batchnorm,
    **{name: (lambda layer, inputs, p: activation(layer.activation, inputs[0])) for name in ACTIVATIONS},
}


# ----------------------------------------------------------------------------- spec §2b layers
def _channel_vector(v, x):
    return v.reshape((1, -1) + (1,) * (x.dim() - 2))


def _add(layer, inputs, p):
    coeff = layer.attrs.get("coeff") or (1.0,) * len(inputs)
    return sum(c * x for c, x in zip(coeff, inputs))


def _max(layer, inputs, p):
    torch, _ = _torch()
    y = inputs[0]
    for x in inputs[1:]:
        y = torch.maximum(y, x)
    return y


def _crop(layer, inputs, p):
    (oh, ow), (dy, dx) = layer.out_shape[1:], layer.attrs["offset"]
    return inputs[0][:, :, dy: dy + oh, dx: dx + ow]


TORCH.update({
    "add": _add,
    "max": _max,
    "mul": lambda layer, inputs, p: _torch()[0].stack(inputs).prod(0),
    "prelu": lambda layer, inputs, p: _torch()[1].prelu(inputs[0], p["slope"]),
    "scale": lambda layer, inputs, p: inputs[0] * _channel_vector(p["scale"], inputs[0])
    + (_channel_vector(p["shift"], inputs[0]) if "shift" in p else 0),
    "slice": lambda layer, inputs, p: inputs[0][:, layer.attrs["begin"]: layer.attrs["end"]],
    "crop": _crop,
    "power": lambda layer, inputs, p: (layer.attrs["shift"] + layer.attrs["scale"] * inputs[0]) ** layer.attrs["power"],
})


class TorchNet:
    """net in PyTorch: the weights live on the device as tensors; call with a tensor."""

    def __init__(self, net, params, device="cpu"):
        torch, _ = _torch()
        self.net, self.device = net, device
        self.params = {}
        for layer in net.layers:
            prefix = layer.name + "."
            self.params[layer.name] = {k[len(prefix):]: torch.as_tensor(v, device=device)
                                       for k, v in params.items() if k.startswith(prefix)}

    def run_layer(self, layer, inputs):
        y = TORCH[layer.kind](layer, inputs, self.params[layer.name])
        return activation(layer.neuron, y) if layer.neuron is not None else y

    def __call__(self, x, all_layers=False):
        values = {self.net.input_name: x}
        for layer in self.net.layers:
            values[layer.name] = self.run_layer(layer, [values[n] for n in layer.inputs])
        if all_layers:
            return {layer.name: values[layer.name] for layer in self.net.layers}
        return values[self.net.output.name]


def flops(net, layer_names) -> int:
    """2 × MACs of the layers a kernel computes (the convention of GFLOP/s figures)."""
    by_name = {layer.name: layer for layer in net.layers}
    return 2 * sum(by_name[n].macs for n in layer_names if n in by_name)


def _matmul_gflops(matmul, a, b, repeat) -> float:
    import time
    matmul(a, b)
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        matmul(a, b)
        times.append(time.perf_counter() - t)
    return 2 * a.shape[0] ** 3 / median(times) / 1e9


def measured_peak(size: int = 2048, repeat: int = 5) -> tuple[float, str]:
    """The machine's practical FP32 peak: the faster float32 2048³ matrix product of NumPy's
    BLAS and (when installed) PyTorch's, measured now. Tuned kernels can exceed it a little:
    it is a measured reference, not the hardware's limit."""
    import numpy as np
    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    best = (_matmul_gflops(np.matmul, a, b, repeat), "numpy sgemm")
    try:
        import torch
        torch.set_num_threads(os.cpu_count() or 1)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        best = max(best, (_matmul_gflops(torch.mm, ta, tb, repeat), "torch.mm"))
    except ImportError:
        pass
    return best


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else 0.5 * (xs[len(xs) // 2 - 1] + xs[len(xs) // 2])


def geomean(xs):
    xs = [x for x in xs if x > 0]
    return math.exp(sum(math.log(x) for x in xs) / len(xs)) if xs else float("nan")
