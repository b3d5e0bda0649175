"""unpod_run_report: wait for an Unpod run to finish, then write a short report of its calls.

1. ``wait_for_run``: ``RunCompletedSensor(deferrable=True)`` waits in the triggerer until the run
   reaches a terminal status and hands the run on as XCom.
2. ``fetch_tasks``: ``ListRunTasksOperator`` fetches the run's tasks, keeping only the few fields
   the report needs (XCom stays small even for large runs).
3. ``summarise``: counts by task status, total and mean call duration, call outcomes
   (``output.post_call_data.summary.status``) and classification labels.
4. ``write_report``: writes ``<report_dir>/unpod_run_report_<run_id>.json`` and ``.txt`` and
   prints the text.

Trigger with ``{"run_id": "R..."}`` (and optionally ``space_token`` and ``report_dir``), e.g.
``airflow dags test unpod_run_report -c '{"run_id": "R..."}'``. Needs the ``unpod_default``
connection at run time only; parsing this file does no I/O.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from airflow.sdk import Param, dag, get_current_context, task

from unpod_provider.operators.unpod import ListRunTasksOperator
from unpod_provider.protocol import get_path
from unpod_provider.sensors.unpod import RunCompletedSensor

#: The simulator's demo space (``unpod_provider.testing.DEMO_SPACE_TOKEN``), when no env var is set.
DEMO_SPACE_TOKEN = "DEMO0SPACE0TOKEN00000001"
SPACE_TOKEN = os.environ.get("UNPOD_SPACE_TOKEN") or DEMO_SPACE_TOKEN
REPORT_DIR = os.environ.get("UNPOD_REPORT_DIR") or os.path.join(tempfile.gettempdir(), "unpod-reports")


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


POKE_INTERVAL = _float_env("UNPOD_POKE_INTERVAL", 10.0)

#: The dotted task fields the report reads; everything else stays out of XCom.
REPORT_FIELDS = [
    "task_id",
    "status",
    "ref_id",
    "input.name",
    "output.duration",
    "output.cost",
    "output.call_end_reason",
    "output.error",
    "output.post_call_data.summary.status",
    "output.post_call_data.outcome",
    "output.post_call_data.classification.labels",
]


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def build_report(
    tasks: Sequence[Mapping[str, Any]], run: Mapping[str, Any] | None, space_token: str
) -> dict[str, Any]:
    """The report as JSON: counts by status, call durations, outcomes, labels, errors."""
    statuses: Counter[str] = Counter()
    outcomes: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    end_reasons: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    durations: list[float] = []
    cost = 0.0
    for item in tasks:
        statuses[str(item.get("status") or "unknown")] += 1
        duration = _number(get_path(item, "output.duration"))
        if duration is not None:
            durations.append(duration)
        cost += _number(get_path(item, "output.cost")) or 0.0
        outcome = get_path(item, "output.post_call_data.summary.status") or get_path(
            item, "output.post_call_data.outcome"
        )
        if isinstance(outcome, str) and outcome:
            outcomes[outcome] += 1
        found = get_path(item, "output.post_call_data.classification.labels")
        for label in found if isinstance(found, list) else []:
            labels[str(label)] += 1
        reason = get_path(item, "output.call_end_reason")
        if isinstance(reason, str) and reason:
            end_reasons[reason] += 1
        error = get_path(item, "output.error")
        if error:
            errors[str(error)[:200]] += 1
    total_duration = round(sum(durations), 3)
    run = run or {}
    return {
        "space_token": space_token,
        "run_id": run.get("run_id"),
        "run_status": run.get("status"),
        "run_created": run.get("created"),
        "run_modified": run.get("modified"),
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "tasks": len(tasks),
        "statuses": dict(statuses.most_common()),
        "completed": statuses.get("completed", 0),
        "failed": statuses.get("failed", 0),
        "calls_with_duration": len(durations),
        "total_duration_seconds": total_duration,
        "mean_duration_seconds": round(total_duration / len(durations), 3) if durations else None,
        "total_cost": round(cost, 4),
        "outcomes": dict(outcomes.most_common()),
        "labels": dict(labels.most_common()),
        "end_reasons": dict(end_reasons.most_common()),
        "errors": dict(errors.most_common()),
    }


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    minutes, rest = divmod(seconds, 60)
    return f"{seconds:,.1f} s ({int(minutes)}m {rest:04.1f}s)"


def _counts(counts: Mapping[str, int], total: int) -> list[str]:
    if not counts:
        return ["  (none)"]
    width = max(len(name) for name in counts)
    return [
        f"  {name:<{width}}  {n:>5,}  {100 * n / total:5.1f}%" if total else f"  {name:<{width}}  {n:>5,}"
        for name, n in counts.items()
    ]


def render_text(report: Mapping[str, Any]) -> str:
    """The report as readable text."""
    total = int(report.get("tasks") or 0)
    lines = [
        f"Unpod run report: run {report.get('run_id')} in space {report.get('space_token')}",
        f"Run status: {report.get('run_status')} (created {report.get('run_created')}, "
        f"last change {report.get('run_modified')})",
        f"Tasks: {total:,} ({report.get('completed', 0):,} completed, {report.get('failed', 0):,} failed)",
        "",
        "Task statuses:",
        *_counts(report.get("statuses") or {}, total),
        "",
        f"Calls with a duration: {report.get('calls_with_duration', 0):,}",
        f"Total call duration:   {_duration(report.get('total_duration_seconds'))}",
        f"Mean call duration:    {_duration(report.get('mean_duration_seconds'))}",
        f"Total cost:            {report.get('total_cost', 0):,.4f}",
        "",
        "Outcomes (post-call summary status):",
        *_counts(report.get("outcomes") or {}, total),
        "",
        "Classification labels:",
        *_counts(report.get("labels") or {}, total),
    ]
    if report.get("errors"):
        lines += ["", "Errors of failed calls:", *_counts(report["errors"], total)]
    lines += ["", f"Generated at {report.get('generated_at')}"]
    return "\n".join(lines) + "\n"


def write_report_files(report: Mapping[str, Any], report_dir: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``unpod_run_report_<run_id>.json`` and ``.txt`` into ``report_dir``; return their paths."""
    directory = Path(report_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    stem = "unpod_run_report_" + re.sub(r"[^A-Za-z0-9_-]", "_", str(report.get("run_id") or "unknown"))
    json_path = directory / f"{stem}.json"
    text_path = directory / f"{stem}.txt"
    json_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    text_path.write_text(render_text(report), encoding="utf-8")
    return {"json_path": str(json_path), "text_path": str(text_path)}


@dag(
    dag_id="unpod_run_report",
    schedule=None,
    catchup=False,
    tags=["unpod", "example"],
    doc_md=__doc__,
    params={
        "space_token": Param(
            SPACE_TOKEN,
            type="string",
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The Unpod space holding the run (env UNPOD_SPACE_TOKEN; default: demo space).",
        ),
        "run_id": Param(
            "",
            type="string",
            description="The run to wait for and report on, e.g. 'R0123...' (required).",
        ),
        "report_dir": Param(
            REPORT_DIR,
            type="string",
            minLength=1,
            description="Where the JSON and text report go (env UNPOD_REPORT_DIR; default: a temp dir).",
        ),
    },
)
def unpod_run_report() -> None:
    """Wait for a run, fetch its tasks, summarise, write the report."""
    wait = RunCompletedSensor(
        task_id="wait_for_run",
        space_token="{{ params.space_token }}",
        run_id="{{ params.run_id }}",
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=6 * 3600,
    )
    tasks = ListRunTasksOperator(
        task_id="fetch_tasks",
        space_token="{{ params.space_token }}",
        run_id="{{ ti.xcom_pull(task_ids='wait_for_run')['run_id'] }}",
        fields=REPORT_FIELDS,
    )

    @task
    def summarise(tasks: list[dict[str, Any]], run: dict[str, Any]) -> dict[str, Any]:
        """Count statuses, durations and outcomes of the run's calls."""
        params = get_current_context()["params"]
        return build_report(tasks, run, str(params["space_token"]))

    @task
    def write_report(report: dict[str, Any]) -> dict[str, str]:
        """Write the JSON and text report and print the text."""
        params = get_current_context()["params"]
        paths = write_report_files(report, str(params["report_dir"]))
        print(render_text(report))
        print(f"Report written to {paths['json_path']} and {paths['text_path']}")
        return paths

    wait >> tasks
    write_report(summarise(tasks.output, wait.output))  # type: ignore[arg-type]  # XComArgs


unpod_run_report()
