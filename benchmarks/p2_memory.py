"""P2: memory flat in N. Peak RSS of exporting 1,000 vs 100,000 tasks (with transcripts) to JSONL.

Each size runs ``ListSpaceTasksOperator(output_path="file://...")`` in a fresh child process (so
``ru_maxrss`` is that export's peak alone) against the simulator in another process. The ratio
of the two peaks must stay under 1.5: the export streams page by page and never holds the
task list. The file must hold every task exactly once, one request per page.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    BenchmarkError,
    SimulatorProcess,
    child_main,
    current_rss_mb,
    peak_rss_mb,
    ratio,
    run_child,
    simulator,
)

MODULE = "benchmarks.p2_memory"
PAGE_SIZE = 100


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Run in the child: one export, its peak RSS and wall time."""
    from unpod_provider.operators.unpod import ListSpaceTasksOperator

    operator = ListSpaceTasksOperator(
        task_id="export_tasks",
        space_token=str(payload["space"]),
        output_path=Path(payload["out"]).resolve().as_uri(),
        page_size=PAGE_SIZE,
    )
    rss_before = current_rss_mb()
    started = time.perf_counter()
    result = operator.execute(context={})  # type: ignore[arg-type]
    elapsed = time.perf_counter() - started
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_export_mb": round(rss_before, 1),
        "export_s": round(elapsed, 2),
        "count": result["count"],
    }


def check_file(path: Path, n_tasks: int) -> int:
    """Every line one task, each task id once, ``n_tasks`` in all; returns the file size."""
    seen: set[str] = set()
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            task_id = json.loads(line)["task_id"]
            if task_id in seen:
                raise BenchmarkError(f"P2: task {task_id} exported twice")
            seen.add(task_id)
    if len(seen) != n_tasks:
        raise BenchmarkError(f"P2: {len(seen)} tasks exported, expected {n_tasks}")
    return path.stat().st_size


def export(sim: SimulatorProcess, workdir: Path, n_tasks: int) -> dict[str, Any]:
    """One export of a new space of ``n_tasks`` tasks, checked."""
    space = sim.client.add_space(n_tasks=n_tasks)
    out = workdir / f"tasks-{n_tasks}.jsonl"
    sim.client.reset_requests()
    result = run_child(
        MODULE,
        {"space": space, "out": str(out)},
        workdir=workdir,
        env={"AIRFLOW_CONN_UNPOD_DEFAULT": sim.connection_json()},
        timeout=900,
    )
    pages = sorted(
        int(r["query"].get("page", 0))
        for r in sim.client.requests()
        if str(r["path"]).endswith(f"/spaces/{space}/tasks/")
    )
    n_pages = -(-n_tasks // PAGE_SIZE)
    if pages != list(range(1, n_pages + 1)):
        raise BenchmarkError(
            f"P2: {n_tasks} tasks: pages requested {pages[:5]}..., not each of {n_pages} once"
        )
    if result["count"] != n_tasks:
        raise BenchmarkError(f"P2: the operator reported {result['count']} tasks, expected {n_tasks}")
    result["file_mb"] = round(check_file(out, n_tasks) / 2**20, 1)
    result["requests"] = len(pages)
    out.unlink()
    return result


def run(workdir: Path, *, small: int = 1_000, large: int = 100_000) -> dict[str, Any]:
    """Both sizes against one simulator; returns the figures for ``results.json``."""
    with simulator(workdir) as sim:
        base = export(sim, workdir, small)
        big = export(sim, workdir, large)
        sim_rss = sim.peak_rss_mb()
    return {
        "small": {"n_tasks": small, **base},
        "large": {"n_tasks": large, **big},
        "rss_ratio": ratio(big["peak_rss_mb"], base["peak_rss_mb"]),
        "simulator_peak_rss_mb": sim_rss,
    }


def main(argv: Sequence[str] | None = None) -> int:
    return child_main(argv, measure)


if __name__ == "__main__":
    raise SystemExit(main())
