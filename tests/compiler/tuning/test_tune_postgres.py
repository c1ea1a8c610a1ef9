"""Two ``convspec tune`` workers share one study in a real PostgreSQL server: no trial lost or repeated.

The server is a throw-away cluster made with the distribution's binaries (``initdb``,
``pg_ctl``) in a temporary folder, listening on a free loopback port, and stopped at the end.
As root (CI), the cluster belongs to the unprivileged ``postgres`` user (PostgreSQL refuses to
run as root), through ``runuser``. Where no server can be started the test is skipped with the
reason, and a warning says so in the summary: never silently.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import pytest

# Threes against eights at 8x8, one tiny conv: a trial trains in about a second (as test_tune.py's).
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
tune:
  sampler: random
  pruner: none
  space:
    training.optimizer.lr: {type: float, low: 0.001, high: 0.05, log: true}
"""
PG_USER = "postgres"  # the distribution's server account (Debian's postgresql package creates it)


def _skip(reason: str):
    warnings.warn(f"PostgreSQL tuning test skipped: {reason}", UserWarning, stacklevel=2)
    pytest.skip(f"PostgreSQL tuning test skipped: {reason}")


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    """``postgresql://convspec@127.0.0.1:PORT/convspec`` of a fresh server, stopped afterwards."""
    bin_dir = _bin_dir()
    if bin_dir is None or not (bin_dir / "pg_ctl").exists():
        _skip("no PostgreSQL server binaries (initdb, pg_ctl); install the distribution's postgresql package")
    try:
        import psycopg
    except ImportError:
        _skip("the psycopg driver is not installed (pip install 'psycopg[binary]')")
    as_user: list[str] = []
    folder = Path(tempfile.mkdtemp(prefix="convspec-pg-"))
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam(PG_USER)
        except KeyError:
            shutil.rmtree(folder, ignore_errors=True)
            _skip(f"running as root and there is no {PG_USER!r} user to own the cluster (initdb refuses root)")
        os.chown(folder, account.pw_uid, account.pw_gid)
        as_user = ["runuser", "-u", PG_USER, "--"]
    data, log, port = folder / "data", folder / "server.log", _free_port()

    def run(*cmd: str) -> subprocess.CompletedProcess:
        return subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)

    steps = [
        (str(bin_dir / "initdb"), "-D", str(data), "-U", "convspec", "--auth=trust", "-E", "UTF8", "--no-sync"),
        (
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(log),
            "-w",
            "-t",
            "60",
            "-o",
            f"-c listen_addresses=127.0.0.1 -p {port} -k {folder} -c fsync=off",
            "start",
        ),
    ]
    for cmd in steps:
        done = run(*cmd)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            server = log.read_text()[-300:] if log.exists() else ""
            shutil.rmtree(folder, ignore_errors=True)
            _skip(f"{Path(cmd[0]).name} failed: {tail[0]} {server}".strip())
    try:
        with psycopg.connect(f"host=127.0.0.1 port={port} user=convspec dbname=postgres", autocommit=True) as conn:
            conn.execute("CREATE DATABASE convspec")
        yield f"postgresql://convspec@127.0.0.1:{port}/convspec"
    finally:
        run(str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.slow
def test_two_workers_share_one_postgres_study(tmp_path, postgres_url):
    import optuna

    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CONVSPEC_CACHE": str(tmp_path / "cache")}
    asked = [2, 3]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "convspec.compiler",
                "tune",
                str(path),
                "--trials",
                str(n),
                "--no-retrain",
                "--storage",
                postgres_url,  # plain postgresql://, as the README writes it
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
        for k, n in enumerate(asked)
    ]
    outputs = [p.communicate(timeout=400)[0] for p in procs]
    for p, output in zip(procs, outputs, strict=True):
        assert p.returncode == 0, output
    trials = optuna.load_study(study_name="shared", storage=postgres_url.replace("://", "+psycopg://", 1)).trials
    seen = [(t.number, t.state.name, t.params) for t in trials] + outputs  # printed if an assertion fails
    numbers = [t.number for t in trials]
    assert len(trials) == sum(asked) and sorted(numbers) == list(range(sum(asked))), seen  # none lost or repeated
    assert all(t.state.name == "COMPLETE" for t in trials), seen
    assert len({t.params["training.optimizer.lr"] for t in trials}) == sum(asked), seen
    assert "postgresql+psycopg://convspec@127.0.0.1" in (tmp_path / "worker0" / "shared-tune" / "tune.json").read_text()
