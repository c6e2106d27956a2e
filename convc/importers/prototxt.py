"""Protocol Buffers text format (Caffe's .prototxt) -> a tree of `Message`s with positions.

The grammar is grammar/prototxt.lark. This module knows nothing about Caffe: a message is an
ordered list of fields, each holding a `Scalar` or a nested `Message`, each with its place in
the file so that the importer can point at it.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..errors import BOM, ConvcError, Diagnostic, Pos, Source


@dataclass
class Scalar:
    """One value as written: kind is 'string', 'number' or 'ident' (enums, true/false, inf)."""

    kind: str
    value: object
    pos: Pos

    @property
    def text(self) -> str:
        return str(self.value)


@dataclass
class Field:
    name: str
    value: "Scalar | Message"
    pos: Pos          # the field's name


@dataclass
class Message:
    fields: list[Field] = field(default_factory=list)
    pos: Pos = Pos()

    def all(self, name: str) -> list[Field]:
        return [f for f in self.fields if f.name == name]

    def last(self, name: str) -> Field | None:
        # Protobuf: for a non-repeated field written twice, the last one wins.
        found = self.all(name)
        return found[-1] if found else None

    def names(self) -> list[str]:
        return list(dict.fromkeys(f.name for f in self.fields))


def _grammar_path() -> Path:
    for candidate in (Path(__file__).parents[2] / "grammar" / "prototxt.lark",
                      Path(__file__).parents[1] / "grammar" / "prototxt.lark"):   # installed wheel
        if candidate.exists():
            return candidate
    raise FileNotFoundError("grammar/prototxt.lark is missing from the installation")


@functools.cache
def _lark() -> Lark:
    return Lark(_grammar_path().read_text(), parser="lalr", propagate_positions=True)


def _tok_pos(tok: Token) -> Pos:
    return Pos(tok.line, tok.column, max(1, len(str(tok))))


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'", '"': '"', "a": "\a",
            "b": "\b", "f": "\f", "v": "\v", "?": "?"}


def _unquote(tok: str) -> str:
    body = tok[1:-1]
    return re.sub(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)",
                  lambda m: _unescape_one(m.group(1)), body)


def _unescape_one(esc: str) -> str:
    if esc[0] == "x":
        return chr(int(esc[1:], 16))
    if esc[0].isdigit():
        return chr(int(esc, 8))
    return _ESCAPES.get(esc, esc)


def _number(text: str):
    t = text.rstrip("fF") if not text.lower().startswith(("0x", "-0x")) else text
    if re.fullmatch(r"-?0[xX][0-9a-fA-F]+", t):
        return int(t, 16)
    if re.fullmatch(r"-?[0-9]+", t):
        return int(t)
    return float(t)


def _scalar(tree: Tree) -> Scalar:
    toks = tree.children
    pos = _tok_pos(toks[0])
    if tree.data == "string":
        return Scalar("string", "".join(_unquote(str(t)) for t in toks), pos)
    if tree.data == "number":
        return Scalar("number", _number(str(toks[0])), pos)
    if tree.data == "neg_ident":
        return Scalar("ident", "-" + str(toks[0]), Pos(pos.line, pos.col - 1, pos.length + 1))
    return Scalar("ident", str(toks[0]), pos)


def _field_name(tree: Tree) -> tuple[str, Pos]:
    toks = tree.children
    name = ".".join(str(t) for t in toks)
    return (name if tree.data == "field_name" else f"[{name}]"), _tok_pos(toks[0])


MAX_DEPTH = 100               # messages inside messages; Caffe's own files nest 3 or 4 deep
MAX_CHARS = 256 * 2**20       # characters in one file (memory is linear: ~4 bytes per character)


def _value(tree: Tree):
    if tree.data == "message":
        return _message(tree.children, Pos(tree.meta.line, tree.meta.column, 1) if not tree.meta.empty else Pos())
    return _scalar(tree)


def _message(children, pos: Pos) -> Message:
    msg = Message(pos=pos)
    for node in children:
        name, npos = _field_name(node.children[0])
        for value in node.children[1:]:       # a list field gives several values
            if value is not None:
                msg.fields.append(Field(name, _value(value), npos))
    return msg


# What can hold a brace that is not one (strings, comments), and the braces themselves.
_BRACES = re.compile(r'"[^"\\\n]*(?:\\.[^"\\\n]*)*"|\'[^\'\\\n]*(?:\\.[^\'\\\n]*)*\'|#[^\n]*|[{<]|[}>]')


def _check_depth(text: str, source: Source) -> None:
    """Refuse nesting deeper than MAX_DEPTH before the parser builds (and recurses on) it."""
    depth = 0
    for found in _BRACES.finditer(text):
        token = found.group()
        if token in "{<":
            depth += 1
            if depth > MAX_DEPTH:
                line = text.count("\n", 0, found.start()) + 1
                col = found.start() - (text.rfind("\n", 0, found.start()) + 1) + 1
                raise source.error(f"messages nest more than {MAX_DEPTH} deep here", Pos(line, col, 1),
                                   "no Caffe network nests this deep; is the file damaged?")
        elif token in "}>":
            depth = max(0, depth - 1)


def parse(text: str, filename: str = "<input>") -> Message:
    """Parse protobuf text; a syntax error becomes a ConvcError with line, column and caret.

    Bounded work: at most MAX_CHARS characters and MAX_DEPTH nested messages, each an error
    past the limit. Only \\n, \\r\\n and \\r end a line (as the diagnostics count them)."""
    if len(text) > MAX_CHARS:
        raise ConvcError(Diagnostic(f"the file has {len(text):,} characters; convc reads prototxt files of at "
                                    f"most {MAX_CHARS:,}", filename=filename,
                                    help="a network definition is small: is this a weights file (.caffemodel)?"))
    if text.startswith(BOM):
        text = text[len(BOM):]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")     # Lark counts lines by \\n
    source = Source(text, filename)
    _check_depth(text, source)
    try:
        tree = _lark().parse(text)
    except UnexpectedInput as err:
        raise _syntax_error(err, source) from None
    return _message(tree.children, Pos(1, 1, 1))


def _syntax_error(err: UnexpectedInput, source: Source) -> ConvcError:
    if isinstance(err, UnexpectedEOF) or getattr(err, "line", -1) < 1:
        last = max(1, len(source.lines))
        col = len(source.lines[-1]) + 1 if source.lines else 1
        return source.error("the file ends inside a message", Pos(last, col, 1),
                            "a '{' is missing its closing '}'")
    pos = Pos(err.line, err.column, 1)
    if isinstance(err, UnexpectedCharacters):
        char = source.lines[err.line - 1][err.column - 1:err.column] if err.line <= len(source.lines) else "?"
        return source.error(f"unexpected character {char!r} in protobuf text", pos,
                            "fields look like `name: value` or `name { ... }`")
    tok = err.token if isinstance(err, UnexpectedToken) else None
    what = f"unexpected {str(tok)!r}" if tok is not None and str(tok) else "unexpected end of message"
    expected = sorted(getattr(err, "expected", []) or [])
    hint = "expected " + ", ".join(_TERMINAL_WORDS.get(e, e) for e in expected[:6]) if expected else None
    if tok is not None and tok.type == "$END":
        return source.error("the file ends inside a message", pos, "a '{' is missing its closing '}'")
    return source.error(f"{what} in protobuf text", Pos(err.line, err.column, max(1, len(str(tok or "")))), hint)


_TERMINAL_WORDS = {"NAME": "a field name", "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'",
                   "NUMBER": "a number", "STRING": "a string", "LSQB": "'['", "RSQB": "']'",
                   "LESSTHAN": "'<'", "MORETHAN": "'>'", "COMMA": "','", "MINUS": "'-'"}
