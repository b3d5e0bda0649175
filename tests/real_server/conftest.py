"""The real Unpod server for the contract suite: started once per session, always stopped.

``make test-real-server`` runs this directory; a plain ``pytest`` (and ``make test``'s main
pytest run) does not collect it (see ``pytest_ignore_collect``). The session fixture
``real_server`` runs ``bash $UNPOD_SERVER_KIT/start.sh`` (which runs ``setup.sh`` when needed)
with ``UNPOD_SERVER_HOME`` outside the repo, parses the JSON line it prints last, and runs
``stop.sh`` afterwards whatever happened (failure, Ctrl-C, SIGTERM; an ``atexit`` hook and the
Makefile are further fallbacks). Without the kit, or when it does not start: with ``CI`` set to
a true value every test FAILS; otherwise they are skipped with the reason printed.

Every test gets ``AIRFLOW_CONN_*`` variables for the suite's connections (Token, JWT, Bearer,
bad token, viewer, ...): hooks read them without a metadata database.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realkit import SUITE_DIR, TALLY, Kit, Tally, env_true, in_ci, kit_dir, server_home

from unpod_provider.testing.dag_runner import kill_process_group

START_TIMEOUT = 1500.0  # a cold setup installs Debian packages and a ~400 MB venv
STOP_TIMEOUT = 180.0
TEST_TIMEOUT = 900  # per test; the first one also pays the kit's start


# --------------------------------------------------------------------------------------------
# Collected only when asked for
# --------------------------------------------------------------------------------------------


def _explicitly_requested(config: pytest.Config) -> bool:
    """This directory (or a file in it) is on the command line, or ``UNPOD_REAL_SERVER`` is true."""
    if env_true("UNPOD_REAL_SERVER"):
        return True
    base = Path(config.invocation_params.dir)
    for arg in config.invocation_params.args:
        if not isinstance(arg, str) or arg.startswith("-"):
            continue
        path = (base / arg.split("::", 1)[0]).resolve()
        if path == SUITE_DIR or SUITE_DIR in path.parents:
            return True
    return False


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    path = Path(collection_path).resolve()
    inside = path == SUITE_DIR or SUITE_DIR in path.parents
    if inside and path.name != "conftest.py" and not _explicitly_requested(config):
        return True
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if SUITE_DIR in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.timeout(TEST_TIMEOUT))


# --------------------------------------------------------------------------------------------
# Output that is never captured
# --------------------------------------------------------------------------------------------


def _say(config: pytest.Config, text: str, **markup: bool) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")
    guard = capman.global_and_fixture_disabled() if capman is not None else contextlib.nullcontext()
    with guard:
        if reporter is not None:
            reporter.write_line(text, **markup)
        else:  # pragma: no cover - no terminal plugin
            print(text, flush=True)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not TALLY.active:
        return
    terminalreporter.write_sep("-", "real Unpod server")
    if TALLY.status_line:
        terminalreporter.write_line(TALLY.status_line)
    for failure in TALLY.failed[:40]:
        terminalreporter.write_line(f"  failed check: {failure}", red=True)
    terminalreporter.write_line(TALLY.summary(), bold=True, red=bool(TALLY.failed), green=not TALLY.failed)


# --------------------------------------------------------------------------------------------
# start.sh / stop.sh
# --------------------------------------------------------------------------------------------


class KitStartError(RuntimeError):
    pass


def _kit_env(home: Path) -> dict[str, str]:
    return {**os.environ, "UNPOD_SERVER_HOME": str(home)}


def _run_script(script: Path, home: Path, *, timeout: float, stderr_path: Path) -> tuple[int, str]:
    """``bash script`` in its own process group (killed as a whole on timeout or Ctrl-C)."""
    with stderr_path.open("w", encoding="utf-8") as stderr:
        process = subprocess.Popen(
            ["bash", str(script)],
            env=_kit_env(home),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            start_new_session=True,
        )
        try:
            stdout, _ = process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill_process_group(process)
            raise KitStartError(f"{script.name} did not finish within {timeout:.0f}s") from None
        except BaseException:
            kill_process_group(process)
            raise
    return process.returncode, stdout or ""


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no output)"


def _log_dir(home: Path) -> Path:
    """Beside the kit's home (kept for a look after a failure), else the temp dir."""
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        probe = home.parent / ".unpod-server-suite-probe"
        probe.touch()
        probe.unlink()
        return home.parent
    except OSError:
        return Path(tempfile.gettempdir())


def _start(kit: Path, home: Path, log_path: Path) -> dict[str, Any]:
    try:
        code, stdout = _run_script(kit / "start.sh", home, timeout=START_TIMEOUT, stderr_path=log_path)
    except OSError as err:
        raise KitStartError(f"could not run start.sh: {err}") from None
    if code != 0:
        tail = _tail(log_path)
        last = tail.splitlines()[-1] if tail.strip() else "(no output)"
        raise KitStartError(f"start.sh exited with {code}: {last}\n--- tail of {log_path}:\n{tail}")
    lines = [line for line in stdout.strip().splitlines() if line.strip()]
    try:
        conn = json.loads(lines[-1])
    except (IndexError, ValueError):
        raise KitStartError(f"start.sh printed no JSON line (stdout: {stdout[-500:]!r})") from None
    missing = {"base_url", "token", "jwt", "org_handle", "space_tokens", "pilot", "seed_manifest"} - set(conn)
    if missing:
        raise KitStartError(f"start.sh's JSON line lacks {sorted(missing)}")
    return dict(conn)


def _leftovers(conn: dict[str, Any] | None, home: Path) -> list[str]:
    """Processes of this kit instance still alive (by its ports and its Postgres data dir)."""
    marks = [f"{home}/venv/bin/"]  # gunicorn and uvicorn run from the kit's venv
    if conn:
        for url in (conn.get("base_url"), conn.get("api_service_url")):
            if isinstance(url, str) and ":" in url:
                port = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[-1]
                marks += [f"127.0.0.1:{port}", f"--port {port}"]
    with contextlib.suppress(OSError):
        pgdata = (home / "pgdata").resolve()
        marks.append(str(pgdata))
    with contextlib.suppress(OSError):  # run/ports: pg=, redis=, api=, backend=
        for line in (home / "run" / "ports").read_text().splitlines():
            name, _, port = line.partition("=")
            if name == "redis" and port.strip().isdigit():
                marks.append(f"redis-server 127.0.0.1:{port.strip()}")
    found = []
    ours = _ancestors()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) in ours:
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        if cmdline and any(mark in cmdline for mark in marks) and "pytest" not in cmdline:
            found.append(f"{proc.name}: {cmdline[:120]}")
    return found


def _ancestors() -> set[int]:
    """This process and its parents (make, the shell): their command lines may name the home."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = (Path("/proc") / str(pid) / "stat").read_text()
            pid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


class _KitProcess:
    """What was started, so that it is stopped exactly once (finalizer, atexit)."""

    def __init__(self, kit: Path, home: Path) -> None:
        self.kit, self.home = kit, home
        self.conn: dict[str, Any] | None = None
        self.needs_stop = False
        self.stop_report = ""
        self._lock = threading.Lock()

    def stop(self) -> None:
        with self._lock:
            if not self.needs_stop:
                return
            self.needs_stop = False
        log_path = _log_dir(self.home) / "unpod-server-stop.log"
        started = time.monotonic()
        try:
            code, _ = _run_script(self.kit / "stop.sh", self.home, timeout=STOP_TIMEOUT, stderr_path=log_path)
        except (KitStartError, OSError) as err:
            self.stop_report = f"stop.sh failed: {err}"
            return
        left = _leftovers(self.conn, self.home)
        deadline = time.monotonic() + 20.0  # gunicorn's workers end a moment after their master
        while left and time.monotonic() < deadline:
            time.sleep(0.5)
            left = _leftovers(self.conn, self.home)
        took = time.monotonic() - started
        if code != 0 or left:
            self.stop_report = f"stop.sh exited {code} after {took:.1f}s; processes left: {left or 'none'}"
        else:
            self.stop_report = f"kit stopped in {took:.1f}s, no process of it left"


@pytest.fixture(scope="session")
def real_server(request: pytest.FixtureRequest) -> Iterator[Kit]:
    """The running kit (``Kit``): started once, stopped at the end of the session."""
    config = request.config
    TALLY.active = True
    kit, home = kit_dir(), server_home()
    if not (kit / "start.sh").is_file() or not (kit / "stop.sh").is_file():
        _unavailable(config, f"the unpod-server kit is not at {kit} (set UNPOD_SERVER_KIT to its folder)")
    log_path = _log_dir(home) / "unpod-server-start.log"
    process = _KitProcess(kit, home)
    atexit.register(process.stop)
    previous_sigterm = _raise_on_sigterm()
    try:
        _say(
            config,
            f"\nreal server: starting the unpod-server kit ({kit}, home {home}); a cold start takes ~1 min",
        )
        began = time.monotonic()
        process.needs_stop = True  # a partial start is stopped too
        try:
            conn = _start(kit, home, log_path)
        except KitStartError as err:
            process.stop()
            _unavailable(config, f"the unpod-server kit did not start: {err}")
        process.conn = conn
        took = time.monotonic() - began
        TALLY.status_line = f"real server: kit started in {took:.0f}s at {conn['base_url']} (home {home})"
        _say(config, TALLY.status_line)
        yield Kit(conn=conn, home=home, kit=kit, start_seconds=took)
    finally:
        process.stop()
        if process.stop_report:
            TALLY.status_line = f"{TALLY.status_line or 'real server'}; {process.stop_report}"
        if previous_sigterm is not None:
            signal.signal(signal.SIGTERM, previous_sigterm)


def _unavailable(config: pytest.Config, reason: str) -> None:
    if in_ci():
        TALLY.status_line = f"real server: UNAVAILABLE in CI (failing): {reason.splitlines()[0]}"
        pytest.fail(f"real Unpod server unavailable and CI is set: {reason}", pytrace=False)
    banner = "!" * 100
    TALLY.status_line = f"real server: SKIPPED: {reason.splitlines()[0]}"
    _say(config, f"\n{banner}\nSKIPPING the real-server suite: {reason}\n{banner}", red=True, bold=True)
    pytest.skip(f"real Unpod server unavailable: {reason.splitlines()[0]}")


def _raise_on_sigterm() -> Any:
    """SIGTERM (a cancelled CI job) becomes KeyboardInterrupt, so the finalizer stops the kit."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    return signal.signal(signal.SIGTERM, handler)


# --------------------------------------------------------------------------------------------
# Per test
# --------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def kit_connections(real_server: Kit, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """``AIRFLOW_CONN_*`` of every suite connection, set for this test only."""
    env = real_server.connections()
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def kit(real_server: Kit) -> Kit:
    return real_server


@pytest.fixture
def tally() -> Tally:
    return TALLY
