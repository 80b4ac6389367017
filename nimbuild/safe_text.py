"""One rule for every string nimbuild turns into a path part, a shell word or a line a person reads.

Names, tags and paths come from files nimbuild did not write (a manifest, a
recipe, a model's config, the command line). A profile name ``../../x`` must
not become a folder outside ``--out``; an image name ``a"; rm -rf ~`` must not
become shell code in a CI plan; ``\\x1b[2J`` or a newline in a name must not
repaint a terminal or forge a log line. Each destination has one function here,
and every place that makes such a string calls it:

- a path part (a folder or file name made from data): :func:`check_name` /
  :func:`child` (profile and repository names), :func:`path_part_problem` (any
  part of a manifest path);
- a shell word: :func:`shell_word`, :func:`shell_join`;
- text for a terminal, a log or a comment in a generated file:
  :func:`printable` escapes control and format characters (``\\x1b``,
  ``\\n``, ``\\u202e``) so that they are shown, never interpreted. JSON output
  needs nothing: ``json.dumps`` escapes control characters itself.

Light (stdlib only): the runtime imports it.
"""

from __future__ import annotations

import functools
import os
import unicodedata
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nimbuild.errors import NimbuildError

if TYPE_CHECKING:
    import logging

# Unicode categories never shown raw: controls (C0, DEL, C1: ESC, CR, BEL...), format characters
# (bidi overrides U+202A-202E/U+2066-2069, zero-width U+200B-200F, BOM), surrogates (bytes that
# were not UTF-8, from os.fsdecode) and the line/paragraph separators U+2028/U+2029.
_HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
MAX_PART_BYTES = 255  # NAME_MAX of every common file system
NAME_HINT = "use letters, digits, '.', '-' and '_' (profile names become folder names, e.g. OUT/triton/<name>/)"


def _escape(ch: str) -> str:
    if ch in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[ch]
    cp = ord(ch)
    if 0xDC80 <= cp <= 0xDCFF:  # os.fsdecode's stand-in for a byte that was not UTF-8: show the byte
        return f"\\x{cp - 0xDC00:02x}"
    if cp < 0x100:
        return f"\\x{cp:02x}"
    if cp < 0x10000:
        return f"\\u{cp:04x}"
    return f"\\U{cp:08x}"


def _hidden(ch: str) -> bool:
    return unicodedata.category(ch) in _HIDDEN_CATEGORIES


def printable(value: object, *, multiline: bool = False) -> str:
    """``value`` as text that a terminal or a log shows as it is: control and format characters escaped.

    ``multiline=False`` (one line: a log record, an error, a table cell, a comment)
    escapes newlines and tabs too; ``multiline=True`` (a block of output) keeps them.
    Fast for the common case: printable text is returned unchanged.
    """
    text = value if isinstance(value, str) else str(value)
    if text.isprintable():
        return text
    keep = "\n\t" if multiline else ""
    return "".join(_escape(ch) if ch not in keep and _hidden(ch) else ch for ch in text)


def shown(value: object, limit: int = 80) -> str:
    """A value quoted for a message (repr-style, control characters escaped), cut at ``limit`` characters."""
    text = value if isinstance(value, str) else str(value)
    return repr(text[:limit]) + ("..." if len(text) > limit else "")


# --------------------------------------------------------------------------- path parts


def path_part_problem(value: object) -> str | None:
    """Why ``value`` cannot be one part of a path nimbuild makes (a file or folder name), or None.

    The rule for every part: a non-empty string of at most 255 UTF-8 bytes, not
    ``.`` or ``..``, with no ``/`` or ``\\`` and no control or format character
    (NUL, newline, ESC, bidi overrides: they break tools and forge listings).
    """
    if not isinstance(value, str):
        return f"it is a {type(value).__name__}, not a string"
    if not value:
        return "it is empty"
    if value in (".", ".."):
        return f"{value!r} names an existing folder, not a new one"
    if "/" in value or "\\" in value:
        return "it contains a path separator ('/' or '\\')"
    bad = next((ch for ch in value if _hidden(ch)), None)
    if bad is not None:
        return f"it contains the control or format character {_escape(bad)}"
    if len(value.encode("utf-8", "surrogatepass")) > MAX_PART_BYTES:
        return f"it is longer than {MAX_PART_BYTES} bytes, the file-system limit for one name"
    return None


def name_problem(value: object) -> str | None:
    """:func:`path_part_problem`, plus what makes a folder made from a name a trap.

    A leading ``.`` hides the folder (and collides with nimbuild's own staging
    folders), a leading ``-`` reads as an option to every shell tool, and white
    space at either end is invisible in listings.
    """
    problem = path_part_problem(value)
    if problem is not None:
        return problem
    assert isinstance(value, str)
    if value[0] in ".-":
        return f"it starts with {value[0]!r} (a hidden file, or an option to shell tools)"
    if value != value.strip():
        return "it starts or ends with white space"
    return None


def check_name(value: object, where: str, *, hint: str = NAME_HINT) -> str:
    """``value`` when it is a safe folder name (:func:`name_problem`); else a NimbuildError naming ``where``."""
    problem = name_problem(value)
    if problem is not None:
        raise NimbuildError(f"{where}: {shown(value)} cannot be a folder name: {problem}", hint=hint)
    assert isinstance(value, str)
    return value


def child(parent: str | os.PathLike[str], name: object, where: str) -> Path:
    """``parent/name`` for a name that came from data: never anything but a direct child of ``parent``."""
    return Path(parent) / check_name(name, where)


# --------------------------------------------------------------------------- shell words


def shell_word(value: object) -> str:
    """One POSIX shell word that means exactly ``value`` (quoted only when it needs to be)."""
    import shlex

    return shlex.quote(str(value))


def shell_join(words: Iterable[object]) -> str:
    """A shell command line of these words, each quoted by :func:`shell_word`."""
    return " ".join(shell_word(w) for w in words)


# --------------------------------------------------------------------------- logs


@functools.cache
def _formatter_class() -> type[logging.Formatter]:
    import logging  # not at import time: every command imports this module, few of them log

    class PrintableFormatter(logging.Formatter):
        """A log formatter whose records are one line each: the message's control characters escaped.

        A value logged from a manifest or a request (a name with a newline or an ANSI
        escape) cannot forge a second record or repaint the terminal. A traceback
        (``exc_info``) keeps its lines: it is appended after the message is escaped.
        """

        def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
            saved = record.message
            record.message = printable(saved)
            try:
                return super().formatMessage(record)
            finally:
                record.message = saved

    return PrintableFormatter


def PrintableFormatter(fmt: str | None = None, *args: Any, **kwargs: Any) -> logging.Formatter:  # noqa: N802
    """A ``logging.Formatter`` whose records are one line each (control characters escaped)."""
    return _formatter_class()(fmt, *args, **kwargs)
