"""cuda-convnet (v1) layers.cfg + layer-params.cfg -> .conv (convention cuda-convnet).

Reference: cuda-convnet's layer.py (mirror dnouri/cuda-convnet) and its CUDA kernels.
What the import relies on, checked against that source:
- conv/local: `filters` is per group there (layer.py: filters*groups) and total in .conv;
  outputs 1 + ceil((2P + H - K)/S), which is .conv's round=ceil (the convention's default).
- pool: outputsX = ceil((H - start - sizeX)/stride) + 1, windows clipped to the image, avg
  divides by the real pixels (kLocalPool's regionSize): round=ceil, count=real.
- rnorm: x·(1 + scale/size²·Σ window x²)^-pow, window [x - size/2, x - size/2 + size) in
  integer division: .conv `lrn region=within alpha=scale beta=pow` (k=1).
- cmrnorm: the same across channels with scale/size: `lrn alpha=scale beta=pow` (k=1);
  `minDiv` (cuda-convnet2) is the additive constant k.
- dropout (layer-params, dnouri's fork): at test time outputs are scaled by 1 - dropout.
Both .cfg files are INI files as Python's ConfigParser reads them (keys case-insensitive).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvcError, Diagnostic, Pos
from .common import (Act, ImportResult, Names, Rec, Reporter, activation_rec, fmt, fold_activations,
                     render, require_layers, size_text)


# ----------------------------------------------------------------------------- INI with positions
@dataclass
class Option:
    key: str            # as written
    value: str
    pos: Pos            # the key
    value_pos: Pos


@dataclass
class Section:
    name: str
    pos: Pos
    options: dict[str, Option] = field(default_factory=dict)     # lower-case key -> option

    def get(self, key: str) -> Option | None:
        return self.options.get(key.lower())


_SECTION = re.compile(r"\[\s*(?P<name>[^\]]+?)\s*\]\s*$")
_OPTION = re.compile(r"(?P<key>[^:=\s][^:=]*?)\s*[:=]\s*(?P<value>.*?)\s*$")


def read_ini(rep: Reporter) -> list[Section]:
    """ConfigParser's reading of a file, keeping the line and column of every key and value."""
    sections: dict[str, Section] = {}
    current: Section | None = None
    last: Option | None = None
    for lineno, line in enumerate(rep.source.lines, 1):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;" or line.lower().startswith("rem "):
            continue
        if line[0] in " \t" and last is not None:          # continuation line
            last.value = (last.value + "\n" + stripped).strip()
            continue
        m = _SECTION.match(line)
        if m:
            name = m.group("name")
            current = sections.setdefault(name, Section(name, Pos(lineno, line.index(name) + 1, len(name))))
            last = None
            continue
        m = _OPTION.match(line)
        if m and current is not None:
            key, value = m.group("key"), m.group("value")
            last = Option(key, value, Pos(lineno, m.start("key") + 1, len(key)),
                          Pos(lineno, m.start("value") + 1, max(1, len(value))))
            current.options[key.lower()] = last
            continue
        rep.error("not an INI line: expected `[section]` or `key=value`" if current else
                  "a key before any [section]", Pos(lineno, len(line) - len(line.lstrip()) + 1, max(1, len(stripped))))
    return list(sections.values())


# ----------------------------------------------------------------------------- the importer
class _Skip(Exception):
    pass


# Keys that only matter for training (or for cuda-convnet's own bookkeeping): accepted, ignored.
TRAINING_KEYS = {"initw", "initb", "initwfunc", "initbfunc", "initcfunc", "partialsum", "sumwidth", "gpu",
                 "epsw", "epsb", "momw", "momb", "wc", "wball", "coeff", "schedw", "schedb", "superEps".lower(),
                 "updateperiod"}
# Keys each type reads (lower case), besides type, inputs and neuron.
TYPE_KEYS = {
    "data": {"dataidx"},
    "conv": {"channels", "filters", "padding", "stride", "filtersize", "groups", "randsparse", "sharedbiases",
             "weightsource", "filterchannels"},
    "local": {"channels", "filters", "padding", "stride", "filtersize", "groups", "randsparse", "weightsource",
              "filterchannels"},
    "fc": {"outputs", "weightsource"},
    "pool": {"pool", "channels", "sizex", "start", "stride", "outputsx"},
    "rnorm": {"channels", "size"},
    "cmrnorm": {"channels", "size", "blocked"},
    "softmax": set(),
    "neuron": set(),
    "eltsum": {"coeffs"},
    "eltmax": set(),
    "concat": set(),
    "pass": set(),
    "dropout": set(),
    "dropout2": set(),
    "crop": {"channels", "startx", "starty", "sizex"},
}
# layer-params.cfg keys: LRN scale/pow/minDiv, v1 dropout, cuda-convnet2's dropout enable/keep
# and eltsum coeffs
PARAM_KEYS = {"dropout", "scale", "pow", "mindiv", "enable", "keep", "coeffs"}

# cuda-convnet neuron name -> (.conv activation kind, number of parameters)
NEURONS = {"relu": ("relu", 0), "logistic": ("logistic", 0), "abs": ("abs", 0), "square": ("square", 0),
           "sqrt": ("sqrt", 0), "softrelu": ("softrelu", 0), "ident": ("ident", 0), "tanh": ("tanh", 2),
           "brelu": ("brelu", 1), "linear": ("linear", 2)}


@dataclass
class CLayer:
    name: str
    type: str
    sec: Section
    params: Section | None


class CudaConvnetImporter:
    def __init__(self, layers_rep: Reporter, params_rep: Reporter | None, input_shape):
        self.rep, self.prep = layers_rep, params_rep
        self.notes: list[str] = []
        self.names = Names(self.notes)
        self.recs: list[Rec] = []
        self.out: dict[str, str | None] = {}         # cuda-convnet layer -> .conv layer holding its output
        self.shape: dict[str, tuple] = {}            # .conv layer -> (C, H, W)
        self.input_shape = tuple(input_shape)
        self.input_name: str | None = None
        self.dropped: dict[str, str] = {}            # dropped layer -> what it was

    # -- reading values -------------------------------------------------------------------
    def opt(self, layer: CLayer, key: str, conv, default=None, required=False):
        o = layer.sec.get(key)
        if o is None:
            if required:
                self.fail(layer, f"required parameter '{key}' is missing", layer.sec.pos)
            return default
        try:
            return conv(o.value)
        except ValueError:
            self.fail(layer, f"parameter '{key}' must be {_WORDS[conv]}, not {o.value!r}", o.value_pos)

    def param(self, layer: CLayer, key: str, default=None):
        o = layer.params.get(key) if layer.params else None
        if o is None:
            if default is None:
                where = "its section in layer-params.cfg" if self.prep else "a layer-params.cfg file"
                self.fail(layer, f"needs '{key}' from {where}", layer.sec.pos,
                          "cuda-convnet keeps LRN scale and pow in the layer-params file")
            return default
        try:
            return float(o.value)
        except ValueError:
            self.prep.error(f"layer '{layer.name}': '{key}' must be a number, not {o.value!r}", o.value_pos)
            raise _Skip()

    def pos(self, layer: CLayer, key: str) -> Pos:
        o = layer.sec.get(key)
        return o.value_pos if o else layer.sec.pos

    def report(self, layer: CLayer, why: str, pos: Pos | None = None, help: str | None = None):
        """A problem that leaves the layer's shape known: report it and go on, so that the
        layers after it are checked too."""
        self.rep.error(f"layer '{layer.name}' ({layer.type}): {why}", pos or layer.sec.pos, help)

    def fail(self, layer: CLayer, why: str, pos: Pos | None = None, help: str | None = None):
        self.report(layer, why, pos, help)
        raise _Skip()

    # -- driving --------------------------------------------------------------------------
    def run(self, sections: list[Section], params: list[Section]) -> None:
        by_name = {s.name: s for s in params}
        for sec in sections:
            t = sec.get("type")
            if t is None:
                self.rep.error(f"layer '{sec.name}' has no type", sec.pos, "add type=conv, pool, fc, ...")
                continue
            layer = CLayer(sec.name, t.value.strip(), sec, by_name.get(sec.name))
            try:
                self.convert(layer)
            except _Skip:
                self.out[layer.name] = None
        if self.input_name is None and not self.rep.diagnostics:
            self.rep.error("no data layer (type=data, dataIdx=0) gives the network its input", Pos(1, 1, 1))

    def convert(self, layer: CLayer) -> None:
        if layer.type.startswith("cost."):
            self.notes.append(f"dropped training-only layer '{layer.name}' ({layer.type})")
            self.dropped[layer.name] = f"a training-only cost layer ({layer.type})"
            raise _Skip()
        if layer.type not in CONVERTERS:
            self.fail(layer, f"layer type '{layer.type}' has no .conv equivalent", self.pos(layer, "type"),
                      "convc imports: " + ", ".join(sorted(CONVERTERS)))
        self.check_keys(layer)
        if layer.type == "data":
            return self.data(layer)
        inputs = self.inputs(layer)
        recs = CONVERTERS[layer.type](self, layer, inputs)
        if not recs:               # an alias (pass or concat of one input): the output is the input
            self.out[layer.name] = inputs[0]
            return
        recs += self.after(layer, recs[-1])
        self.recs += recs
        self.out[layer.name] = recs[-1].name

    def check_keys(self, layer: CLayer) -> None:
        allowed = TYPE_KEYS[layer.type] | TRAINING_KEYS | {"type", "inputs", "neuron"}
        bad = [o for k, o in layer.sec.options.items() if k not in allowed]
        for o in bad:
            self.report(layer, f"key '{o.key}' has no .conv equivalent", o.pos,
                        f"a {layer.type} layer takes: {', '.join(sorted(TYPE_KEYS[layer.type]))}")
        if layer.params:
            for k, o in layer.params.options.items():
                if k not in PARAM_KEYS | TRAINING_KEYS:
                    self.prep.error(f"layer '{layer.name}': parameter '{o.key}' has no .conv equivalent", o.pos)

    def inputs(self, layer: CLayer) -> list[str]:
        o = layer.sec.get("inputs")
        if o is None:
            self.fail(layer, "required parameter 'inputs' is missing")
        names = [n.strip() for n in o.value.split(",")]
        result = []
        for n in names:
            if n not in self.out:
                self.fail(layer, f"input layer '{n}' is not defined before it", o.value_pos)
            if n in self.dropped:
                self.fail(layer, f"reads '{n}', {self.dropped[n]}", o.value_pos,
                          "only cost layers may read the labels")
            if self.out[n] is None:
                raise _Skip()          # already reported (or a dropped label layer)
            result.append(self.out[n])
        return result

    def one_input(self, layer: CLayer, inputs: list[str], why: str) -> str:
        if len(inputs) != 1:
            self.report(layer, f"{len(inputs)} inputs: {why}", self.pos(layer, "inputs"),
                      "convc layers of this kind take one input")
        return inputs[0]

    def image(self, layer: CLayer, src: str) -> tuple[int, int, int]:
        """The (C, H, W) that cuda-convnet sees, checked against the layer's `channels`."""
        c, h, w = self.shape[src]
        channels = self.opt(layer, "channels", int, None)
        if channels is not None and channels != c:
            self.report(layer, f"channels={channels}, but its input has {c} channels ({c}x{h}x{w})",
                      self.pos(layer, "channels"), "cuda-convnet would read the values as other images; "
                      ".conv has no reshape")
        return c, h, w

    def data(self, layer: CLayer) -> None:
        idx = self.opt(layer, "dataIdx", int, 0)
        if idx != 0:
            self.notes.append(f"dropped data layer '{layer.name}' (dataIdx={idx}: labels, used by costs only)")
            self.dropped[layer.name] = f"the labels (dataIdx={idx})"
            raise _Skip()
        if self.input_name is not None:
            self.fail(layer, "a second data layer; convc networks have exactly one input")
        self.input_name = self.names.new(layer.name, "input")
        self.out[layer.name] = self.input_name
        self.shape[self.input_name] = self.input_shape

    def new(self, layer: CLayer, kind: str, inputs: list[str], shape, **kw) -> Rec:
        rec = Rec(kind, self.names.new(layer.name), inputs, origin=layer.name, **kw)
        self.shape[rec.name] = shape
        return rec

    def after(self, layer: CLayer, rec: Rec) -> list[Rec]:
        """What cuda-convnet applies after the layer: dropout scaling at test, then its neuron."""
        extra = []
        drop = self.param(layer, "dropout", 0.0) if layer.params else 0.0
        if drop:
            scaled = activation_rec(self.names.new(f"{layer.name}_dropout"), Act("linear", (1.0 - drop, 0.0)),
                                    rec.name, f"the test-time dropout scaling of '{layer.name}'")
            self.notes.append(f"layer '{layer.name}': dropout={fmt(drop)} scales outputs by {fmt(1 - drop)} at "
                              f"test time in cuda-convnet: added linear layer '{scaled.name}'")
            self.shape[scaled.name] = self.shape[rec.name]
            extra.append(scaled)
        neuron = layer.sec.get("neuron") if layer.type != "neuron" else None
        if neuron is not None and neuron.value.strip():
            act = self.neuron(layer, neuron)
            src = extra[-1].name if extra else rec.name
            nrec = activation_rec(self.names.new(f"{layer.name}_neuron"), act, src, f"the neuron of '{layer.name}'")
            self.shape[nrec.name] = self.shape[src]
            extra.append(nrec)
        return extra

    def neuron(self, layer: CLayer, o: Option) -> Act:
        m = re.fullmatch(r"\s*(\w+)\s*(?:\[([^\]]*)\])?\s*", o.value)
        kind, nparams = NEURONS.get(m.group(1), (None, 0)) if m else (None, 0)
        if kind is None:
            self.fail(layer, f"neuron '{o.value}' has no .conv equivalent", o.value_pos,
                      "convc has: " + ", ".join(f"{k}[{','.join('ab'[:n])}]" if n else k for k, (_, n) in NEURONS.items()))
        try:
            args = tuple(float(a) for a in m.group(2).split(",")) if m.group(2) else ()
        except ValueError:
            args = None
        if args is None or len(args) != nparams:
            self.fail(layer, f"neuron '{o.value}' needs {nparams} number(s) in [ ]", o.value_pos)
        return Act(kind, args)


_WORDS = {int: "an integer", float: "a number", str: "text"}


def _bool(text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(text)


_WORDS[_bool] = "a boolean (0 or 1)"


# ----------------------------------------------------------------------------- converters
# conv/fc keys that cuda-convnet2 gives once per input (`filterSize=3,3`)
PER_INPUT_KEYS = ("filters", "padding", "stride", "filtersize", "groups", "filterchannels", "channels")


def join_inputs(imp: CudaConvnetImporter, layer: CLayer, inputs) -> tuple[list[Rec], list[int]]:
    """A conv or fc with several inputs sums one product per input: Σ W_i·x_i = W·concat(x_i),
    with W the per-input weights stacked in input order. So the inputs are joined by a
    `concat` NAME_inputs first, and the per-input keys (which must agree) become one.
    Returns the concat record and each input's size (channels for conv, values for fc)."""
    shapes = [imp.shape[i] for i in inputs]
    if len({s[1:] for s in shapes}) > 1:
        imp.fail(layer, f"inputs of different height or width {[f'{s[1]}x{s[2]}' for s in shapes]}: "
                        ".conv can only join inputs of one size", imp.pos(layer, "inputs"))
    for key in PER_INPUT_KEYS:
        o = layer.sec.get(key)
        if o is None:
            continue
        values = [v.strip() for v in o.value.split(",")]
        if len(values) not in (1, len(inputs)):
            imp.fail(layer, f"{o.key} has {len(values)} values for {len(inputs)} inputs", o.value_pos)
        if key == "channels":
            for name, value, shape in zip(inputs, values * len(inputs), shapes):
                if value != str(shape[0]):
                    imp.fail(layer, f"channels={value} for input '{name}', which has {shape[0]}", o.value_pos)
            o.value = str(sum(s[0] for s in shapes))
        elif len(set(values)) > 1:
            imp.fail(layer, f"{o.key}={o.value} differs between inputs: .conv applies one geometry to the "
                            "joined inputs", o.value_pos)
        else:
            o.value = values[0]
    if imp.opt(layer, "groups", int, 1) != 1:
        imp.fail(layer, "groups with several inputs: the groups of the joined input differ", imp.pos(layer, "groups"))
    rec = Rec("concat", imp.names.new(f"{layer.name}_inputs"), list(inputs), origin=layer.name)
    imp.shape[rec.name] = (sum(s[0] for s in shapes), *shapes[0][1:])
    imp.notes.append(f"layer '{layer.name}' ({layer.type}) sums one product per input: it reads their "
                     f"concatenation '{rec.name}', with the per-input weights stacked")
    return [rec], [s[0] if layer.type == "conv" else math.prod(s) for s in shapes]


def conv_or_local(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    local = layer.type == "local"
    joined, parts = join_inputs(imp, layer, inputs) if len(inputs) > 1 and not local else ([], None)
    if joined:
        inputs = [joined[0].name]
    src = imp.one_input(layer, inputs, "cuda-convnet sums the products of all inputs, .conv cannot for local")
    c, h, w = imp.image(layer, src)
    for key in ("randSparse",):
        if imp.opt(layer, key, _bool, False):
            imp.report(layer, "randSparse (random sparse connectivity) has no .conv equivalent", imp.pos(layer, key))
    if imp.opt(layer, "weightSource", str, ""):
        imp.report(layer, "weightSource (weights shared with another layer)", imp.pos(layer, "weightSource"),
                   "import the layers separately and give both the same weights")
    if not local and not imp.opt(layer, "sharedBiases", _bool, True):
        imp.report(layer, "sharedBiases=0 (a bias per output position) on a conv layer", imp.pos(layer, "sharedBiases"),
                 "convc's conv has one bias per filter")
    groups = imp.opt(layer, "groups", int, 1)
    per_group = imp.opt(layer, "filters", int, required=True)
    size = imp.opt(layer, "filterSize", int, required=True)
    pad, stride = imp.opt(layer, "padding", int, 0), imp.opt(layer, "stride", int, 1)
    fc_ = imp.opt(layer, "filterChannels", int, None)
    if fc_ is not None and fc_ * groups != c:
        imp.report(layer, f"filterChannels={fc_} with groups={groups} is not channels/groups",
                 imp.pos(layer, "filterChannels"))
    out = 1 + math.ceil((2 * pad + h - size) / stride)
    out_w = 1 + math.ceil((2 * pad + w - size) / stride)
    filters = per_group * groups
    keys = {"filters": filters, "size": size}
    if stride != 1:
        keys["stride"] = stride
    if pad:
        keys["pad"] = pad
    if groups != 1:
        keys["groups"] = groups
        imp.notes.append(f"layer '{layer.name}': filters={per_group} per group x groups={groups} "
                         f"= filters={filters} in .conv")
    rec = imp.new(layer, layer.type, [src], (filters, out, out_w), keys=keys)
    rec.weights = {"op": "cuda-convnet", "kind": layer.type, "layer": rec.name, "src": layer.name,
                   "channels": c // groups, "size": size, "filters": filters, "out": (out, out_w),
                   "parts": [p * size * size for p in parts] if parts else None}
    return joined + _with_neuron(imp, layer, rec)


def _with_neuron(imp: CudaConvnetImporter, layer: CLayer, rec: Rec) -> list[Rec]:
    """Put `neuron=` on the layer itself when nothing comes between (no dropout scaling)."""
    o = layer.sec.get("neuron")
    has_drop = layer.params is not None and layer.params.get("dropout") is not None \
        and imp.param(layer, "dropout", 0.0) != 0.0
    if o is not None and o.value.strip() and not has_drop:
        rec.neuron = imp.neuron(layer, o)
        layer.sec.options.pop("neuron")      # handled: `after` must not add it again
    return [rec]


def pool(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    src = imp.one_input(layer, inputs, "a pool layer has one input")
    c, h, w = imp.image(layer, src)
    mode = imp.opt(layer, "pool", str, required=True).strip()
    if mode not in ("max", "avg"):
        imp.report(layer, f"pool={mode}: convc pools with max or avg", imp.pos(layer, "pool"))
    size = imp.opt(layer, "sizeX", int, required=True)
    stride = imp.opt(layer, "stride", int, required=True)
    start = imp.opt(layer, "start", int, 0)
    if start != 0:
        imp.report(layer, f"start={start}: windows that begin off the top-left corner have no .conv equivalent",
                 imp.pos(layer, "start"))
    out = math.ceil((h - size) / stride) + 1
    out_w = math.ceil((w - size) / stride) + 1
    given = imp.opt(layer, "outputsX", int, 0)
    if given and given != out:
        imp.report(layer, f"outputsX={given}, but .conv computes {out} outputs from size {h}, sizeX {size}, "
                 f"stride {stride}", imp.pos(layer, "outputsX"), "leave outputsX=0 to let the size follow")
    rec = imp.new(layer, "pool", [src], (c, out, out_w), flags=[mode], keys={"size": size, "stride": stride})
    return _with_neuron(imp, layer, rec)


def norm(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    src = imp.one_input(layer, inputs, "a normalization layer has one input")
    shape = imp.image(layer, src)
    if imp.opt(layer, "blocked", _bool, False):
        imp.report(layer, "blocked=1 (normalizing over fixed blocks of channels) has no .conv equivalent",
                 imp.pos(layer, "blocked"))
    size = imp.opt(layer, "size", int, required=True)
    keys = {"size": size, "alpha": imp.param(layer, "scale"), "beta": imp.param(layer, "pow")}
    k = imp.param(layer, "minDiv", 1.0)
    if k != 1.0:
        keys["k"] = k
    if layer.type == "rnorm":
        keys["region"] = "within"
    return [imp.new(layer, "lrn", [src], shape, keys=keys)]


def fc(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    joined, parts = join_inputs(imp, layer, inputs) if len(inputs) > 1 else ([], None)
    src = joined[0].name if joined else inputs[0]
    if imp.opt(layer, "weightSource", str, ""):
        imp.report(layer, "weightSource (weights shared with another layer)", imp.pos(layer, "weightSource"))
    outputs = imp.opt(layer, "outputs", int, required=True)
    rec = imp.new(layer, "fc", [src], (outputs, 1, 1), keys={"outputs": outputs})
    rec.weights = {"op": "cuda-convnet", "kind": "fc", "layer": rec.name, "src": layer.name,
                   "inputs": math.prod(imp.shape[src]), "outputs": outputs, "parts": parts}
    return joined + _with_neuron(imp, layer, rec)


def softmax(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    src = imp.one_input(layer, inputs, "softmax has one input")
    return [imp.new(layer, "softmax", [src], imp.shape[src])]


def neuron_layer(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    src = imp.one_input(layer, inputs, "a neuron layer has one input")
    o = layer.sec.get("neuron")
    if o is None:
        imp.fail(layer, "required parameter 'neuron' is missing")
    rec = activation_rec(imp.names.new(layer.name), imp.neuron(layer, o), src, f"'{layer.name}' (neuron)")
    imp.shape[rec.name] = imp.shape[src]
    return [rec]


def eltsum(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    """Σ coeffs_i·x_i; coeffs in layers.cfg (cuda-convnet) or layer-params.cfg (cuda-convnet2)."""
    o = layer.sec.get("coeffs") or (layer.params.get("coeffs") if layer.params else None)
    keys = {}
    if o is not None:
        try:
            coeffs = [float(v) for v in o.value.split(",")]
        except ValueError:
            imp.fail(layer, "coeffs must be numbers separated by ','", o.value_pos)
        if len(coeffs) != len(inputs):
            imp.fail(layer, f"{len(coeffs)} coeffs for {len(inputs)} inputs", o.value_pos)
        if any(c != 1.0 for c in coeffs):
            keys["coeff"] = "[" + ",".join(fmt(c) for c in coeffs) + "]"
    if len(inputs) < 2:
        imp.fail(layer, "an elementwise sum of one input", imp.pos(layer, "inputs"))
    _same_shapes(imp, layer, inputs)
    return [imp.new(layer, "add", inputs, imp.shape[inputs[0]], keys=keys)]


def _same_shapes(imp: CudaConvnetImporter, layer: CLayer, inputs) -> None:
    shapes = {imp.shape[i] for i in inputs}
    if len(shapes) > 1:
        imp.fail(layer, f"inputs of different shapes {sorted(shapes)}", imp.pos(layer, "inputs"))


def eltmax(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    if len(inputs) < 2:
        imp.fail(layer, "an elementwise max needs at least 2 inputs", imp.pos(layer, "inputs"))
    _same_shapes(imp, layer, inputs)
    return [imp.new(layer, "max", inputs, imp.shape[inputs[0]])]


def concat(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    """concat (and pass, its in-place twin): the outputs one after another, which is a channel
    concatenation when the inputs share H and W."""
    if len({imp.shape[i][1:] for i in inputs}) > 1:
        imp.fail(layer, "inputs of different height or width: cuda-convnet joins the flat outputs, "
                        ".conv joins channels", imp.pos(layer, "inputs"))
    if len(inputs) == 1:
        imp.notes.append(f"layer '{layer.name}' ({layer.type} of one input) is the identity; removed")
        return []
    c = sum(imp.shape[i][0] for i in inputs)
    return [imp.new(layer, "concat", inputs, (c, *imp.shape[inputs[0]][1:]))]


def dropout(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    """cuda-convnet2: dropout is the identity at test time; dropout2 scales by `keep` at test
    time (whether or not `enable` is set: layer.cu Dropout2Layer::fpropActs)."""
    src = imp.one_input(layer, inputs, "a dropout layer has one input")
    keep = imp.param(layer, "keep", 0.5)
    if not 0 < keep <= 1:
        imp.fail(layer, f"keep={fmt(keep)} must lie in (0, 1]", layer.params.get("keep").value_pos)
    if layer.type == "dropout":
        return [imp.new(layer, "dropout", [src], imp.shape[src], keys={"ratio": 1 - keep})]
    rec = activation_rec(imp.names.new(layer.name), Act("linear", (keep, 0.0)), src, f"'{layer.name}' (dropout2)")
    imp.shape[rec.name] = imp.shape[src]
    imp.notes.append(f"layer '{layer.name}' (dropout2) scales by keep={fmt(keep)} at test time: linear[{fmt(keep)},0]")
    return [rec]


def crop(imp: CudaConvnetImporter, layer: CLayer, inputs) -> list[Rec]:
    """cuda-convnet2's crop: the sizeX x sizeX window at (startY, startX)."""
    src = imp.one_input(layer, inputs, "a crop layer has one input")
    c, h, w = imp.image(layer, src)
    size = imp.opt(layer, "sizeX", int, required=True)
    x0 = imp.opt(layer, "startX", int, required=True)
    y0 = imp.opt(layer, "startY", int, x0)
    if max(x0, y0) + size > min(h, w):
        imp.fail(layer, f"the {size}x{size} window at ({y0}, {x0}) does not fit the {h}x{w} input",
                 imp.pos(layer, "sizeX"))
    keys = {"size": size}
    if (x0, y0) != (0, 0):
        keys["offset"] = size_text(y0, x0)
    return [imp.new(layer, "crop", [src], (c, size, size), keys=keys)]


CONVERTERS = {"data": None, "conv": conv_or_local, "local": conv_or_local, "pool": pool, "rnorm": norm,
              "cmrnorm": norm, "fc": fc, "softmax": softmax, "neuron": neuron_layer, "eltsum": eltsum,
              "eltmax": eltmax, "concat": concat, "pass": concat, "dropout": dropout, "dropout2": dropout,
              "crop": crop}


# ----------------------------------------------------------------------------- entry point
def parse_input_shape(value) -> tuple[int, int, int]:
    """'3x32x32', (3, 32, 32) or (32, 32) for one channel... -> (C, H, W)."""
    if isinstance(value, str):
        m = re.fullmatch(r"\s*(\d+)x(\d+)x(\d+)\s*", value)
        if not m:
            raise ConvcError(Diagnostic(f"input size {value!r} is not CxHxW (e.g. 3x32x32)", filename="--input"))
        return tuple(int(g) for g in m.groups())
    dims = tuple(int(d) for d in value)
    if len(dims) != 3 or min(dims) < 1:
        raise ConvcError(Diagnostic(f"input size {dims} is not (C, H, W) of positive sizes", filename="--input"))
    return dims


def import_cuda_convnet(layers_path, params_path=None, input_shape=(3, 32, 32),
                        layers_text: str | None = None, params_text: str | None = None) -> ImportResult:
    """Import cuda-convnet's layers.cfg (+ layer-params.cfg) as a .conv network."""
    from .from_caffe import _read
    shape = parse_input_shape(input_shape)
    rep = Reporter(layers_text if layers_text is not None else _read(layers_path), str(layers_path))
    prep = None
    if params_path is not None or params_text is not None:
        prep = Reporter(params_text if params_text is not None else _read(params_path), str(params_path))
    sections = read_ini(rep)
    params = read_ini(prep) if prep else []
    imp = CudaConvnetImporter(rep, prep, shape)
    imp.run(sections, params)
    rep.check(*([prep] if prep else []))
    notes = imp.notes
    recs = fold_activations(imp.recs, notes)
    require_layers(recs, str(layers_path))
    net = re.sub(r"[^A-Za-z0-9_]", "_", re.sub(r"^layers[-_.]", "", Path(str(layers_path)).stem)) or "net"
    preamble = [f"network {net if re.match(r'[A-Za-z_]', net) else 'net_' + net}", "convention cuda-convnet",
                f"input {imp.input_name} {'x'.join(map(str, shape))}"]
    header = [f"imported from {Path(str(layers_path)).name}"
              + (f" + {Path(str(params_path)).name}" if params_path else "") + " (cuda-convnet) by `convc import cuda-convnet`",
              f"input size {'x'.join(map(str, shape))} given on the command line (the cfg does not hold it)"]
    text = render(header, preamble, imp.input_name, recs)
    plan = [r.weights for r in recs if r.weights]
    return ImportResult(text, notes, "cuda-convnet", str(layers_path), plan, dict(imp.names.map))
