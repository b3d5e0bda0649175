"""Helpers for the tests that run real processes: Airflow services, fresh venvs, process clean-up.

Used by ``test_services.py``, ``test_browser.py``, ``test_packaging.py`` and
``test_oldest_airflow.py``. Nothing here imports Airflow: the services run as subprocesses of
the venv this test session runs in, each with its own temporary ``AIRFLOW_HOME`` and free ports.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import requests

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags_examples"
OUTPUT_DIR = REPO_ROOT / "test-output"
VENV_BIN = Path(sys.executable).parent
UV = VENV_BIN / "uv"

ADMIN_USER = "admin"
ADMIN_PASSWORD = "unpod-admin-" + secrets.token_hex(4)
COMPONENTS = ("metadatabase", "scheduler", "triggerer", "dag_processor")

T = TypeVar("T")


def free_port() -> int:
    """A TCP port that is free on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(
    check: Callable[[], T | None], *, timeout: float, interval: float = 0.5, what: str = "condition"
) -> T:
    """Call ``check`` until it returns something truthy; ``TimeoutError`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - keep polling; report the last error on timeout
            last_error = err
        if time.monotonic() > deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            raise TimeoutError(f"Timed out after {timeout:.0f}s waiting for {what}{detail}")
        time.sleep(interval)


def _descendants(pid: int) -> list[int]:
    try:
        import psutil
    except ImportError:  # pragma: no cover - psutil ships with Airflow
        return []
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover
        return True
    # A zombie counts as gone.
    with contextlib.suppress(OSError):
        status = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return status != "Z"
    return True


def stop_process_tree(proc: subprocess.Popen[Any], *, grace: float = 20.0) -> None:
    """Stop a process started with ``start_new_session=True``, its group and every descendant.

    SIGTERM to the group (Airflow's components shut down cleanly on it), then SIGKILL to whatever
    is left after ``grace`` seconds, including descendants that moved to another session.
    """
    pids = {proc.pid, *_descendants(proc.pid)}
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        proc.poll()
        if not any(_alive(pid) for pid in pids if pid != proc.pid) and proc.returncode is not None:
            break
        time.sleep(0.2)
    pids |= set(_descendants(proc.pid))
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def tail(path: Path, lines: int = 80) -> str:
    """The last lines of a log file, for assertion messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"(no log at {path})"
    return "\n".join(text.splitlines()[-lines:])


def run(
    cmd: list[str],
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 300,
    merge_stderr: bool = True,
    **kw: Any,
) -> str:
    """Run a command and return its output; on failure raise with stdout and stderr.

    ``merge_stderr=False`` returns stdout only (for ``-o json`` output next to log lines).
    """
    result = subprocess.run(
        cmd,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stderr else subprocess.PIPE,
        text=True,
        timeout=timeout,
        check=False,
        **kw,
    )
    if result.returncode != 0:
        output = result.stdout if merge_stderr else f"{result.stdout}\n--- stderr ---\n{result.stderr}"
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {result.returncode}:\n{output[-6000:]}")
    return result.stdout


def airflow_env(home: Path, *, venv_bin: Path = VENV_BIN, **overrides: str) -> dict[str, str]:
    """Environment for an Airflow subprocess: own ``AIRFLOW_HOME``, SQLite, no examples, our DAGs."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
    env.pop("AIRFLOW_HOME", None)
    env.pop("PYTEST_CURRENT_TEST", None)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}",
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS_FOLDER),
            "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
            "PYTHONUNBUFFERED": "1",
            "NO_COLOR": "1",
        }
    )
    env.update(overrides)
    return env


class AirflowServices:
    """``airflow standalone`` (api-server, scheduler, dag-processor, triggerer) on loopback ports.

    Use as a context manager: the whole process tree is stopped on exit, also when the body
    fails. ``api()`` calls the REST API v2 with a JWT from ``/auth/token``.
    """

    def __init__(self, home: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.home = home
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = home / "standalone.log"
        self._extra_env = dict(env or {})
        self._proc: subprocess.Popen[bytes] | None = None
        self._token: str | None = None
        self._session = requests.Session()

    def env(self) -> dict[str, str]:
        passwords = self.home / "passwords.json"
        return airflow_env(
            self.home,
            AIRFLOW__API__HOST="127.0.0.1",
            AIRFLOW__API__PORT=str(self.port),
            AIRFLOW__API__BASE_URL=self.base_url,
            AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"{self.base_url}/execution/",
            AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_urlsafe(32),
            AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(free_port()),
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS=f"{ADMIN_USER}:admin",
            AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=str(passwords),
            AIRFLOW__CORE__TEST_CONNECTION="Enabled",
            AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="True",
            AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK="False",
            AIRFLOW__API__WORKERS="1",
            AIRFLOW__CORE__PARALLELISM="4",
            **self._extra_env,
        )

    def start(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "passwords.json").write_text(json.dumps({ADMIN_USER: ADMIN_PASSWORD}))
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(
                [str(VENV_BIN / "airflow"), "standalone"],
                env=self.env(),
                cwd=self.home,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def wait_healthy(self, timeout: float = 150) -> dict[str, Any]:
        """Wait until the api-server answers and every component reports healthy."""

        def healthy() -> dict[str, Any] | None:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(
                    f"airflow standalone exited {self._proc.returncode}:\n{tail(self.log_path)}"
                )
            resp = self._session.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
            if resp.status_code != 200:
                return None
            health = resp.json()
            ok = all(health.get(c, {}).get("status") == "healthy" for c in COMPONENTS)
            return health if ok else None

        try:
            return wait_for(healthy, timeout=timeout, interval=1.0, what="Airflow components healthy")
        except (TimeoutError, RuntimeError) as err:
            raise AssertionError(f"{err}\n--- standalone log ---\n{tail(self.log_path)}") from None

    def stop(self) -> None:
        self._session.close()
        if self._proc is not None:
            stop_process_tree(self._proc)
            self._proc = None

    def __enter__(self) -> AirflowServices:
        try:
            self.start()
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- REST API ----------------------------------------------------------------------------

    def token(self) -> str:
        if self._token is None:
            resp = self._session.post(
                f"{self.base_url}/auth/token",
                json={"username": ADMIN_USER, "password": ADMIN_PASSWORD},
                timeout=15,
            )
            assert resp.status_code in (200, 201), f"/auth/token: {resp.status_code} {resp.text[:500]}"
            self._token = str(resp.json()["access_token"])
        return self._token

    def api(self, method: str, path: str, *, expect: int | tuple[int, ...] = 200, **kw: Any) -> Any:
        """Call ``/api/v2{path}`` and return the JSON body; assert the status code."""
        resp = self._session.request(
            method,
            f"{self.base_url}/api/v2{path}",
            headers={"Authorization": f"Bearer {self.token()}"},
            timeout=30,
            **kw,
        )
        codes = (expect,) if isinstance(expect, int) else expect
        assert resp.status_code in codes, f"{method} {path}: {resp.status_code} {resp.text[:1000]}"
        return resp.json() if resp.content else None


@contextlib.contextmanager
def airflow_services(home: Path, *, env: Mapping[str, str] | None = None) -> Iterator[AirflowServices]:
    """``with airflow_services(tmp_path / "home", env={...}) as af:`` -- started, healthy, stopped."""
    services = AirflowServices(home, env=env)
    with services:
        yield services


def output_dir(name: str) -> Path:
    """``test-output/<name>/`` at the repo root (git-ignored), emptied first."""
    path = OUTPUT_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True, exist_ok=True)
    return path


def make_venv(path: Path, *requirements: str, timeout: float = 600) -> Path:
    """A fresh venv at ``path`` (same Python as this session) with ``requirements`` installed by uv."""
    shutil.rmtree(path, ignore_errors=True)
    run([str(UV), "venv", "--quiet", "--python", sys.executable, str(path)], timeout=120)
    python = path / "bin" / "python"
    run([str(UV), "pip", "install", "--quiet", "--python", str(python), *requirements], timeout=timeout)
    return python
