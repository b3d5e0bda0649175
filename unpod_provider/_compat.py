"""The few imports that differ between the Airflow 3 releases this provider supports.

Airflow 3.1 moved ``BaseHook`` into the task SDK (``airflow.sdk``); 3.0 still has it at
``airflow.hooks.base``. Everything else the provider uses is at the same place in all 3.x.
"""

from __future__ import annotations

try:
    from airflow.sdk import BaseHook
except ImportError:  # Airflow 3.0
    from airflow.hooks.base import BaseHook  # type: ignore[no-redef,attr-defined]

__all__ = ["BaseHook"]
