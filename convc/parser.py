"""Stage 1: text -> list of statements (the Lark grammar lives in grammar/convc.lark)."""
from __future__ import annotations

import functools
import re
from pathlib import Path

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .ast import Arg, ConventionStmt, InputStmt, LayerStmt, NetworkStmt, Ref, Statement, Value
from .errors import ConvcError, Pos, Source, split_lines

MAX_INT = 2**31 - 1


def _grammar_path() -> Path:
    # In a source checkout the grammar sits at the top of the tree; an installed wheel
    # carries a copy inside the package.
    for candidate in (Path(__file__).parent.parent / "grammar" / "convc.lark",
                      Path(__file__).parent / "grammar" / "convc.lark"):
        if candidate.exists():
            return candidate
    raise FileNotFoundError("grammar/convc.lark is missing from the installation")


@functools.cache
def _lark() -> Lark:
    return Lark(_grammar_path().read_text(), parser="lalr", start=["start", "stmt"],
                propagate_positions=True, maybe_placeholders=False)


def _pos(tok: Token, line_offset: int) -> Pos:
    return Pos(tok.line + line_offset, tok.column, max(1, len(str(tok))))


def _span(first: Token, last_end_col: int, line_offset: int) -> Pos:
    return Pos(first.line + line_offset, first.column, max(1, last_end_col - first.column))


class _ToAst(Transformer):
    """Turns one statement's parse tree into an AST node with absolute positions."""

    def __init__(self, line_offset: int, source: Source, errors: list):
        super().__init__()
        self.off, self.source, self.errors = line_offset, source, errors

    def _int(self, tok: Token, text: str) -> int:
        n = int(text)
        if abs(n) > MAX_INT:
            self.errors.append(self.source.diagnostic(
                f"number {text} is too large", _pos(tok, self.off),
                f"numbers must lie within ±{MAX_INT}"))
            return 1
        return n

    def _number(self, tok: Token):
        text = str(tok)
        if any(c in text for c in ".eE"):
            value = float(text)
            if value != value or abs(value) == float("inf") or abs(value) > 1e30:
                self.errors.append(self.source.diagnostic(
                    f"number {text} is too large", _pos(tok, self.off), "use a finite value below 1e30"))
                return 1.0
            return value
        return self._int(tok, text)

    @v_args(inline=True)
    def network(self, name):
        return NetworkStmt(str(name), _pos(name, self.off))

    @v_args(inline=True)
    def convention(self, word):
        return ConventionStmt(str(word), _pos(word, self.off))

    @v_args(inline=True)
    def input(self, name, shape):
        dims = tuple(self._int(shape, d) for d in str(shape).split("x"))
        p = _pos(name, self.off)
        return InputStmt(str(name), dims, Pos(p.line, 1, 5), p, _pos(shape, self.off))

    def layer(self, children):
        kind, name, *rest = children
        stmt = LayerStmt(str(kind), str(name), _pos(kind, self.off), _pos(name, self.off))
        for child in rest:
            if isinstance(child, list):
                stmt.inputs = child
            elif isinstance(child, Arg):
                stmt.args.append(child)
            else:
                stmt.flags.append(child)
        return stmt

    def from_clause(self, names):
        return [Ref(str(n), _pos(n, self.off)) for n in names]

    @v_args(inline=True)
    def flag(self, word):
        return Ref(str(word), _pos(word, self.off))

    @v_args(inline=True)
    def keyvalue(self, key, value):
        end = value.pos.col + value.pos.length
        return Arg(str(key), value, _span(key, end, self.off))

    @v_args(inline=True)
    def number(self, tok):
        return Value("number", self._number(tok), str(tok), _pos(tok, self.off))

    @v_args(inline=True)
    def shape(self, tok):
        dims = tuple(self._int(tok, d) for d in str(tok).split("x"))
        return Value("shape", dims, str(tok), _pos(tok, self.off))

    @v_args(inline=True)
    def word(self, tok):
        return Value("word", str(tok), str(tok), _pos(tok, self.off))

    @v_args(meta=True)
    def call(self, meta, children):
        name, *numbers = children
        args = tuple(self._number(n) for n in numbers)
        text = f"{name}[{','.join(str(n) for n in numbers)}]"
        pos = Pos(name.line + self.off, name.column, max(1, meta.end_column - name.column))
        return Value("call", (str(name), args), text, pos)

    @v_args(meta=True)
    def list(self, meta, numbers):
        values = tuple(self._number(n) for n in numbers)
        text = f"[{','.join(str(n) for n in numbers)}]"
        return Value("list", values, text, Pos(meta.line + self.off, meta.column, max(1, meta.end_column - meta.column)))


_SPACED_SHAPE = re.compile(r"\d\s+x|x\s+\d|\dx(?![0-9])")


def _syntax_diagnostic(err: UnexpectedInput, line_text: str, line_no: int, source: Source):
    col = getattr(err, "column", 1) or 1
    diagnostic = _classify(err, line_text, line_no, col, source)
    if _SPACED_SHAPE.search(line_text.split("#", 1)[0]):
        diagnostic.help = "write sizes and shapes with no spaces inside, e.g. 3x224x224 or size=5x5"
    return diagnostic


def _classify(err, line_text, line_no, col, source):
    if isinstance(err, UnexpectedCharacters):
        ch = line_text[col - 1] if col - 1 < len(line_text) else "?"
        message = f"unexpected character {ch!r}"
        help = _hint_for_character(line_text, col)
    elif isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        col = len(line_text.rstrip()) + 1
        message = "this statement ends too early"
        help = _hint_for_end(err)
    else:
        tok = err.token
        message = f"unexpected {_describe(tok)}"
        help = _hint_for_token(err)
    return source.diagnostic(message, Pos(line_no, col, 1), help)


def _describe(tok: Token) -> str:
    names = {"NUMBER": "number", "SHAPE": "shape", "NAME": "name", "WORD": "word", "EQUAL": "'='",
             "COMMA": "','", "LSQB": "'['", "RSQB": "']'"}
    if tok.type in ("EQUAL", "COMMA", "LSQB", "RSQB"):
        return names[tok.type]
    return f"{names.get(tok.type, 'token')} {str(tok)!r}"


def _hint_for_character(line_text: str, col: int) -> str:
    ch = line_text[col - 1] if col - 1 < len(line_text) else ""
    if ch == "x" or (col > 1 and line_text[col - 2] == " " and ch.isdigit()):
        return "write sizes and shapes with no spaces inside, e.g. 3x224x224 or size=5x5"
    if ch in ":;{}()":
        return "a statement is `KIND NAME [from A, B] [FLAG ...] [key=value ...]`"
    return "names are letters, digits and '_'; values are numbers, AxB shapes or words"


def _hint_for_end(err) -> str:
    expected = getattr(err, "expected", None) or getattr(err, "accepts", None) or set()
    if "SHAPE" in expected:
        return "an input needs its shape: `input data 3x224x224`"
    if "NAME" in expected or "WORD" in expected:
        return "a statement is `KIND NAME ...`; a layer needs a kind and a name"
    return "complete the statement on the same line"


def _hint_for_token(err: UnexpectedToken) -> str:
    expected = err.accepts or err.expected or set()
    if "SHAPE" in expected:
        return "an input's shape is CxHxW, e.g. `input data 3x224x224`"
    if err.token.type == "EQUAL":
        return "write key=value after the layer's kind and name: `conv conv1 filters=96 size=11`"
    if err.token.type in ("NUMBER", "SHAPE"):
        return "a value needs a key: key=value, e.g. size=3"
    if err.token.type == "COMMA":
        return "commas separate the layers after `from`: `from a, b`"
    return "a statement is `KIND NAME [from A, B] [FLAG ...] [key=value ...]`"


# Characters that str.splitlines() and some editors treat as line breaks, but .conv does not:
# only \n, \r\n and \r end a line, so one of these inside a line is an error at its place.
_NOT_LINE_ENDS = {"\f": "form feed (U+000C)", "\v": "vertical tab (U+000B)", "\x1c": "U+001C",
                  "\x1d": "U+001D", "\x1e": "U+001E", "\x85": "next line (U+0085)",
                  "\u2028": "line separator (U+2028)", "\u2029": "paragraph separator (U+2029)"}
_NOT_LINE_END = re.compile("[" + "".join(_NOT_LINE_ENDS) + "]")


def _stray_line_break(line_text: str, line_no: int, source: Source):
    found = _NOT_LINE_END.search(line_text)
    if found is None:
        return None
    return source.diagnostic(f"{_NOT_LINE_ENDS[found.group()]} inside a line", Pos(line_no, found.start() + 1, 1),
                             "only \\n, \\r\\n and \\r end a line: replace it with a line break or a space")


def parse_statements(source: Source) -> list[Statement]:
    """Parse every line; raise one ConvcError with all syntax errors of the file."""
    statements, errors = [], []
    lark = _lark()
    for index, line_text in enumerate(source.lines):
        stray = _stray_line_break(line_text, index + 1, source)
        if stray is not None:
            errors.append(stray)
            continue
        stripped = line_text.split("#", 1)[0].strip()
        if not stripped:
            continue
        try:
            tree = lark.parse(line_text, start="stmt")
        except UnexpectedInput as err:
            errors.append(_syntax_diagnostic(err, line_text, index + 1, source))
            continue
        except LarkError as err:  # anything else Lark can raise is still a syntax error
            errors.append(source.diagnostic(f"cannot parse this line ({err})", Pos(index + 1, 1, 1)))
            continue
        statements.append(_ToAst(index, source, errors).transform(tree))
    if errors:
        raise ConvcError(errors)
    return statements


def decode(data: bytes, filename: str) -> str:
    """Bytes of a .conv file -> text; a file that is not UTF-8 is a user error with a place."""
    try:
        return data.decode("utf-8-sig")          # a leading byte order mark is dropped
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        col = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        lines = split_lines(data.decode("utf-8", errors="replace"))
        src = Source("\n".join(lines), filename)
        raise src.error(f"the file is not UTF-8 text (byte 0x{data[err.start]:02x})", Pos(line, col, 1),
                        "save the file as UTF-8; .conv files use ASCII names") from None
