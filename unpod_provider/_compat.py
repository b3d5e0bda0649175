"""The few imports that differ between the Airflow 3 releases this provider supports.

Airflow 3.1 moved ``BaseHook`` into the task SDK (``airflow.sdk``) and the task exceptions into
``airflow.sdk.exceptions``; 3.0 still has them at ``airflow.hooks.base`` and ``airflow.exceptions``
(which newer releases keep as deprecated aliases of the same classes). Import these names from
here; everything else the provider uses is at the same place in all 3.x.
"""

from __future__ import annotations

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

__all__ = [
    "AirflowException",
    "AirflowFailException",
    "AirflowRescheduleException",
    "AirflowSensorTimeout",
    "AirflowSkipException",
    "BaseHook",
    "TaskDeferred",
]
