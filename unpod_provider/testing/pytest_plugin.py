"""pytest fixtures for the Unpod simulator (registered as the ``unpod_simulator`` pytest11 plugin).

Fixtures:

- ``unpod_simulator``: a fresh simulator per test (own server, own port, seeded state), with
  ``AIRFLOW_CONN_UNPOD_DEFAULT`` pointing at it; stopped after the test.
- ``unpod_simulator_session``: one server for the whole session (started on first use).
- ``unpod_simulator_shared``: the session server, reset to its seeded state before each test and
  with ``AIRFLOW_CONN_UNPOD_DEFAULT`` set: as isolated as ``unpod_simulator``, without a server
  start per test.

Nothing heavy is imported when pytest loads this plugin: FastAPI and uvicorn are imported only
when a fixture is used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from unpod_provider.testing import UnpodSimulator

CONN_ENV_VAR = "AIRFLOW_CONN_UNPOD_DEFAULT"


@pytest.fixture
def unpod_simulator(monkeypatch: pytest.MonkeyPatch) -> Iterator[UnpodSimulator]:
    """A running simulator with fresh deterministic state, used by ``unpod_default``."""
    from unpod_provider.testing import UnpodSimulator

    with UnpodSimulator() as sim:
        monkeypatch.setenv(CONN_ENV_VAR, sim.connection_json())
        yield sim


@pytest.fixture(scope="session")
def unpod_simulator_session() -> Iterator[UnpodSimulator]:
    """One simulator server for the session; tests should use ``unpod_simulator_shared``."""
    from unpod_provider.testing import UnpodSimulator

    with UnpodSimulator() as sim:
        yield sim


@pytest.fixture
def unpod_simulator_shared(
    unpod_simulator_session: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[UnpodSimulator]:
    """The session simulator, reset to its seeded state (data, faults, log, clock, switches)."""
    unpod_simulator_session.reset()
    monkeypatch.setenv(CONN_ENV_VAR, unpod_simulator_session.connection_json())
    yield unpod_simulator_session
    unpod_simulator_session.reset()
