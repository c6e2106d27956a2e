"""The syntax tree of a .conv file: one dataclass per statement, each keeping its place."""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import Pos


@dataclass
class Value:
    """The right-hand side of `key=value`: a number, a shape, a word, a call `name[a,b]` or a
    list `[a,b]`."""

    form: str                      # "number" | "shape" | "word" | "call" | "list"
    value: object                  # int/float, tuple of ints, str, (name, tuple of numbers), tuple of numbers
    text: str
    pos: Pos


@dataclass
class Arg:
    key: str
    value: Value
    pos: Pos                       # from the key to the end of the value


@dataclass
class Ref:
    """A name used in `from`, or a bare flag word."""

    name: str
    pos: Pos


@dataclass
class NetworkStmt:
    name: str
    pos: Pos


@dataclass
class ConventionStmt:
    name: str
    pos: Pos


@dataclass
class InputStmt:
    name: str
    shape: tuple
    pos: Pos
    name_pos: Pos
    shape_pos: Pos


@dataclass
class LayerStmt:
    kind: str
    name: str
    pos: Pos                       # the kind word
    name_pos: Pos
    inputs: list[Ref] = field(default_factory=list)   # empty: the previous statement
    flags: list[Ref] = field(default_factory=list)
    args: list[Arg] = field(default_factory=list)


Statement = NetworkStmt | ConventionStmt | InputStmt | LayerStmt
