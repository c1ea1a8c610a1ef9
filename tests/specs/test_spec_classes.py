"""The class order: numbers numerically, then names; the same order whatever the input's order."""

from __future__ import annotations

import itertools
import os

import pytest

from convspec.specs.classes import sort_names


def test_numbers_numerically_then_names():
    assert sort_names(["10", "2", "b", "A", "1"]) == ["1", "2", "10", "A", "b"]


@pytest.mark.parametrize("names", [["3", "03", "2", "10"], ["٣", "3", "03"], ["²", "①", "1", "a"]])
def test_order_does_not_depend_on_the_input_order(names):
    """'3', '03' and '٣' are all 3: a tie broken by their text; '²' and '①' are names, not numbers."""
    orders = {tuple(sort_names(p)) for p in itertools.permutations(names)}
    assert len(orders) == 1


def _folder_spec(root, task: str) -> str:
    return (
        f"version: 1\ntask: {task}\ndata:\n  source: {{type: folder, path: {root}}}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )


def test_validate_names_empty_class_folders_and_the_classes_a_binary_spec_found(tmp_path):
    """A stray empty folder beside the classes: validate said OK (multiclass), or "has 3" without
    which (binary), and train then refused the data. Images deeper down, or behind a link, count."""
    from PIL import Image

    from convspec.specs import SpecError, load_spec_text

    for name in ("cat", "dog", "deep/1/2"):
        (tmp_path / "data" / name).mkdir(parents=True)
    for name in ("cat/a.png", "dog/b.png", "deep/1/2/c.png"):
        Image.new("L", (8, 8)).save(tmp_path / "data" / name)
    (tmp_path / "data" / "unsorted").mkdir()
    (tmp_path / "data" / "unsorted" / "notes.txt").write_text("not an image")
    (tmp_path / "data" / "unsorted" / "loop").symlink_to(tmp_path / "data" / "unsorted")

    with pytest.raises(SpecError) as multi:
        load_spec_text(_folder_spec(tmp_path / "data", "multiclass"), "m.yaml")
    assert str(multi.value).endswith(f"class folder without images in {tmp_path / 'data'}: unsorted "
                                     "(remove it, or add its images; empty files do not count)")  # fmt: skip
    with pytest.raises(
        SpecError, match=r"binary needs exactly 2 classes; this spec has 4 \(cat, deep, dog, unsorted\)"
    ):
        load_spec_text(_folder_spec(tmp_path / "data", "binary"), "b.yaml")

    (tmp_path / "data" / "unsorted" / "notes.txt").unlink()
    (tmp_path / "more").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "more" / "e.png")
    (tmp_path / "data" / "unsorted" / "elsewhere").symlink_to(tmp_path / "more")  # a link to images
    assert load_spec_text(_folder_spec(tmp_path / "data", "multiclass"), "m.yaml").num_classes() == 4


def test_a_csv_sources_class_names_follow_edits_of_the_csv(tmp_path):
    """The names are remembered between the checks that ask for them, but never past an edit."""
    import os

    from convspec.specs import load_spec_text

    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("path,label\na.png,cat\nb.png,dog\n")
    text = (
        f"version: 1\ntask: multiclass\ndata:\n  source: {{type: csv, path: {csv_path}}}\n"
        "input: {channels: 1, size: [8, 8]}\nmodel:\n  layers: [{type: flatten}]\n"
    )
    assert load_spec_text(text).num_classes() == 2
    before = os.stat(csv_path)
    csv_path.write_text("path,label\na.png,cat\nb.png,eel\n")  # same size, same inode
    os.utime(csv_path, ns=(before.st_atime_ns, before.st_mtime_ns + 1))
    assert load_spec_text(text).num_classes() == 2
    from convspec.specs.classes import static_class_names

    assert static_class_names(load_spec_text(text)) == ["cat", "eel"]
    csv_path.write_text("path,label\na.png,cat\nb.png,dog\nc.png,fox\n")
    assert load_spec_text(text).num_classes() == 3


def test_a_class_mismatch_names_hidden_folders_and_unicode_forms(tmp_path):
    """Both looked like no difference at all: ``listed but not in the data: .hidden`` beside the
    folder, and ``scratch é`` named on both sides (a macOS folder name is decomposed)."""
    import unicodedata

    from PIL import Image

    from convspec.specs import SpecError, load_spec_text

    nfd = unicodedata.normalize("NFD", "scratch é")
    for name in ("ok", ".hidden", nfd):
        (tmp_path / "data" / name).mkdir(parents=True)
        Image.new("L", (8, 8)).save(tmp_path / "data" / name / "a.png")
    text = _folder_spec(tmp_path / "data", "multiclass").replace("task:", "classes: [ok, .hidden, scratch é]\ntask:")
    with pytest.raises(SpecError) as info:
        load_spec_text(text)
    message = str(info.value)
    assert "folders whose names start with '.' are skipped, as hidden: .hidden" in message
    assert "the same letters in another Unicode form (NFC against NFD" in message


def test_an_unreadable_class_folder_is_called_unreadable_not_empty(tmp_path, monkeypatch):
    """As root every folder reads, so the unreadable one is simulated where the rule asks."""
    from PIL import Image

    from convspec.specs import SpecError, load_spec_text, rules

    for name in ("cat", "dog"):
        (tmp_path / "data" / name).mkdir(parents=True)
    Image.new("L", (8, 8)).save(tmp_path / "data" / "cat" / "a.png")
    real_access = os.access
    monkeypatch.setattr(rules.os, "access", lambda p, m: not str(p).endswith("dog") and real_access(p, m))
    with pytest.raises(SpecError, match=r"class folder without images in .*: dog \(unreadable\)"):
        load_spec_text(_folder_spec(tmp_path / "data", "multiclass"))
