"""What both importers share: the layer records they emit, activation folding, the .conv
writer, name cleaning and the collector of diagnostics.

An importer turns the original file into a flat list of `Rec`s (one .conv statement each),
then `finish()` folds activations into the layer before them where that is safe and renders
the text.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from ..errors import ConvcError, Diagnostic, Pos, Source

# Kinds that accept `neuron=` (spec section 1).
NEURON_HOSTS = ("conv", "deconv", "local", "fc", "pool")
# The parameter names of each activation kind when it is a layer of its own.
ACT_KEYS = {"tanh": ("a", "b"), "brelu": ("a",), "linear": ("a", "b"), "leaky": ("a",)}


@dataclass(frozen=True)
class Act:
    """An activation: `relu`, or with parameters `leaky[0.1]`, `linear[a,b]`."""

    kind: str
    args: tuple = ()

    def neuron(self) -> str:
        return f"{self.kind}[{','.join(fmt(a) for a in self.args)}]" if self.args else self.kind

    def keys(self) -> dict:
        return dict(zip(ACT_KEYS.get(self.kind, ()), self.args))


@dataclass
class Rec:
    """One .conv statement: `KIND NAME [from ...] [FLAG ...] [key=value ...]`."""

    kind: str
    name: str
    inputs: list[str]
    flags: list[str] = field(default_factory=list)
    keys: dict = field(default_factory=dict)
    neuron: Act | None = None          # on NEURON_HOSTS
    act: Act | None = None             # set when this record is an activation layer
    origin: str = ""                   # the original layer's name, for notes
    weights: dict | None = None        # the weight-conversion plan for this layer (weights.py)


@dataclass
class ImportResult:
    """What an importer produced: the .conv text, notes for the user, and how to map weights."""

    text: str
    notes: list[str]
    framework: str                      # "caffe" or "cuda-convnet"
    source: str                         # the file it came from
    plan: list[dict] = field(default_factory=list)   # one entry per layer with weights
    names: dict = field(default_factory=dict)        # original layer name -> .conv name

    def __str__(self):
        return self.text


def activation_rec(name: str, act: Act, source: str, origin: str = "") -> Rec:
    return Rec(act.kind, name, [source], keys=act.keys(), act=act, origin=origin or f"'{name}'")


# ----------------------------------------------------------------------------- numbers, names
def fmt(x) -> str:
    """A number as .conv text: integers without a point, floats in their shortest exact form."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    x = float(x)
    if x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return repr(x)


def size_text(h, w) -> str:
    return str(h) if h == w else f"{h}x{w}"


_NAME_OK = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class Names:
    """Original names -> valid, unique .conv names; renames are reported as notes."""

    def __init__(self, notes: list[str]):
        self.notes, self.used, self.map = notes, set(), {}

    def new(self, original: str, what: str = "layer") -> str:
        name = original if _NAME_OK.match(original) else re.sub(r"[^A-Za-z0-9_]", "_", original)
        if not _NAME_OK.match(name):
            name = "_" + name
        base, n = name, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        if name != original:
            self.notes.append(f"renamed {what} '{original}' to '{name}' (not a valid or unique .conv name)")
        self.used.add(name)
        self.map.setdefault(original, name)
        return name


# ----------------------------------------------------------------------------- diagnostics
class Reporter:
    """Collects every problem of one source file; `check()` raises them all at once."""

    def __init__(self, text: str, filename: str):
        self.source = Source(text, filename)
        self.diagnostics: list[Diagnostic] = []

    def error(self, message: str, pos: Pos | None, help: str | None = None) -> None:
        self.diagnostics.append(self.source.diagnostic(message, pos, help))

    def check(self, *others: "Reporter") -> None:
        found = [d for r in (self, *others) for d in r.diagnostics]
        if found:
            raise ConvcError(found)


# ----------------------------------------------------------------------------- folding, text
def fold_activations(recs: list[Rec], notes: list[str]) -> list[Rec]:
    """Put an activation layer into the layer just before it as `neuron=`, when that layer
    can carry a neuron, has none yet, and nothing else reads its output before activation."""
    uses = Counter(i for r in recs for i in r.inputs)
    out: list[Rec] = []
    rename: dict[str, str] = {}
    for rec in recs:
        rec.inputs = [rename.get(i, i) for i in rec.inputs]
        prev = out[-1] if out else None
        if (rec.act is not None and prev is not None and rec.inputs == [prev.name]
                and prev.kind in NEURON_HOSTS and prev.neuron is None and uses[prev.name] == 1):
            prev.neuron = rec.act
            rename[rec.name] = prev.name
            notes.append(f"folded {rec.origin} into '{prev.name}' as neuron={rec.act.neuron()}")
            continue
        out.append(rec)
    return out


def require_layers(recs: list[Rec], filename: str) -> None:
    """An import that yields no layer (only an input, or only training layers) is an error."""
    if not recs:
        raise ConvcError(Diagnostic("nothing to import: the file defines no layer that convc computes "
                                    "(only its input, or layers used in training only)", filename=filename,
                                    help="a network needs at least one layer after its input"))


def render(header: list[str], preamble: list[str], input_name: str, recs: list[Rec]) -> str:
    lines = [f"# {h}" if h else "#" for h in header] + [""] + preamble + [""]
    kind_w = max([len(r.kind) for r in recs] + [5])
    name_w = max([len(r.name) for r in recs] + [5])
    prev = input_name
    for rec in recs:
        lines.append(_statement(rec, prev, kind_w, name_w))
        prev = rec.name
    return "\n".join(lines) + "\n"


def _statement(rec: Rec, prev: str, kind_w: int, name_w: int) -> str:
    parts = [rec.kind.ljust(kind_w), rec.name.ljust(name_w)]
    if rec.inputs != [prev]:
        parts.append("from " + ", ".join(rec.inputs))
    parts += rec.flags
    parts += [f"{k}={v if isinstance(v, str) else fmt(v)}" for k, v in rec.keys.items()]
    if rec.neuron is not None:
        parts.append(f"neuron={rec.neuron.neuron()}")
    return " ".join(parts).rstrip()
