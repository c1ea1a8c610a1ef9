"""Bad YAML through every command that reads a spec: FILE:LINE:COL, exit 1, no traceback, bounded cost.

The hostile cases (alias bombs, deep nesting, 50 MB, binary) run in a child process under a
1.5 GiB address-space limit and a time limit: refusing them must cost neither.
"""

from __future__ import annotations

import time

import pytest

from .conftest import DIGITS, cli, cli_subprocess, user_error, write

GOOD = DIGITS.read_text("utf-8")
LAUGHS = "version: 1\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9) if i else ', '.join(['lol'] * 9)}]\n" for i in range(10)
)  # 9**10 = 3.5 billion strings once the aliases are expanded

# (id, file content, the command, words the message must hold)
CASES = [
    (
        "syntax-error",
        GOOD.replace("task: multiclass", "task: [multiclass"),
        "validate",
        ["spec.yaml:", "YAML syntax error"],
    ),
    ("tab-indent", GOOD.replace("  channels: 1", "\tchannels: 1"), "validate", ["spec.yaml:", "tab"]),
    (
        "duplicate-key",
        GOOD.replace("task: multiclass", "task: multiclass\ntask: binary"),
        "summary",
        ["spec.yaml:", "duplicate key 'task'"],
    ),
    (
        "undefined-alias",
        GOOD.replace("classes: auto", "classes: *nowhere"),
        "validate",
        ["spec.yaml:6:", "undefined alias 'nowhere'"],
    ),
    (
        "unclosed-quote",
        GOOD.replace("name: digits-cnn", 'name: "digits-cnn'),
        "train",
        ["spec.yaml:", "YAML syntax error"],
    ),
    ("huge-integer", GOOD.replace("epochs: 20", "epochs: " + "9" * 5000), "validate", ["spec.yaml:", "4300 digits"]),
    (
        "python-tag",
        GOOD.replace("epochs: 20", "epochs: !!python/object/apply:os.system ['echo pwned']"),
        "validate",
        ["spec.yaml:", "training.epochs"],
    ),
    ("empty-file", "", "summary", ["spec.yaml:1:1", "empty"]),
    ("comments-only", "# nothing here\n# at all\n", "train", ["spec.yaml:1:1", "empty"]),
    ("list-document", "- version: 1\n- task: binary\n", "validate", ["spec.yaml:1:1", "a list", "expected a mapping"]),
    (
        "not-utf8",
        GOOD.encode("utf-8").replace(b"digits-cnn", b"digits-caf\xe9"),
        "validate",
        ["spec.yaml:4:", "not UTF-8"],
    ),
    ("utf16", GOOD.encode("utf-16"), "summary", ["spec.yaml:1:1"]),
    (
        "list-inside-a-key",
        GOOD.replace("fraction: [0.08, 0.08]}", "fraction: [0.08, 0.08]}:"),
        "validate",
        ["spec.yaml:22:", "a key is a mapping or list"],
    ),  # found by bench/fuzz_specs.py (was a TypeError)
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_yaml_is_a_clean_error(case, tmp_path):
    _, content, command, words = case
    spec = write(tmp_path / "spec.yaml", content)
    extra = ["--out", tmp_path / "runs"] if command == "train" else []
    user_error(cli(command, spec, *extra), *words, max_lines=6)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing written


def test_missing_spec_file_and_a_folder_as_spec(tmp_path):
    user_error(cli("validate", tmp_path / "nope.yaml"), "nope.yaml", "no such file")
    user_error(cli("summary", tmp_path), str(tmp_path), "folder")
    user_error(cli("train", tmp_path / "nope.yaml", "--out", tmp_path / "runs"), "nope.yaml", "no such file")


HOSTILE = [
    ("billion-laughs", LAUGHS, ["spec.yaml:", "aliases expand to more than"]),
    (
        "deep-flow-nesting",
        "version: 1\nmodel: " + "[" * 200_000 + "]" * 200_000 + "\n",
        ["spec.yaml:2:", "deeper than 64 levels"],
    ),
    (
        "deep-block-nesting",
        "".join("  " * i + f"k{i}:\n" for i in range(400)) + "  " * 400 + "x\n",
        ["spec.yaml:1:1", "deeper than 64 levels"],
    ),
]


@pytest.mark.parametrize("case", HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_yaml_is_refused_in_bounded_time_and_memory(case, tmp_path):
    _, content, words = case
    spec = write(tmp_path / "spec.yaml", content)
    t0 = time.perf_counter()
    result = cli_subprocess("validate", spec, timeout=60, limit_memory=3 << 29)  # 1.5 GiB
    assert time.perf_counter() - t0 < 30
    user_error(result, *words)


def test_50_mb_and_binary_files_are_refused_unread(tmp_path):
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.write(b"version: 1\n" + b"# padding padding padding\n" * (50_000_000 // 26))
    t0 = time.perf_counter()
    user_error(
        cli_subprocess("validate", big, timeout=60, limit_memory=3 << 29), "big.yaml:1:1", "a spec is at most 1,048,576"
    )
    assert time.perf_counter() - t0 < 30
    binary = write(tmp_path / "model.yaml", bytes(range(256)) * 64)
    user_error(cli("validate", binary), "model.yaml:1:1", "binary file")
    user_error(cli("train", binary, "--out", tmp_path / "runs"), "model.yaml:1:1", "binary file")


def test_alias_bomb_in_a_set_override(tmp_path):
    laughs = "[" + ", ".join(f"&a{i} [{', '.join([f'*a{i - 1}'] * 9) if i else 'x'}]" for i in range(9)) + "]"
    user_error(cli("summary", DIGITS, "--set", f"name={laughs}"), "--set", "aliases expand")
