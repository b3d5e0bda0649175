"""The hook, operator, sensor and trigger tests again, on the oldest Airflow the package claims.

``pyproject.toml`` declares ``apache-airflow>=3.0,<4``. This test keeps a second venv,
``.venv-airflow-3.0/`` at the repo root (git-ignored), with ``apache-airflow==3.0.6`` (the last
3.0 release), this package in editable mode and its ``test`` extra, and runs the unit-level test
files there in a subprocess. The venv is rebuilt only when ``pyproject.toml`` or the pins change.

Pins: Airflow is meant to be installed with its constraints file, which lives on GitHub (not
reachable from CI). Without it the resolver picks today's releases, and two of them break 3.0.6
itself, not this provider: FastAPI >= 0.117 (with Cadwyn 8) makes the in-process execution API
of ``airflow dags test`` reject every task start ("Input should be a valid dictionary"), and
universal-pathlib 0.3 makes ``ObjectStoragePath("file://...")`` raise. The pins below are what
the 3.0.x constraints had.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from services import REPO_ROOT, UV, run

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

OLDEST_AIRFLOW = "3.0.6"
PINS = ["fastapi<0.117", "universal-pathlib<0.3"]
VENV = REPO_ROOT / ".venv-airflow-3.0"
TEST_FILES = [
    "tests/test_hook.py",
    "tests/test_hook_http.py",
    "tests/test_operators.py",
    "tests/test_sensor.py",
    "tests/test_trigger.py",
    "tests/test_fail_closed.py",
]


def _stamp() -> Path:
    digest = hashlib.sha256()
    digest.update((REPO_ROOT / "pyproject.toml").read_bytes())
    digest.update(repr((OLDEST_AIRFLOW, PINS, sys.version_info[:2])).encode())
    return VENV / f".installed-{digest.hexdigest()[:16]}"


def ensure_oldest_venv() -> Path:
    """``.venv-airflow-3.0`` with Airflow 3.0.6, the pins and ``-e .[test]``; returns its python."""
    python = VENV / "bin" / "python"
    stamp = _stamp()
    if stamp.exists() and python.exists():
        return python
    run([str(UV), "venv", "--quiet", "--clear", "--python", sys.executable, str(VENV)], timeout=120)
    run(
        [
            str(UV),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(python),
            f"apache-airflow=={OLDEST_AIRFLOW}",
            *PINS,
            "-e",
            f"{REPO_ROOT}[test]",
        ],
        timeout=900,
    )
    stamp.touch()
    return python


def test_unit_suites_on_oldest_airflow(capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    python = ensure_oldest_venv()
    print(f"\n[oldest] {VENV.name} ready after {time.monotonic() - started:.0f}s")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    version = run([str(python), "-c", "import airflow; print(airflow.__version__)"], env=env).strip()
    assert version.splitlines()[-1] == OLDEST_AIRFLOW, version
    files = [f for f in TEST_FILES if (REPO_ROOT / f).exists()]
    assert files, "none of the hook/operator/sensor/trigger test files exist"
    cmd = [str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider", "--continue-on-collection-errors"]
    cmd += ["--timeout", "150", *files]  # a hanging test fails on its own instead of eating the budget
    try:
        result = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=480,
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        output = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else err.stdout
        tail = (output or "")[-8000:]
        pytest.fail(f"the Airflow {OLDEST_AIRFLOW} run took over 480s; output so far:\n{tail}")
    summary = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else "(no output)"
    with capsys.disabled():  # shown in CI's output too, not only with -s
        print(f"\n[oldest] Airflow {OLDEST_AIRFLOW}: {summary} ({time.monotonic() - started:.0f}s)")
    assert result.returncode == 0, (
        f"the unit tests fail on Airflow {OLDEST_AIRFLOW} (venv {VENV}):\n{result.stdout[-12000:]}"
    )
    assert "skipped" not in summary, f"tests were skipped on Airflow {OLDEST_AIRFLOW}: {summary}"
