"""Caffe .prototxt -> .conv, with Caffe's exact semantics (convention caffe).

Reference: BVLC/caffe src/caffe/proto/caffe.proto (fields and defaults) and src/caffe/layers/.
One converter per layer type, registered in CONVERTERS; a converter returns the .conv records
of one Caffe layer and reports what it cannot express. Everything unsupported in the file is
reported at once. Blobs are followed by name, so in-place layers (top == bottom) work.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConvcError, Pos
from . import prototxt
from .common import (Act, ImportResult, Names, Rec, Reporter, activation_rec, fmt, fold_activations,
                     render, require_layers, size_text)
from .prototxt import Message, Scalar

# V1 (`layers { type: CONVOLUTION }`) enum names -> the type strings of `layer { type: "..." }`.
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL", "CONCAT": "Concat",
    "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct",
    "LRN": "LRN", "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

# Layers that only matter for training: dropped with a note.
TRAINING_ONLY = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss", "HingeLoss",
                 "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss", "Silence", "HDF5Output"}
# Layers that read a data set: the network input comes from them (or from --input).
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData"}

CHOOSE_STATE = "choose the layers with --phase TEST|TRAIN and --stage NAME"
# Types whose layers may have several tops.
MULTI_TOP = {"Split", "Slice"}
# Fields of a layer that do not change what it computes at inference.
LAYER_FIELDS = {"name", "type", "bottom", "top", "param", "include", "exclude", "loss_weight",
                "propagate_down", "phase", "blobs_lr", "weight_decay", "blob_share_mode", "transform_param",
                "loss_param"}
# Fields inside a *_param message that only concern training or the implementation.
TRAINING_FIELDS = {"weight_filler", "bias_filler", "filler", "engine", "force_nd_im2col",
                   "moving_average_fraction", "stable_prod_grad"}


@dataclass
class Layer:
    """One Caffe layer as written, with its place in the file."""

    name: str
    type: str
    bottoms: list[str]
    tops: list[str]
    msg: Message
    pos: Pos
    type_pos: Pos
    index: int = 0
    versions_in: list[int] = field(default_factory=list)
    versions_out: list[int] = field(default_factory=list)

    def param(self, name: str) -> Message:
        f = self.msg.last(name)
        return f.value if f is not None and isinstance(f.value, Message) else Message(pos=self.pos)


class _Skip(Exception):
    """Raised by a converter after it reported why the layer cannot be imported."""


class CaffeImporter:
    def __init__(self, text: str, filename: str, input_shape=None, phase: str = "TEST", stages=()):
        self.rep = Reporter(text, filename)
        self.phase, self.stages = phase, set(stages)
        self.left_out: list[str] = []                # data layers the phase/stage rules left out
        self.filename = filename
        self.notes: list[str] = []
        self.names = Names(self.notes)
        self.blobs: dict[str, str | None] = {}     # blob -> .conv layer holding its value (None: not imported)
        self.recs: list[Rec] = []
        self.input_name: str | None = None
        self.input_shape = tuple(input_shape) if input_shape else None
        self.forced_shape = self.input_shape is not None
        self.layers: list[Layer] = []
        self.uses: dict[int, int] = {}
        self.merged: set[int] = set()
        self.tainted = False
        self.dropped: dict[str, str] = {}            # blob -> why its producer was dropped

    # -- typed field access ---------------------------------------------------------------
    def get(self, msg: Message, name: str, kind: str, default=None, layer: Layer | None = None):
        f = msg.last(name)
        return default if f is None else self.value(f.value, kind, name)

    def get_all(self, msg: Message, name: str, kind: str) -> list:
        return [self.value(f.value, kind, name) for f in msg.all(name)]

    def value(self, v, kind: str, name: str):
        ok = {"int": lambda s: s.kind == "number" and isinstance(s.value, int),
              "float": lambda s: s.kind == "number" or (s.kind == "ident" and s.value in ("inf", "-inf", "nan")),
              "bool": lambda s: (s.kind == "ident" and s.value in ("true", "false", "True", "False"))
              or (s.kind == "number" and s.value in (0, 1)),
              "enum": lambda s: s.kind == "ident" or (s.kind == "number" and isinstance(s.value, int)),
              "str": lambda s: s.kind == "string"}[kind]
        if not isinstance(v, Scalar) or not ok(v):
            pos = v.pos if isinstance(v, Scalar) else v.pos
            self.rep.error(f"field '{name}' must be {_KIND_WORDS[kind]}", pos)
            raise _Skip()
        if kind == "float":
            return float(v.value)
        if kind == "bool":
            return v.value in ("true", "True", 1)
        return v.value

    def field_pos(self, msg: Message, name: str, fallback: Pos) -> Pos:
        f = msg.last(name)
        if f is None:
            return fallback
        return f.value.pos if isinstance(f.value, Scalar) else f.pos

    def unsupported(self, layer: Layer, why: str, pos: Pos | None = None, help: str | None = None):
        self.rep.error(f"layer '{layer.name}' ({layer.type}): {why}", pos or layer.type_pos, help)
        raise _Skip()

    # -- reading the file -----------------------------------------------------------------
    def run(self, root: Message) -> None:
        self.read_net_inputs(root)
        self.layers = self.read_layers(root)
        self.number_blob_versions()
        for layer in self.layers:
            if layer.index in self.merged:
                continue
            try:
                self.convert(layer)
            except _Skip:
                for top in layer.tops:
                    self.blobs[top] = None
        if self.input_name is None and not self.rep.diagnostics:
            self.rep.error("the network has no input" + self.left_out_text(), Pos(1, 1, 1),
                           CHOOSE_STATE if self.left_out else
                           "add `input: \"data\"` with `input_shape { dim: 1 dim: 3 dim: 227 dim: 227 }`, "
                           "an Input layer, or pass --input CxHxW")

    def left_out_text(self) -> str:
        """Why there is no data: which data layers the include/exclude rules left out."""
        if not self.left_out:
            return ""
        state = f"--phase {self.phase}" + "".join(f" --stage {s}" for s in sorted(self.stages))
        return f"; the include/exclude rules for {state} left out the data layer(s) {', '.join(self.left_out)}"

    def read_net_inputs(self, root: Message) -> None:
        inputs = root.all("input")
        if not inputs:
            return
        if len(inputs) > 1:
            self.rep.error("convc networks have exactly one input; this net declares "
                           f"{len(inputs)}", inputs[1].pos)
            for f in inputs:          # layers reading them are not imported, and not reported again
                if isinstance(f.value, Scalar):
                    self.blobs[str(f.value.value)] = None
            self.input_name = ""
            return
        name = self.value(inputs[0].value, "str", "input")
        dims = [self.get_all(f.value, "dim", "int") for f in root.all("input_shape") if isinstance(f.value, Message)]
        dims = dims[0] if dims else self.get_all(root, "input_dim", "int")
        self.set_input(name, dims, inputs[0].pos)

    def set_input(self, name: str, dims: list[int], pos: Pos) -> None:
        shape = self.input_shape
        if shape is None:
            shape = _chw(dims)
            if shape is None:
                self.rep.error(f"input '{name}' has shape {dims}; convc needs N, C, H, W "
                               "(or N, D for a vector)", pos, "or pass --input CxHxW")
                return
            if dims and len(dims) >= 1:
                self.notes.append(f"input '{name}': batch {dims[0]} from the file is not part of .conv "
                                  "(the batch is chosen at build time)")
        self.input_name = self.names.new(name, "input")
        self.input_shape = shape
        self.blobs[name] = self.input_name

    def read_layers(self, root: Message) -> list[Layer]:
        new, old = root.all("layer"), root.all("layers")
        if new and old:
            self.rep.error("the file mixes `layer {}` and the old `layers {}`", old[0].pos,
                           "Caffe refuses such files too; use one form")
        layers = []
        for f in new + old:
            if not isinstance(f.value, Message):
                self.rep.error(f"'{f.name}' must be a message {{ ... }}", f.pos)
                continue
            layer = self.read_layer(f, v1=f.name == "layers")
            if layer is None:
                continue
            if self.in_state(layer):
                layer.index = len(layers)
                layers.append(layer)
            elif layer.type in DATA_LAYERS or layer.type == "Input":
                self.left_out.append(f"'{layer.name}' ({layer.type}, line {layer.pos.line})")
        return layers

    def read_layer(self, f, v1: bool) -> Layer | None:
        msg: Message = f.value
        try:
            if v1 and msg.last("layer") is not None:
                self.rep.error("this is Caffe's V0 layer format", f.pos,
                               "upgrade it with Caffe's tools/upgrade_net_proto_text first")
                return None
            name = self.get(msg, "name", "str", "")
            tf = msg.last("type")
            if tf is None:
                self.rep.error(f"layer '{name}' has no type", f.pos)
                return None
            type_ = self.value(tf.value, "enum" if v1 else "str", "type")
            if v1:
                type_ = V1_TYPES.get(str(type_), str(type_))
            return Layer(name, type_, self.get_all(msg, "bottom", "str"), self.get_all(msg, "top", "str"),
                         msg, f.pos, tf.value.pos)
        except _Skip:
            return None

    def in_state(self, layer: Layer) -> bool:
        """Caffe's StateMeetsRule for the state {phase, level 0, stages} chosen by --phase/--stage."""
        include, exclude = layer.msg.all("include"), layer.msg.all("exclude")
        if include:
            return any(self.rule_meets(r.value) for r in include if isinstance(r.value, Message))
        return not any(self.rule_meets(r.value) for r in exclude if isinstance(r.value, Message))

    def rule_meets(self, rule: Message) -> bool:
        phase = rule.last("phase")
        wanted = {"TEST": ("TEST", 1), "TRAIN": ("TRAIN", 0)}[self.phase]
        if phase is not None and isinstance(phase.value, Scalar) and phase.value.value not in wanted:
            return False
        lo, hi = self.get(rule, "min_level", "int", None), self.get(rule, "max_level", "int", None)
        if (lo is not None and lo > 0) or (hi is not None and hi < 0):
            return False
        stage = [f.value.value for f in rule.all("stage") if isinstance(f.value, Scalar)]
        not_stage = [f.value.value for f in rule.all("not_stage") if isinstance(f.value, Scalar)]
        return all(s in self.stages for s in stage) and not any(s in self.stages for s in not_stage)

    def number_blob_versions(self) -> None:
        """Give each write of a blob a version, so that in-place chains are followed exactly."""
        current: dict[str, int] = {}
        counter = 0
        for layer in self.layers:
            layer.versions_in = [current.get(b, -1) for b in layer.bottoms]
            for v in layer.versions_in:
                self.uses[v] = self.uses.get(v, 0) + 1
            layer.versions_out = []
            for t in layer.tops:
                counter += 1
                current[t] = counter
                layer.versions_out.append(counter)

    # -- converting -----------------------------------------------------------------------
    def convert(self, layer: Layer) -> None:
        if layer.type in TRAINING_ONLY:
            self.notes.append(f"dropped training-only layer '{layer.name}' ({layer.type})")
            self.dropped.update({t: f"the output of training-only layer '{layer.name}'" for t in layer.tops})
            raise _Skip()
        if layer.type in DATA_LAYERS or layer.type == "Input":
            return self.data_layer(layer)
        conv = CONVERTERS.get(layer.type)
        if conv is None:
            self.unsupported(layer, f"layer type '{layer.type}' has no .conv equivalent",
                             help=f"convc imports: {', '.join(sorted(CONVERTERS))}")
        fn, param_name, handled, arity = conv
        self.check_fields(layer, param_name, handled)
        self.check_arity(layer, arity)
        self.tainted = False
        inputs = [self.input_of(layer, b) for b in layer.bottoms]
        recs = fn(self, layer, layer.param(param_name) if param_name else Message(pos=layer.pos), inputs)
        if self.tainted:
            raise _Skip()
        if recs is None:       # an alias (Split, Flatten, one-input Concat): the tops are the bottom
            for top in layer.tops:
                self.blobs[top] = inputs[0]
            return
        self.recs.extend(recs)
        for top, rec in zip(layer.tops, recs[-len(layer.tops):]):    # Slice: one record per top
            self.blobs[top] = rec.name

    def check_fields(self, layer: Layer, param_name: str | None, handled: set) -> None:
        problems = False
        for f in layer.msg.fields:
            if f.name in LAYER_FIELDS or f.name == param_name:
                continue
            if f.name.endswith("_param") and isinstance(f.value, Message):
                self.notes.append(f"layer '{layer.name}': ignored '{f.name}' (Caffe ignores it on a {layer.type} layer too)")
                continue
            if f.name == "blobs":
                self.rep.error(f"layer '{layer.name}' ({layer.type}): weights written in the prototxt are not imported",
                               f.pos, "save them to an .npz and pass --params-from")
                problems = True
                continue
            self.rep.error(f"layer '{layer.name}' ({layer.type}): field '{f.name}' is not supported", f.pos)
            problems = True
        if param_name:
            for f in layer.param(param_name).fields:
                if f.name not in handled and f.name not in TRAINING_FIELDS:
                    self.rep.error(f"layer '{layer.name}' ({layer.type}): {param_name}.{f.name} has no .conv "
                                   "equivalent", f.pos)
                    problems = True
        if problems:
            raise _Skip()

    def check_arity(self, layer: Layer, arity: tuple) -> None:
        lo, hi = arity
        if not lo <= len(layer.bottoms) <= hi:
            want = str(lo) if lo == hi else f"at least {lo}"
            self.unsupported(layer, f"takes {want} bottom blob(s), has {len(layer.bottoms)}")
        if len(layer.tops) != 1 and layer.type not in MULTI_TOP:
            self.unsupported(layer, f"has {len(layer.tops)} top blobs; convc layers have one output")

    def input_of(self, layer: Layer, blob: str) -> str:
        if blob not in self.blobs:
            self.blobs[blob] = None      # reported once: later readers of the blob stay quiet
            self.unsupported(layer, f"bottom blob '{blob}' is not produced by any layer before it"
                             + self.left_out_text(), self.bottom_pos(layer, blob),
                             CHOOSE_STATE if self.left_out else None)
        if blob in self.dropped and self.blobs[blob] is None:
            self.unsupported(layer, f"reads '{blob}', {self.dropped[blob]}", self.bottom_pos(layer, blob))
        if self.blobs[blob] is None:
            # Its producer was dropped or could not be imported (already reported): go on
            # converting, to report this layer's own problems too, but keep nothing.
            self.tainted = True
            return blob
        return self.blobs[blob]

    def bottom_pos(self, layer: Layer, blob: str) -> Pos:
        for f in layer.msg.all("bottom"):
            if isinstance(f.value, Scalar) and f.value.value == blob:
                return f.value.pos
        return layer.pos

    def only_use_is_next(self, layer: Layer, next_type: str) -> Layer | None:
        """The next layer if it has type next_type and is the only reader of this layer's output."""
        nxt = self.layers[layer.index + 1] if layer.index + 1 < len(self.layers) else None
        if (nxt is None or nxt.type != next_type or len(nxt.bottoms) != 1 or not layer.versions_out
                or nxt.versions_in[0] != layer.versions_out[0] or self.uses.get(layer.versions_out[0]) != 1):
            return None
        return nxt

    def data_layer(self, layer: Layer) -> None:
        if layer.type == "Input":
            shapes = [self.get_all(f.value, "dim", "int") for f in layer.param("input_param").all("shape")
                      if isinstance(f.value, Message)]
            if len(layer.tops) != 1 or len(shapes) > 1:
                self.unsupported(layer, "convc networks have exactly one input")
            if self.input_name is not None:
                self.unsupported(layer, "a second network input; convc networks have exactly one")
            return self.set_input(layer.tops[0], shapes[0] if shapes else [], layer.pos)
        if self.input_name is not None or not layer.tops:
            self.notes.append(f"dropped data layer '{layer.name}' ({layer.type})")
            self.dropped.update({t: f"data read by the dropped layer '{layer.name}'" for t in layer.tops})
            raise _Skip()
        dims = self.data_dims(layer)
        if dims is None and not self.forced_shape:
            self.unsupported(layer, "a data layer does not say the size of its images",
                             help="pass the input size: --input CxHxW (Python: input_shape=(C, H, W))")
        self.notes.append(f"data layer '{layer.name}' ({layer.type}) becomes the input '{layer.tops[0]}'"
                          + (f"; dropped its other tops {layer.tops[1:]}" if len(layer.tops) > 1 else ""))
        self.set_input(layer.tops[0], dims or [], layer.pos)
        for top in layer.tops[1:]:
            self.blobs[top] = None
            self.dropped[top] = f"data (labels) of '{layer.name}', which only training uses"

    def data_dims(self, layer: Layer):
        p = layer.param("memory_data_param")
        if layer.type == "MemoryData" and p.last("channels") is not None:
            return [self.get(p, k, "int", 1) for k in ("batch_size", "channels", "height", "width")]
        if layer.type == "DummyData":
            shapes = [self.get_all(f.value, "dim", "int") for f in layer.param("dummy_data_param").all("shape")]
            return shapes[0] if shapes else None
        return self.transform_dims(layer)

    def transform_dims(self, layer: Layer):
        """`transform_param { crop_size }`: the images the net sees are crop_size², with channels
        from mean_value or ImageData's is_color (3 otherwise). scale and mean_* are preprocessing."""
        t = layer.param("transform_param")
        for key, what in PREPROCESSING.items():
            values = [fmt(v.value.value) if isinstance(v.value.value, (int, float)) else str(v.value.value)
                      for v in t.all(key) if isinstance(v.value, Scalar)]
            if values:
                self.notes.append(f"data layer '{layer.name}': transform_param {key} is preprocessing, not part of "
                                  f"the .conv: {what.format(', '.join(values))}")
        crop = self.get(t, "crop_size", "int", 0)
        if not crop:
            return None
        means = t.all("mean_value")
        color = self.get(layer.param("image_data_param"), "is_color", "bool", True)
        channels = len(means) if len(means) > 1 else 3 if color else 1
        self.notes.append(f"data layer '{layer.name}': input size {channels}x{crop}x{crop} from transform_param "
                          f"crop_size {crop}" + ("" if len(means) > 1 or not color else
                                                 " (3 channels assumed: pass --input CxHxW for others)"))
        return [1, channels, crop, crop]

    def shape_of(self, layer: Layer, name: str) -> tuple:
        """The per-image shape of an imported layer (or the input), by checking the records so far."""
        from ..network import build_network
        from ..parser import parse_statements
        from ..errors import Source
        if self.tainted:           # an input was not imported (already reported): nothing to measure
            raise _Skip()
        if name == self.input_name:
            return self.input_shape
        text = render([], ["convention caffe", f"input {self.input_name} {'x'.join(map(str, self.input_shape))}"],
                      self.input_name, self.recs)
        try:
            source = Source(text, "<imported so far>")
            return build_network(parse_statements(source), source).shape_of(name)
        except ConvcError as err:
            first = err.diagnostics[0].message if err.diagnostics else str(err)
            self.unsupported(layer, f"the shape of its input is unknown: the layers before it do not check ({first})")

    def new_rec(self, layer: Layer, kind: str, inputs: list[str], **kw) -> Rec:
        return Rec(kind, self.names.new(layer.name), inputs, origin=layer.name, **kw)


# transform_param fields: what the user does to the images before running the .conv
PREPROCESSING = {"scale": "multiply the images by {} first", "mean_value": "subtract the mean {} per channel first",
                 "mean_file": "subtract the mean image {} first", "mirror": "mirror {} is a training augmentation"}

_KIND_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false", "enum": "an enum name",
               "str": "a quoted string"}


def _chw(dims: list[int]):
    if len(dims) == 4:
        return tuple(dims[1:])
    if len(dims) == 2:
        return (dims[1], 1, 1)
    return None


# ----------------------------------------------------------------------------- geometry helpers
def _hw(imp: CaffeImporter, layer: Layer, p: Message, base: str, default, repeated: bool):
    """Caffe's `kernel_size` / `kernel_h`+`kernel_w` (and pad, stride, dilation) -> (h, w)."""
    h, w = p.last(f"{base}_h"), p.last(f"{base}_w")
    if h is not None or w is not None:
        if base in ("kernel", "stride") and (h is None or w is None):
            imp.unsupported(layer, f"{base}_h and {base}_w must be given together", (h or w).pos)
        return (imp.get(p, f"{base}_h", "int", default), imp.get(p, f"{base}_w", "int", default))
    name = "kernel_size" if base == "kernel" else base
    vals = imp.get_all(p, name, "int") if repeated else [v for v in [imp.get(p, name, "int", None)] if v is not None]
    if len(vals) > 2:
        imp.unsupported(layer, f"{len(vals)} values of {name}: only 2-D layers are supported",
                        p.all(name)[2].pos)
    if not vals:
        return None if default is None else (default, default)
    return (vals[0], vals[-1])


def _size_key(hw) -> str:
    return size_text(*hw)


# ----------------------------------------------------------------------------- converters
def convolution(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    deconv = layer.type == "Deconvolution"
    if p.last("num_output") is None:
        imp.unsupported(layer, "convolution_param.num_output is missing", layer.pos)
    axis = imp.get(p, "axis", "int", 1)
    if axis != 1:
        imp.unsupported(layer, f"axis {axis}: convc convolves over channels (axis 1)", imp.field_pos(p, "axis", layer.pos))
    kernel = _hw(imp, layer, p, "kernel", None, True)
    if kernel is None:
        imp.unsupported(layer, "no kernel size (kernel_size or kernel_h/kernel_w)", layer.pos)
    keys = {"filters": imp.get(p, "num_output", "int"), "size": _size_key(kernel)}
    for base, key in (("stride", "stride"), ("pad", "pad"), ("dilation", "dilation")):
        hw = _hw(imp, layer, p, base, 0 if base == "pad" else 1, True)
        if hw != ((0, 0) if base == "pad" else (1, 1)):
            keys[key] = _size_key(hw)
    group = imp.get(p, "group", "int", 1)
    if group != 1:
        keys["groups"] = group
    bias = imp.get(p, "bias_term", "bool", True)
    if not bias:
        keys["bias"] = "false"
    fixed = deconv and _bilinear_fixed(imp, layer, p)
    if fixed:
        keys["filler"] = "bilinear"
    rec = imp.new_rec(layer, "deconv" if deconv else "conv", inputs, keys=keys)
    rec.weights = {"op": "caffe", "kind": rec.kind, "layer": rec.name, "src": layer.name, "bias": bias,
                   "fixed_bilinear": fixed}
    return [rec]


def _bilinear_fixed(imp: CaffeImporter, layer: Layer, p: Message) -> bool:
    filler = p.last("weight_filler")
    if filler is None or not isinstance(filler.value, Message):
        return False
    if imp.get(filler.value, "type", "str", "constant") != "bilinear":
        return False
    specs = [f.value for f in layer.msg.all("param") if isinstance(f.value, Message)]
    lr = imp.get(specs[0], "lr_mult", "float", 1.0) if specs else 1.0
    if lr == 0:
        return True
    imp.notes.append(f"layer '{layer.name}': weights start bilinear but are learned (lr_mult != 0); "
                     "they come from --params-from, not filler=bilinear")
    return False


def pooling(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    method = imp.get(p, "pool", "enum", "MAX")
    mode = {"MAX": "max", 0: "max", "AVE": "avg", 1: "avg"}.get(method)
    if mode is None:
        imp.unsupported(layer, f"pool {method} has no .conv equivalent", imp.field_pos(p, "pool", layer.pos),
                        "convc pools with max or avg")
    pad = _hw(imp, layer, p, "pad", 0, False)
    stride = _hw(imp, layer, p, "stride", 1, False)
    if imp.get(p, "global_pooling", "bool", False):
        if pad != (0, 0) or stride != (1, 1):
            imp.unsupported(layer, "global pooling with pad or stride", layer.pos, "Caffe refuses it too")
        return [imp.new_rec(layer, "pool", inputs, flags=[mode, "global"])]
    kernel = _hw(imp, layer, p, "kernel", None, False)
    if kernel is None:
        imp.unsupported(layer, "no kernel size (kernel_size or kernel_h/kernel_w)", layer.pos)
    round_mode = imp.get(p, "round_mode", "enum", "CEIL")
    if round_mode not in ("CEIL", "FLOOR", 0, 1):
        imp.unsupported(layer, f"round_mode {round_mode}", imp.field_pos(p, "round_mode", layer.pos))
    ceil = round_mode in ("CEIL", 0)
    if p.last("ceil_mode") is not None:           # the field of Caffe forks (DenseNet, SSD): same meaning
        ceil = imp.get(p, "ceil_mode", "bool", True)
    if ceil and (pad[0] > 0) != (pad[1] > 0) and any(s > k for s, k, q in zip(stride, kernel, pad) if q == 0):
        imp.unsupported(layer, "pad only in one direction with stride > kernel: Caffe clips the other "
                        "direction's last window too, which .conv does not", layer.pos)
    keys = {"size": _size_key(kernel), "stride": _size_key(stride)}
    if pad != (0, 0):
        keys["pad"] = _size_key(pad)
    if not ceil:
        keys["round"] = "floor"
    return [imp.new_rec(layer, "pool", inputs, flags=[mode], keys=keys)]


def lrn(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    size = imp.get(p, "local_size", "int", 5)
    if size % 2 == 0:
        imp.unsupported(layer, f"local_size {size} is even; Caffe only supports odd sizes",
                        imp.field_pos(p, "local_size", layer.pos))
    region = imp.get(p, "norm_region", "enum", "ACROSS_CHANNELS")
    within = region in ("WITHIN_CHANNEL", 1)
    if region not in ("ACROSS_CHANNELS", "WITHIN_CHANNEL", 0, 1):
        imp.unsupported(layer, f"norm_region {region}", imp.field_pos(p, "norm_region", layer.pos))
    keys = {"size": size, "alpha": imp.get(p, "alpha", "float", 1.0), "beta": imp.get(p, "beta", "float", 0.75)}
    k = imp.get(p, "k", "float", 1.0)
    if within and k != 1.0:
        imp.notes.append(f"layer '{layer.name}': Caffe's WITHIN_CHANNEL LRN ignores k={fmt(k)} and uses 1; "
                         "so does the import")
    elif k != 1.0:
        keys["k"] = k
    if within:
        keys["region"] = "within"
    return [imp.new_rec(layer, "lrn", inputs, keys=keys)]


def inner_product(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    if p.last("num_output") is None:
        imp.unsupported(layer, "inner_product_param.num_output is missing", layer.pos)
    axis = imp.get(p, "axis", "int", 1)
    if axis != 1:
        imp.unsupported(layer, f"axis {axis}: convc's fc flattens everything after the batch (axis 1)",
                        imp.field_pos(p, "axis", layer.pos))
    bias = imp.get(p, "bias_term", "bool", True)
    keys = {"outputs": imp.get(p, "num_output", "int")}
    if not bias:
        keys["bias"] = "false"
    rec = imp.new_rec(layer, "fc", inputs, keys=keys)
    transpose = imp.get(p, "transpose", "bool", False)
    rec.weights = {"op": "caffe", "kind": "fc", "layer": rec.name, "src": layer.name, "bias": bias,
                   "transpose": transpose}
    return [rec]


def _act(kind, *args):
    return lambda imp, layer, p, inputs: [_act_rec(imp, layer, Act(kind, args), inputs)]


def _act_rec(imp: CaffeImporter, layer: Layer, act: Act, inputs) -> Rec:
    return activation_rec(imp.names.new(layer.name), act, inputs[0], f"'{layer.name}' ({layer.type})")


def relu(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    slope = imp.get(p, "negative_slope", "float", 0.0)
    return [_act_rec(imp, layer, Act("leaky", (slope,)) if slope else Act("relu"), inputs)]


def power(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    """y = (shift + scale·x)^power: .conv's `power`."""
    keys = {k: imp.get(p, k, "float", d) for k, d in (("power", 1.0), ("scale", 1.0), ("shift", 0.0))}
    defaults = {"power": 1.0, "scale": 1.0, "shift": 0.0}
    return [imp.new_rec(layer, "power", inputs, keys={k: v for k, v in keys.items() if v != defaults[k]})]


def prelu(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    shared = imp.get(p, "channel_shared", "bool", False)
    rec = imp.new_rec(layer, "prelu", inputs, keys={"shared": "true"} if shared else {})
    rec.weights = {"op": "caffe", "kind": "prelu", "layer": rec.name, "src": layer.name}
    return [rec]


def softmax(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    axis = imp.get(p, "axis", "int", 1)
    if axis != 1:
        imp.unsupported(layer, f"softmax over axis {axis}; convc's softmax is over channels (axis 1)",
                        imp.field_pos(p, "axis", layer.pos))
    return [imp.new_rec(layer, "softmax", inputs)]


def dropout(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    return [imp.new_rec(layer, "dropout", inputs, keys={"ratio": imp.get(p, "dropout_ratio", "float", 0.5)})]


def concat(imp: CaffeImporter, layer: Layer, p: Message, inputs):
    axis = imp.get(p, "axis", "int", None)
    if axis is None:
        axis = imp.get(p, "concat_dim", "int", 1)
    if axis != 1:
        imp.unsupported(layer, f"concatenation along axis {axis}; convc concatenates channels (axis 1)",
                        imp.field_pos(p, "axis", imp.field_pos(p, "concat_dim", layer.pos)))
    if len(inputs) == 1:
        imp.notes.append(f"layer '{layer.name}' (Concat of one blob) is the identity; removed")
        return None
    return [imp.new_rec(layer, "concat", inputs)]


# Caffe's EltwiseOp enum (PROD = 0, SUM = 1, MAX = 2) -> .conv kinds
ELTWISE_KINDS = {"PROD": "mul", 0: "mul", "SUM": "add", 1: "add", "MAX": "max", 2: "max"}


def eltwise(imp: CaffeImporter, layer: Layer, p: Message, inputs):
    op = imp.get(p, "operation", "enum", "SUM")
    kind = ELTWISE_KINDS.get(op)
    if kind is None:
        imp.unsupported(layer, f"operation {op}", imp.field_pos(p, "operation", layer.pos),
                        "Caffe's Eltwise operations are PROD, SUM and MAX")
    coeffs = imp.get_all(p, "coeff", "float")
    if coeffs and kind != "add":
        imp.unsupported(layer, "coefficients on a PROD or MAX Eltwise (Caffe refuses them too)",
                        imp.field_pos(p, "coeff", layer.pos))
    if coeffs and len(coeffs) != len(inputs):
        imp.unsupported(layer, f"{len(coeffs)} coefficients for {len(inputs)} bottoms (Caffe needs one per bottom)",
                        imp.field_pos(p, "coeff", layer.pos))
    keys = {"coeff": "[" + ",".join(fmt(c) for c in coeffs) + "]"} if any(c != 1.0 for c in coeffs) else {}
    if len(inputs) == 1:
        if keys:
            return [imp.new_rec(layer, "power", inputs, keys={"scale": coeffs[0]})]
        imp.notes.append(f"layer '{layer.name}' (Eltwise of one blob) is the identity; removed")
        return None
    return [imp.new_rec(layer, kind, inputs, keys=keys)]


def slice_layer(imp: CaffeImporter, layer: Layer, p: Message, inputs):
    """Caffe's Slice along the channels: one `slice` per top, [slice_point[i-1], slice_point[i])."""
    axis = imp.get(p, "axis", "int", None)
    if axis is None:
        axis = imp.get(p, "slice_dim", "int", 1)
    if axis != 1:
        imp.unsupported(layer, f"slicing along axis {axis}; convc slices channels (axis 1)",
                        imp.field_pos(p, "axis", imp.field_pos(p, "slice_dim", layer.pos)))
    points = imp.get_all(p, "slice_point", "int")
    tops = len(layer.tops)
    if points and len(points) != tops - 1:
        imp.unsupported(layer, f"{len(points)} slice points for {tops} tops (Caffe needs tops - 1)",
                        imp.field_pos(p, "slice_point", layer.pos))
    channels = imp.shape_of(layer, inputs[0])[0]
    if not points:
        if channels % tops:
            imp.unsupported(layer, f"{channels} channels do not split evenly into {tops} tops")
        points = [channels // tops * i for i in range(1, tops)]
    bounds = [0, *points, channels]
    if any(a >= b for a, b in zip(bounds, bounds[1:])):
        imp.unsupported(layer, f"slice points {points} are not increasing inside the {channels} channels",
                        imp.field_pos(p, "slice_point", layer.pos))
    if tops == 1:
        imp.notes.append(f"layer '{layer.name}' (Slice with one top) is the identity; removed")
        return None
    return [Rec("slice", imp.names.new(top), inputs, keys={"begin": a, "end": b}, origin=layer.name)
            for top, a, b in zip(layer.tops, bounds, bounds[1:])]


def crop(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    """Caffe's Crop with axis 2: H and W of the first bottom cut to the second's, at `offset`."""
    axis = imp.get(p, "axis", "int", 2)
    if axis not in (2, -2):
        imp.unsupported(layer, f"cropping from axis {axis}; convc crops height and width (axis 2)",
                        imp.field_pos(p, "axis", layer.pos))
    offsets = imp.get_all(p, "offset", "int")
    if len(offsets) > 2:
        imp.unsupported(layer, f"{len(offsets)} offsets for the 2 axes H, W", imp.field_pos(p, "offset", layer.pos))
    hw = (offsets or [0]) * (2 if len(offsets) <= 1 else 1)
    keys = {"offset": size_text(*hw)} if any(hw) else {}
    return [imp.new_rec(layer, "crop", inputs, keys=keys)]


def batch_norm(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    if imp.get(p, "use_global_stats", "bool", True) is False:
        imp.unsupported(layer, "use_global_stats: false normalizes with the batch's own statistics",
                        imp.field_pos(p, "use_global_stats", layer.pos), "convc's batchnorm is the inference form")
    eps = imp.get(p, "eps", "float", 1e-5)
    scale = imp.only_use_is_next(layer, "Scale")
    scale_bias = False
    if scale is not None:
        imp.check_fields(scale, "scale_param", {"axis", "num_axes", "bias_term"})
        sp = scale.param("scale_param")
        if imp.get(sp, "axis", "int", 1) != 1 or imp.get(sp, "num_axes", "int", 1) != 1:
            imp.unsupported(scale, "a Scale over other axes than the channels", scale.type_pos)
        scale_bias = imp.get(sp, "bias_term", "bool", False)
        imp.merged.add(scale.index)
        imp.notes.append(f"merged Scale '{scale.name}' into batchnorm '{layer.name}'")
    keys = {} if eps == 1e-5 else {"eps": eps}
    rec = imp.new_rec(layer, "batchnorm", inputs, keys=keys)
    rec.weights = {"op": "caffe", "kind": "batchnorm", "layer": rec.name, "src": layer.name,
                   "scale_src": scale.name if scale else None, "scale_bias": scale_bias}
    if scale is not None and not imp.tainted:
        imp.blobs[scale.tops[0]] = rec.name
    return [rec]


def scale_alone(imp: CaffeImporter, layer: Layer, p: Message, inputs) -> list[Rec]:
    """A Scale not merged into a BatchNorm: per-channel multiply (and shift with bias_term)."""
    if imp.get(p, "axis", "int", 1) != 1 or imp.get(p, "num_axes", "int", 1) != 1:
        imp.unsupported(layer, "a Scale over other axes than the channels (axis 1, num_axes 1)",
                        imp.field_pos(p, "num_axes", imp.field_pos(p, "axis", layer.pos)))
    bias = imp.get(p, "bias_term", "bool", False)
    rec = imp.new_rec(layer, "scale", inputs, keys={} if bias else {"bias": "false"})
    rec.weights = {"op": "caffe", "kind": "scale", "layer": rec.name, "src": layer.name, "bias": bias}
    return [rec]


def flatten(imp: CaffeImporter, layer: Layer, p: Message, inputs):
    if imp.get(p, "axis", "int", 1) != 1 or imp.get(p, "end_axis", "int", -1) != -1:
        imp.unsupported(layer, "flattening other axes than C, H, W", layer.pos)
    readers = [l for l in imp.layers[layer.index + 1:] if layer.versions_out[0] in l.versions_in]
    if not readers or any(r.type != "InnerProduct" for r in readers):
        imp.unsupported(layer, "a Flatten that does not feed an InnerProduct",
                        help="convc's fc flattens its input (C, H, W order) itself; other layers need images")
    imp.notes.append(f"removed Flatten '{layer.name}': fc flattens C, H, W itself")
    return None


def split(imp: CaffeImporter, layer: Layer, p: Message, inputs):
    return None


_ONE, _MANY = (1, 1), (1, 1 << 30)
CONV_FIELDS = {"num_output", "bias_term", "pad", "kernel_size", "stride", "dilation", "pad_h", "pad_w",
               "kernel_h", "kernel_w", "stride_h", "stride_w", "group", "axis"}
# type -> (converter, its *_param message, the fields of that message it reads, (min, max) bottoms)
CONVERTERS = {
    "Convolution": (convolution, "convolution_param", CONV_FIELDS, _ONE),
    "Deconvolution": (convolution, "convolution_param", CONV_FIELDS, _ONE),
    "Pooling": (pooling, "pooling_param", {"pool", "pad", "pad_h", "pad_w", "kernel_size", "kernel_h", "kernel_w",
                                           "stride", "stride_h", "stride_w", "global_pooling", "round_mode", "ceil_mode"},
                _ONE),
    "LRN": (lrn, "lrn_param", {"local_size", "alpha", "beta", "norm_region", "k"}, _ONE),
    "InnerProduct": (inner_product, "inner_product_param", {"num_output", "bias_term", "axis", "transpose"}, _ONE),
    "ReLU": (relu, "relu_param", {"negative_slope"}, _ONE),
    "Sigmoid": (_act("logistic"), "sigmoid_param", set(), _ONE),
    "TanH": (_act("tanh", 1.0, 1.0), "tanh_param", set(), _ONE),
    "AbsVal": (_act("abs"), None, set(), _ONE),
    "BNLL": (_act("softrelu"), None, set(), _ONE),
    "Power": (power, "power_param", {"power", "scale", "shift"}, _ONE),
    "Softmax": (softmax, "softmax_param", {"axis"}, _ONE),
    "Dropout": (dropout, "dropout_param", {"dropout_ratio"}, _ONE),
    "Concat": (concat, "concat_param", {"axis", "concat_dim"}, _MANY),
    "Eltwise": (eltwise, "eltwise_param", {"operation", "coeff"}, _MANY),
    "BatchNorm": (batch_norm, "batch_norm_param", {"use_global_stats", "eps"}, _ONE),
    "Scale": (scale_alone, "scale_param", {"axis", "num_axes", "bias_term"}, _ONE),
    "PReLU": (prelu, "prelu_param", {"channel_shared"}, _ONE),
    "Slice": (slice_layer, "slice_param", {"axis", "slice_dim", "slice_point"}, _ONE),
    "Crop": (crop, "crop_param", {"axis", "offset"}, (2, 2)),
    "Flatten": (flatten, "flatten_param", {"axis", "end_axis"}, _ONE),
    "Split": (split, None, set(), _ONE),
}


# ----------------------------------------------------------------------------- entry point
def import_caffe(path, text: str | None = None, input_shape=None, phase: str = "TEST", stages=()) -> ImportResult:
    """Import a Caffe .prototxt (deploy or train_val) as a .conv network (convention caffe).
    `phase` and `stages` choose the layers by their include/exclude rules, as Caffe's NetState."""
    filename = str(path)
    if text is None:
        text = _read(path)
    root = prototxt.parse(text, filename)
    phase = str(phase).upper()
    if phase not in ("TEST", "TRAIN"):
        from ..errors import Diagnostic
        raise ConvcError(Diagnostic(f"unknown phase {phase!r}", filename=filename, help="TEST or TRAIN"))
    imp = CaffeImporter(text, filename, input_shape, phase, stages)
    imp.run(root)
    imp.rep.check()
    recs = fold_activations(imp.recs, imp.notes)
    require_layers(recs, filename)
    net_name = imp.get(root, "name", "str", "") if root.last("name") else ""
    preamble = ([f"network {_net_name(net_name)}"] if net_name else []) + [
        "convention caffe", f"input {imp.input_name} {'x'.join(str(d) for d in imp.input_shape)}"]
    header = [f"imported from {Path(filename).name} (Caffe prototxt) by `convc import caffe`",
              "layer names are Caffe's; blobs are followed through in-place layers"]
    text_out = render(header, preamble, imp.input_name, recs)
    plan = [r.weights for r in recs if r.weights]
    return ImportResult(text_out, imp.notes, "caffe", filename, plan, dict(imp.names.map))


def _net_name(name: str) -> str:
    import re
    clean = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return clean if re.match(r"[A-Za-z_]", clean) else "_" + clean


def _read(path) -> str:
    from ..errors import Diagnostic
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConvcError(Diagnostic("no such file", filename=str(path))) from None
    except OSError as err:
        raise ConvcError(Diagnostic(f"cannot read the file ({err.strerror})", filename=str(path))) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConvcError(Diagnostic(f"not UTF-8 text (byte {err.start}); is this a binary .caffemodel?",
                                    filename=str(path))) from None
