"""Messages that said the wrong thing: an unknown YAML tag, a negative ``--set`` index, a shape error
without the layer's type, evaluation on a subset of the model's classes, CSV paths that leave
the CSV's root. Each says what the user wrote, where, and what to do; exit 1 (or a score
where the request is sensible).
"""

from __future__ import annotations

import json

import pytest

from convspec.runtime.datasets import DataError, list_csv
from convspec.specs.errors import printable

from .conftest import classifier_model, cli, image_folder, save_png, tiny_spec, user_error, write


@pytest.mark.parametrize(
    ("value", "tag"),
    [
        ("!!python/object:os.system {x: 1}", "!!python/object:os.system"),
        ("!!python/object/apply:os.system [ls]", "!!python/object/apply:os.system"),
        ("!foo multiclass", "!foo"),
        ("!<tag:example.com,2000:x> 3", "tag:example.com,2000:x"),
    ],
)
def test_unknown_yaml_tag_is_named_with_its_position(tmp_path, value, tag):
    spec = tiny_spec("{type: builtin, name: digits}").replace("task: multiclass", f"task: {value}")
    stderr = user_error(cli("validate", write(tmp_path / "s.yaml", spec)), f"unknown YAML tag {tag}")
    assert "s.yaml:2:7:" in stderr and "must be a string" not in stderr, stderr


def test_unknown_tag_in_a_list_item(tmp_path):
    spec = tiny_spec("{type: builtin, name: digits}").replace(
        "    - {type: conv, filters: 2}", "    - !layer {type: conv, filters: 2}"
    )
    stderr = user_error(cli("validate", write(tmp_path / "s.yaml", spec)), "unknown YAML tag !layer")
    assert "s.yaml:10:7:" in stderr, stderr


def test_core_tags_still_work(tmp_path):
    spec = tiny_spec("{type: builtin, name: digits}").replace("task: multiclass", "task: !!str multiclass")
    assert cli("validate", write(tmp_path / "s.yaml", spec)).exit_code == 0


@pytest.mark.parametrize(
    ("key", "index"), [("model.layers.-1.filters=8", "-1"), ("model.layers.-2.filters=8", "-2"), ("model.-1=3", "-1")]
)
def test_negative_set_index_is_an_error(tmp_path, key, index):
    spec = write(tmp_path / "s.yaml", tiny_spec("{type: builtin, name: digits}"))
    user_error(cli("summary", spec, "--set", key), f"negative index {index}", "numbered from 0")


def test_shape_error_names_the_layer_type(tmp_path):
    spec = tiny_spec("{type: builtin, name: digits}", size=2).replace(
        "    - {type: conv, filters: 2}\n",
        "    - {type: conv, filters: 2}\n    - {type: max_pool, size: 2}\n    - {type: max_pool, size: 2}\n",
    )
    stderr = user_error(cli("summary", write(tmp_path / "s.yaml", spec)), "output would be 0x0 pixels")
    assert "model.layers[2] (max_pool): output would be 0x0" in stderr, stderr


def test_evaluate_on_a_subset_of_the_models_classes_scores_it(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b", "c"))
    image_folder(tmp_path / "one", classes=("b",))  # one class only: fine for scoring
    result = cli("evaluate", model, tmp_path / "one", "--format", "json")
    assert result.exit_code == 0, result.stderr
    scored = json.loads(result.stdout)
    assert scored["images"] == 4 and scored["classes"] == ["a", "b", "c"]
    assert scored["per_class"]["b"]["support"] == 4 and scored["per_class"]["a"]["support"] == 0
    image_folder(tmp_path / "two", classes=("c", "a"))
    assert cli("evaluate", model, tmp_path / "two").exit_code == 0


def test_evaluate_on_classes_the_model_does_not_know_is_refused(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b", "c"))
    image_folder(tmp_path / "data", classes=("a", "zebra"))
    user_error(cli("evaluate", model, tmp_path / "data"), "classes the model does not know: zebra", "a, b, c")


def csv_data(tmp_path, rows):
    for path, _ in rows:
        if not path.startswith("/"):
            save_png(tmp_path / "data" / path, 100)
    return write(tmp_path / "data" / "labels.csv", "path,label\n" + "".join(f"{p},{lab}\n" for p, lab in rows))


def test_csv_paths_outside_the_root_are_refused_with_the_row(tmp_path):
    save_png(tmp_path / "elsewhere" / "x.png", 10)
    outside = save_png(tmp_path / "elsewhere" / "y.png", 10)
    csv = csv_data(tmp_path, [("a/0.png", "a"), ("../elsewhere/x.png", "a"), (str(outside), "b"), ("b/0.png", "b")])
    with pytest.raises(DataError) as info:
        list_csv(str(csv))
    text = str(info.value)
    assert "2 bad rows" in text, text
    assert "labels.csv:3: ../elsewhere/x.png is outside the CSV's root" in text, text
    assert f"labels.csv:4: {outside} is outside" in text and "allow_outside_root: true" in text, text
    samples, classes = list_csv(str(csv), allow_outside_root=True)
    assert len(samples) == 4 and classes == ["a", "b"]


def test_csv_containment_through_train_and_the_spec_key(tmp_path):
    csv_data(tmp_path, [("a/0.png", "a"), ("a/1.png", "a"), ("b/0.png", "b"), ("../x.png", "b")])
    save_png(tmp_path / "x.png", 200)
    spec = write(tmp_path / "s.yaml", tiny_spec("{type: csv, path: data/labels.csv}"))
    user_error(cli("train", spec, "--out", tmp_path / "runs"), "labels.csv:5: ../x.png is outside the CSV's root")
    assert not list((tmp_path / "runs").glob("*/last.pt"))
    from convspec.compiler.data.loading import load_dataset
    from convspec.specs import load_spec

    allowed = write(tmp_path / "ok.yaml", tiny_spec("{type: csv, path: data/labels.csv, allow_outside_root: true}"))
    data = load_dataset(load_spec(allowed), log=lambda _m: None)
    assert data.class_names == ["a", "b"]


def test_evaluate_refuses_csv_paths_outside_its_folder(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"))
    save_png(tmp_path / "x.png", 10)
    csv = csv_data(tmp_path, [("a/0.png", "a"), ("../x.png", "b")])
    user_error(cli("evaluate", model, csv), "labels.csv:3: ../x.png is outside", "relative to the CSV's folder")


# ------------------------------------------------- control characters in names

ESC_NAME = "x\x1b[2Jy"  # an escape sequence that clears the terminal


def test_a_csv_label_with_a_control_character_is_refused_with_its_row(tmp_path):
    csv = csv_data(tmp_path, [("a/0.png", "a"), ("a/1.png", "a"), ("b/0.png", ESC_NAME), ("b/1.png", "b")])
    spec = write(tmp_path / "s.yaml", tiny_spec("{type: csv, path: data/labels.csv}"))
    stderr = user_error(cli("train", spec, "--out", tmp_path / "runs"), "data.source.path: labels.csv:4: class name")
    assert "'x\\x1b[2Jy' holds a control character (U+001B)" in stderr and "\x1b" not in stderr
    assert not (tmp_path / "runs").exists()
    with pytest.raises(DataError, match="labels.csv:4: class name"):
        list_csv(str(csv))


def test_a_class_folder_with_a_control_character_is_refused_by_train_and_evaluate(tmp_path):
    image_folder(tmp_path / "data", classes=("a", ESC_NAME))
    spec = write(tmp_path / "s.yaml", tiny_spec(f"{{type: folder, path: {tmp_path / 'data'}}}"))
    stderr = user_error(cli("train", spec, "--out", tmp_path / "runs"), "class folder", "U+001B")
    assert "\x1b" not in stderr
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"))
    assert "\x1b" not in user_error(cli("evaluate", model, tmp_path / "data"), "class folder", "U+001B")


def test_a_model_whose_metadata_has_a_control_character_in_a_class_is_refused(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"), props={"convspec.classes": json.dumps(["a", ESC_NAME])})
    save_png(tmp_path / "img.png", 10)
    stderr = user_error(cli("predict", model, tmp_path / "img.png"), "malformed convspec metadata", "U+001B")
    assert "\x1b" not in stderr


def test_file_names_with_control_characters_are_printed_escaped(tmp_path):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"))
    good = save_png(tmp_path / "imgs" / f"{ESC_NAME}.png", 10)
    write(tmp_path / "imgs" / f"bad{ESC_NAME}.png", b"not an image")
    result = cli("predict", model, tmp_path / "imgs")
    assert result.exit_code == 1  # one input could not be predicted
    assert "\x1b" not in result.stdout and "\x1b" not in result.stderr
    assert "x\\x1b[2Jy.png" in result.stdout.replace("\n", "")
    assert f"bad{printable(ESC_NAME)}.png: not an image" in result.stderr
    # machine formats keep the name as it is: JSON escapes it, CSV quotes nothing it need not
    listed = json.loads(cli("predict", model, good, "--format", "json").stdout)
    assert listed[0]["source"] == str(good)


@pytest.mark.parametrize("value,says", [("20", "must be 8 to 16 (got 20)"), ("twelve", "must be an integer")])
def test_a_model_with_a_bad_bits_stored_is_refused(tmp_path, value, says):
    model = classifier_model(tmp_path / "m.onnx", ("a", "b"), props={"convspec.bits_stored": value})
    save_png(tmp_path / "img.png", 10)
    user_error(cli("predict", model, tmp_path / "img.png"), "m.onnx", "convspec.bits_stored", says)


def test_a_newline_in_a_file_name_stays_inside_its_line_and_its_table_row(tmp_path):
    """``bad\\nname.png``: train's skipped-image list and predict's table printed the name in two
    lines (ESC was escaped, newline was not); a message or a row is one line whatever the name."""
    from convspec.compiler.data.loading import load_dataset
    from convspec.specs import load_spec_text

    for i in range(4):
        for label, value in (("a", 10), ("b", 240)):
            save_png(tmp_path / "data" / label / f"{i}.png", value)
    write(tmp_path / "data" / "b" / "bad\nname.png", b"not an image")
    good = save_png(tmp_path / "data" / "a" / "good\nname.png", 10)
    spec = load_spec_text(
        f"version: 1\ntask: binary\ndata:\n  source: {{type: folder, path: {tmp_path / 'data'}}}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )
    lines: list[str] = []
    load_dataset(spec, log=lines.append)
    assert f"  {tmp_path / 'data' / 'b'}/bad\\nname.png: " in "\n".join(lines)
    assert not any(line.startswith("name.png") for line in "\n".join(lines).splitlines())

    model = classifier_model(tmp_path / "m.onnx", ("a", "b"))
    result = cli("predict", model, good)
    rows = [line for line in result.stdout.splitlines() if "name.png" in line]
    assert len(rows) == 1 and "good\\nname.png" in rows[0], result.stdout
    # evaluate's skipped-image warning: the same one line
    result = cli("evaluate", model, tmp_path / "data")
    assert result.exit_code == 0, result.stderr
    assert f"{tmp_path / 'data' / 'b'}/bad\\nname.png: " in result.stderr
    assert not any(line.startswith("name.png") for line in result.stderr.splitlines()), result.stderr
