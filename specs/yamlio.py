"""YAML in and out with ruamel.yaml: positions for every node, plain data for validation."""

from __future__ import annotations

import io
import re
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning, YAMLError

from .errors import Issue, SpecError

MAX_BYTES = 1 << 20  # Why: a spec is a few KB; a 50 MB "spec" is a mistake, not a model.
MAX_DEPTH = 64
# Why: aliases share one node, so a few hundred bytes of anchors can stand for billions of
# values ("billion laughs"); copying them out (to_plain, pydantic) would take minutes and
# gigabytes. A real spec, aliases expanded, has a few hundred values.
MAX_VALUES = 100_000


def parse_yaml(text: str | bytes, file: str) -> CommentedMap:
    """Parse spec text into a round-trip mapping that remembers line:col of every node.

    Raises:
        SpecError: syntax errors, duplicate keys, tabs, empty or non-mapping documents, and
            files that are too large, binary or not UTF-8, all as ``FILE:LINE:COL: message``.
    """
    if isinstance(text, bytes):
        if len(text) > MAX_BYTES:
            raise SpecError(
                Issue(f"file is {len(text):,} bytes; a spec is at most {MAX_BYTES:,}", file=file, line=1, col=1)
            )
        if text[:2] in (b"\xff\xfe", b"\xfe\xff") or (b"\x00" in text[:4] and len(text) >= 4 and _utf16(text)):
            raise SpecError(Issue("UTF-16 text; save the spec as UTF-8", file=file, line=1, col=1))
        if b"\x00" in text:
            raise SpecError(Issue("this is a binary file, not a YAML spec", file=file, line=1, col=1))
        try:
            text = text.decode("utf-8-sig")
        except UnicodeDecodeError as e:
            line = text[: e.start].count(b"\n") + 1
            col = e.start - (text.rfind(b"\n", 0, e.start) + 1) + 1
            raise SpecError(
                Issue(
                    f"not UTF-8 text (byte 0x{text[e.start]:02x}); save the spec as UTF-8",
                    file=file,
                    line=line,
                    col=col,
                )
            ) from None
    if len(text) > MAX_BYTES:
        raise SpecError(
            Issue(f"file is {len(text):,} characters; a spec is at most {MAX_BYTES:,}", file=file, line=1, col=1)
        )
    if not text.strip() or all(not ln.strip() or ln.lstrip().startswith("#") for ln in text.splitlines()):
        raise SpecError(
            Issue(
                "the file is empty; expected a mapping with keys version, task, data, input and model",
                file=file,
                line=1,
                col=1,
            )
        )
    check_flow_depth(text, file)
    yaml = YAML(typ="rt", pure=True)
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():
            # Why: YAML lets an anchor be redefined; ruamel's warning would reach the user's terminal.
            warnings.simplefilter("ignore", ReusedAnchorWarning)
            doc = yaml.load(text)
    except MarkedYAMLError as e:
        raise SpecError(marked_issue(e, file)) from None
    except YAMLError as e:
        raise SpecError(Issue(f"YAML error: {e}", file=file, line=1, col=1)) from None
    except RecursionError:
        raise SpecError(Issue(f"nesting is deeper than {MAX_DEPTH} levels", file=file, line=1, col=1)) from None
    except ValueError as e:  # e.g. Python's 4,300-digit limit on int("1" * 5000)
        line, col = _long_number_position(text)
        raise SpecError(Issue(f"YAML value error: {str(e)[:160]}", file=file, line=line, col=col)) from None
    except TypeError as e:  # ruamel cannot build a mapping whose key holds a list: "{a: [1]}: x"
        line, col = _complex_key_position(text)
        raise SpecError(
            Issue(
                f"YAML error: a key is a mapping or list that holds a list ({str(e)[:80]}); "
                "keys are names, like 'layers:'",
                file=file,
                line=line,
                col=col,
            )
        ) from None
    if _tag_of(doc) not in (None, *_PLAIN_TAGS):  # a tagged document: name the tag, not the list it tags
        check_tags(doc, file)
    if not isinstance(doc, CommentedMap):
        kind = "a list" if isinstance(doc, list) else f"a single value ({_short(doc)})"
        raise SpecError(
            Issue(
                f"the document is {kind}; expected a mapping with keys version, task, data, input and model",
                file=file,
                line=1,
                col=1,
            )
        )
    check_size(doc, file)
    check_tags(doc, file)
    return doc


_CORE = "tag:yaml.org,2002:"
_PLAIN_TAGS = {_CORE + t for t in ("str", "int", "float", "bool", "null", "map", "seq", "omap", "merge")}


def _tag_of(node: Any) -> str | None:
    tag = getattr(node, "tag", None)
    value = getattr(tag, "value", tag)
    return value if isinstance(value, str) and value else None


def check_tags(doc: Any, file: str) -> None:
    """Refuse YAML tags other than the core ones (``!!python/object``, ``!foo``), and keys that are
    not names (``1:``, ``null:``, ``? [a, b]``), at their line:col.

    Why: a tag turns a value into an object the schema can only call "not a string"; the
    user wrote a tag, so the message names the tag. A number as a key reached the schema as
    ``1:1: [1]: Keys should be strings``, at the document's start.

    Raises:
        SpecError: at the first tagged node or odd key, in document order.
    """

    def walk(node: Any, pos: tuple[int, int], path: tuple) -> None:
        tag = _tag_of(node)
        if tag is not None and tag not in _PLAIN_TAGS:
            shown = "!!" + tag[len(_CORE) :] if tag.startswith(_CORE) else tag
            raise SpecError(
                Issue(
                    f"unknown YAML tag {shown}; a spec holds plain values (text, numbers, lists, mappings), no tags",
                    path,
                    file=file,
                    line=pos[0],
                    col=pos[1],
                )
            )
        if isinstance(node, CommentedMap):
            for key, child in node.items():
                if not isinstance(key, str):
                    try:
                        line, col = node.lc.key(key)
                    except (KeyError, TypeError, AttributeError):
                        line, col = pos[0] - 1, pos[1] - 1
                    shown = "null" if key is None else _short(key)
                    hint = f"to use it as text, quote it: '{shown}':" if not isinstance(key, tuple) else "not a list"
                    raise SpecError(
                        Issue(
                            f"the key {shown} is not a name; keys are words like 'layers' ({hint})",
                            path,
                            file=file,
                            line=line + 1,
                            col=col + 1,
                        )
                    )
                try:
                    line, col = node.lc.value(key)
                except (KeyError, TypeError, AttributeError):
                    line, col = pos[0] - 1, pos[1] - 1
                walk(child, (line + 1, col + 1), path + (str(key),))
        elif isinstance(node, CommentedSeq):
            for i, child in enumerate(node):
                try:
                    line, col = node.lc.item(i)
                except (KeyError, TypeError, AttributeError):
                    line, col = pos[0] - 1, pos[1] - 1
                walk(child, (line + 1, col + 1), path + (i,))

    lc = getattr(doc, "lc", None)
    walk(doc, (lc.line + 1, lc.col + 1) if lc is not None and lc.line is not None else (1, 1), ())


def check_flow_depth(text: str, file: str) -> None:
    """Refuse ``[[[[...`` / ``{{{{...`` nested past MAX_DEPTH before the parser sees it.

    Why: ruamel's scanner is quadratic in flow depth (seconds at a few hundred levels,
    then a RecursionError); a scan of the brackets outside quotes and comments is linear.
    """
    depth, quote, line, col = 0, "", 1, 0
    prev = "\n"
    for ch in text:
        col += 1
        if ch == "\n":
            line, col, quote = line + 1, 0, quote if quote == '"' else ""
        elif quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"" and (prev in " \t\n[{,:" or col == 1):
            quote = ch
        elif ch == "#" and prev in " \t\n":
            quote = "\n"  # a comment: skip to the end of the line
        elif ch in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise SpecError(Issue(f"nesting is deeper than {MAX_DEPTH} levels", file=file, line=line, col=col))
        elif ch in "]}":
            depth = max(0, depth - 1)
        prev = ch


def check_size(doc: CommentedMap, file: str) -> None:
    """Depth at most MAX_DEPTH and at most MAX_VALUES values, with aliases expanded.

    Raises:
        SpecError: at the top-level key whose value is too deep or too large.
    """
    count = [0]

    def walk(node: Any, level: int) -> str | None:
        if isinstance(node, dict):
            children = [c for kv in node.items() for c in kv]
        elif isinstance(node, (list, tuple)) and not isinstance(node, str):
            children = list(node)
        else:
            return None
        if level > MAX_DEPTH:
            return f"nesting is deeper than {MAX_DEPTH} levels"
        count[0] += len(children)
        if count[0] > MAX_VALUES:
            return (
                f"aliases expand to more than {MAX_VALUES:,} values (a 'billion laughs' document?); "
                "a spec holds a few hundred"
            )
        for child in children:
            problem = walk(child, level + 1)
            if problem:
                return problem
        return None

    for key, value in doc.items():
        problem = walk(value, 2)
        if problem:
            line, col = position(doc, (key,), at_key=True) or (1, 1)
            raise SpecError(Issue(problem, file=file, line=line, col=col))
        count[0] += 1


def _complex_key_position(text: str) -> tuple[int, int]:
    """Where a flow collection is followed by ':' (``- {a: [1]}:``), the likely complex key; else 1:1."""
    for n, line in enumerate(text.splitlines(), start=1):
        m = re.search(r"[\]}]\s*:(\s|$)", line)
        if m and not line.lstrip().startswith("#"):
            return n, m.start() + 1
    return 1, 1


def _long_number_position(text: str) -> tuple[int, int]:
    m = re.search(r"[0-9_]{4000,}", text)
    if not m:
        return 1, 1
    line = text.count("\n", 0, m.start()) + 1
    return line, m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1


def _utf16(data: bytes) -> bool:
    """UTF-16 without a byte-order mark: ASCII text with a zero byte beside every character."""
    head = data[:64]
    return len(head) >= 4 and (head[1::2].count(0) == len(head[1::2]) or head[0::2].count(0) == len(head[0::2]))


def marked_issue(e: MarkedYAMLError, file: str) -> Issue:
    mark = e.problem_mark or e.context_mark
    problem = (e.problem or "").strip()
    context = (e.context or "").strip()
    if "found character '\\t'" in problem or "\t" in problem:
        msg = "tab character; YAML indentation must use spaces"
    elif "duplicate key" in context or "duplicate key" in problem or "found duplicate key" in str(e):
        key = problem.split('"')[1] if '"' in problem else problem
        msg = f"duplicate key {key!r}; each key may appear once in a mapping"
    else:
        cm = e.context_mark
        if context and cm is not None and mark is not None and cm.line != mark.line:
            context += f" (opened at {cm.line + 1}:{cm.column + 1})"  # Why: where the unclosed bracket is
        msg = "YAML syntax error: " + "; ".join(p for p in (context, problem) if p)
    line = mark.line + 1 if mark else 1
    col = mark.column + 1 if mark else 1
    return Issue(msg, file=file, line=line, col=col)


def to_plain(node: Any) -> Any:
    """Round-trip nodes to plain Python values (ruamel's booleans are ints underneath)."""
    if isinstance(node, dict):
        return {to_plain(k) if not isinstance(k, (list, dict)) else str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    name = type(node).__name__
    if name == "TaggedScalar":  # ``!!str 5``: only core tags pass check_tags
        return str(node.value) if _tag_of(node) == _CORE + "str" else node.value
    if name == "ScalarBoolean":
        return bool(node)
    if isinstance(node, bool) or node is None:
        return node
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, str):
        return str(node)
    return node


def position(doc: CommentedMap, path: tuple, *, at_key: bool = False) -> tuple[int, int] | None:
    """1-based (line, col) of the node at ``path``; the nearest existing parent if it is absent.

    Scalars point at the value; mappings and lists at their key (or list item).
    """
    node: Any = doc
    pos: tuple[int, int] | None = (1, 1)
    for i, seg in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, CommentedMap) and not isinstance(seg, int) and seg in node:
            child = node[seg]
            scalar = not isinstance(child, (dict, list))
            try:
                line, col = node.lc.value(seg) if (scalar and not (last and at_key)) else node.lc.key(seg)
            except (KeyError, TypeError, AttributeError):
                line, col = (pos[0] - 1, pos[1] - 1) if pos else (0, 0)
            pos = (line + 1, col + 1)
            node = child
        elif isinstance(node, CommentedSeq) and isinstance(seg, int) and 0 <= seg < len(node):
            try:
                line, col = node.lc.item(seg)
                pos = (line + 1, col + 1)
            except (KeyError, TypeError, AttributeError):
                pass
            node = node[seg]
        else:
            break
    return pos


def get_node(doc: Any, path: tuple) -> Any:
    node = doc
    for seg in path:
        if isinstance(node, dict) and seg in node:
            node = node[seg]
        elif isinstance(node, list) and isinstance(seg, int) and -len(node) <= seg < len(node):
            node = node[seg]
        else:
            raise KeyError(seg)
    return node


def dump_yaml(data: Any) -> str:
    """Plain data as block YAML with short lists inline, the way specs are written by hand."""
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = None
    yaml.width = 4096
    yaml.sort_base_mapping_type_on_output = False  # keep the language's key order
    buf = io.StringIO()
    yaml.dump(data, buf)
    return buf.getvalue()


def _short(value: Any, limit: int = 40) -> str:
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
