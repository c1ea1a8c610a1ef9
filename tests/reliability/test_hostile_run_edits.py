"""Run folders edited by hand between commands: each edit is refused before any epoch or export, by
the file's name, and the folder is left as it was; or, where the edit is harmless, the command works.

Found by a sweep over damaged copies of real runs: resume used to train first and fail at the
export (rewriting the run's checkpoints and metrics), accept another run's checkpoint, or split the
data anew when split.json was gone.
"""

from __future__ import annotations

import json
import shutil

import torch

from .conftest import cli, files_of, user_error

DEEP = "[" * 100_000 + "]" * 100_000  # past the recursion limit: json.loads raises RecursionError


def resume_refused(run, *words: str, max_lines: int = 4, extra: tuple = ()) -> str:
    before = files_of(run)
    stderr = user_error(cli("train", "--resume", run, *extra), *words, max_lines=max_lines)
    assert files_of(run) == before, "the run folder changed: the refusal came after training"
    return stderr


def test_resume_refuses_an_emptied_or_edited_spec_yaml_before_training(tiny_run):
    spec = tiny_run / "spec.yaml"
    text = spec.read_text("utf-8")
    spec.write_text(text.replace("filters: 2", "filters: 3"), "utf-8")
    resume_refused(tiny_run, "spec.yaml", "differs", "last.pt", max_lines=12, extra=("--set", "training.epochs=2"))
    spec.write_text("", "utf-8")
    resume_refused(tiny_run, "spec.yaml", "empty", extra=("--set", "training.epochs=2"))


def test_resume_refuses_a_missing_split_json(tiny_run):
    (tiny_run / "split.json").unlink()
    resume_refused(tiny_run, "split.json", "missing", extra=("--set", "training.epochs=2"))


def test_resume_refuses_a_best_pt_of_another_run(tiny_run):
    state = torch.load(tiny_run / "best.pt", weights_only=True)
    state["spec"] = state["spec"].replace("filters: 2", "filters: 4")
    torch.save(state, tiny_run / "best.pt")
    resume_refused(tiny_run, "best.pt and last.pt", "not the same run", max_lines=12)


def test_resume_refuses_fewer_epochs_than_last_pt_has_trained(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    state["epoch"] = 3  # as if trained 3 epochs; the spec says 1
    state["history"] = [dict(state["history"][0], epoch=e) for e in (1, 2, 3)]
    torch.save(state, tiny_run / "last.pt")
    resume_refused(tiny_run, "has trained 3 epochs", "training.epochs=N where N > 3")


def test_resume_refuses_an_output_that_a_folder_stands_in_for_before_training(tiny_run):
    (tiny_run / "metrics.jsonl").unlink()
    (tiny_run / "metrics.jsonl").mkdir()
    resume_refused(tiny_run, "metrics.jsonl", "a folder", extra=("--set", "training.epochs=2"))


def test_a_broken_spec_inside_last_pt_is_named_as_last_pt(tiny_run):
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    state["spec"] = "::: ["
    torch.save(state, tiny_run / "last.pt")
    stderr = resume_refused(tiny_run, "last.pt[spec]")
    assert "spec.yaml" not in stderr


def test_evaluate_run_with_a_bad_spec_yaml_or_no_split_json(run_copy):
    (run_copy / "spec.yaml").write_bytes(b"ver\x00sion: 1\xff\xfe\n")
    user_error(cli("evaluate", run_copy / "model.onnx", run_copy), "spec.yaml", "binary file")
    (run_copy / "spec.yaml").unlink()
    (run_copy / "split.json").unlink()
    user_error(cli("evaluate", run_copy / "model.onnx", run_copy), "a run folder without split.json")


def test_evaluate_run_whose_spec_has_another_input_size_names_both(run_copy):
    spec = run_copy / "spec.yaml"
    spec.write_text(spec.read_text("utf-8").replace("size: [12, 12]", "size: [16, 16]"), "utf-8")
    assert "[16, 16]" in spec.read_text("utf-8")
    user_error(cli("evaluate", run_copy / "model.onnx", run_copy), "spec.yaml", "[1, 16, 16]", "[1, 12, 12]")


def test_export_takes_a_results_json_whose_test_entry_was_edited(run_copy):
    results = json.loads((run_copy / "results.json").read_text("utf-8"))
    results["test"] = 5
    (run_copy / "results.json").write_text(json.dumps(results), "utf-8")
    done = cli("export", run_copy)
    assert done.exit_code == 0, done.stderr
    assert "Traceback" not in done.stderr
    # one level down: named by key, never "could not update report.md (AttributeError: 'str' object ...)"
    results["test"] = {"metrics": "x"}
    (run_copy / "results.json").write_text(json.dumps(results), "utf-8")
    done = cli("export", run_copy)
    assert done.exit_code == 0 and "results.json: test.metrics: expected a mapping (got str)" in done.stderr
    assert "Error" not in done.stderr, done.stderr


def test_deeply_nested_json_in_metrics_jsonl_and_model_metadata(run_copy, tmp_path):
    import onnx

    from .conftest import save_png

    with open(run_copy / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(DEEP + "\n")
    user_error(cli("compare", run_copy, cwd=tmp_path), "metrics.jsonl", "nested too deeply")
    model = onnx.load(run_copy / "model.onnx")
    for prop in model.metadata_props:
        if prop.key == "convspec.input_size":
            prop.value = DEEP[:20_000]  # within the metadata's size limit, still too deep to parse
    onnx.save(model, tmp_path / "deep.onnx")
    user_error(cli("predict", tmp_path / "deep.onnx", save_png(tmp_path / "x.png")), "deep.onnx", "input_size")


def test_cross_validation_folders_are_named_or_expanded(tiny_run, tmp_path):
    """A ``--folds`` folder holds cv.json and fold-N run folders: compare takes its folds, the
    commands that take one run say which to give."""
    cv = tmp_path / "cv"
    cv.mkdir()
    shutil.copytree(tiny_run, cv / "fold-1")
    shutil.copytree(tiny_run, cv / "fold-2")
    (cv / "cv.json").write_text("{}", "utf-8")
    (cv / ".convspec-run").write_text("", "utf-8")
    done = cli("compare", cv, "--format", "json", cwd=tmp_path)
    assert done.exit_code == 0, done.stderr
    assert [r["name"] for r in json.loads(done.stdout)["runs"]] == ["fold-1", "fold-2"]
    user_error(cli("export", cv), "cross-validation folder", "fold-1")
    user_error(cli("train", "--resume", cv), "cross-validation folder", "--folds K --resume", "fold-1")
    user_error(cli("train", "--folds", "2", "--resume", tmp_path), "not a cross-validation folder", "--folds K")
    (cv / "cv.json").unlink()  # interrupted before cv.json: its folds are runs all the same
    user_error(cli("export", cv), "cross-validation folder", "fold-1")
    done = cli("compare", cv, "--format", "json", cwd=tmp_path)
    assert done.exit_code == 0 and len(json.loads(done.stdout)["runs"]) == 2, done.stderr


def test_export_names_non_finite_weights_and_repeated_class_names_in_the_checkpoint(tiny_run):
    best = tiny_run / "best.pt"
    state = torch.load(best, weights_only=True)
    name = next(k for k, t in state["model"].items() if t.is_floating_point())
    state["model"][name] = torch.full_like(state["model"][name], float("nan"))
    torch.save(state, best)
    user_error(cli("export", tiny_run), "best.pt", "NaN or infinite", name)
    state = torch.load(tiny_run / "last.pt", weights_only=True)
    state["class_names"] = ["a", "a"]
    torch.save(state, best)
    user_error(cli("export", tiny_run), "best.pt", "class_names", "repeats a")


def test_a_model_returning_nan_is_refused_by_evaluate_and_predict(run_copy, tmp_path):
    """A graph whose output is NaN used to be scored as label 0 and printed as invalid JSON."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    from .conftest import save_png

    model = onnx.load(run_copy / "model.onnx")
    out = model.graph.output[0].name
    for node in model.graph.node:
        node.output[:] = [o + "_pre" if o == out else o for o in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array([np.nan], np.float32), "nan_c"))
    model.graph.node.append(helper.make_node("Mul", [out + "_pre", "nan_c"], [out]))
    onnx.save(model, tmp_path / "nan.onnx")
    user_error(cli("evaluate", tmp_path / "nan.onnx", run_copy), "nan.onnx", "NaN or infinite")
    png = save_png(tmp_path / "x.png")
    user_error(cli("predict", tmp_path / "nan.onnx", png, "--format", "json"), "nan.onnx", "NaN or infinite")
