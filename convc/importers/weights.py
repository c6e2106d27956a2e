"""Trained weights saved as arrays (an .npz) -> convc's params dict for an imported network.

Each importer leaves a plan entry per layer with weights; one converter per (framework, kind)
reads the arrays under the names that framework's users save them with and reshapes them to
convc's layouts (docs/import.md has the table):

  Caffe           NAME/0, NAME/1 (or NAME_w, NAME_b)   same layouts as convc; InnerProduct with
                  transpose: true is stored (in, out); BatchNorm NAME/0..2 = mean·s, var·s, s
                  (s the moving-average factor) and the following Scale S/0, S/1 = scale, shift;
                  PReLU NAME/0 = slope; a Scale of its own NAME/0, NAME/1 = scale, shift
  cuda-convnet    NAME/weights, NAME/biases (or NAME_w, NAME_b)
                  conv  (C/G·K·K, F) rows in (channel, y, x) order    -> (F, C/G, K, K)
                  local (H'·W'·C/G·K·K, F) rows (module, c, y, x)      -> (F, H', W', C/G, K, K)
                        biases (F·H'·W', 1) filter-major               -> (F, H', W')
                  fc    (inputs, outputs), inputs in C, H, W order     -> (outputs, inputs)

An array already named as convc names it (NAME.weight, NAME.bias, ...) is taken as it is.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import ConvcError, Diagnostic
from ..params import bilinear_kernel as bilinear


class _Arrays:
    """The user's arrays, remembering which were used and what was missing or wrong."""

    def __init__(self, arrays: dict, filename: str, caffemodel: bool = False):
        self.arrays, self.filename, self.caffemodel = dict(arrays), filename, caffemodel
        self.used: set[str] = set()
        self.problems: list[Diagnostic] = []

    def find(self, candidates: list[str], what: str, required: bool = True):
        for key in candidates:
            if key in self.arrays:
                self.used.add(key)
                return key, np.asarray(self.arrays[key])
        if required and self.caffemodel:
            layer, index = candidates[0].rsplit("/", 1)
            self.problem(f"no blob for {what}", f"the .caffemodel has no blob {index} in a layer named '{layer}': "
                                                "is it the model of this prototxt?")
        elif required:
            self.problem(f"no array for {what}", f"name it {' or '.join(repr(c) for c in candidates)}")
        return None, None

    def problem(self, message: str, help: str | None = None) -> None:
        self.problems.append(Diagnostic(message, None, help, self.filename))

    def shaped(self, key: str, arr: np.ndarray, shape: tuple, what: str):
        """`arr` with `shape`: equal, or the same numbers with extra leading or trailing 1s."""
        shape = tuple(shape)
        if arr.shape == shape:
            return arr
        if _squeeze(arr.shape) == _squeeze(shape):
            return arr.reshape(shape)
        self.problem(f"{'blob' if self.caffemodel else 'array'} '{key}' ({what}) has shape {arr.shape}, "
                     f"expected {shape}")
        return None


def _squeeze(shape) -> tuple:
    shape = list(shape)
    while shape and shape[0] == 1:
        shape.pop(0)
    while shape and shape[-1] == 1:
        shape.pop()
    return tuple(shape)


def _caffe_names(src: str, index: int, alias: str) -> list[str]:
    return [f"{src}/{index}", f"{src}_{alias}", f"{src}_{index}"]


def _native(a: _Arrays, layer: str, names: list[str], expected: dict) -> dict | None:
    """Arrays already in convc's naming are used as they are."""
    keys = [f"{layer}.{n}" for n in names]
    if not all(k in a.arrays for k in keys if k in expected):
        return None
    out = {}
    for k in keys:
        if k in expected:
            a.used.add(k)
            v = a.shaped(k, np.asarray(a.arrays[k]), expected[k], k)
            if v is not None:
                out[k] = v
    return out


# ----------------------------------------------------------------------------- Caffe
def caffe_conv_fc(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src = e["layer"], e["src"]
    native = _native(a, layer, ["weight", "bias"], expected)
    if native is not None:
        return native
    out = {}
    wkey = f"{layer}.weight"
    key, w = a.find(_caffe_names(src, 0, "w"), f"the weights of '{src}'", required=not e.get("fixed_bilinear"))
    if w is not None and wkey in expected:
        if e.get("transpose"):
            w = _squeeze_to_2d(w).T
        w = a.shaped(key, w, expected[wkey], f"weights of '{src}'")
        if w is not None:
            out[wkey] = w
    elif e.get("fixed_bilinear") and wkey in expected:
        out[wkey] = bilinear(expected[wkey])
    if e.get("bias"):
        key, b = a.find(_caffe_names(src, 1, "b"), f"the bias of '{src}'")
        if b is not None:
            b = a.shaped(key, b, expected[f"{layer}.bias"], f"bias of '{src}'")
            if b is not None:
                out[f"{layer}.bias"] = b
    return out


def _squeeze_to_2d(w: np.ndarray) -> np.ndarray:
    shape = _squeeze(w.shape)
    return w.reshape(shape if len(shape) == 2 else w.shape)


def caffe_batchnorm(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src, scale = e["layer"], e["src"], e.get("scale_src")
    native = _native(a, layer, ["mean", "var", "scale", "shift"], expected)
    if native is not None:
        return native
    c = expected[f"{layer}.mean"]
    km, mean = a.find(_caffe_names(src, 0, "mean"), f"the mean of '{src}'")
    kv, var = a.find(_caffe_names(src, 1, "var"), f"the variance of '{src}'")
    kf, factor = a.find(_caffe_names(src, 2, "factor"), f"the moving-average factor of '{src}'")
    out = {}
    if mean is not None and var is not None and factor is not None:
        s = float(np.asarray(factor).reshape(-1)[0])
        s = 0.0 if s == 0 else 1.0 / s             # Caffe: scale_factor == 0 ? 0 : 1 / scale_factor
        m, v = a.shaped(km, mean, c, "mean"), a.shaped(kv, var, c, "variance")
        if m is not None and v is not None:
            out[f"{layer}.mean"], out[f"{layer}.var"] = m * s, v * s
    gamma = beta = None
    if scale:
        kg, gamma = a.find(_caffe_names(scale, 0, "w"), f"the scale of '{scale}'")
        gamma = a.shaped(kg, gamma, c, "scale") if gamma is not None else None
        if e.get("scale_bias"):
            kb, beta = a.find(_caffe_names(scale, 1, "b"), f"the shift of '{scale}'")
            beta = a.shaped(kb, beta, c, "shift") if beta is not None else None
    out[f"{layer}.scale"] = gamma if gamma is not None else np.ones(c, np.float32)
    out[f"{layer}.shift"] = beta if beta is not None else np.zeros(c, np.float32)
    return out


def caffe_prelu(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src = e["layer"], e["src"]
    native = _native(a, layer, ["slope"], expected)
    if native is not None:
        return native
    key, slope = a.find(_caffe_names(src, 0, "w"), f"the slopes of '{src}'")
    slope = a.shaped(key, slope, expected[f"{layer}.slope"], f"slopes of '{src}'") if slope is not None else None
    return {} if slope is None else {f"{layer}.slope": slope}


def caffe_scale(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src = e["layer"], e["src"]
    native = _native(a, layer, ["scale", "shift"], expected)
    if native is not None:
        return native
    out = {}
    for index, alias, suffix in ((0, "w", "scale"), (1, "b", "shift")):
        if f"{layer}.{suffix}" not in expected:
            continue
        key, v = a.find(_caffe_names(src, index, alias), f"the {suffix} of '{src}'")
        v = a.shaped(key, v, expected[f"{layer}.{suffix}"], f"{suffix} of '{src}'") if v is not None else None
        if v is not None:
            out[f"{layer}.{suffix}"] = v
    return out


# ----------------------------------------------------------------------------- cuda-convnet
def _ccn_names(src: str, what: str) -> list[str]:
    alias = {"weights": ["w", "0"], "biases": ["b", "1"]}[what]
    return [f"{src}/{what}", f"{src}_{alias[0]}", f"{src}/{alias[1]}"]


def _ccn_weights(a: _Arrays, e: dict, rows: int, f: int):
    """The (rows, F) weight matrix. A layer with several inputs (cuda-convnet2) has one matrix
    per input, `L/weights/i` (or `L_w{i}`); stacked in input order they are the matrix of the
    concatenated input, which is how the import reads such a layer."""
    src, parts = e["src"], e.get("parts")
    if not parts:
        key, w = a.find(_ccn_names(src, "weights"), f"the weights of '{src}'")
        return a.shaped(key, w, (rows, f), f"weights of '{src}'") if w is not None else None
    blocks = []
    for i, part_rows in enumerate(parts):
        key, w = a.find([f"{src}/weights/{i}", f"{src}_w{i}"], f"the weights of '{src}' for input {i}")
        blocks.append(a.shaped(key, w, (part_rows, f), f"weights of '{src}' for input {i}") if w is not None else None)
    return None if any(b is None for b in blocks) else np.concatenate(blocks, axis=0)


def ccn_conv_local(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src = e["layer"], e["src"]
    native = _native(a, layer, ["weight", "bias"], expected)
    if native is not None:
        return native
    cg, k, f = e["channels"], e["size"], e["filters"]
    oh, ow = e["out"]
    local = e["kind"] == "local"
    rows = (oh * ow if local else 1) * cg * k * k
    out = {}
    w = _ccn_weights(a, e, rows, f)
    if w is not None:
        if local:
            out[f"{layer}.weight"] = w.reshape(oh, ow, cg, k, k, f).transpose(5, 0, 1, 2, 3, 4)
        else:
            out[f"{layer}.weight"] = w.reshape(cg, k, k, f).transpose(3, 0, 1, 2)
    key, b = a.find(_ccn_names(src, "biases"), f"the biases of '{src}'")
    if b is not None:
        b = a.shaped(key, b, (f * oh * ow,) if local else (f,), f"biases of '{src}'")
    if b is not None:
        out[f"{layer}.bias"] = b.reshape(f, oh, ow) if local else b
    return out


def ccn_fc(a: _Arrays, e: dict, expected: dict) -> dict:
    layer, src = e["layer"], e["src"]
    native = _native(a, layer, ["weight", "bias"], expected)
    if native is not None:
        return native
    out = {}
    w = _ccn_weights(a, e, e["inputs"], e["outputs"])
    if w is not None:
        out[f"{layer}.weight"] = w.T
    key, b = a.find(_ccn_names(src, "biases"), f"the biases of '{src}'")
    if b is not None:
        b = a.shaped(key, b, (e["outputs"],), f"biases of '{src}'")
    if b is not None:
        out[f"{layer}.bias"] = b
    return out


CONVERTERS = {
    ("caffe", "conv"): caffe_conv_fc, ("caffe", "deconv"): caffe_conv_fc, ("caffe", "fc"): caffe_conv_fc,
    ("caffe", "batchnorm"): caffe_batchnorm, ("caffe", "prelu"): caffe_prelu, ("caffe", "scale"): caffe_scale,
    ("cuda-convnet", "conv"): ccn_conv_local, ("cuda-convnet", "local"): ccn_conv_local,
    ("cuda-convnet", "fc"): ccn_fc,
}


# ----------------------------------------------------------------------------- entry points
def convert_weights(result, arrays: dict, filename: str = "<params>", notes: list | None = None,
                    caffemodel: bool = False) -> dict:
    """Map a framework's saved arrays to convc's params for `result` (an ImportResult).

    Raises ConvcError listing every missing or mis-shaped array; arrays that map to nothing
    are listed in `notes` (when given)."""
    expected = _expected_shapes(result.text)
    a = _Arrays(arrays, filename, caffemodel)
    params: dict[str, np.ndarray] = {}
    for entry in result.plan:
        params.update(CONVERTERS[(entry["op"], entry["kind"])](a, entry, expected))
    for name, shape in expected.items():
        if name not in params and not a.problems:
            a.problem(f"nothing gives '{name}' {shape}")
    if a.problems:
        raise ConvcError(a.problems)
    if notes is not None:
        what = "blob" if caffemodel else "array"
        notes += [f"{what} '{k}' in {filename} maps to no layer; ignored" for k in a.arrays if k not in a.used]
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


def _expected_shapes(text: str) -> dict:
    import convc
    return convc.parse(text, filename="<imported>").param_shapes()


def load_npz(path) -> dict[str, np.ndarray]:
    """An .npz (or .npy of one array) read without unpickling anything."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise ConvcError(Diagnostic("no such file", filename=str(path))) from None
    except (AttributeError, TypeError):   # np.load gave a plain array (.npy): no context manager
        raise ConvcError(Diagnostic("expected an .npz of named arrays, got a single array (.npy)",
                                    filename=str(path))) from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as err:
        raise ConvcError(Diagnostic(f"cannot read the arrays: {err}", filename=str(path),
                                    help="save them with numpy.savez (object arrays are refused)")) from None


def save_npz(path, params: dict) -> None:
    try:
        np.savez(path, **params)
    except OSError as err:
        raise ConvcError(Diagnostic(f"cannot write the params ({err.strerror})", filename=str(path))) from None


# ----------------------------------------------------------------------------- the other way
def _caffe_layer_blobs(e: dict, params: dict) -> dict[str, list[np.ndarray]]:
    """convc params of one planned layer -> {Caffe layer name: [blob, ...]} as Caffe stores them."""
    layer, src = e["layer"], e["src"]
    get = lambda suffix: params.get(f"{layer}.{suffix}")          # noqa: E731
    if e["kind"] in ("conv", "deconv", "fc"):
        w = get("weight")
        blobs = [w.T if e.get("transpose") else w]
        return {src: blobs + ([get("bias")] if e.get("bias") else [])}
    if e["kind"] == "batchnorm":
        out = {src: [get("mean"), get("var"), np.ones(1, np.float32)]}
        if e.get("scale_src"):
            out[e["scale_src"]] = [get("scale")] + ([get("shift")] if e.get("scale_bias") else [])
        return out
    if e["kind"] == "prelu":
        return {src: [get("slope")]}
    if e["kind"] == "scale":
        return {src: [get("scale")] + ([get("shift")] if e.get("bias") else [])}
    raise ValueError(f"no Caffe layout for {e['kind']}")


def caffe_blobs(result, params: dict) -> dict[str, list[np.ndarray]]:
    """convc params of a network imported from Caffe -> its Caffe blobs per layer (for writing a
    .caffemodel; the inverse of convert_weights). A batchnorm without a Scale after it must have
    scale 1 and shift 0, as Caffe's BatchNorm has no such blobs."""
    blobs: dict[str, list[np.ndarray]] = {}
    for entry in result.plan:
        if entry.get("fixed_bilinear"):
            continue
        blobs.update(_caffe_layer_blobs(entry, params))
    return blobs
