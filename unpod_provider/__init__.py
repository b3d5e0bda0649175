"""Apache Airflow provider for the Unpod platform (AI agents that run batches of calls).

Importing this package is cheap on purpose: DAG files are parsed every few seconds,
so nothing here imports Airflow, requests or httpx.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
