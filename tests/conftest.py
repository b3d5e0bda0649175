"""Shared test set-up: an isolated AIRFLOW_HOME and the Unpod simulator fixtures.

Airflow reads its configuration at import, so the environment is fixed here, before any test
module imports Airflow. The simulator fixtures come from ``unpod_provider.testing.pytest_plugin``
(registered as a pytest plugin by the package's entry point).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags_examples"

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="unpod-tests-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
os.environ.pop("AIRFLOW_CONN_UNPOD_DEFAULT", None)


# ============================================================================================
# Shared fixtures
# ============================================================================================


@pytest.fixture
def clock_moves_per_look(mocker: Any) -> Callable[[Any, float], Any]:
    """``clock_moves_per_look(sim, step)``: the simulator's clock moves ``step`` seconds after
    every run lookup (``UnpodHook.find_run`` or ``UnpodAsyncHook.afind_run``); returns ``sim``.

    Runs then change status between two looks whatever the real poll interval, so a test knows
    exactly which status each look sees; the lookups themselves stay real HTTP.
    """
    from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook

    def install(sim: Any, step: float) -> Any:
        sync_find, async_find = UnpodHook.find_run, UnpodAsyncHook.afind_run

        def find_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return sync_find(self, *args, **kwargs)
            finally:
                sim.advance(step)

        async def afind_run(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return await async_find(self, *args, **kwargs)
            finally:
                sim.advance(step)

        mocker.patch.object(UnpodHook, "find_run", find_run)
        mocker.patch.object(UnpodAsyncHook, "afind_run", afind_run)
        return sim

    return install
