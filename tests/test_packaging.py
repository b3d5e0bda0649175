"""The package as users get it: build, check, install into a fresh venv, use Airflow's CLI there.

1. ``python -m build`` makes the sdist and the wheel; ``twine check`` passes; the wheel ships
   ``py.typed``, the provider entry point and nothing from ``tests/``.
2. A fresh venv (uv) gets the same Airflow release as this one plus the wheel, nothing else.
3. There, with a temporary ``AIRFLOW_HOME``: ``airflow providers list`` shows the provider and
   its version, ``providers hooks`` the ``unpod`` hook, ``connections add`` stores an ``unpod``
   connection, ``connections test`` reaches the Unpod simulator through it, and the example DAGs
   parse without import errors (``dags list --local`` / ``list-import-errors --local``).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import sys
import tarfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from services import DAGS_FOLDER, REPO_ROOT, UV, airflow_env, make_venv, run

import unpod_provider

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

DIST_NAME = "airflow_provider_unpod"
EXAMPLE_DAGS = {"unpod_run_report"}


def _json(output: str) -> Any:
    """The JSON document in a CLI's output (Airflow may log warnings to stdout before it)."""
    for line in reversed(output.strip().splitlines()):
        if line.startswith(("[", "{")):
            with contextlib.suppress(ValueError):
                return json.loads(line)
    raise AssertionError(f"no JSON in the output:\n{output[-3000:]}")


def _ensure_tools() -> None:
    missing = [name for name in ("build", "twine") if importlib.util.find_spec(name) is None]
    if missing:
        run([str(UV), "pip", "install", "--quiet", "--python", sys.executable, *missing], timeout=300)


def test_build_install_and_use_the_wheel(tmp_path: Path) -> None:
    started = time.monotonic()

    def log(msg: str) -> None:
        print(f"[packaging +{time.monotonic() - started:5.1f}s] {msg}")

    print()
    _ensure_tools()
    dist = tmp_path / "dist"
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(REPO_ROOT)], timeout=240)
    pkg_version = unpod_provider.__version__
    wheel = dist / f"{DIST_NAME}-{pkg_version}-py3-none-any.whl"
    sdist = dist / f"{DIST_NAME}-{pkg_version}.tar.gz"
    assert wheel.exists() and sdist.exists(), sorted(p.name for p in dist.iterdir())
    out = run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)], timeout=60)
    assert out.count("PASSED") == 2, out
    log(f"built and twine-checked {wheel.name} and {sdist.name}")

    # ---- what the wheel and the sdist contain ----------------------------------------------------
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        dist_info = f"{DIST_NAME}-{pkg_version}.dist-info"
        metadata = zf.read(f"{dist_info}/METADATA").decode()
        entry_points = zf.read(f"{dist_info}/entry_points.txt").decode()
    assert "unpod_provider/py.typed" in names
    for module in ("hooks/unpod.py", "sensors/unpod.py", "triggers/unpod.py", "operators/unpod.py"):
        assert f"unpod_provider/{module}" in names, module
    assert "unpod_provider/get_provider_info.py" in names
    assert not [n for n in names if n.startswith(("tests/", "dags_examples/", "benchmarks/"))], names
    assert "[apache_airflow_provider]" in entry_points
    assert "provider_info = unpod_provider.get_provider_info:get_provider_info" in entry_points
    assert "Requires-Dist: apache-airflow<4,>=3.0" in metadata, metadata
    assert f"Version: {pkg_version}" in metadata
    with tarfile.open(sdist) as tf:
        sdist_names = {name.split("/", 1)[1] for name in tf.getnames() if "/" in name}
    for needed in ("pyproject.toml", "README.md", "unpod_provider/py.typed", "unpod_provider/__init__.py"):
        assert needed in sdist_names, needed

    # ---- a fresh venv with Airflow and the wheel only --------------------------------------------
    airflow_version = version("apache-airflow")
    python = make_venv(tmp_path / "venv", f"apache-airflow=={airflow_version}", str(wheel))
    venv_bin = python.parent
    home = tmp_path / "airflow-home"
    env = airflow_env(home, venv_bin=venv_bin, AIRFLOW__CORE__TEST_CONNECTION="Enabled")
    work = tmp_path / "cwd"  # not the repo: the import must come from the venv, not the source tree
    work.mkdir()
    where = run([str(python), "-c", "import unpod_provider as p; print(p.__file__)"], env=env, cwd=work)
    assert str(tmp_path / "venv") in where, where
    log(f"fresh venv with apache-airflow=={airflow_version} and the wheel")

    def airflow(*args: str) -> str:
        """Run the venv's ``airflow``; stdout only when asking for JSON."""
        cmd = [str(venv_bin / "airflow"), *args]
        return run(cmd, env=env, cwd=work, timeout=120, merge_stderr="json" not in args)

    # Independent CLI calls run side by side (each one spends seconds importing Airflow).
    with ThreadPoolExecutor(max_workers=3) as pool:
        migrated = pool.submit(airflow, "db", "migrate")
        providers_out = pool.submit(airflow, "providers", "list", "-o", "json")
        hooks_out = pool.submit(airflow, "providers", "hooks", "-o", "json")
        providers, hooks = _json(providers_out.result()), _json(hooks_out.result())
        migrated.result()
    ours = [p for p in providers if p["package_name"] == "airflow-provider-unpod"]
    assert ours and ours[0]["version"] == pkg_version, providers
    unpod_hooks = [h for h in hooks if h["connection_type"] == "unpod"]
    assert unpod_hooks, hooks
    assert unpod_hooks[0]["class"] == "unpod_provider.hooks.unpod.UnpodHook"
    assert unpod_hooks[0]["hook_name"] == "Unpod"
    log(f"providers list shows airflow-provider-unpod {pkg_version}; providers hooks shows the unpod hook")

    from unpod_provider.testing import SIM_ORG_HANDLE, UnpodSimulator

    with UnpodSimulator() as sim, ThreadPoolExecutor(max_workers=2) as pool:
        # The example DAGs parse with the installed package (in parallel with the connection checks).
        dags_out = pool.submit(airflow, "dags", "list", "--local", "-o", "json")
        errors_out = pool.submit(airflow, "dags", "list-import-errors", "--local", "-o", "json")

        # A connection made with the CLI, then tested against the simulator.
        conn_extra = json.dumps({"org_handle": SIM_ORG_HANDLE})
        airflow(
            "connections",
            "add",
            "unpod_default",
            "--conn-type",
            "unpod",
            "--conn-host",
            sim.base_url,
            "--conn-password",
            sim.token,
            "--conn-extra",
            conn_extra,
        )
        stored = _json(airflow("connections", "get", "unpod_default", "-o", "json"))[0]
        assert stored["conn_type"] == "unpod" and stored["host"] == sim.base_url, stored
        assert stored["extra_dejson"] == {"org_handle": SIM_ORG_HANDLE}, stored
        tested = airflow("connections", "test", "unpod_default")
        assert "Connection success!" in tested, tested
        assert sim.token not in tested
        assert sim.requests, "airflow connections test did not reach the simulator"
        log("connections add / get / test work (the test reached the simulator)")

        dags = _json(dags_out.result())
        errors = _json(errors_out.result())
    dag_ids = {d["dag_id"] for d in dags}
    assert dag_ids >= EXAMPLE_DAGS, dag_ids
    assert all(Path(d["fileloc"]).parent == DAGS_FOLDER for d in dags), dags
    assert errors == [], errors
    log(f"example DAGs parse: {sorted(dag_ids)}")
