"""Run a DAG end to end under ``airflow dags test`` in a subprocess, against a throwaway Airflow.

``DagTestRunner`` prepares an ``AIRFLOW_HOME`` with Airflow's embedded SQLite database
(``airflow db migrate`` once per home), then runs ``airflow dags test <dag_id> -c '<conf>'`` in a
fresh process with only the environment you give it (e.g. the simulator's
``AIRFLOW_CONN_UNPOD_DEFAULT``), under a hard timeout, and returns a ``DagTestResult`` with the
return code, the captured output and the final state of every task instance::

    from unpod_provider.testing import UnpodSimulator
    from unpod_provider.testing.dag_runner import DagTestRunner

    with UnpodSimulator() as sim, DagTestRunner("dags/") as runner:
        result = runner.run("my_dag", {"run_id": "R..."}, env=sim.connection_env())
        result.raise_for_failure()
        assert result.task_states["wait_for_run"] == "success"

How deferral works there (Airflow 3.3): ``dags test`` runs each task in-process; a task that
defers has its trigger run inline (``InProcessTestSupervisor.run_trigger_in_process``: the
trigger's first event, connections served by in-process supervisor comms), then resumes with
``{"event": payload}`` only (``defer()`` kwargs are dropped). No triggerer process is needed.

The DAG file must be inside ``dags_folder``: ``dag.test()`` syncs that bundle into the database.
One run at a time per home and DAG id (the result reads the newest run of the DAG).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Task states that count as "went fine".
OK_TASK_STATES = frozenset({"success", "skipped"})

_MARKER = ".unpod-dag-runner-migrated"
#: Inherited variables dropped from the subprocess environment unless ``inherit_airflow_env``.
_AIRFLOW_ENV_PREFIXES = ("AIRFLOW__", "AIRFLOW_CONN_", "AIRFLOW_VAR_")
_AIRFLOW_ENV_NAMES = ("AIRFLOW_HOME", "AIRFLOW_CONFIG")


class DagTestError(RuntimeError):
    """``airflow dags test`` failed, timed out, or a task did not end in success/skipped."""

    def __init__(self, message: str, result: DagTestResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class DagTestResult:
    """What one ``airflow dags test`` run produced.

    ``task_states`` maps ``task_id`` (``task_id[3]`` for map index 3) to its final state.
    ``returncode`` is None when the run was killed at its timeout.
    """

    dag_id: str
    conf: dict[str, Any]
    returncode: int | None
    stdout: str
    stderr: str
    duration: float
    timed_out: bool = False
    run_id: str | None = None
    run_state: str | None = None
    task_states: dict[str, str] = field(default_factory=dict)

    @property
    def output(self) -> str:
        """stdout and stderr together."""
        return self.stdout + self.stderr

    @property
    def failed_tasks(self) -> dict[str, str]:
        """Task instances that did not end in success or skipped."""
        return {k: v for k, v in self.task_states.items() if v not in OK_TASK_STATES}

    @property
    def succeeded(self) -> bool:
        """Return code 0, no timeout, the DAG run succeeded and every task succeeded or skipped."""
        return (
            self.returncode == 0
            and not self.timed_out
            and self.run_state in (None, "success")
            and bool(self.task_states)
            and not self.failed_tasks
        )

    def tail(self, lines: int = 80) -> str:
        """The last ``lines`` lines of the combined output."""
        return "\n".join(self.output.splitlines()[-lines:])

    def raise_for_failure(self) -> None:
        """Raise ``DagTestError`` (with the output's tail) unless the run succeeded."""
        if self.succeeded:
            return
        if self.timed_out:
            why = f"timed out after {self.duration:.0f}s"
        elif self.returncode != 0:
            why = f"exited with code {self.returncode}"
        elif not self.task_states:
            why = "ran no task instances"
        else:
            why = f"run state {self.run_state}, tasks not ok: {self.failed_tasks}"
        raise DagTestError(f"airflow dags test {self.dag_id} {why}\n--- output tail ---\n{self.tail()}", self)


class DagTestRunner:
    """Runs ``airflow dags test`` against a private, migrated SQLite ``AIRFLOW_HOME``.

    :param dags_folder: the folder holding the DAG files (``AIRFLOW__CORE__DAGS_FOLDER``).
    :param airflow_home: reuse this home (e.g. a cache dir: migration then happens once);
        default: a new temporary directory, removed by ``cleanup()`` / on context exit.
    :param env: extra environment for every subprocess (connections, variables, settings).
    :param python: the interpreter that runs ``-m airflow`` (default: this one).
    :param inherit_airflow_env: keep this process's ``AIRFLOW__*``/``AIRFLOW_CONN_*``/
        ``AIRFLOW_VAR_*`` variables (default False: the run is isolated from your real Airflow).
    :param migrate_timeout: seconds ``airflow db migrate`` may take.
    """

    def __init__(
        self,
        dags_folder: str | os.PathLike[str],
        *,
        airflow_home: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        inherit_airflow_env: bool = False,
        migrate_timeout: float = 300.0,
    ) -> None:
        self.dags_folder = Path(dags_folder).resolve()
        if not self.dags_folder.is_dir():
            raise ValueError(f"dags_folder {self.dags_folder} is not a directory")
        self._owns_home = airflow_home is None
        home = (
            Path(airflow_home) if airflow_home is not None else Path(tempfile.mkdtemp(prefix="airflow-home-"))
        )
        self.airflow_home = home.expanduser().resolve()
        self.env = dict(env or {})
        self.python = python or sys.executable
        self.inherit_airflow_env = inherit_airflow_env
        self.migrate_timeout = migrate_timeout
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(dags_folder={str(self.dags_folder)!r}, airflow_home={str(self.airflow_home)!r})"

    def __enter__(self) -> DagTestRunner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()

    # ---- environment and database --------------------------------------------------------------

    @property
    def database_path(self) -> Path:
        return self.airflow_home / "airflow.db"

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """The subprocess environment: this process's, isolated, plus the runner's settings."""
        env = {
            k: v
            for k, v in os.environ.items()
            if self.inherit_airflow_env
            or not (k.startswith(_AIRFLOW_ENV_PREFIXES) or k in _AIRFLOW_ENV_NAMES)
        }
        env.update(
            {
                "AIRFLOW_HOME": str(self.airflow_home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.database_path}",
                "AIRFLOW__LOGGING__COLORED_CONSOLE_LOG": "False",
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.env)
        env.update(extra or {})
        return env

    def prepare(self) -> None:
        """Create the home and run ``airflow db migrate`` once (skipped when already done)."""
        with self._lock:
            self.airflow_home.mkdir(parents=True, exist_ok=True)
            marker = self.airflow_home / _MARKER
            version = _airflow_version()
            if marker.exists() and self.database_path.exists() and marker.read_text().strip() == version:
                return
            with _file_lock(self.airflow_home / ".unpod-dag-runner.lock"):
                if marker.exists() and self.database_path.exists() and marker.read_text().strip() == version:
                    return
                completed = _run(
                    [self.python, "-m", "airflow", "db", "migrate"],
                    env=self.environment(),
                    timeout=self.migrate_timeout,
                    cwd=self.airflow_home,
                )
                if completed.returncode != 0 or completed.timed_out:
                    tail = "\n".join((completed.stdout + completed.stderr).splitlines()[-40:])
                    raise DagTestError(f"airflow db migrate failed in {self.airflow_home}:\n{tail}")
                marker.write_text(version + "\n")

    def cleanup(self) -> None:
        """Remove the home if the runner created it."""
        if self._owns_home:
            shutil.rmtree(self.airflow_home, ignore_errors=True)

    # ---- running -------------------------------------------------------------------------------

    def run(
        self,
        dag_id: str,
        conf: Mapping[str, Any] | None = None,
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 300.0,
        logical_date: str | None = None,
        extra_args: Sequence[str] = (),
    ) -> DagTestResult:
        """``airflow dags test <dag_id> [logical_date] -c '<conf>'``; never raises on DAG failure.

        :param env: extra environment for this run only (e.g. ``sim.connection_env()``).
        :param timeout: hard limit in seconds; the whole process group is killed after it.
        """
        self.prepare()
        conf_dict = dict(conf or {})
        command = [self.python, "-m", "airflow", "dags", "test", dag_id]
        if logical_date:
            command.append(logical_date)
        if conf_dict:
            command += ["-c", json.dumps(conf_dict)]
        command += list(extra_args)
        before = self._last_run_pk(dag_id)
        completed = _run(command, env=self.environment(env), timeout=timeout, cwd=self.airflow_home)
        run_id, run_state, states = self.task_states(dag_id, after_pk=before)
        return DagTestResult(
            dag_id=dag_id,
            conf=conf_dict,
            returncode=None if completed.timed_out else completed.returncode,
            stdout=completed.stdout,
            stderr=completed.stderr,
            duration=completed.duration,
            timed_out=completed.timed_out,
            run_id=run_id,
            run_state=run_state,
            task_states=states,
        )

    def task_states(
        self, dag_id: str, run_id: str | None = None, *, after_pk: int | None = None
    ) -> tuple[str | None, str | None, dict[str, str]]:
        """``(run_id, run_state, {task: state})`` of ``run_id`` or the DAG's newest run.

        Read from the SQLite file directly (fast); falls back to ``airflow tasks
        states-for-dag-run`` when the file cannot be read.
        """
        try:
            return self._states_from_sqlite(dag_id, run_id, after_pk)
        except sqlite3.Error:
            return self._states_from_cli(dag_id, run_id)

    def _last_run_pk(self, dag_id: str) -> int | None:
        if not self.database_path.exists():
            return None
        try:
            with contextlib.closing(sqlite3.connect(f"file:{self.database_path}?mode=ro", uri=True)) as db:
                row = db.execute("SELECT MAX(id) FROM dag_run WHERE dag_id = ?", (dag_id,)).fetchone()
        except sqlite3.Error:
            return None
        return int(row[0]) if row and row[0] is not None else None

    def _states_from_sqlite(
        self, dag_id: str, run_id: str | None, after_pk: int | None
    ) -> tuple[str | None, str | None, dict[str, str]]:
        with contextlib.closing(sqlite3.connect(f"file:{self.database_path}?mode=ro", uri=True)) as db:
            if run_id is None:
                row = db.execute(
                    "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND id > ? ORDER BY id DESC LIMIT 1",
                    (dag_id, after_pk if after_pk is not None else -1),
                ).fetchone()
            else:
                row = db.execute(
                    "SELECT run_id, state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id)
                ).fetchone()
            if row is None:
                return None, None, {}
            found_run_id, run_state = str(row[0]), row[1]
            rows = db.execute(
                "SELECT task_id, map_index, state FROM task_instance WHERE dag_id = ? AND run_id = ? "
                "ORDER BY task_id, map_index",
                (dag_id, found_run_id),
            ).fetchall()
        states = {_task_key(task_id, map_index): str(state) for task_id, map_index, state in rows}
        return found_run_id, run_state, states

    def _states_from_cli(
        self, dag_id: str, run_id: str | None
    ) -> tuple[str | None, str | None, dict[str, str]]:
        env = self.environment()
        run_state: str | None = None
        if run_id is None:
            listed = _run([self.python, "-m", "airflow", "dags", "list-runs", dag_id, "-o", "json"], env=env)
            runs = _json_or_none(listed.stdout) or []
            if not runs:
                return None, None, {}
            newest = max(runs, key=lambda r: str(r.get("start_date") or r.get("run_after") or ""))
            run_id, run_state = str(newest.get("run_id")), newest.get("state")
        listed = _run(
            [self.python, "-m", "airflow", "tasks", "states-for-dag-run", dag_id, run_id, "-o", "json"],
            env=env,
        )
        rows = _json_or_none(listed.stdout) or []
        states = {
            _task_key(str(r.get("task_id")), r.get("map_index")): str(r.get("state"))
            for r in rows
            if r.get("task_id")
        }
        return run_id, run_state, states


def run_dag_test(
    dag_id: str,
    dags_folder: str | os.PathLike[str],
    conf: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300.0,
    airflow_home: str | os.PathLike[str] | None = None,
) -> DagTestResult:
    """One-shot ``DagTestRunner(dags_folder).run(dag_id, conf, env=...)`` in its own home."""
    with DagTestRunner(dags_folder, airflow_home=airflow_home) as runner:
        return runner.run(dag_id, conf, env=env, timeout=timeout)


# --------------------------------------------------------------------------------------------
# Simulator helper: make a run wait for the first look, so a sensor really has to wait
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def timeline_on_first_look(
    sim: Any,
    run_id: str,
    timeline: Sequence[Sequence[Any]],
    *,
    poll_interval: float = 0.05,
    on_start: Callable[[], None] | None = None,
) -> Iterator[threading.Event]:
    """Hold a simulator run in its current status until someone lists its space's runs.

    Airflow needs seconds to start, so a run with a fixed timeline may finish before the sensor
    first looks (and the sensor then never waits). Inside this block a watcher thread starts
    ``timeline`` (offsets counted from that moment) at the first ``GET .../runs/`` of the run's
    space. Create the run with a timeline that stays put (e.g. ``[("pending", 0)]``). Yields an
    event set when the timeline started. ``sim`` is an ``UnpodSimulator``.
    """
    space = sim.get_run(run_id)["space_token"]
    runs_path = f"/spaces/{space}/runs/"
    started_at = time.time()
    started = threading.Event()
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            if any(
                r.get("method") == "GET"
                and str(r.get("path", "")).endswith(runs_path)
                and float(r.get("time") or 0) >= started_at
                for r in sim.requests
            ):
                sim.set_run_timeline(run_id, timeline, restart=True)
                started.set()
                if on_start is not None:
                    on_start()
                return
            stop.wait(poll_interval)

    thread = threading.Thread(target=watch, name=f"timeline-on-first-look-{run_id[:9]}", daemon=True)
    thread.start()
    try:
        yield started
    finally:
        stop.set()
        thread.join(timeout=5)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Completed:
    returncode: int
    stdout: str
    stderr: str
    duration: float
    timed_out: bool


def _run(
    command: Sequence[str], *, env: Mapping[str, str], timeout: float = 120.0, cwd: Path | None = None
) -> _Completed:
    """Run ``command`` in its own process group; kill the whole group on timeout or Ctrl-C."""
    started = time.monotonic()
    process = subprocess.Popen(
        list(command),
        env=dict(env),
        cwd=str(cwd) if cwd else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        encoding="utf-8",
        errors="replace",
        start_new_session=True,
    )
    timed_out = False
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        kill_process_group(process)
        stdout, stderr = process.communicate()
    except BaseException:  # Ctrl-C or anything else: never leave Airflow running behind
        kill_process_group(process)
        process.communicate()
        raise
    return _Completed(
        returncode=process.returncode,
        stdout=stdout or "",
        stderr=stderr or "",
        duration=time.monotonic() - started,
        timed_out=timed_out,
    )


def kill_process_group(process: subprocess.Popen[Any]) -> None:
    """SIGTERM the process group, then SIGKILL it if it is still there after 10 seconds."""
    for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes sharing a home (POSIX); a no-op elsewhere."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _airflow_version() -> str:
    try:
        from importlib.metadata import version

        return version("apache-airflow")
    except Exception:  # noqa: BLE001 - the marker only needs some stable string
        return "unknown"


def _task_key(task_id: str, map_index: Any) -> str:
    return task_id if map_index in (None, -1, "-1") else f"{task_id}[{map_index}]"


def _json_or_none(text: str) -> Any:
    """The JSON document in a CLI's stdout (log lines may come first), or None."""
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if line.startswith(("[", "{")):
            try:
                return json.loads("\n".join(lines[index:]))
            except ValueError:
                continue
    return None


__all__ = [
    "OK_TASK_STATES",
    "DagTestError",
    "DagTestResult",
    "DagTestRunner",
    "kill_process_group",
    "run_dag_test",
    "timeline_on_first_look",
]
