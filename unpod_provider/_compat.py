"""The few imports that differ between the Airflow 3 releases this provider supports.

Airflow 3.1 moved ``BaseHook`` into the task SDK (``airflow.sdk``) and the task exceptions into
``airflow.sdk.exceptions``; 3.0 still has them at ``airflow.hooks.base`` and ``airflow.exceptions``
(which newer releases keep as deprecated aliases of the same classes). Import these names from
here; everything else the provider uses is at the same place in all 3.x.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

try:
    from airflow.sdk.exceptions import (
        AirflowException,
        AirflowFailException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )
except ImportError:  # Airflow 3.0
    from airflow.exceptions import (  # type: ignore[no-redef,attr-defined,assignment]
        AirflowException,
        AirflowFailException,
        AirflowRescheduleException,
        AirflowSensorTimeout,
        AirflowSkipException,
        TaskDeferred,
    )


def first_reschedule_date(ti: Any, context: Any) -> datetime | None:
    """``ti.get_first_reschedule_date(context)`` as an aware datetime, or None on the first look.

    Airflow 3.0's in-process runner (``airflow dags test``, ``dag.test()``) hands the date over
    unparsed, as the API's ISO string; later releases (and 3.0's real workers) parse it.
    """
    getter = getattr(ti, "get_first_reschedule_date", None)
    value = getter(context) if getter is not None else None
    if value is None or isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    raise TypeError(f"Airflow returned a first reschedule date of type {type(value).__name__}: {value!r}")


class RescheduleDateParsingTI:
    """Stand-in for the task instance that parses ``get_first_reschedule_date`` (see above).

    Airflow 3.0's ``BaseSensorOperator.execute`` subtracts that value from ``utcnow()``, so in
    reschedule mode the third look of a ``dags test`` run fails with a ``TypeError`` there. Every
    other attribute is the real task instance's.
    """

    def __init__(self, ti: Any) -> None:
        self._ti = ti

    def get_first_reschedule_date(self, context: Any) -> datetime | None:
        return first_reschedule_date(self._ti, context)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ti, name)

    def __repr__(self) -> str:
        return repr(self._ti)


__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "RescheduleDateParsingTI",
    "TaskDeferred",
    "first_reschedule_date",
]
