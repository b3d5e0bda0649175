"""Shared test set-up: an isolated AIRFLOW_HOME and the Unpod simulator fixtures.

Airflow reads its configuration at import, so the environment is fixed here, before any test
module imports Airflow. The simulator fixtures come from ``unpod_provider.testing.pytest_plugin``
(registered as a pytest plugin by the package's entry point).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags_examples"

_AIRFLOW_HOME = tempfile.mkdtemp(prefix="unpod-tests-airflow-home-")
os.environ["AIRFLOW_HOME"] = _AIRFLOW_HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS_FOLDER)
os.environ.pop("AIRFLOW_CONN_UNPOD_DEFAULT", None)
