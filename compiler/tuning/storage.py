"""The study's database: the ``--storage`` URL opened (SQLite by default, PostgreSQL to share a study
between machines), with its failures as one line, and the study created, or joined when it
searches the same spec and space.
"""

from __future__ import annotations

import difflib
import os
import time
import warnings
from pathlib import Path
from typing import Any

from convspec.specs import ConvspecError, Spec
from convspec.specs.readfile import describe_mode

from .errors import TuneError


def load_optuna():
    """optuna, imported when a search starts (it costs start-up), without its ExperimentalWarnings."""
    import optuna

    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


def open_storage(url: str | None, folder: Path):
    """An RDBStorage for ``url`` (default: SQLite in the tune folder), or a clear TuneError."""
    import sqlalchemy
    from optuna.storages import RDBStorage
    from sqlalchemy.engine import make_url

    if url is None:
        url = "sqlite:///" + str((folder / "study.db").resolve())
    elif "://" not in url:
        url = "sqlite:///" + str(Path(url).expanduser().resolve())
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as e:
        raise TuneError(
            f"--storage {url}: not a database URL ({e}); use sqlite:///study.db or postgresql://user:password@host/db"
        ) from None
    if parsed.drivername == "postgresql" and _psycopg3_only():
        # Why: SQLAlchemy's plain postgresql:// means psycopg2; with only psycopg 3 installed
        # (convspec's dev extra) the same server is reached as postgresql+psycopg://
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    engine_kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        db = parsed.database
        if db and db != ":memory:":
            if os.path.exists(db) and not os.path.isfile(db):  # Why: SQLite only says "disk I/O error"
                what = describe_mode(os.stat(db).st_mode)
                raise TuneError(f"--storage {shown}: {db} is {what}, not a SQLite database file")
            try:
                Path(db).parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TuneError(
                    f"--storage {shown}: cannot create the folder for the SQLite file: {e.strerror or e}"
                ) from None
        # Why: processes sharing one SQLite file wait for its lock instead of failing at once.
        engine_kwargs["connect_args"] = {"timeout": 60}
    elif backend in ("postgresql", "mysql"):
        engine_kwargs["connect_args"] = {"connect_timeout": 10}
    last = None
    for attempt in range(5):
        try:
            # Why heartbeat: a trial of a killed process is marked FAIL by the next process to
            # start a trial, instead of staying RUNNING in a shared study forever.
            return RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=60, grace_period=180), shown
        except ImportError as e:
            hint = {"postgresql": "pip install psycopg2-binary", "mysql": "pip install pymysql"}.get(
                backend, "install the driver"
            )
            raise TuneError(
                f"--storage {shown}: the {backend} database driver is not installed ({e.name or 'import failed'}); "
                f"{hint}"
            ) from None
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as e:
            last = e
            text = str(getattr(e, "orig", None) or e)
            if isinstance(e, sqlalchemy.exc.IntegrityError) or "locked" in text or "already exists" in text:
                time.sleep(0.5 + attempt)  # processes creating the tables at once: the loser retries
                continue
            break
        except (sqlalchemy.exc.SQLAlchemyError, ValueError) as e:
            last = e
            break
    raise TuneError(f"--storage {shown}: cannot open the study database: {_db_reason(last)}")


def storage_failure(e: Exception, shown: str) -> Exception:
    """The one-line error of a study storage that failed during the search (a full disk, a lost server).

    Optuna reports a failed write of a trial's state as ``StorageInternalError`` or, when marking
    a failed trial FAIL fails too, as ``AssertionError`` on top; the chain holds the database's own
    reason and the trial's failure (often the same full disk). Anything else is returned as it is.
    """
    import sqlalchemy

    chain, seen = [], e
    while seen is not None and len(chain) < 20:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    trial_error = next((x for x in chain if isinstance(x, ConvspecError)), None)
    db_error = next((x for x in chain if isinstance(x, sqlalchemy.exc.SQLAlchemyError)), None)
    if isinstance(e, ConvspecError) or db_error is None:
        return e
    return TuneError(
        f"--storage {shown}: the study database cannot be written ({_db_reason(db_error)[:200]})"
        + (f"; the trial had stopped with: {trial_error}" if trial_error is not None else "")
        + "; with room again, run the same command to continue the study"
    )


def _db_reason(e: BaseException) -> str:
    """The first line of a database error: the driver's own (``orig``) where SQLAlchemy wraps one."""
    text = str(getattr(e, "orig", None) or e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _psycopg3_only() -> bool:
    """Whether psycopg (3) is installed and psycopg2 is not."""
    import importlib.util

    return importlib.util.find_spec("psycopg2") is None and importlib.util.find_spec("psycopg") is not None


def _create_or_join(optuna, store, study_name: str, direction: str, shown: str) -> bool:
    """Create the study; True if another process had created it (we join)."""
    for attempt in range(5):
        try:
            optuna.create_study(storage=store, study_name=study_name, direction=direction)
            return False
        except optuna.exceptions.DuplicatedStudyError:
            return True
        except optuna.exceptions.StorageInternalError as e:
            # Why: two processes creating one SQLite study at once can collide on the file's
            # write lock; SQLite reports that at once (no busy wait) to avoid a deadlock.
            cause = str(e.__cause__ or e)
            if "locked" not in cause or attempt == 4:
                first = cause.splitlines()[0][:200] if cause else type(e).__name__
                raise TuneError(f"{shown}: the study storage cannot be written ({first})") from None
            time.sleep(0.2 * (attempt + 1))
    return False  # pragma: no cover


def _same_search(spec: Spec) -> str:
    """What a study's trials must share to be compared: the spec but its name and trial budget."""
    budget = spec.tune.model_copy(update={"trials": 1, "timeout": None})
    return spec.model_copy(update={"name": "study", "tune": budget}).to_yaml()


def open_study(optuna, store, shown: str, study_name: str, spec: Spec, grid: dict | None):
    """Create the study, or join the one of that name; returns (study, joined)."""
    t = spec.tune
    direction = t.resolved_direction
    joined = _create_or_join(optuna, store, study_name, direction, shown)
    study = optuna.load_study(study_name=study_name, storage=store)
    if study.direction.name.lower() != direction:
        raise TuneError(
            f"study {study_name!r} in {shown} was created to {study.direction.name.lower()}, "
            f"but this spec's tune says {direction} {t.metric}; pick another --study name"
        )
    # Why: trials of another spec or space would be ranked together (best.yaml mixing a trial's values
    # into a spec they were never trained with), and optuna refuses changed choices with a traceback
    mine, theirs = _same_search(spec), study.user_attrs.get("convspec_spec")
    if theirs is None and not joined:
        study.set_user_attr("convspec_spec", mine)
    elif theirs is not None and theirs != mine:
        lines = difflib.unified_diff(theirs.splitlines(), mine.splitlines(), "study", "given", lineterm="", n=0)
        diff = [d for d in lines if d[:1] in "+-" and d[:3] not in ("+++", "---")]
        raise TuneError(
            f"study {study_name!r} in {shown} was made from another spec or tune.space; its trials cannot be "
            "ranked with this one's: pick another --study name\n" + "\n".join(diff[:20])
        )
    # Why: a fresh study is reproducible from training.seed; a process joining or resuming
    # one draws a fresh seed, or it would repeat the trials already run with that seed.
    seed = None if joined else spec.training.seed
    if grid is not None:
        sampler = optuna.samplers.GridSampler(grid, seed=seed)
    elif t.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(10, max(2, t.trials // 3)))
    if t.pruner == "median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, spec.training.epochs // 3))
    else:
        pruner = optuna.pruners.NopPruner()
    return optuna.load_study(study_name=study_name, storage=store, sampler=sampler, pruner=pruner), joined
