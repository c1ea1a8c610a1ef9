"""One error type for every mistake in a spec: schema, cross-field rules and shapes."""

from __future__ import annotations

import re
from dataclasses import dataclass

Path = tuple  # a location in the spec document: ("model", "layers", 2, "filters")


def format_path(path: Path) -> str:
    """Render ``("model", "layers", 2, "filters")`` as ``model.layers[2].filters``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # Unicode's control characters (category Cc)
_CONTROL_BUT_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # the same, newline and tab aside


def control_character(text: str) -> str | None:
    """The first control character of ``text`` as ``U+001B``, or None."""
    found = _CONTROL.search(text)
    return f"U+{ord(found.group()):04X}" if found else None


def printable(text: str) -> str:
    """``text`` with its control characters, newline and tab aside, written as escapes (``\\x1b``).

    Why: file and class names are user data; printed raw, an escape sequence in one rewrites
    the user's terminal (``ls`` escapes them too).
    """
    return _CONTROL_BUT_LINES.sub(lambda m: repr(m.group())[1:-1], text)


def one_line(text: str) -> str:
    """``text`` with every control character written as an escape, newline and tab too: a file
    name inside a one-line message or a table row (``bad\\nname.png``) stays on its line."""
    return _CONTROL.sub(lambda m: repr(m.group())[1:-1], text)


@dataclass(frozen=True)
class Issue:
    """One problem in a spec, with where it is.

    Attributes:
        message: what is wrong, what was expected, what was received.
        path: location in the document (keys and list indices); empty for the whole file.
        file: the spec file's name as the user gave it.
        line: 1-based line, or None when the position is unknown.
        col: 1-based column, or None.
        what: shown after the key, in parentheses: the layer's type (``model.layers[5] (max_pool): ...``).
    """

    message: str
    path: Path = ()
    file: str = "<spec>"
    line: int | None = None
    col: int | None = None
    what: str = ""

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}:{self.col or 1}"
        key = format_path(self.path)
        if key and self.what:
            key += f" ({self.what})"
        return f"{where}: {key}: {self.message}" if key else f"{where}: {self.message}"

    def as_warning(self) -> str:
        """``FILE:LINE:COL: warning: key: message``: a problem that does not stop the spec."""
        where = self.file + (f":{self.line}:{self.col or 1}" if self.line is not None else "")
        key = format_path(self.path)
        return f"{where}: warning: {key}: {self.message}" if key else f"{where}: warning: {self.message}"


class ConvspecError(Exception):
    """A mistake in the user's input (spec, data, model file): shown as a message, exit code 1.

    Subclasses live where the mistake is found: SpecError here, DataError in the compiler's
    data pipeline, ModelError in the runtime. Anything else reaching the CLI is a bug.
    """

    exit_code = 1


class SpecError(ConvspecError, ValueError):
    """A spec is invalid. ``issues`` holds every problem found, in file order."""

    def __init__(self, issues: list[Issue] | Issue | str):
        if isinstance(issues, str):
            issues = [Issue(issues)]
        elif isinstance(issues, Issue):
            issues = [issues]
        # Why dict.fromkeys: two rules that read the same file (a CSV's classes and its paths) report
        # its one problem once
        unique = list(dict.fromkeys(issues))
        self.issues: list[Issue] = sorted(unique, key=lambda i: (i.file, i.line or 0, i.col or 0))
        super().__init__("\n".join(str(i) for i in self.issues))
