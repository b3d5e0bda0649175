"""The benchmarks' own set-up: ``apache-airflow-providers-http`` for P1's HttpOperator baseline.

It is not a dependency of the provider, and it is not installed into the project's virtualenv
either: its missing distributions are installed, without their already-present dependencies,
into ``bench-http`` inside the running virtualenv (one per Python: ``.venv/bench-http``) and put
on the ``PYTHONPATH`` of P1's child process only.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

from benchmarks._common import REPO_ROOT

DISTRIBUTION = "apache-airflow-providers-http"
TARGET = Path(sys.prefix) / "bench-http"
_PLUS = re.compile(r"^\s*\+\s*([A-Za-z0-9_.\-]+)==(\S+)\s*$")


def _installed_in_venv() -> bool:
    try:
        importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def _in_target() -> bool:
    return any(TARGET.glob("apache_airflow_providers_http-*.dist-info"))


def _uv() -> list[str] | None:
    uv = Path(sys.executable).parent / "uv"
    return [str(uv), "pip"] if uv.exists() else None


def http_provider_path() -> Path | None:
    """Where P1's child finds the HTTP provider; None when it is not available (P1 skips it).

    Returns the repository root when the provider is installed in the virtualenv already (a
    harmless ``PYTHONPATH`` entry), else ``.venv/bench-http``, installing it there on first use.
    """
    if _installed_in_venv():
        return REPO_ROOT
    if _in_target():
        return TARGET
    uv = _uv()
    if uv is None:
        return None
    try:
        plan = subprocess.run(
            [*uv, "install", "--python", sys.executable, "--dry-run", DISTRIBUTION],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        missing = [f"{m.group(1)}=={m.group(2)}" for m in map(_PLUS.match, plan.stderr.splitlines()) if m]
        missing += [f"{m.group(1)}=={m.group(2)}" for m in map(_PLUS.match, plan.stdout.splitlines()) if m]
        if not missing:
            return None
        subprocess.run(
            [*uv, "install", "--python", sys.executable, "--target", str(TARGET), "--no-deps", *missing],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return TARGET if _in_target() else None
