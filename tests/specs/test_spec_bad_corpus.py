"""The bad-spec corpus: every file in bad/ fails with an issue at the line and column its header names.

Each file starts with comment lines:

    # expect: 14:9 model.layers[2].filters | greater than 0
    # schema: invalid          (optional: the JSON Schema alone rejects the file)

One ``expect`` line per issue that must be reported: the issue has exactly that line and
column, and its text (``FILE:LINE:COL: key: message``) contains every ``|``-separated phrase.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from convspec.specs import SpecError, load_spec

BAD = sorted((Path(__file__).parent / "bad").glob("*.yaml"))
_EXPECT = re.compile(r"^# expect: (\d+):(\d+)(?: (.*))?$")


@dataclass(frozen=True)
class Expect:
    line: int
    col: int
    words: tuple[str, ...]


def expectations(path: Path) -> list[Expect]:
    """The ``# expect:`` lines of a bad file's header (the leading comment lines)."""
    out = []
    for line in path.read_bytes().decode("utf-8", errors="replace").splitlines():
        if not line.startswith("#"):
            break
        m = _EXPECT.match(line)
        if m:
            words = tuple(w.strip() for w in (m.group(3) or "").split("|") if w.strip())
            out.append(Expect(int(m.group(1)), int(m.group(2)), words))
    return out


def test_corpus_is_complete():
    assert len(BAD) >= 30
    for path in BAD:
        assert expectations(path), f"{path.name} has no '# expect: LINE:COL words' header line"


@pytest.mark.parametrize("path", BAD, ids=lambda p: p.stem)
def test_bad_spec_is_reported_where_it_is_wrong(path: Path):
    with pytest.raises(SpecError) as info:
        load_spec(path)
    issues = info.value.issues
    texts = [str(i) for i in issues]
    for exp in expectations(path):
        at = [i for i in issues if (i.line, i.col) == (exp.line, exp.col)]
        assert at, f"no issue at {exp.line}:{exp.col}; got:\n" + "\n".join(texts)
        matching = [i for i in at if all(w.casefold() in str(i).casefold() for w in exp.words)]
        assert matching, f"no issue at {exp.line}:{exp.col} mentions {exp.words}; got:\n" + "\n".join(texts)
    for issue in issues:
        assert issue.file == str(path)
        assert issue.line is not None and issue.col is not None, str(issue)
        assert str(issue).startswith(f"{path}:{issue.line}:{issue.col}: ")
    # The exception's own message is the issues, one per line, in file order.
    assert str(info.value).splitlines() == texts
    assert [(i.line, i.col) for i in issues] == sorted((i.line, i.col) for i in issues)


def test_every_error_in_a_file_is_reported():
    """Schema errors and rule errors are collected, not stopped at the first one."""
    for name, at_least in (("multiple-errors", 5), ("multiple-rule-errors", 3)):
        with pytest.raises(SpecError) as info:
            load_spec(Path(__file__).parent / "bad" / f"{name}.yaml")
        assert len(info.value.issues) >= at_least
        assert len({(i.line, i.col) for i in info.value.issues}) >= at_least
