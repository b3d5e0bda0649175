"""Run the fast suite on the oldest and the newest Python the package claims (3.10 and 3.13).

Each interpreter gets its own venv (``.venv-py3.10``, ``.venv-py3.13``, git-ignored), with
Airflow and ``-e .[test]`` installed by uv, rebuilt only when ``pyproject.toml`` changes. An
interpreter is found on ``PATH`` (``python3.10``) or among pyenv's versions. When one is missing:
with ``CI`` set the run fails; elsewhere it is skipped, loudly. Usage (``make test-pythons``)::

    .venv/bin/python scripts/test_pythons.py [3.10 3.13]
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
AIRFLOW_VERSION = os.environ.get("AIRFLOW_VERSION", "3.3.2")
DEFAULT_PYTHONS = ("3.10", "3.13")
#: The fast suite, as ``make test-fast`` runs it.
FAST_ARGS = ["-m", "not slow", "-q"]


def find_python(version: str) -> Path | None:
    """The newest pyenv ``X.Y.*``, else ``pythonX.Y`` on PATH; only one that really runs."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(root.glob(f"{version}.*/bin/python{version}"), key=lambda p: p.parts[-3])[::-1]
    on_path = shutil.which(f"python{version}")
    for python in [*candidates, *([Path(on_path)] if on_path else [])]:
        probe = subprocess.run(
            [str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            check=False,
        )
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return python
    return None


def ensure_venv(version: str, python: Path) -> Path:
    """The venv for ``version``, (re)built when pyproject.toml or the Airflow pin changed."""
    venv = REPO / f".venv-py{version}"
    digest = hashlib.sha256((REPO / "pyproject.toml").read_bytes() + AIRFLOW_VERSION.encode()).hexdigest()
    stamp = venv / f".installed-{digest[:16]}"
    venv_python = venv / "bin" / "python"
    if stamp.exists() and venv_python.exists():
        return venv_python
    uv = Path(sys.executable).parent / "uv"
    subprocess.run([str(uv), "venv", "--quiet", "--clear", "--python", str(python), str(venv)], check=True)
    subprocess.run(
        [
            str(uv),
            "pip",
            "install",
            "--quiet",
            "--python",
            str(venv_python),
            f"apache-airflow=={AIRFLOW_VERSION}",
            "-e",
            f"{REPO}[test]",
        ],
        check=True,
    )
    stamp.touch()
    return venv_python


def main(versions: list[str]) -> int:
    in_ci = os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")
    failed = []
    for version in versions:
        python = find_python(version)
        if python is None:
            if in_ci:
                print(f"[pythons] Python {version} not found: failing (CI is set)", flush=True)
                failed.append(version)
            else:
                print(f"[pythons] *** SKIPPED: Python {version} not found (install it, e.g. with pyenv) ***")
            continue
        print(f"[pythons] Python {version} ({python}): fast suite", flush=True)
        venv_python = ensure_venv(version, python)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTEST_"))}
        result = subprocess.run(
            [str(venv_python), "-m", "pytest", *FAST_ARGS], cwd=REPO, env=env, check=False
        )
        if result.returncode != 0:
            print(f"[pythons] Python {version}: the fast suite failed (exit {result.returncode})", flush=True)
            failed.append(version)
    if failed:
        print(f"[pythons] failed on Python {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or list(DEFAULT_PYTHONS)))
