"""CSV files that people open in a spreadsheet: no cell is ever evaluated as a formula.

A spreadsheet evaluates a cell whose text starts with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return as a formula (OWASP, "CSV Injection"): a class folder or image file named
``=HYPERLINK("http://evil","x")`` would become a live link in ``labels_template.csv``. Every CSV the
product writes goes through :func:`writer`, which prefixes such a text cell with a single quote
``'``, the spreadsheet's own "this is text" mark, as OWASP advises.

The escape is reversible, so that files the loop reads back give the original ids and class names:
a text cell that starts with ``'`` is escaped as well, and :func:`unescape` drops a leading ``'``
exactly when the next character is one of ``= + - @ TAB CR '``. Numbers stay numbers: ``int`` and
``float`` cells and text that is a plain decimal number (``-0.5``, ``1e-05``) are written as they
are; no spreadsheet runs them.

Files a person returns may carry either form (a spreadsheet may drop the quote when saving), so
:func:`resolve` maps a cell to the known id or class it names, escaped or not.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Container, Iterable
from typing import Any

__all__ = [
    "FORMULA_START",
    "ESCAPED_REGEX",
    "escape",
    "unescape",
    "resolve",
    "writer",
    "read_dicts",
    "read_rows",
]

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
"""First characters that make a spreadsheet evaluate a cell (OWASP's list)."""

_ESCAPED_START = (*FORMULA_START, "'")
ESCAPED_REGEX = r"^'[=+\-@\t\r']"
"""A cell :func:`unescape` changes (RE2 and Python syntax, for vectorised Arrow compute)."""
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")


def escape(value: Any) -> Any:
    """``value`` as a CSV cell that a spreadsheet shows as text (non-``str`` values unchanged).

    Examples:
        ``"=1+1"`` -> ``"'=1+1"``; ``"'quoted"`` -> ``"''quoted"``; ``"-0.5"`` and ``"a-b"`` unchanged.
    """
    if isinstance(value, str) and value.startswith(_ESCAPED_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def unescape(text: str) -> str:
    """Undo :func:`escape`: drop one leading ``'`` when the next character is one it escapes."""
    if len(text) > 1 and text[0] == "'" and text[1] in _ESCAPED_START:
        return text[1:]
    return text


def resolve(text: str, known: Container[str]) -> str:
    """The known value a cell of a returned file names, whether a spreadsheet kept the escape or not.

    Args:
        text: The cell as read (stripped).
        known: The ids (or class names) the cell may name.

    Returns:
        The unescaped cell if it is known, else the cell as written if that is known, else the cell
        as written (unknown either way: messages then quote the file).
    """
    plain = unescape(text)
    if plain != text and plain in known:
        return plain
    return text


class _EscapingWriter:
    """A :func:`csv.writer` that passes every cell through :func:`escape`.

    A row with a line break in a cell is written with every cell quoted: ``csv`` quotes only the
    characters of its line terminator, so a lone carriage return would otherwise end the row.
    """

    def __init__(self, f: Any, **fmtparams: Any) -> None:
        self._w = csv.writer(f, **fmtparams)
        self._quoted = csv.writer(f, **{**fmtparams, "quoting": csv.QUOTE_ALL})

    def writerow(self, row: Iterable[Any]) -> Any:
        """Write one row, its text cells escaped."""
        cells = [escape(c) for c in row]
        breaks = any(isinstance(c, str) and ("\r" in c or "\n" in c) for c in cells)
        return (self._quoted if breaks else self._w).writerow(cells)

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        """Write several rows, their text cells escaped."""
        for row in rows:
            self.writerow(row)


def writer(f: Any, **fmtparams: Any) -> _EscapingWriter:
    """Like :func:`csv.writer`, but every text cell a spreadsheet would evaluate is escaped."""
    return _EscapingWriter(f, **fmtparams)


def read_rows(text: str) -> list[list[str]]:
    """The rows of a CSV text written by :func:`writer`, every cell unescaped."""
    return [[unescape(c) for c in row] for row in csv.reader(io.StringIO(text, newline=""))]


def read_dicts(text: str) -> list[dict[str, Any]]:
    """The rows of a CSV text with a header (written by :func:`writer`) as dicts, cells unescaped.

    A leading UTF-8 BOM is ignored. Like :class:`csv.DictReader`, a short row has ``None`` for the
    missing columns.
    """
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline=""))
    reader.fieldnames = [unescape(c) for c in reader.fieldnames or []]
    return [{k: unescape(v) if isinstance(v, str) else v for k, v in row.items()} for row in reader]
