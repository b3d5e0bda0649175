"""A local Unpod server for tests, demos and benchmarks (the "Unpod simulator").

Usage::

    from unpod_provider.testing import UnpodSimulator, DEMO_SPACE_TOKEN

    with UnpodSimulator() as sim:                       # uvicorn on a free loopback port
        os.environ.update(sim.connection_env())         # AIRFLOW_CONN_UNPOD_DEFAULT
        run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=5)
        sim.inject("server_error", path="/runs/", status=503, times=2)
        sim.advance(10)                                 # the run is completed now

Command line: ``python -m unpod_provider.testing --port 0 --ready-file /tmp/port``. pytest
fixtures: ``unpod_provider.testing.pytest_plugin``. Importing this package does not import
FastAPI or uvicorn; they are imported when a simulator starts.
"""

from __future__ import annotations

from unpod_provider.testing._faults import FAULT_KINDS, Fault
from unpod_provider.testing._model import (
    DEFAULT_TIMELINE,
    DEMO_AGENT_HANDLE,
    DEMO_SPACE_NAME,
    DEMO_SPACE_RUNS,
    DEMO_SPACE_TASKS,
    DEMO_SPACE_TOKEN,
    SIM_ORG_HANDLE,
    SIM_OTHER_ORG_HANDLE,
    SIM_TOKEN,
)
from unpod_provider.testing._server import UnpodSimulator
from unpod_provider.testing.client import SimulatorClient, SimulatorControlError

__all__ = [
    "DEFAULT_TIMELINE",
    "DEMO_AGENT_HANDLE",
    "DEMO_SPACE_NAME",
    "DEMO_SPACE_RUNS",
    "DEMO_SPACE_TASKS",
    "DEMO_SPACE_TOKEN",
    "FAULT_KINDS",
    "SIM_ORG_HANDLE",
    "SIM_OTHER_ORG_HANDLE",
    "SIM_TOKEN",
    "Fault",
    "SimulatorClient",
    "SimulatorControlError",
    "UnpodSimulator",
]
