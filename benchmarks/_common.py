"""What every benchmark shares: the simulator in its own process, child processes, RSS and CPU.

Each benchmark measures its client in a fresh child process (``python -m benchmarks.<name>
--child JSON``) so peak RSS and CPU belong to that measurement alone, against a simulator that
runs in yet another process (``python -m unpod_provider.testing``), so the server's memory and
CPU are never counted with the client's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from unpod_provider.testing import SIM_ORG_HANDLE, SIM_TOKEN, SimulatorClient

REPO_ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
#: The line a child prints before its JSON result (anything else on stdout is ignored).
RESULT_MARK = "BENCH-RESULT "
PYCACHE = REPO_ROOT / ".venv" / "bench-pycache"


class BenchmarkError(RuntimeError):
    """A benchmark could not run or its result is wrong (not a slow result: those are reported)."""


# --------------------------------------------------------------------------------------------
# The simulator in its own process
# --------------------------------------------------------------------------------------------


class SimulatorProcess:
    """``python -m unpod_provider.testing`` started by this benchmark and stopped by it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.base_url = f"http://127.0.0.1:{port}"
        self.client = SimulatorClient(self.base_url, timeout=120.0)

    def connection_json(self) -> str:
        """The Airflow connection (``AIRFLOW_CONN_UNPOD_DEFAULT``) pointing at this simulator."""
        return json.dumps(
            {
                "conn_type": "unpod",
                "host": self.base_url,
                "password": SIM_TOKEN,
                "extra": {"org_handle": SIM_ORG_HANDLE},
            }
        )

    def request_count(self, path_suffix: str) -> int:
        """Logged Unpod requests whose path ends with ``path_suffix``."""
        return sum(1 for r in self.client.requests() if str(r.get("path", "")).endswith(path_suffix))

    def peak_rss_mb(self) -> float | None:
        """The simulator process's peak RSS (VmHWM), for the record; None when unreadable."""
        return proc_peak_rss_mb(self.proc.pid)


@contextmanager
def simulator(workdir: Path, *, latency: float = 0.0, timeout: float = 60.0) -> Iterator[SimulatorProcess]:
    """Start the simulator CLI on a free loopback port; stop it (SIGTERM, then SIGKILL) after."""
    ready = workdir / f"sim-{os.getpid()}-{time.monotonic_ns()}.port"
    log_path = ready.with_suffix(".log")
    cmd = [PYTHON, "-m", "unpod_provider.testing", "--port", "0", "--ready-file", str(ready)]
    cmd += ["--latency", repr(float(latency))]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=child_env(workdir), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise BenchmarkError(
                    f"the simulator did not start (exit {proc.poll()}): {log_path.read_text()[-2000:]}"
                )
            time.sleep(0.05)
        sim = SimulatorProcess(proc, int(ready.read_text().strip()), log_path)
        sim.client.wait_ready(timeout)
        yield sim
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(15)


# --------------------------------------------------------------------------------------------
# Child processes
# --------------------------------------------------------------------------------------------


def child_env(workdir: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a child: an Airflow home of its own, quiet logs, no example DAGs."""
    env = dict(os.environ)
    home = workdir / "airflow-home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        }
    )
    env.pop("AIRFLOW_CONN_UNPOD_DEFAULT", None)
    # Deployed Airflow imports from compiled bytecode; so do the children (cached under .venv,
    # nothing written next to the sources), whatever PYTHONDONTWRITEBYTECODE says here.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(PYCACHE)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    if extra:
        env.update(extra)
    return env


def run_child(
    module: str,
    payload: Mapping[str, Any],
    *,
    workdir: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run ``python -m <module> --child <payload JSON>`` and return the JSON it reports."""
    cmd = [PYTHON, "-m", module, "--child", json.dumps(payload)]
    done = subprocess.run(
        cmd,
        cwd=REPO_ROOT,
        env=child_env(workdir, env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            result: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return result
    raise BenchmarkError(
        f"{module} child failed (exit {done.returncode}):\n{done.stderr[-4000:]}\n{done.stdout[-2000:]}"
    )


def child_main(argv: Sequence[str] | None, measure: Any) -> int:
    """The child side: ``--child JSON`` -> ``measure(payload)`` -> one ``RESULT_MARK`` line."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2 or args[0] != "--child":
        print("usage: python -m benchmarks.<name> --child JSON (run benchmarks with `make bench`)")
        return 2
    result = measure(json.loads(args[1]))
    print(RESULT_MARK + json.dumps(result), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# Measuring
# --------------------------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set size in MB (``ru_maxrss`` is in KB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def current_rss_mb() -> float:
    """This process's resident set size now, in MB."""
    with open("/proc/self/statm", encoding="ascii") as handle:
        pages = int(handle.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def proc_peak_rss_mb(pid: int) -> float | None:
    """Peak RSS (VmHWM) of another process in MB, or None."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 3) if denominator else None


@contextmanager
def workspace(prefix: str = "unpod-bench-") -> Iterator[Path]:
    """A temporary directory for one benchmark run (Airflow home, outputs, ready files)."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        yield Path(tmp)
