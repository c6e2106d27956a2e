"""`convc import cuda-convnet`: the published example cfgs import with cuda-convnet's shapes, and
the imported net's oracle equals an independent PyTorch implementation of cuda-convnet v1
(written from its layer.py and kernels, reading the cfgs with Python's own configparser and
using cuda-convnet's weight layouts) on random weights mapped by convert_weights."""
from __future__ import annotations

import configparser
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import convc
from convc import importers

DATA = next((d for d in (Path(__file__).resolve().parents[2] / "shared" / "testdata" / "cuda-convnet",  # beside the checkout
                          Path("/work/shared/testdata/cuda-convnet")) if d.is_dir()),
            Path(__file__).resolve().parents[2] / "shared" / "testdata" / "cuda-convnet")
NETS = {"18pct": (3, 32, 32), "80sec": (3, 32, 32), "conv-local-11pct": (3, 24, 24)}


def cfg_pair(name):
    return DATA / f"layers-{name}.cfg", DATA / f"layer-params-{name}.cfg"


def imported(name, shape=None):
    layers, params = cfg_pair(name)
    return importers.cuda_convnet(layers, params, input_shape=shape or NETS[name])


# ----------------------------------------------------------------------------- reference
class CudaConvnetReference:
    """cuda-convnet v1's forward pass at test time, from the cfg files, in float64 torch."""

    def __init__(self, layers_text: str, params_text: str, input_shape):
        self.cfg, self.pcfg = _ini(layers_text), _ini(params_text)
        self.input_shape = input_shape

    def random_weights(self, seed=0) -> dict:
        """Arrays in cuda-convnet's own layouts, named LAYER/weights and LAYER/biases."""
        rng, arrays, shapes = np.random.default_rng(seed), {}, {}
        for name in self.cfg.sections():
            s, t = self.cfg[name], self.cfg[name]["type"]
            if t == "data":
                shapes[name] = self.input_shape if int(s["dataidx"]) == 0 else None
                continue
            if t.startswith("cost."):
                continue
            c, h, w = shapes[s["inputs"].split(",")[0].strip()]
            if t in ("conv", "local"):
                g, k = int(s.get("groups", 1)), int(s["filtersize"])
                f = int(s["filters"]) * g
                o = 1 + math.ceil((2 * int(s.get("padding", 0)) + h - k) / int(s.get("stride", 1)))
                modules = o * o if t == "local" else 1
                arrays[f"{name}/weights"] = rng.standard_normal((modules * c // g * k * k, f)) * 0.2
                arrays[f"{name}/biases"] = rng.standard_normal((f * modules, 1)) * 0.1
                shapes[name] = (f, o, o)
            elif t == "fc":
                n = int(s["outputs"])
                arrays[f"{name}/weights"] = rng.standard_normal((c * h * w, n)) * 0.1
                arrays[f"{name}/biases"] = rng.standard_normal((1, n)) * 0.1
                shapes[name] = (n, 1, 1)
            elif t == "pool":
                k, st = int(s["sizex"]), int(s["stride"])
                o = math.ceil((h - k) / st) + 1
                shapes[name] = (c, o, o)
            else:
                shapes[name] = (c, h, w)
        return {k: v.astype(np.float32) for k, v in arrays.items()}

    def run(self, x: np.ndarray, weights: dict) -> np.ndarray:
        acts = {}
        last = None
        for name in self.cfg.sections():
            s, t = self.cfg[name], self.cfg[name]["type"]
            if t == "data":
                acts[name] = torch.from_numpy(x.astype(np.float64)) if int(s["dataidx"]) == 0 else None
                continue
            if t.startswith("cost."):
                continue
            ins = [acts[i.strip()] for i in s["inputs"].split(",")]
            y = getattr(self, t)(name, s, ins, weights)
            p = self.pcfg[name] if self.pcfg.has_section(name) else {}
            if float(p.get("dropout", 0)) > 0:
                y = y * (1 - float(p["dropout"]))          # test-time scaling (layer.cu)
            if s.get("neuron"):
                y = _neuron(s["neuron"], y)
            acts[name] = last = y
        return last.numpy()

    @staticmethod
    def _w(weights, name, key):
        return torch.from_numpy(weights[f"{name}/{key}"].astype(np.float64))

    def conv(self, name, s, ins, weights, local=False):
        x = ins[0]
        n, c, h, _ = x.shape
        g, k = int(s.get("groups", 1)), int(s["filtersize"])
        pad, st = int(s.get("padding", 0)), int(s.get("stride", 1))
        f = int(s["filters"]) * g
        o = 1 + math.ceil((2 * pad + h - k) / st)
        # modules start at -pad; taps past the bottom/right read zeros
        extra = max(0, (o - 1) * st + k - (h + 2 * pad))
        xp = F.pad(x, (pad, pad + extra, pad, pad + extra))
        cols = F.unfold(xp, k, stride=st)[:, :, : o * o]            # (N, C·K·K, modules), rows (c, y, x)
        wt = self._w(weights, name, "weights")
        cg, fg = c // g, f // g
        out = []
        for gi in range(g):
            cg_cols = cols.reshape(n, c, k * k, o * o)[:, gi * cg:(gi + 1) * cg].reshape(n, cg * k * k, o * o)
            if local:
                wl = wt.reshape(o * o, cg * k * k, f)[:, :, gi * fg:(gi + 1) * fg]
                out.append(torch.einsum("nrm,mrf->nfm", cg_cols, wl))
            else:
                out.append(torch.einsum("nrm,rf->nfm", cg_cols, wt[:, gi * fg:(gi + 1) * fg]))
        y = torch.cat(out, 1)
        b = self._w(weights, name, "biases").reshape(-1)
        y = y + (b.reshape(f, o * o) if local else b[:, None])
        return y.reshape(n, f, o, o)

    def local(self, name, s, ins, weights):
        return self.conv(name, s, ins, weights, local=True)

    def pool(self, name, s, ins, weights):
        x = ins[0]
        k, st, h = int(s["sizex"]), int(s["stride"]), x.shape[2]
        o = math.ceil((h - k) / st) + 1
        y = torch.empty(x.shape[0], x.shape[1], o, o, dtype=x.dtype)
        for i in range(o):
            for j in range(o):
                win = x[:, :, i * st:min(h, i * st + k), j * st:min(h, j * st + k)]
                y[:, :, i, j] = win.amax((2, 3)) if s["pool"] == "max" else win.mean((2, 3))
        return y

    def rnorm(self, name, s, ins, weights, cross=False):
        x, size = ins[0], int(s["size"])
        p = self.pcfg[name]
        scale = float(p["scale"]) / (size if cross else size * size)
        lo = size // 2
        sq = x * x
        if cross:
            sq = F.pad(sq.transpose(1, 3), (lo, size - lo - 1)).transpose(1, 3)
            acc = sum(sq[:, j:j + x.shape[1]] for j in range(size))
        else:
            sq = F.pad(sq, (lo, size - lo - 1, lo, size - lo - 1))
            acc = sum(sq[:, :, i:i + x.shape[2], j:j + x.shape[3]] for i in range(size) for j in range(size))
        return x * (float(p.get("mindiv", 1.0)) + scale * acc) ** (-float(p["pow"]))

    def cmrnorm(self, name, s, ins, weights):
        return self.rnorm(name, s, ins, weights, cross=True)

    def fc(self, name, s, ins, weights):
        x = ins[0].reshape(ins[0].shape[0], -1)                      # C, H, W order
        y = x @ self._w(weights, name, "weights") + self._w(weights, name, "biases").reshape(-1)
        return y.reshape(*y.shape, 1, 1)

    def softmax(self, name, s, ins, weights):
        return torch.softmax(ins[0], 1)

    def neuron(self, name, s, ins, weights):
        return ins[0]         # the neuron itself is applied by run()

    def eltsum(self, name, s, ins, weights):
        return sum(ins)


def _ini(text):
    cp = configparser.ConfigParser(interpolation=None)
    cp.read_string(text)
    return cp


def _neuron(spec, y):
    name, _, args = spec.partition("[")
    a = [float(v) for v in args.rstrip("]").split(",")] if args else []
    return {"relu": lambda: torch.relu(y), "logistic": lambda: torch.sigmoid(y), "abs": lambda: y.abs(),
            "tanh": lambda: a[0] * torch.tanh(a[1] * y), "linear": lambda: a[0] * y + a[1],
            "brelu": lambda: torch.clamp(y, 0, a[0]), "square": lambda: y * y,
            "softrelu": lambda: F.softplus(y), "ident": lambda: y}[name.strip()]()


def check_against_reference(result, layers_text, params_text, shape, batch=2, seed=0):
    ref = CudaConvnetReference(layers_text, params_text, shape)
    arrays = ref.random_weights(seed)
    params = importers.convert_weights(result, arrays)
    net = convc.parse(result.text)
    x = np.random.default_rng(seed + 1).standard_normal((batch, *shape)).astype(np.float32)
    y = np.asarray(convc.oracle.run(net, x, params))
    expected = ref.run(x, arrays)
    expected = expected.reshape(y.shape)
    np.testing.assert_allclose(y, expected, rtol=2e-4, atol=2e-5)


# ----------------------------------------------------------------------------- the published files
@pytest.mark.parametrize("name", sorted(NETS))
def test_example_imports_and_checks(name):
    r = imported(name)
    net = convc.parse(r.text, filename=f"{name}.conv")
    assert "convention cuda-convnet" in r.text
    assert any("dropped training-only layer 'logprob' (cost.logreg)" in n for n in r.notes)
    assert net.param_shapes()


def test_18pct_shapes_follow_cuda_convnet():
    net = convc.parse(imported("18pct").text)
    assert [net.shape_of(n)[1] for n in ("conv1", "pool1", "pool2", "pool3")] == [32, 16, 8, 4]


def test_conv_local_11pct_shapes_and_text():
    r = imported("conv-local-11pct")
    net = convc.parse(r.text)
    assert [net.shape_of(n)[1] for n in ("conv1", "pool1", "pool2", "local3")] == [24, 12, 6, 6]
    # The spec's normative example, statement for statement.
    body = [" ".join(l.split()) for l in r.text.splitlines() if l and not l.startswith(("#", "network"))]
    assert body == ["convention cuda-convnet", "input data 3x24x24",
                    "conv conv1 filters=64 size=5 pad=2 neuron=relu", "pool pool1 max size=3 stride=2",
                    "lrn rnorm1 size=9 alpha=0.001 beta=0.75", "conv conv2 filters=64 size=5 pad=2 neuron=relu",
                    "lrn rnorm2 size=9 alpha=0.001 beta=0.75", "pool pool2 max size=3 stride=2",
                    "local local3 filters=64 size=3 pad=1 neuron=relu",
                    "local local4 filters=32 size=3 pad=1 neuron=relu", "fc fc10 outputs=10", "softmax probs"]


@pytest.mark.parametrize("name", sorted(NETS))
def test_example_matches_reference(name):
    layers, params = cfg_pair(name)
    check_against_reference(imported(name), layers.read_text(), params.read_text(), NETS[name])


def test_odd_input_size_uses_ceil_rounding():
    # 27x27: conv stride 2 and pools hit cuda-convnet's ceil rounding and partial windows.
    layers_text = (DATA / "layers-18pct.cfg").read_text().replace("stride=1", "stride=2", 1)
    params_text = (DATA / "layer-params-18pct.cfg").read_text()
    r = importers.cuda_convnet("l.cfg", "p.cfg", (3, 27, 27), layers_text=layers_text, params_text=params_text)
    assert convc.parse(r.text).shape_of("conv1") == (32, 14, 14)
    check_against_reference(r, layers_text, params_text, (3, 27, 27))


# ----------------------------------------------------------------------------- synthetic features
SYNTH_LAYERS = """
[data]
type=data
dataIdx=0

[labels]
type=data
dataIdx=1

[conv1]
type=conv
inputs=data
channels=4
filters=8
groups=2
padding=1
stride=2
filterSize=3
sharedBiases=1
partialSum=1
initW=0.01

[rnorm1]
type=cmrnorm
inputs=conv1
channels=16
size=4
neuron=tanh[1.7,0.66]

[local2]
type=local
inputs=rnorm1
channels=16
filters=4
groups=2
padding=1
stride=1
filterSize=3
neuron=brelu[2]

[act]
type=neuron
inputs=local2
neuron=abs

[sum]
type=eltsum
inputs=local2,act

[pool]
type=pool
pool=avg
inputs=sum
sizeX=2
stride=2
channels=8
neuron=logistic

[fc]
type=fc
inputs=pool
outputs=5
neuron=linear[2,-1]

[probs]
type=softmax
inputs=fc

[cost]
type=cost.logreg
inputs=labels,probs
"""
SYNTH_PARAMS = """
[conv1]
epsW=0.001
dropout=0.25

[rnorm1]
scale=0.01
pow=0.75
minDiv=2
"""


def test_synthetic_features_match_reference():
    r = importers.cuda_convnet("synth.cfg", "synth-params.cfg", (4, 9, 9),
                               layers_text=SYNTH_LAYERS, params_text=SYNTH_PARAMS)
    text = r.text
    assert "filters=16 size=3 stride=2 pad=1 groups=2" in text        # 8 per group x 2 groups
    assert "rnorm1_neuron" in text and "k=2" in text                  # neuron on lrn: own layer
    assert "neuron=linear[0.75,0]" in text                            # dropout=0.25: x0.75 at test time
    check_against_reference(r, SYNTH_LAYERS, SYNTH_PARAMS, (4, 9, 9))


# ----------------------------------------------------------------------------- errors
BAD_LAYERS = """[data]
type=data
dataIdx=0

[conv1]
type=local
inputs=data,data
channels=3
filters=16
filterSize=5

[pool1]
type=pool
pool=max
inputs=conv1
start=1
sizeX=3
stride=2
channels=16

[norm]
type=cnorm
inputs=pool1
channels=16
size=3

[rn]
type=cmrnorm
inputs=pool1
channels=16
size=3
blocked=1
"""


def test_unsupported_things_are_reported_all_at_once():
    with pytest.raises(convc.ConvcError) as info:
        importers.cuda_convnet("bad.cfg", None, (3, 32, 32), layers_text=BAD_LAYERS)
    err = info.value
    text = str(err)
    places = [(d.pos.line, d.message) for d in err.diagnostics]
    assert places[0][0] == 7 and "conv1" in places[0][1] and "sums" in places[0][1]
    assert any(line == 16 and "pool1" in m and "start=1" in m for line, m in places)
    assert any(line == 22 and "cnorm" in m for line, m in places)
    assert any(line == 32 and "blocked" in m for line, m in places)
    assert any("'rn'" in m and "scale" in m for _, m in places)     # no layer-params file given
    assert text.startswith("bad.cfg:7:8: error: layer 'conv1' (local)")
    assert "inputs=data,data\n       ^~~~~~~~~" in text


def test_channels_mismatch_and_outputsx():
    text = (DATA / "layers-18pct.cfg").read_text().replace("outputsX=0", "outputsX=5", 1)
    with pytest.raises(convc.ConvcError) as info:
        importers.cuda_convnet("l.cfg", DATA / "layer-params-18pct.cfg", (3, 32, 32), layers_text=text)
    assert "outputsX=5" in str(info.value) and "16" in str(info.value)
    with pytest.raises(convc.ConvcError) as info:
        imported("18pct", (1, 32, 32))
    assert "channels=3, but its input has 1 channels" in str(info.value)


def test_bad_input_option():
    with pytest.raises(convc.ConvcError, match="not CxHxW"):
        imported("18pct", "32x32")


# ----------------------------------------------------------------------------- weights and CLI
def test_weight_layouts_and_errors():
    r = imported("conv-local-11pct")
    ref = CudaConvnetReference(*(p.read_text() for p in cfg_pair("conv-local-11pct")), (3, 24, 24))
    arrays = ref.random_weights()
    params = importers.convert_weights(r, arrays)
    w = arrays["conv1/weights"].reshape(3, 5, 5, 64)
    assert params["conv1.weight"][7, 2, 1, 4] == w[2, 1, 4, 7]
    lw = arrays["local3/weights"].reshape(6, 6, 64, 3, 3, 64)
    assert params["local3.weight"][5, 1, 2, 3, 0, 2] == lw[1, 2, 3, 0, 2, 5]
    assert params["local3.bias"].shape == (64, 6, 6)
    assert params["fc10.weight"].shape == (10, 1152)
    del arrays["fc10/biases"]
    arrays["conv2/weights"] = arrays["conv2/weights"][:-1]
    with pytest.raises(convc.ConvcError) as info:
        importers.convert_weights(r, arrays, filename="w.npz")
    msg = str(info.value)
    assert "conv2/weights" in msg and "(1599, 64)" in msg and "(1600, 64)" in msg
    assert "fc10/biases" in msg


def test_cli_writes_conv_and_params(tmp_path, capsys):
    from convc.cli import main
    layers, params = cfg_pair("conv-local-11pct")
    ref = CudaConvnetReference(layers.read_text(), params.read_text(), (3, 24, 24))
    np.savez(tmp_path / "w.npz", **ref.random_weights())
    out = tmp_path / "net.conv"
    rc = main(["import", "cuda-convnet", str(layers), str(params), "--input", "3x24x24", "-o", str(out),
               "--params-from", str(tmp_path / "w.npz")])
    assert rc == 0
    err = capsys.readouterr().err
    assert "note: dropped training-only layer 'logprob'" in err
    net = convc.parse(out.read_text())
    p = dict(np.load(tmp_path / "net.npz"))
    assert {k: v.shape for k, v in p.items()} == net.param_shapes()
    assert main(["info", str(out)]) == 0


def test_cli_reports_errors_with_exit_2(tmp_path, capsys):
    from convc.cli import main
    bad = tmp_path / "bad.cfg"
    bad.write_text(BAD_LAYERS)
    assert main(["import", "cuda-convnet", str(bad), "--input", "3x32x32"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:7:8: error:" in err and "Traceback" not in err


def test_npz_is_never_unpickled(tmp_path):
    np.savez(tmp_path / "evil.npz", a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(convc.ConvcError, match="cannot read the arrays"):
        importers.load_npz(tmp_path / "evil.npz")


def test_reading_the_labels_is_reported():
    text = (DATA / "layers-80sec.cfg").read_text().replace("[fc10]\ntype=fc\noutputs=10\ninputs=fc64",
                                                          "[fc10]\ntype=fc\noutputs=10\ninputs=labels")
    with pytest.raises(convc.ConvcError, match="reads 'labels', the labels"):
        importers.cuda_convnet("l.cfg", None, (3, 32, 32), layers_text=text)
