"""unpod_daily_campaign: call today's leads with an Unpod agent, wait for the calls, save the outcomes.

1. ``start_campaign``: ``CreateRunOperator`` reads the leads file (a CSV shipped with the examples,
   ``data/leads.csv``), checks every row (a contact number or an email), starts one run with one
   call per lead, pushes the run id to XCom at once, then waits in the triggerer until the run
   finishes (``wait_for_completion=True, deferrable=True``).
2. ``fetch_results``: ``ListRunTasksOperator`` fetches the run's tasks, only the fields needed.
3. ``write_results``: writes ``<report_dir>/unpod_daily_campaign_<run_id>.csv`` (one row per lead:
   status, outcome, duration, ...) and a ``.json`` summary, and prints the summary.

In production, point ``leads_path`` at what your warehouse query exports for the day (e.g.
``s3://bucket/leads/{{ ds }}.jsonl`` with ``documents_conn_id``), or pass the list a task returns
(``documents=select_leads()``) for small batches; then give the DAG a schedule such as
``"0 9 * * 1-5"``. It has none here so that installing the examples never starts calls.

Trigger with ``airflow dags test unpod_daily_campaign`` (optionally ``-c '{"space_token": ...,
"pilot": ..., "leads_path": ..., "report_dir": ...}'``). Needs the ``unpod_default`` connection at
run time only; parsing this file does no I/O.
"""

from __future__ import annotations

import csv
import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from unpod_provider.operators.unpod import CreateRunOperator, ListRunTasksOperator
from unpod_provider.protocol import get_path

#: The simulator's demo space and agent (``unpod_provider.testing``), when no env var is set.
DEMO_SPACE_TOKEN = "DEMO0SPACE0TOKEN00000001"
DEMO_PILOT = "sales-bot-v3"
SPACE_TOKEN = os.environ.get("UNPOD_SPACE_TOKEN") or DEMO_SPACE_TOKEN
PILOT = os.environ.get("UNPOD_PILOT") or DEMO_PILOT
REPORT_DIR = os.environ.get("UNPOD_REPORT_DIR") or os.path.join(tempfile.gettempdir(), "unpod-reports")
LEADS_PATH = (Path(__file__).resolve().parent / "data" / "leads.csv").as_uri()
CAMPAIGN_CONTEXT = (
    "Introduce our spring offer, answer questions, and book a 20-minute demo if the lead is "
    "interested. Be brief and polite; end the call if asked."
)


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


POKE_INTERVAL = _float_env("UNPOD_POKE_INTERVAL", 30.0)

#: The dotted task fields the results need; everything else stays out of XCom.
RESULT_FIELDS = [
    "task_id",
    "status",
    "ref_id",
    "input.name",
    "input.contact_number",
    "input.email",
    "output.duration",
    "output.call_end_reason",
    "output.error",
    "output.post_call_data.summary.status",
]
RESULT_COLUMNS = [
    "ref_id",
    "name",
    "contact_number",
    "email",
    "task_id",
    "status",
    "outcome",
    "duration_seconds",
    "call_end_reason",
    "error",
]


def result_rows(tasks: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One flat row per call (lead), sorted by the lead's ``ref_id``."""
    rows = [
        {
            "ref_id": task.get("ref_id") or "",
            "name": get_path(task, "input.name") or "",
            "contact_number": get_path(task, "input.contact_number") or "",
            "email": get_path(task, "input.email") or "",
            "task_id": task.get("task_id") or "",
            "status": task.get("status") or "",
            "outcome": get_path(task, "output.post_call_data.summary.status") or "",
            "duration_seconds": get_path(task, "output.duration")
            if get_path(task, "output.duration") is not None
            else "",
            "call_end_reason": get_path(task, "output.call_end_reason") or "",
            "error": get_path(task, "output.error") or "",
        }
        for task in tasks
    ]
    return sorted(rows, key=lambda row: (str(row["ref_id"]), str(row["task_id"])))


def summarise(rows: Sequence[Mapping[str, Any]], run: Mapping[str, Any] | None) -> dict[str, Any]:
    """Counts by call status and outcome."""
    run = run or {}
    return {
        "run_id": run.get("run_id"),
        "run_status": run.get("status"),
        "calls": len(rows),
        "statuses": dict(Counter(str(r["status"]) for r in rows).most_common()),
        "outcomes": dict(Counter(str(r["outcome"]) for r in rows if r["outcome"]).most_common()),
    }


def write_result_files(
    rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], report_dir: str | os.PathLike[str]
) -> dict[str, str]:
    """Write ``unpod_daily_campaign_<run_id>.csv`` and ``.json`` into ``report_dir``."""
    directory = Path(report_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    stem = "unpod_daily_campaign_" + re.sub(r"[^A-Za-z0-9_-]", "_", str(summary.get("run_id") or "unknown"))
    csv_path, json_path = directory / f"{stem}.csv", directory / f"{stem}.json"
    with csv_path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"csv_path": str(csv_path), "json_path": str(json_path)}


@dag(
    dag_id="unpod_daily_campaign",
    schedule=None,
    catchup=False,
    tags=["unpod", "example"],
    doc_md=__doc__,
    params={
        "space_token": Param(
            SPACE_TOKEN,
            type="string",
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The Unpod space to run in (env UNPOD_SPACE_TOKEN; default: demo space).",
        ),
        "pilot": Param(
            PILOT, type="string", minLength=1, description="Handle of the agent that calls (env UNPOD_PILOT)."
        ),
        "leads_path": Param(
            LEADS_PATH,
            type="string",
            minLength=1,
            description="The leads: a .csv, .jsonl or .json file path or URI (file://, s3://, ...).",
        ),
        "report_dir": Param(
            REPORT_DIR,
            type="string",
            minLength=1,
            description="Where the results go (env UNPOD_REPORT_DIR; default: a temp dir).",
        ),
    },
)
def unpod_daily_campaign() -> None:
    """Start the run for today's leads, wait for it, fetch the calls, write the results."""
    start = CreateRunOperator(
        task_id="start_campaign",
        space_token="{{ params.space_token }}",
        pilot="{{ params.pilot }}",
        context=CAMPAIGN_CONTEXT,
        documents="{{ params.leads_path }}",
        wait_for_completion=True,
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=6 * 3600,
    )
    results = ListRunTasksOperator(
        task_id="fetch_results",
        space_token="{{ params.space_token }}",
        run_id="{{ ti.xcom_pull(task_ids='start_campaign')['run_id'] }}",
        fields=RESULT_FIELDS,
    )

    @task
    def write_results(tasks: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, str]:
        """Write the per-lead CSV and the JSON summary, and print the summary."""
        params = get_current_context()["params"]
        rows = result_rows(tasks)
        summary = summarise(rows, run)
        paths = write_result_files(rows, summary, str(params["report_dir"]))
        statuses = ", ".join(f"{n} {s}" for s, n in summary["statuses"].items())
        outcomes = ", ".join(f"{o} {n}" for o, n in summary["outcomes"].items()) or "none"
        print(
            f"Campaign run {summary['run_id']}: {summary['calls']} calls ({statuses}); outcomes: {outcomes}"
        )
        print(f"Results written to {paths['csv_path']} and {paths['json_path']}")
        return paths

    start >> results
    write_results(results.output, start.output)  # type: ignore[arg-type]  # XComArgs


unpod_daily_campaign()
