"""Loading a spec: YAML with positions -> Pydantic -> rules and shapes, every error at FILE:LINE:COL."""

from __future__ import annotations

import math
import os
import re
import warnings
from dataclasses import replace
from typing import Any

from pydantic import BaseModel, ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from .backbone_rules import backbone_warnings
from .errors import Issue, SpecError, format_path
from .interrupts import held_interrupt
from .messages import describe, doc_path, valid_keys
from .paths import PathError, has_path, set_path, split_path, with_values
from .readfile import FileReadError, open_regular
from .rules import check_rules, resolve_paths
from .shapes import preprocess_issues, summarize
from .spec import Spec, Warnings
from .yamlio import (
    MAX_BYTES,
    check_flow_depth,
    check_size,
    dump_yaml,
    get_node,
    marked_issue,
    parse_yaml,
    position,
    to_plain,
)

__all__ = [
    "load_spec",
    "load_spec_text",
    "spec_from_dict",
    "apply_values",
    "dump_yaml",
    "locate_issues",
    "revalidate",
]


def load_spec(path: str | os.PathLike, overrides: list[str] | None = None) -> Spec:
    """Load, validate and shape-check a spec file.

    Args:
        path: the YAML file. Relative paths inside it are relative to its folder.
        overrides: ``KEY=VALUE`` strings (``training.epochs=5``); values are parsed as YAML.

    Raises:
        SpecError: every problem in the file, each as ``FILE:LINE:COL: key: message``.
    """
    name = os.fspath(path)
    try:
        with open_regular(name, "spec", limit=1 << 62) as f:  # Why no limit here: MAX_BYTES, below, says it as FILE:1:1
            size = os.fstat(f.fileno()).st_size
            if size > MAX_BYTES:  # Why here: read no more than needed, and report the real size
                raise SpecError(
                    Issue(f"file is {size:,} bytes; a spec is at most {MAX_BYTES:,}", file=name, line=1, col=1)
                )
            raw = f.read(MAX_BYTES + 1)
    except FileReadError as e:
        reason = "no such file" if e.reason == "file not found" else e.reason
        raise SpecError(Issue(reason, file=name)) from None
    except OSError as e:
        raise SpecError(Issue(f"cannot read: {e.strerror}", file=name)) from None
    base = os.path.dirname(os.path.abspath(name))
    default_name = os.path.splitext(os.path.basename(name))[0]
    return load_spec_text(raw, name, base_dir=base, overrides=overrides, default_name=default_name)


def load_spec_text(
    text: str | bytes,
    name: str = "<spec>",
    *,
    base_dir: str | None = None,
    overrides: list[str] | None = None,
    default_name: str | None = None,
) -> Spec:
    """Validate spec text. ``name`` is used in messages; ``base_dir`` anchors relative paths."""
    if isinstance(overrides, str):  # one KEY=VALUE, not a list of its characters
        overrides = [overrides]
    doc = parse_yaml(text, name)
    overridden = _apply_overrides(doc, overrides or [], name)
    data = to_plain(doc)

    def locate(issue: Issue, at_key: bool = False) -> Issue:
        for dotted, opath in overridden.items():
            if issue.path[: len(opath)] == opath:
                return replace(issue, file=f"{name} (--set {dotted})", line=None, col=None)
        line, col = position(doc, issue.path, at_key=at_key) or (None, None)
        return replace(issue, file=name, line=line, col=col)

    non_finite = _non_finite(data)
    if non_finite:
        raise SpecError([locate(i) for i in non_finite])
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise SpecError(_schema_issues(e, data, locate)) from None
    if spec.name is None:
        spec.name = _safe_name(default_name or "model")
    base = base_dir or os.getcwd()
    resolve_paths(spec, base)
    spec._source, spec._base_dir = name, base

    try:
        issues = check_rules(spec) + preprocess_issues(spec)
    except SpecError as e:  # a data source that cannot be read at all (a FIFO, a device)
        issues = e.issues
    issues += _tune_issues(spec)
    if not any(i.path[:1] == ("preprocess",) or i.path[:2] == ("model", "layers") for i in issues):
        try:
            summarize(spec)
        except SpecError as e:
            issues += e.issues
    if issues:
        raise SpecError([locate(i) for i in issues])
    spec._warnings = Warnings(locate(w) for w in backbone_warnings(spec))
    return spec


def revalidate(spec: Spec, overrides: list[str] | None = None) -> Spec:
    """A Spec object checked again, as its file would be, with ``overrides`` (``KEY=VALUE``) applied.

    Why: ``model_copy(update=...)`` and attribute assignment do not validate, so a Python caller
    can hand ``train`` an ``epochs`` of 0 or ``"2"``, or a ``name`` of ``"../x"``. Issues name the
    spec's file and key, without a line: the object no longer is its file.

    Raises:
        SpecError: what ``load_spec`` would say of the same values.
    """
    name = spec.source_file or "<spec>"
    try:
        with warnings.catch_warnings():  # a wrong type gives pydantic's serializer warning; the check names it
            warnings.simplefilter("ignore")
            text = spec.to_yaml()
    except (ValueError, TypeError) as e:  # PydanticSerializationError is a ValueError
        reason = str(e).splitlines()[0][:200]
        raise SpecError(Issue(f"the Spec cannot be written as YAML ({reason})", file=name)) from None
    try:
        return load_spec_text(text, name, base_dir=spec.base_dir, overrides=overrides, default_name=_given_name(spec))
    except SpecError as e:
        raise SpecError([i if i.line is None else replace(i, line=None, col=None) for i in e.issues]) from None


def _given_name(spec: Spec) -> str | None:
    return spec.name if isinstance(spec.name, str) else None


def locate_issues(spec: Spec, issues: list[Issue], options: dict[tuple, str] | None = None) -> list[Issue]:
    """Issues found after loading (the devices of this machine) as ``FILE:LINE:COL``, like load's.

    An issue gets its key's position in ``spec.source_file`` when the file still holds the spec's
    value there. A key an option gave (``options``: ``{("training", "device"): "--device cuda"}``)
    is named with the option; one ``--set`` gave, or a spec whose file is gone (a checkpoint's),
    without a position.
    """
    file = spec.source_file
    try:
        with open_regular(file, "spec", limit=MAX_BYTES) as f:
            doc = parse_yaml(f.read(), file)
    except (FileReadError, SpecError, OSError):
        doc = None
    data, located = spec.to_dict(), []
    for issue in issues:
        where: tuple[int, int] | None = None
        try:
            if doc is not None and to_plain(get_node(doc, issue.path)) == get_node(data, issue.path):
                where = position(doc, issue.path)
        except KeyError:
            pass
        option = (options or {}).get(issue.path) if where is None else None
        name = f"{file} ({option})" if option else file
        located.append(replace(issue, file=name, line=where and where[0], col=where and where[1]))
    return located


def _non_finite(data: Any, path: tuple = ()) -> list[Issue]:
    """Every float in the document that is infinite or NaN (``1e400``, ``.inf``, ``.nan``).

    Why before Pydantic, for the whole document: ``lr: 1e400`` parses as infinity and passes
    ``gt=0``; one walk covers every number field, present and future, and tune values too.
    """
    if isinstance(data, float) and not math.isfinite(data):
        return [Issue(f"must be a finite number (got {data})", path)]
    if isinstance(data, dict):
        return [i for k, v in data.items() for i in _non_finite(v, path + (k,))]
    if isinstance(data, list):
        return [i for n, v in enumerate(data) for i in _non_finite(v, path + (n,))]
    return []


def _schema_issues(e: ValidationError, data: Any, locate) -> list[Issue]:
    """Pydantic errors as Issues; a union's several failures at one key become one message."""
    by_path: dict[tuple, dict[str, bool]] = {}  # path -> {message: it only says "not this type"}
    keyish: set[tuple] = set()
    for err in e.errors(include_url=False):
        loc = tuple(err["loc"])
        path = doc_path(data, loc)
        if err["type"] == "missing":
            path = path[:-1] if path and path[-1] == loc[-1] else path
        if err["type"] == "extra_forbidden":
            keyish.add(path)
        msg = describe(err, valid_keys(Spec, loc) if err["type"] == "extra_forbidden" else None)
        by_path.setdefault(path, {}).setdefault(msg, _is_type_mismatch(err["type"]))
    issues = []
    for path, found in by_path.items():
        msgs = list(found)
        if _some_member_took_it(path, by_path):
            msgs = [m for m, mismatch in found.items() if not mismatch]
        msgs = _merge_union(msgs)
        for msg in msgs:
            issues.append(locate(Issue(msg, path), at_key=path in keyish))
    return issues


def _is_type_mismatch(kind: str) -> bool:
    """A pydantic error that says the value is not of a union member's type (not what is wrong in it)."""
    return kind.endswith(("_type", "_parsing")) or kind in {"literal_error", "is_instance_of"}


def _some_member_took_it(path: tuple, by_path: dict[tuple, dict[str, bool]]) -> bool:
    """Whether a union member took the value at ``path`` by type and found a fault in it or below it.

    Why: ``classes: [a]`` fails the ``auto`` and integer members by type and the list member
    by length; only the list member's message says what to fix.
    """
    mismatch = by_path[path].values()
    if not any(mismatch):
        return False  # no type mismatch at the path: nothing to drop
    if not all(mismatch):
        return True  # a member's own fault at the path (a length, a bound)
    return any(len(p) > len(path) and p[: len(path)] == path for p in by_path)


_MUST = re.compile(r"must be (?P<want>.+?) \(got (?P<got>.+)\)(?P<hint>(; did you mean .+)?)", re.S)


def _merge_union(msgs: list[str]) -> list[str]:
    """'must be a list (got 3)' + "must be one of auto (got 3)" -> one 'must be ... or ...'."""
    musts = [(m, found) for m in msgs if (found := _MUST.fullmatch(m))]
    if len(musts) < 2:
        return msgs
    wants = " or ".join(dict.fromkeys(found["want"] for _, found in musts))
    hint = next((found["hint"] for _, found in musts if found["hint"]), "")
    merged = f"must be {wants} (got {musts[0][1]['got']}){hint}"
    merged_away = {m for m, _ in musts}
    return [merged] + [m for m in msgs if m not in merged_away]


def _apply_overrides(doc, overrides: list[str], name: str) -> dict[str, tuple]:
    applied: dict[str, tuple] = {}
    yaml = YAML(typ="safe", pure=True)
    issues = []
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            issues.append(Issue(f"--set expects KEY=VALUE, like training.epochs=5 (got {item!r})", file=name))
            continue
        try:
            check_flow_depth(text, name)
            value = yaml.load(text) if text.strip() else None
            path = split_path(key)
            _seed_defaults(doc, path)
            set_path(doc, path, value)
        except MarkedYAMLError as e:  # one line, not PyYAML's four (with "<unicode string>")
            issues.append(Issue(f"--set {item}: {_override_yaml_error(e)}", file=name))
            continue
        except (YAMLError, PathError) as e:
            issues.append(Issue(f"--set {item}: {e}", file=name))
            continue
        except SpecError as e:
            issues.append(Issue(f"--set {key}=...: {e.issues[0].message}", file=name))
            continue
        except (ValueError, RecursionError) as e:  # a 5,000-digit int; nesting past the recursion limit
            issues.append(Issue(f"--set {key}=...: {str(e)[:160] or type(e).__name__}", file=name))
            continue
        applied[item] = path
    if issues:
        raise SpecError(issues)
    if applied:
        try:
            check_size(doc, name)
        except SpecError as e:
            raise SpecError(Issue(f"--set: {e.issues[0].message}", file=name)) from None
    return applied


def _seed_defaults(doc: Any, path: tuple) -> None:
    """Give a section that ``path`` goes through, and the spec leaves out, its default's ``type``.

    Why: ``--set training.optimizer.lr=0.01`` on a spec without an ``optimizer:`` section meant
    ``{lr: 0.01}``, which names no optimizer; the user means the default one's learning rate.
    """
    model, node = Spec, doc
    for seg in path[:-1]:
        field = model.model_fields.get(seg) if isinstance(seg, str) and isinstance(model, type) else None
        if field is None or not isinstance(node, dict):
            return
        default = field.default
        cls = type(default) if isinstance(default, BaseModel) else field.annotation
        if not (isinstance(cls, type) and issubclass(cls, BaseModel)):
            return
        if seg not in node:
            node[seg] = {"type": default.type} if isinstance(default, BaseModel) and "type" in cls.model_fields else {}
        model, node = cls, node[seg]


def _override_yaml_error(e: MarkedYAMLError) -> str:
    problem = (e.problem or "").strip()
    if "constructor for the tag" in problem:
        tag = problem.split("for the tag", 1)[1].strip(" '").replace("tag:yaml.org,2002:", "!!")
        return f"unknown YAML tag {tag!r}; a value is plain YAML: a number, a string, a [list] or a {{mapping}}"
    issue = marked_issue(e, "--set")
    return f"{issue.message} (at character {issue.col} of the value)"


def _safe_name(stem: str) -> str:
    cleaned = "".join(ch if ch.isalnum() or ch in "._-" else "-" for ch in stem).strip("-.") or "model"
    return cleaned if cleaned[0].isalnum() else "m" + cleaned


def _tune_issues(spec: Spec) -> list[Issue]:
    """tune.space paths exist, ranges are ordered, and every extreme value validates."""
    if spec.tune is None:
        return []
    issues = []
    with held_interrupt():  # see Spec.to_dict
        full = spec.model_dump(mode="json", by_alias=True)
    base = spec.to_dict()
    for dotted, dist in spec.tune.space.items():
        where = ("tune", "space", dotted)
        try:
            path = split_path(dotted)
        except PathError as e:
            issues.append(Issue(str(e), where))
            continue
        if path[0] == "tune":
            issues.append(Issue("tune cannot tune its own settings", where))
            continue
        if not has_path(full, path):
            issues.append(
                Issue(
                    f"{dotted!r} is not a key of this spec (tune paths are dotted keys, list items by index, like "
                    "model.layers.0.filters)",
                    where,
                )
            )
            continue
        if dist.type in ("float", "int"):
            if dist.low > dist.high:
                issues.append(Issue(f"low must be <= high (got low {dist.low}, high {dist.high})", where + ("low",)))
                continue
            if dist.log and dist.low <= 0:
                issues.append(Issue(f"log scale needs low > 0 (got {dist.low})", where + ("low",)))
                continue
            candidates = [dist.low, dist.high]
        else:
            candidates = list(dist.values)
        for value in candidates:
            try:
                Spec.model_validate(with_values(base, {dotted: value}))
            except (ValidationError, PathError) as e:
                first = (
                    e.errors(include_url=False)[0]
                    if isinstance(e, ValidationError)
                    else {"type": "value_error", "loc": (), "ctx": {"error": e}}
                )
                loc = format_path(doc_path(base, tuple(first["loc"]))) or dotted
                issues.append(Issue(f"value {value!r} does not validate at {loc}: {describe(first, None)}", where))
                break
    return issues


def spec_from_dict(data: dict, name: str = "<spec>", base_dir: str | None = None) -> Spec:
    """Validate plain data as a spec (tune trials, checkpoints); messages carry no positions."""
    return load_spec_text(dump_yaml(data), name, base_dir=base_dir)


def apply_values(spec: Spec, values: dict[str, Any], name: str = "<trial>") -> Spec:
    """The spec with each dotted path set to its value, validated like a file.

    Raises:
        SpecError: the result is not a valid spec.
    """
    try:
        data = with_values(spec.to_dict(), values)
    except PathError as e:
        raise SpecError(Issue(str(e), file=name)) from None
    new = spec_from_dict(data, name, spec.base_dir)
    new._source = spec.source_file
    return new


def get_value(spec: Spec, dotted: str) -> Any:
    with held_interrupt():  # see Spec.to_dict
        return get_node(spec.model_dump(mode="json", by_alias=True), split_path(dotted))
