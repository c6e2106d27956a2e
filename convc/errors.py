"""Diagnostics: every mistake a user can make becomes a `ConvcError`.

The text of an error is what the CLI prints and what `str(err)` gives in Python:

    net.conv:4:22: error: groups=3 does not divide the 96 input channels
    conv conv2 filters=256 size=5 groups=3
                                  ^~~~~~~~
    help: groups must divide both the input channels and filters

Several diagnostics found in one pass are carried by one exception and printed together.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Pos:
    """A place in a source file: 1-based line and column, and the length to underline."""

    line: int = 1
    col: int = 1
    length: int = 1


@dataclass
class Diagnostic:
    message: str
    pos: Pos | None = None
    help: str | None = None
    filename: str | None = None
    source_line: str | None = None

    def render(self) -> str:
        where = self.filename or "<input>"
        if self.pos:
            where = f"{where}:{self.pos.line}:{self.pos.col}"
        lines = [f"{where}: error: {self.message}" if self.pos or self.filename else f"error: {self.message}"]
        if self.pos and self.source_line is not None:
            shown, pos = _excerpt(self.source_line, self.pos)
            lines.append(shown)
            lines.append(_caret(shown, pos))
        if self.help:
            lines.append(f"help: {self.help}")
        return "\n".join(lines)


QUOTE_WIDTH = 160          # a longer source line is quoted as the part around the caret
MAX_SHOWN = 50             # diagnostics printed in full; the rest are counted


def _excerpt(line: str, pos: Pos) -> tuple[str, Pos]:
    """The line, or for a long one the QUOTE_WIDTH characters around pos (with '...' marks)."""
    if len(line) <= QUOTE_WIDTH:
        return line, pos
    start = max(0, min(pos.col - 1 - QUOTE_WIDTH // 2, len(line) - QUOTE_WIDTH))
    end = start + QUOTE_WIDTH
    head, tail = ("..." if start > 0 else ""), ("..." if end < len(line) else "")
    shown = head + line[start:end] + tail
    return shown, Pos(pos.line, pos.col - start + len(head), min(pos.length, QUOTE_WIDTH))


def _caret(source_line: str, pos: Pos) -> str:
    # Keep tabs from the source so the caret lines up in any terminal.
    lead = "".join(ch if ch == "\t" else " " for ch in source_line[: pos.col - 1])
    room = max(1, min(pos.length, len(source_line) - pos.col + 1))
    return lead + "^" + "~" * (room - 1)


class ConvcError(ValueError):
    """A user's mistake (syntax, shapes, parameters, files), with every diagnostic found."""

    def __init__(self, diagnostics: list[Diagnostic] | Diagnostic | str):
        if isinstance(diagnostics, str):
            diagnostics = Diagnostic(diagnostics)
        if isinstance(diagnostics, Diagnostic):
            diagnostics = [diagnostics]
        self.diagnostics = list(diagnostics)
        super().__init__(self.render())

    def render(self) -> str:
        shown = self.diagnostics[:MAX_SHOWN]
        text = "\n\n".join(d.render() for d in shown)
        hidden = len(self.diagnostics) - len(shown)
        if hidden:
            text += f"\n\n... and {hidden} more error{'s' if hidden > 1 else ''} (the first {MAX_SHOWN} are shown)"
        if len(self.diagnostics) > 1:
            text += f"\n\n{len(self.diagnostics)} errors"
        return text

    # The first diagnostic's place, for tests and tools.
    @property
    def line(self) -> int | None:
        pos = self.diagnostics[0].pos
        return pos.line if pos else None

    @property
    def col(self) -> int | None:
        pos = self.diagnostics[0].pos
        return pos.col if pos else None


def file_error(path, message: str, help: str | None = None) -> ConvcError:
    """An error about a whole file (missing, unreadable): `path: error: message`."""
    return ConvcError(Diagnostic(message, None, help, str(path)))


BOM = "\ufeff"
_LINE_END = re.compile(r"\r\n|\r|\n")


def split_lines(text: str) -> list[str]:
    """Lines as convc counts them: only \\n, \\r\\n and \\r end a line (str.splitlines also
    breaks at form feed, U+0085, U+2028, ... which a user cannot see as line ends)."""
    lines = _LINE_END.split(text)
    return lines[:-1] if lines and lines[-1] == "" else lines


@dataclass
class Source:
    """The text of one .conv file, to quote its lines in diagnostics."""

    text: str
    filename: str = "<input>"
    lines: list[str] = field(init=False)

    def __post_init__(self):
        if self.text.startswith(BOM):          # a UTF-8 byte order mark is not part of the text
            self.text = self.text[len(BOM):]
        self.lines = split_lines(self.text)

    def diagnostic(self, message: str, pos: Pos | None, help: str | None = None) -> Diagnostic:
        line = None
        if pos is not None and 1 <= pos.line <= len(self.lines):
            line = self.lines[pos.line - 1]
        elif pos is not None:
            line = ""
        return Diagnostic(message, pos, help, self.filename, line)

    def error(self, message: str, pos: Pos | None, help: str | None = None) -> ConvcError:
        return ConvcError(self.diagnostic(message, pos, help))
