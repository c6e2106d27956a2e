"""Stage 2: statements -> a checked `Network` (every layer's kind, keys, inputs and shape).

All problems of a file are collected and raised together as one `ConvcError`.
"""
from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

import numpy as np

from .ast import ConventionStmt, InputStmt, LayerStmt, NetworkStmt
from .errors import ConvcError, Pos, Source
from .layers import (ACTIVATIONS, CONVENTIONS, LAYER_KINDS, NEURON_KINDS, REQUIRED, Activation, LayerKind, Problem,
                     fmt_shape, make_activation)

MAX_ELEMENTS = 2**31 - 1


@dataclass
class Layer:
    """One checked layer: resolved keys (`attrs`), its inputs' and its output's per-image shape."""

    name: str
    kind: str
    inputs: list[str]
    attrs: dict
    convention: str
    pos: Pos
    stmt: LayerStmt | None = None
    in_shapes: list[tuple] = field(default_factory=list)
    out_shape: tuple | None = None
    given: set = field(default_factory=set)      # keys written in the source

    @property
    def spec(self) -> LayerKind:
        return LAYER_KINDS[self.kind]

    @property
    def neuron(self) -> Activation | None:
        """The activation applied to this layer's output (`neuron=`), or the layer itself."""
        if self.kind in NEURON_KINDS:
            return self.attrs.get("neuron")
        return None

    @property
    def activation(self) -> Activation | None:
        """For activation layers (`relu NAME`): the activation they compute."""
        if self.kind in ACTIVATIONS:
            return make_activation(self.kind, tuple(self.attrs[k] for k in self.spec.keys))
        return None

    @property
    def groups(self) -> int:
        return self.attrs.get("groups", 1)

    def param_shapes(self) -> dict[str, tuple]:
        return {f"{self.name}.{suffix}": tuple(shape) for suffix, shape in self.spec.params(self).items()}

    @property
    def param_count(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes().values())

    @property
    def neurons(self) -> int:
        return math.prod(self.out_shape)

    @property
    def macs(self) -> int:
        return self.spec.macs(self)

    def position_of(self, key: str | None) -> Pos:
        """Where `key=value` was written, or the layer's kind when the key was not written."""
        if key and self.stmt:
            for arg in self.stmt.args:
                if arg.key == key:
                    return arg.pos
        return self.pos


@dataclass
class Network:
    name: str
    convention: str
    input_name: str
    input_shape: tuple
    layers: list[Layer]
    source: Source
    input_pos: Pos = field(default_factory=Pos)

    # -- lookups ------------------------------------------------------------
    @property
    def text(self) -> str:
        return self.source.text

    @property
    def filename(self) -> str:
        return self.source.filename

    @property
    def output(self) -> Layer:
        return self.layers[-1]

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    def shape_of(self, name: str) -> tuple:
        return self.input_shape if name == self.input_name else self.layer(name).out_shape

    # -- parameters -----------------------------------------------------------
    def param_shapes(self) -> dict[str, tuple]:
        """{"conv1.weight": (96, 3, 11, 11), ...} in layer order."""
        shapes = {}
        for layer in self.layers:
            shapes.update(layer.param_shapes())
        return shapes

    def init_params(self, seed: int = 0) -> dict[str, np.ndarray]:
        """Deterministic float32 parameters; each array depends only on (seed, its name)."""
        from .params import init_layer_params
        params = {}
        for layer in self.layers:
            params.update(init_layer_params(layer, seed))
        return params

    def check_params(self, params) -> dict[str, np.ndarray]:
        from .params import check_params
        return check_params(self, params)

    def check_input(self, x, batch: int | None = None):
        from .params import check_input
        return check_input(self, x, batch)

    # -- reports ----------------------------------------------------------------
    def summary(self) -> str:
        from .report import summary_table
        return summary_table(self)

    def summary_dict(self) -> dict:
        from .report import summary_dict
        return summary_dict(self)

    def __repr__(self):
        return (f"Network({self.name!r}, convention={self.convention!r}, input={self.input_name} "
                f"{fmt_shape(self.input_shape)}, {len(self.layers)} layers)")


class _Builder:
    """Walks the statements once, resolving names, keys and shapes, collecting every problem."""

    def __init__(self, statements, source: Source):
        self.statements, self.source = statements, source
        self.errors = []
        self.name, self.convention = None, "caffe"
        self.input: InputStmt | None = None
        self.layers: list[Layer] = []
        self.defined: dict[str, int] = {}        # name -> line
        self.shapes: dict[str, tuple | None] = {}  # None: unknown because of an earlier error
        self.later = {s.name: s.name_pos.line for s in statements if isinstance(s, LayerStmt)}

    def error(self, message, pos, help=None):
        self.errors.append(self.source.diagnostic(message, pos, help))

    def build(self) -> Network:
        if not self.statements:
            self.error("the file has no statements", Pos(1, 1, 1),
                       "a network needs at least `input NAME CxHxW` and one layer")
            raise ConvcError(self.errors)
        for index, stmt in enumerate(self.statements):
            handler = getattr(self, f"on_{type(stmt).__name__}")
            handler(stmt, index)
        if self.input is None:
            self.error("the network has no input", Pos(1, 1, 1), "add `input data CxHxW` before the first layer")
        elif not any(isinstance(s, LayerStmt) for s in self.statements):
            self.error("the network has no layers", self.input.pos, "add layers after the input, e.g. `conv c1 filters=16 size=3`")
        if self.errors:
            raise ConvcError(self.errors)
        return Network(self.name or "net", self.convention, self.input.name, self.input.shape, self.layers,
                       self.source, self.input.pos)

    # statements -------------------------------------------------------------------
    def on_NetworkStmt(self, stmt: NetworkStmt, index):
        if index != 0:
            self.error("`network` must be the first statement", stmt.pos, "move it to the top of the file")
        self.name = stmt.name

    def on_ConventionStmt(self, stmt: ConventionStmt, index):
        if stmt.name not in CONVENTIONS:
            self.error(f"unknown convention {stmt.name!r}", stmt.pos, f"one of {', '.join(CONVENTIONS)}")
        elif self.layers:
            self.error("`convention` must come before the first layer", stmt.pos,
                       "it sets the defaults of the layers that follow; move it up")
        elif any(isinstance(s, ConventionStmt) for s in self.statements[:index]):
            self.error("a second `convention` statement", stmt.pos, "a network has one convention")
        else:
            self.convention = stmt.name

    def on_InputStmt(self, stmt: InputStmt, index):
        if self.input is not None:
            self.error(f"a second input {stmt.name!r}; convc v1 networks have exactly one input",
                       stmt.name_pos, f"the input is {self.input.name!r} (line {self.input.pos.line})")
            return
        if len(stmt.shape) != 3 or min(stmt.shape) < 1:
            self.error(f"the input shape must be CxHxW with every size at least 1, got {fmt_shape(stmt.shape)}",
                       stmt.shape_pos, "e.g. `input data 3x224x224` (the batch is chosen at build time)")
        if self.layers:
            self.error("the input must come before the layers", stmt.pos, "move `input` above the first layer")
        self.input = stmt
        self.defined[stmt.name] = stmt.pos.line
        ok = len(stmt.shape) == 3 and min(stmt.shape) >= 1
        self.shapes[stmt.name] = tuple(stmt.shape) if ok else None
        self.previous = stmt.name

    def on_LayerStmt(self, stmt: LayerStmt, index):
        spec = LAYER_KINDS.get(stmt.kind)
        if spec is None:
            self.error(f"unknown layer kind {stmt.kind!r}", stmt.pos, _did_you_mean(stmt.kind, LAYER_KINDS))
        if stmt.name in self.defined:
            self.error(f"{stmt.name!r} is already defined on line {self.defined[stmt.name]}", stmt.name_pos,
                       "every layer needs its own name")
        inputs = self._inputs(stmt, spec)
        self.defined.setdefault(stmt.name, stmt.name_pos.line)
        self.previous = stmt.name
        if spec is None:
            self.shapes[stmt.name] = None
            return
        layer = Layer(stmt.name, stmt.kind, [r for r, _ in inputs], {}, self.convention, stmt.pos, stmt)
        ok = self._attrs(layer, stmt, spec)
        in_shapes = [self.shapes.get(name) for name, _ in inputs]
        self.shapes[stmt.name] = None
        if ok and inputs and all(s is not None for s in in_shapes):
            layer.in_shapes = in_shapes
            self._shape(layer)
        self.layers.append(layer)

    # pieces of a layer -------------------------------------------------------------------
    def _inputs(self, stmt: LayerStmt, spec):
        if not stmt.inputs:
            if self.input is None and not self.layers:
                self.error("a layer before the input", stmt.pos, "put `input NAME CxHxW` first")
                return []
            refs = [(self.previous, stmt.pos)]
        else:
            refs = []
            for ref in stmt.inputs:
                if ref.name in self.defined and ref.name != stmt.name:
                    refs.append((ref.name, ref.pos))
                elif ref.name == stmt.name:
                    self.error(f"{ref.name!r} reads its own output", ref.pos,
                               "networks have no cycles; name a layer above this one")
                elif ref.name in self.later:
                    self.error(f"{ref.name!r} is defined later (line {self.later.get(ref.name)}); a layer can "
                               "only read layers above it", ref.pos, "networks have no cycles; reorder the lines")
                else:
                    self.error(f"{ref.name!r} is not defined", ref.pos, _did_you_mean(ref.name, self.defined))
            if len(refs) < len(stmt.inputs):
                return []
        if spec is not None:
            lo, hi = spec.arity
            if not lo <= len(refs) <= hi:
                need = f"at least {lo}" if hi > lo else f"exactly {lo}"
                self.error(f"{stmt.kind} takes {need} input(s), got {len(refs)}", stmt.pos,
                           f"write `{stmt.kind} {stmt.name} from a, b`" if lo > 1 else
                           f"write `{stmt.kind} {stmt.name} from LAYER` with one layer")
                return []
        return refs

    def _attrs(self, layer: Layer, stmt: LayerStmt, spec: LayerKind) -> bool:
        before = len(self.errors)
        attrs = layer.attrs
        modes = [f for f in stmt.flags if f.name in spec.modes]
        for flag in stmt.flags:
            if flag.name not in spec.modes + spec.switches:
                allowed = spec.modes + spec.switches
                self.error(f"unknown flag {flag.name!r} for {stmt.kind}", flag.pos,
                           f"{stmt.kind} takes the flags {', '.join(allowed)}" if allowed else
                           f"{stmt.kind} takes no flags; did you mean {flag.name}=VALUE?")
        if spec.modes:
            if len(modes) != 1:
                self.error(f"{stmt.kind} needs exactly one of the flags {', '.join(spec.modes)}",
                           modes[1].pos if len(modes) > 1 else stmt.pos,
                           f"e.g. `{stmt.kind} {stmt.name} {spec.modes[0]} size=3 stride=2`")
            attrs["mode"] = modes[0].name if modes else spec.modes[0]
        for switch in spec.switches:
            attrs[switch] = any(f.name == switch for f in stmt.flags)
        written = {}
        for arg in stmt.args:
            if arg.key not in spec.keys:
                hint = _did_you_mean(arg.key, spec.keys)
                if arg.key == "neuron":
                    hint = f"neuron= goes on {', '.join(NEURON_KINDS)}; add a separate activation layer instead"
                self.error(f"unknown key {arg.key!r} for {stmt.kind}", arg.pos, hint)
            elif arg.key in written:
                self.error(f"{arg.key!r} is given twice", arg.pos, f"first given at column {written[arg.key].col}")
            else:
                written[arg.key] = arg.pos
                try:
                    attrs[arg.key] = spec.keys[arg.key].parse(arg.value)
                    layer.given.add(arg.key)
                except Problem as p:
                    self.error(f"{arg.key}: {p.message}", arg.value.pos, p.help or _key_help(spec, arg.key))
        for key, keyspec in spec.keys.items():
            if key in attrs or key in written:
                continue
            value = keyspec.default_for(self.convention, attrs)
            if value is REQUIRED:
                why = f" under convention {self.convention}" if isinstance(keyspec.default, dict) else ""
                self.error(f"{stmt.kind} {stmt.name} needs {key}={'...'}{why}", stmt.pos,
                           f"{key}: {keyspec.doc}")
            attrs[key] = value
        return len(self.errors) == before

    def _shape(self, layer: Layer):
        try:
            out = tuple(layer.spec.shape(layer))
        except Problem as p:
            self.error(f"{layer.kind} {layer.name}: {p.message}", layer.position_of(p.key), p.help)
            return
        if min(out) < 1:
            self.error(f"{layer.kind} {layer.name}: the output would be {fmt_shape(out)}",
                       layer.pos, "the output size must be at least 1")
            return
        if math.prod(out) > MAX_ELEMENTS:
            self.error(f"{layer.kind} {layer.name}: the output of {fmt_shape(out)} is too large", layer.pos,
                       f"a layer's output must have at most {MAX_ELEMENTS} elements per image")
            return
        layer.out_shape = out
        self.shapes[layer.name] = out


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    if close:
        return f"did you mean {close[0]!r}?"
    return "known: " + ", ".join(sorted(choices)) if len(choices) < 40 else None


def _key_help(spec: LayerKind, key: str) -> str:
    keyspec = spec.keys[key]
    doc = getattr(keyspec.parse, "doc", "")
    return f"{key}: {keyspec.doc}" + (f" ({doc})" if doc else "")


def build_network(statements, source: Source) -> Network:
    return _Builder(statements, source).build()

