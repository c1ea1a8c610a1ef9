"""``convspec tune``: Optuna over ``tune.space``, judged on val, the winner written and retrained."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from convspec.compiler.cli import app
from convspec.compiler.tuning.study import TuneError, tune
from convspec.specs import SpecError, load_spec

REPO = Path(__file__).resolve().parents[3]

# Threes against eights at 8x8, one tiny conv: a trial trains in about a second.
TINY = """\
version: 1
name: tiny
task: binary
data:
  source: {type: builtin, name: digits, classes: [3, 8]}
  split: {train: 0.6, val: 0.2, test: 0.2, seed: 0}
input: {channels: 1, size: [8, 8]}
model:
  layers:
    - {type: conv, filters: 4, kernel: 3, activation: relu}
    - {type: max_pool, size: 2}
    - {type: global_avg_pool}
training: {epochs: 1, batch_size: 32, optimizer: {type: adam, lr: 0.01}}
"""


def write_spec(tmp_path: Path, tune_yaml: str = "", name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(TINY + tune_yaml)
    return path


@pytest.fixture(autouse=True)
def _quiet_threads(monkeypatch, tmp_path):
    monkeypatch.setenv("CONVSPEC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def quiet(_msg: str) -> None:
    pass


# ---------------------------------------------------------------- errors before any trial


@pytest.mark.parametrize(
    "space, expected",
    [
        ("training.optimizer.lrr: {type: float, low: 0.001, high: 0.1}", "not a key of this spec"),
        ("training.batch_size: {type: choice, values: []}", "values"),
        ("training.optimizer.lr: {type: float, low: 0.1, high: 0.001}", "low must be <= high"),
        ("model.layers.0.filters: {type: int, low: 0, high: 8}", "does not validate"),
    ],
)
def test_bad_space_is_a_spec_error_at_load(tmp_path, space, expected):
    path = write_spec(tmp_path, f"tune:\n  space:\n    {space}\n")
    with pytest.raises(SpecError) as e:
        load_spec(path)
    assert "tune.space" in str(e.value) and expected in str(e.value)
    assert f"{path}:" in str(e.value)  # FILE:LINE:COL


@pytest.mark.parametrize(
    "tune_yaml, storage, expected",
    [
        ("", None, "has no tune section"),
        ("tune: {trials: 2}\n", None, "tune.space is empty"),
        (
            "tune:\n  sampler: grid\n  space:\n    training.optimizer.lr: {type: float, low: 0.001, high: 0.1}\n",
            None,
            "grid sampler needs finite values",
        ),
        (
            "tune:\n  metric: val_auc\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n",
            None,
            "add auc to training.metrics",
        ),
        (
            "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n",
            "postgresql://user@127.0.0.1:1/x",
            "--storage",
        ),
        ("tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n", "not-a-url://", "--storage"),
        (
            "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n",
            "FILE/sub/study.db",
            "--storage",
        ),
        (
            "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n",
            "DIR",
            "is a folder, not a SQLite database file",
        ),
        (
            "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n",
            "FIFO",
            "is a FIFO (named pipe), not a SQLite database file",  # SQLite itself: "disk I/O error"
        ),
    ],
)
def test_tune_refuses_before_any_trial(tmp_path, tune_yaml, storage, expected):
    path = write_spec(tmp_path, tune_yaml)
    if storage and storage.startswith("FILE"):
        (tmp_path / "a-file").write_text("not a folder")
        storage = "sqlite:///" + str(tmp_path / "a-file" / "sub" / "study.db")
    elif storage == "DIR":  # the database "file" is a folder
        storage = "sqlite:///" + str(tmp_path)
    elif storage == "FIFO":
        os.mkfifo(tmp_path / "study.db")
        storage = str(tmp_path / "study.db")
    out = tmp_path / "runs"
    with pytest.raises(TuneError) as e:
        tune(path, storage=storage, out=out, log=quiet, progress=False)
    assert expected in str(e.value)
    assert not list(out.glob("*/trials")), "no trial may start"


@pytest.mark.parametrize("timeout", [0, -5, 1e-9])
def test_a_timeout_that_allows_no_trial_is_refused_before_any(tmp_path, timeout):
    """``--timeout 0`` started a trial, stopped it and failed with "no trial completed", leaving the folder."""
    path = write_spec(tmp_path, "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n")
    with pytest.raises(TuneError, match=f"--timeout must be at least 1 s \\(got {timeout}\\)"):
        tune(path, timeout=timeout, out=tmp_path / "runs", log=quiet, progress=False)
    assert not (tmp_path / "runs").exists()


def test_storage_error_hides_password(tmp_path):
    path = write_spec(tmp_path, "tune:\n  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n")
    with pytest.raises(TuneError) as e:
        tune(path, storage="postgresql://user:s3cret@127.0.0.1:1/x", out=tmp_path, log=quiet)
    assert "s3cret" not in str(e.value)


def test_cli_tune_without_tune_section_exits_1(tmp_path):
    path = write_spec(tmp_path)
    result = CliRunner().invoke(app, ["tune", str(path), "--out", str(tmp_path / "runs")])
    assert result.exit_code == 1
    assert "has no tune section" in result.output
    assert "Traceback" not in result.output


# ---------------------------------------------------------------------------- studies


def test_tiny_study_writes_best_yaml_that_trains(tmp_path, monkeypatch):
    from convspec.compiler.training.loop import train

    path = write_spec(
        tmp_path,
        """\
tune:
  trials: 3
  pruner: none
  space:
    training.optimizer.lr: {type: float, low: 0.002, high: 0.05, log: true}
    input.size: {type: choice, values: [[8, 8], [12, 12]]}
""",
    )
    log: list[str] = []
    result = tune(path, out=tmp_path / "runs", log=log.append, progress=False)
    folder = tmp_path / "runs" / "tiny-tune"
    assert result.folder == folder
    for name in ("study.db", "best.yaml", "trials.csv", "history.png", "importance.png", "tune.json"):
        assert (folder / name).is_file(), name
    assert [r["state"] for r in result.trials] == ["COMPLETE"] * 3
    # Trial 0 is the spec as written, so tuning never reports worse than no tuning.
    assert result.trials[0]["values"] == {"training.optimizer.lr": 0.01, "input.size": [8, 8]}
    assert result.best_value == max(r["value"] for r in result.trials)
    # The test split never guides the search: trials do not even evaluate it.
    for r in result.trials:
        assert "test" not in json.loads((Path(r["run"]) / "results.json").read_text())
    rows = (folder / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,value,")
    assert "params_input.size" in rows[0] and rows[0].endswith(",state")
    assert any("trials (3 complete)" in line for line in log)

    best = load_spec(folder / "best.yaml")
    assert best.tune is None and best.name == "tiny"
    assert best.training.optimizer.lr == pytest.approx(result.best_values["training.optimizer.lr"])
    assert list(best.input.size) == result.best_values["input.size"]
    # The retrained winner: test metrics evaluated once, after the search, and exported.
    assert result.run is not None and (result.run.path / "model.onnx").is_file()
    assert 0.0 <= result.test["accuracy"] <= 1.0
    summary = json.loads((folder / "tune.json").read_text())
    assert summary["best"]["trial"] == result.best_number and summary["test"] == result.test
    # best.yaml trains as it is (convspec train best.yaml), from another working directory.
    monkeypatch.chdir(tmp_path)
    run = train(folder / "best.yaml", out=tmp_path / "again", export=False, progress=False, log=quiet)
    assert len(run.history()) == 1


def test_invalid_trial_fails_and_grid_search_goes_on(tmp_path):
    path = write_spec(
        tmp_path,
        """\
tune:
  sampler: grid
  space:
    model.layers.1.size: {type: choice, values: [16, 2]}     # 16: an 8x8 image pooled to 0x0
""",
    )
    result = tune(path, trials=5, out=tmp_path / "runs", retrain=False, log=quiet, progress=False)
    # The grid has 2 points: the study stops there even though 5 trials were allowed.
    by_size = {r["values"]["model.layers.1.size"]: r for r in result.trials}
    assert sorted(by_size) == [2, 16] and len(result.trials) == 2
    assert by_size[16]["state"] == "FAIL" and "0x0 pixels" in by_size[16]["note"]
    assert by_size[2]["state"] == "COMPLETE"
    assert result.best_values == {"model.layers.1.size": 2}
    assert result.run is None and result.test is None

    import optuna

    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{tmp_path / 'runs' / 'tiny-tune' / 'study.db'}")
    failed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(failed) == 1 and "model.layers[1]" in failed[0].user_attrs["error"]


def test_running_again_continues_the_study(tmp_path):
    path = write_spec(
        tmp_path,
        """\
tune:
  sampler: random
  space:
    training.batch_size: {type: choice, values: [16, 32, 64]}
""",
    )
    tune(path, trials=1, out=tmp_path / "runs", retrain=False, log=quiet)
    result = tune(path, trials=1, out=tmp_path / "runs", retrain=False, log=quiet)
    assert [r["number"] for r in result.trials] == [0, 1]


def test_direction_mismatch_with_existing_study_is_refused(tmp_path):
    space = "  space:\n    training.batch_size: {type: choice, values: [16, 32]}\n"
    tune(write_spec(tmp_path, "tune:\n  trials: 1\n" + space), out=tmp_path / "runs", retrain=False, log=quiet)
    other = write_spec(tmp_path, "tune:\n  metric: val_loss\n" + space, name="tiny2.yaml")
    with pytest.raises(TuneError, match="was created to maximize"):
        tune(other, study_name="tiny", out=tmp_path / "runs", log=quiet)


@pytest.mark.slow
def test_two_processes_share_one_sqlite_study(tmp_path):
    path = write_spec(
        tmp_path,
        """\
tune:
  sampler: random
  pruner: none
  space:
    training.optimizer.lr: {type: float, low: 0.001, high: 0.05, log: true}
""",
    )
    db = tmp_path / "shared" / "study.db"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "convspec.compiler",
                "tune",
                str(path),
                "--trials",
                "2",
                "--no-retrain",
                "--storage",
                f"sqlite:///{db}",
                "--study",
                "shared",
                "--out",
                str(tmp_path / f"worker{k}"),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for k in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output
    import optuna

    trials = optuna.load_study(study_name="shared", storage=f"sqlite:///{db}").trials
    seen = [(t.number, t.state.name, t.params) for t in trials] + outputs  # printed if an assertion fails
    assert sorted(t.number for t in trials) == [0, 1, 2, 3], seen
    assert all(t.state.name == "COMPLETE" for t in trials), seen
    assert len({t.params["training.optimizer.lr"] for t in trials}) == 4, seen  # the joiner draws its own seed
    assert all((tmp_path / f"worker{k}" / "shared-tune" / "best.yaml").is_file() for k in range(2))


def test_a_study_creation_that_meets_a_locked_sqlite_file_retries(tmp_path, monkeypatch):
    """SQLite refuses a colliding writer at once ("database is locked"); creating the study retries."""
    import optuna
    import sqlalchemy

    from convspec.compiler.tuning import storage

    store = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    real, calls = optuna.create_study, []

    def locked_once(**kwargs):
        calls.append(kwargs["study_name"])
        if len(calls) == 1:
            locked = sqlalchemy.exc.OperationalError("INSERT", {}, Exception("database is locked"))
            raise optuna.exceptions.StorageInternalError("commit failed") from locked
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", locked_once)
    assert storage._create_or_join(optuna, store, "s", "maximize", "store") is False  # created, on the second try
    assert calls == ["s", "s"]
    assert storage._create_or_join(optuna, store, "s", "maximize", "store") is True  # now it exists: join
    assert [s.study_name for s in optuna.get_all_study_summaries(store)] == ["s"]


def test_joining_a_study_of_another_spec_or_space_is_refused_with_the_difference(tmp_path):
    """Its trials would be ranked with this spec's (best.yaml mixing them), and optuna refused
    changed choices with a traceback."""
    space = "tune:\n  space:\n    training.batch_size: {type: choice, values: [%s]}\n"
    db = f"sqlite:///{tmp_path / 'study.db'}"
    first = write_spec(tmp_path, space % "16, 32")
    tune(first, trials=1, storage=db, study_name="shared", out=tmp_path / "a", retrain=False, log=quiet, progress=False)
    tune(first, trials=1, storage=db, study_name="shared", out=tmp_path / "b", retrain=False, log=quiet, progress=False)
    other = tmp_path / "other"
    other.mkdir()
    changed = write_spec(other, space % "16, 32, 64")
    with pytest.raises(TuneError, match="made from another spec or tune.space") as e:
        tune(changed, trials=1, storage=db, study_name="shared", out=tmp_path / "c", log=quiet, progress=False)
    assert "64" in str(e.value)


def test_a_study_database_that_fills_up_mid_search_is_one_line(tmp_path, monkeypatch):
    """A full disk under study.db (the default storage sits in --out): optuna's failed write of the
    trial's end (then its own AssertionError on top) becomes one TuneError with SQLite's reason."""
    import optuna
    import sqlalchemy

    from convspec.compiler.tuning.study import TuneError

    path = write_spec(tmp_path, "tune:\n  space:\n    training.optimizer.lr: {type: float, low: 0.001, high: 0.1}\n")

    def full(*_a, **_k):
        reason = sqlalchemy.exc.OperationalError("UPDATE trials", {}, Exception("database or disk is full"))
        raise optuna.exceptions.StorageInternalError("An exception is raised during the commit.") from reason

    monkeypatch.setattr(optuna.storages.RDBStorage, "set_trial_state_values", full)
    with pytest.raises(
        TuneError, match=r"study\.db: the study database cannot be written \(database or disk is full\)"
    ):
        tune(path, trials=1, out=tmp_path / "runs", retrain=False, log=quiet)
