"""Fuzz the spec loader: 10,000 mutated copies of examples/*.yaml through ``load_spec_text``.

Every mutated spec must either load or raise a ``SpecError`` whose every issue has a line
number. The script counts the two ways that can fail, and both must be 0:

- unexpected: any exception other than SpecError (a traceback a user would see);
- no line: a SpecError with an issue that has no line number.

Mutations (1 to 3 per spec, chosen by a seeded ``random.Random``, so a run is reproducible
and a failure can be replayed with ``--seed S --only N``): line deletion, value swap
between two lines, type change of a value, key rename (typo, case, or another key's name),
random character insertion (YAML punctuation, tabs, control and non-ASCII characters),
indentation change, truncation, line duplication, anchor/alias insertion.

Usage::

    python bench/fuzz_specs.py [--count 10000] [--seed 0] [--show 5] [--only N]

Prints the counts and the time; exits 1 when either failure count is not 0.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"

WRONG_VALUES = [
    "[1, 2]",
    "{a: 1}",
    "-3",
    "0",
    "abc",
    "null",
    "~",
    "1.5",
    "true",
    "no",
    "''",
    '""',
    "1e999",
    "-.inf",
    ".nan",
    "[]",
    "{}",
    "0x1F",
    "0o17",
    "1_000",
    "2001-12-14",
    "!!binary AA==",
    "!!str 3",
    "!custom x",
    "&anchor 1",
    "*nowhere",
    "|\n  block",
    ">-\n  folded",
    "[[[]]]",
    "{a: {b: {c: 1}}}",
    "9" * 40,
    "'unterminated",
    '"bad \\q escape"',
    "? complex",
    "- item",
    "%TAG",
    "@reserved",
    "`backtick",
    "9" * 5000,  # past Python's 4,300-digit int limit
    "[&l0 [x, x, x, x, x, x, x, x, x], "
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 8))
    + "]",
    "[" * 100 + "]" * 100,
]
JUNK = list(":{}[],#&*!|>'\"%@`-?\t \\") + [
    "\x00",
    "\x07",
    "\x1b",
    "\u00e9",
    "\u2028",
    "\ufeff",
    "\U0001f600",
    "\r",
    "\n",
    "  ",
    "\u200b",
]


def _split_kv(line: str) -> tuple[str, str, str] | None:
    """``'  key: value'`` -> ``('  key', ': ', 'value')`` (first ': ' outside brackets), else None."""
    i = line.find(": ")
    if i <= 0:
        return None
    return line[:i], ": ", line[i + 2 :]


def mutate(text: str, rng: random.Random) -> tuple[str, list[str]]:
    """Apply 1 to 3 random mutations to a spec's text; return the text and what was done."""
    lines = text.splitlines()
    done: list[str] = []
    keys = [kv[0].strip().lstrip("- ").strip("{ ") for ln in lines if (kv := _split_kv(ln))]
    for _ in range(rng.randint(1, 3)):
        if not lines:
            break
        i = rng.randrange(len(lines))
        kind = rng.choice(["delete", "swap", "type", "rename", "insert", "indent", "truncate", "duplicate", "alias"])
        line = lines[i]
        if kind == "delete":
            del lines[i]
        elif kind == "swap":
            j = rng.randrange(len(lines))
            a, b = _split_kv(lines[i]), _split_kv(lines[j])
            if a and b:
                lines[i], lines[j] = a[0] + a[1] + b[2], b[0] + b[1] + a[2]
        elif kind == "type":
            kv = _split_kv(line)
            if kv:
                value = rng.choice(WRONG_VALUES)
                if "\n" in value:
                    indent = " " * (len(kv[0]) - len(kv[0].lstrip()) + 2)
                    value = value.replace("\n  ", "\n" + indent)
                lines[i] = kv[0] + kv[1] + value
            elif "{" in line:  # inside a flow mapping: replace one value
                pos = [k for k, ch in enumerate(line) if ch == ":"]
                if pos:
                    p = rng.choice(pos) + 1
                    end = min([k for k in (line.find(",", p), line.find("}", p)) if k != -1] or [len(line)])
                    lines[i] = line[:p] + " " + rng.choice(WRONG_VALUES[:20]) + line[end:]
        elif kind == "rename":
            kv = _split_kv(line)
            if kv:
                key = kv[0]
                stripped = key.lstrip(" -")
                prefix = key[: len(key) - len(stripped)]
                how = rng.choice(["typo", "case", "other", "drop"])
                if how == "typo" and stripped:
                    p = rng.randrange(len(stripped))
                    stripped = stripped[:p] + rng.choice("abcdefghijklmnopqrstuvwxyz_.0") + stripped[p + 1 :]
                elif how == "case":
                    stripped = stripped.upper()
                elif how == "other" and keys:
                    stripped = rng.choice(keys)
                else:
                    stripped = ""
                lines[i] = prefix + stripped + kv[1] + kv[2]
        elif kind == "insert":
            p = rng.randint(0, len(line))
            junk = "".join(rng.choice(JUNK) for _ in range(rng.randint(1, 4)))
            lines[i] = line[:p] + junk + line[p:]
        elif kind == "indent":
            if rng.random() < 0.5:
                lines[i] = " " * rng.randint(1, 5) + line
            else:
                lines[i] = line[rng.randint(1, 4) :] if line.startswith(" ") else "\t" + line
        elif kind == "truncate":
            cut = rng.randrange(len(text)) if text else 0
            flat = "\n".join(lines)[:cut]
            lines = flat.splitlines()
        elif kind == "duplicate":
            lines.insert(i, line)
        else:  # alias: anchor a value, refer to it elsewhere (or to an anchor that does not exist)
            kv = _split_kv(line)
            j = rng.randrange(len(lines))
            kj = _split_kv(lines[j])
            if kv and kj:
                lines[i] = kv[0] + kv[1] + "&a " + kv[2]
                lines[j] = kj[0] + kj[1] + rng.choice(["*a", "*b", "*a\n" + lines[j]])
        done.append(kind)
    return "\n".join(lines) + ("\n" if rng.random() < 0.9 else ""), done


def check(text: str | bytes, name: str) -> str:
    """``"ok"``, ``"spec_error"``, ``"no_line"`` or ``"unexpected"`` (see the module docstring)."""
    from convspec.specs import SpecError, load_spec_text

    try:
        load_spec_text(text, name, base_dir=str(EXAMPLES))
    except SpecError as e:
        if not e.issues or any(i.line is None for i in e.issues):
            return "no_line"
        return "spec_error"
    return "ok"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--count", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--show", type=int, default=5, help="failures to print in full")
    ap.add_argument("--only", type=int, default=None, help="replay one case number and print it")
    args = ap.parse_args(argv)

    from convspec.specs import SpecError

    sources = {p.name: p.read_text("utf-8") for p in sorted(EXAMPLES.glob("*.yaml"))}
    names = sorted(sources)
    counts = {"ok": 0, "spec_error": 0, "no_line": 0, "unexpected": 0}
    shown = 0
    t0 = time.perf_counter()
    t_mutate = 0.0
    slowest = (0.0, -1)
    for n in range(args.count):
        rng = random.Random(f"{args.seed}:{n}")  # Why per case: any case replays alone (--only N)
        if args.only is not None and n != args.only:
            continue
        tm = time.perf_counter()
        name = rng.choice(names)
        text, done = mutate(sources[name], rng)
        t_mutate += time.perf_counter() - tm
        data = text.encode("utf-8", "surrogatepass") if rng.random() < 0.5 else text
        tc = time.perf_counter()
        try:
            outcome = check(data, name)
        except Exception as e:  # noqa: BLE001 - counting them is the point
            outcome = "unexpected"
            err = traceback.format_exc()
            if shown < args.show or args.only is not None:
                shown += 1
                print(
                    f"--- case {n} ({name}: {', '.join(done)}): {type(e).__name__}: {e}\n{text}\n{err}", file=sys.stderr
                )
        else:
            if outcome == "no_line" and (shown < args.show or args.only is not None):
                shown += 1
                try:
                    from convspec.specs import load_spec_text

                    load_spec_text(data, name, base_dir=str(EXAMPLES))
                except SpecError as e:
                    print(
                        f"--- case {n} ({name}: {', '.join(done)}): issue without a line:\n{e}\n{text}", file=sys.stderr
                    )
        slowest = max(slowest, (time.perf_counter() - tc, n))
        counts[outcome] += 1
        if args.only is not None:
            print(f"case {n} ({name}: {', '.join(done)}): {outcome}\n{text}")
    total = time.perf_counter() - t0
    ran = sum(counts.values())
    print(
        f"fuzz_specs: {ran:,} mutated specs from {len(names)} examples (seed {args.seed}) in {total:.1f} s "
        f"({total / max(ran, 1) * 1e3:.2f} ms each; mutation {t_mutate:.2f} s; slowest case {slowest[1]} at "
        f"{slowest[0] * 1e3:.0f} ms)"
    )
    print(f"  loaded: {counts['ok']:,}   SpecError with lines: {counts['spec_error']:,}")
    print(f"  unexpected exceptions: {counts['unexpected']}   SpecErrors without a line number: {counts['no_line']}")
    return 0 if counts["unexpected"] == 0 and counts["no_line"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
