"""unpod_export_space: stream every task of an Unpod space to a JSON Lines file.

1. ``export_tasks``: ``ListSpaceTasksOperator(output_path=...)`` pages through the space's tasks
   and writes them one JSON line each, page by page (never all in memory); its XCom is only
   ``{"path": ..., "count": ...}``. ``user_info.user_token`` and ``user_info.location`` are
   left out. ``output_path`` takes any ``ObjectStoragePath`` URI: ``file://``, ``s3://``,
   ``gs://`` ... (with ``output_conn_id`` for the storage credentials).
2. ``check_export``: reads the file back line by line and prints the count by task status.

Trigger with no conf to export the demo space, or with ``{"space_token": ..., "output_path": ...}``.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from typing import Any

from airflow.sdk import ObjectStoragePath, Param, dag, task

from unpod_provider.operators.unpod import ListSpaceTasksOperator

#: The simulator's demo space (``unpod_provider.testing.DEMO_SPACE_TOKEN``), when no env var is set.
DEMO_SPACE_TOKEN = "DEMO0SPACE0TOKEN00000001"
SPACE_TOKEN = os.environ.get("UNPOD_SPACE_TOKEN") or DEMO_SPACE_TOKEN
EXPORT_DIR = os.environ.get("UNPOD_EXPORT_DIR") or os.path.join(tempfile.gettempdir(), "unpod-exports")


@dag(
    dag_id="unpod_export_space",
    schedule=None,
    catchup=False,
    tags=["unpod", "example"],
    doc_md=__doc__,
    params={
        "space_token": Param(
            SPACE_TOKEN,
            type="string",
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The Unpod space to export (env UNPOD_SPACE_TOKEN; default: demo space).",
        ),
        "output_path": Param(
            "",
            type="string",
            description=(
                "Where to write the JSON Lines (an ObjectStoragePath URI such as s3://bucket/tasks.jsonl). "
                "Empty: <export_dir>/unpod_tasks_<space_token>.jsonl."
            ),
        ),
        "export_dir": Param(
            EXPORT_DIR,
            type="string",
            minLength=1,
            description="Local folder used when output_path is empty (env UNPOD_EXPORT_DIR).",
        ),
    },
)
def unpod_export_space() -> None:
    """Export a space's tasks as JSON Lines, then check the file."""
    export = ListSpaceTasksOperator(
        task_id="export_tasks",
        space_token="{{ params.space_token }}",
        output_path=(
            "{{ params.output_path or ('file://' ~ params.export_dir ~ '/unpod_tasks_' "
            "~ params.space_token ~ '.jsonl') }}"
        ),
        page_size=100,
    )

    @task
    def check_export(result: dict[str, Any]) -> dict[str, Any]:
        """Read the export back, line by line, and count the tasks by status."""
        statuses: Counter[str] = Counter()
        with ObjectStoragePath(result["path"]).open("r", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    statuses[str(json.loads(line).get("status"))] += 1
        lines = sum(statuses.values())
        if lines != result["count"]:
            raise ValueError(f"{result['path']} has {lines} lines, expected {result['count']}")
        print(f"Exported {lines} tasks to {result['path']}: {dict(statuses.most_common())}")
        return {"path": result["path"], "count": lines, "statuses": dict(statuses.most_common())}

    check_export(export.output)  # type: ignore[arg-type]  # an XComArg, resolved at run time


unpod_export_space()
