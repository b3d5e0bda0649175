"""Stand-ins and helpers shared by the test modules (``from fakes import FakeTI``, like ``services``)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any


class FakeTI:
    """The slice of the runtime task instance the operators, the sensor and Airflow's sensor
    base class use outside the task runner: XCom push/pull and the first reschedule date.

    ``xcoms`` maps ``(task_ids, key)`` to what ``xcom_pull`` returns. What is pushed must be
    plain JSON (Airflow 3 XCom is JSON only) and is kept, as its JSON round trip, in ``pushed``.
    ``first_reschedule`` is what ``get_first_reschedule_date`` answers (Airflow 3.0's
    ``dags test`` gives an ISO string).
    """

    def __init__(self, xcoms: dict[tuple[Any, str], Any] | None = None) -> None:
        self.xcoms = xcoms or {}
        self.pushed: dict[str, Any] = {}
        self.first_reschedule: datetime | str | None = None

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = json.loads(json.dumps(value))

    def xcom_pull(
        self, task_ids: Any = None, key: str = "return_value", default: Any = None, **kwargs: Any
    ) -> Any:
        return self.xcoms.get((task_ids, key), default)

    def get_first_reschedule_date(self, context: Any) -> datetime | str | None:
        return self.first_reschedule


def set_conn(monkeypatch: Any, sim: Any, **extra: Any) -> None:
    """``unpod_default`` points at ``sim``, with these connection extras."""
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", sim.connection_json(**extra))


def unpod_requests(sim: Any, suffix: str = "") -> list[dict[str, Any]]:
    """The Unpod API requests in the simulator's log (no control calls), those ending in ``suffix``."""
    return [r for r in sim.requests if r["path"].startswith("/api/") and r["path"].endswith(suffix)]
