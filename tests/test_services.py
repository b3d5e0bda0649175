"""End to end on real Airflow services: the deferrable sensor waits in the triggerer.

``airflow standalone`` (api-server, scheduler, dag-processor, triggerer; LocalExecutor, SQLite,
temporary ``AIRFLOW_HOME``) runs the example DAGs folder against the Unpod simulator (a thread of
this process on a free loopback port, passed as ``AIRFLOW_CONN_UNPOD_DEFAULT``). The test triggers
``unpod_run_report`` through the REST API v2 and drives the run's clock itself, so each phase is
checked rather than raced:

1. run ``pending``: the sensor task goes to ``deferred`` (no worker slot: the default pool shows
   it as deferred, none running) and the triggerer polls the simulator;
2. run ``running``: the task is still deferred and the triggerer keeps polling;
3. run ``completed``: the DAG run ends ``success`` and the report file holds the simulator's
   figures.

Everything started is stopped at the end, also on failure.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from services import AirflowServices, tail, wait_for

pytestmark = [pytest.mark.slow, pytest.mark.timeout(360)]

DAG_ID = "unpod_run_report"
SENSOR_TASK = "wait_for_run"
POLL_SECONDS = 2
N_TASKS = 12
PHASE = 3600.0  # simulated seconds per phase; the test moves the simulator's clock


def _get(item: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(item, Mapping):
            return None
        item = item.get(part)
    return item


def _expected_figures(tasks: list[dict[str, Any]]) -> dict[str, Any]:
    """The report's figures computed straight from the simulator's data."""
    durations = [
        float(d)
        for d in (_get(t, "output.duration") for t in tasks)
        if isinstance(d, (int, float)) and not isinstance(d, bool)
    ]
    outcomes: Counter[str] = Counter()
    for t in tasks:
        outcome = _get(t, "output.post_call_data.summary.status") or _get(t, "output.post_call_data.outcome")
        if isinstance(outcome, str) and outcome:
            outcomes[outcome] += 1
    statuses = Counter(str(t.get("status")) for t in tasks)
    return {
        "tasks": len(tasks),
        "statuses": dict(statuses),
        "completed": statuses.get("completed", 0),
        "calls_with_duration": len(durations),
        "total_duration_seconds": round(sum(durations), 3),
        "outcomes": dict(outcomes),
    }


def test_deferrable_sensor_on_real_services(tmp_path: Path) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN, UnpodSimulator

    started = time.monotonic()
    report_dir = tmp_path / "reports"

    def log(msg: str) -> None:
        print(f"[services +{time.monotonic() - started:5.1f}s] {msg}")

    print()
    with UnpodSimulator() as sim:
        run_id = sim.add_run(
            DEMO_SPACE_TOKEN,
            n_tasks=N_TASKS,
            timeline=[("pending", 0), ("running", PHASE), ("completed", 2 * PHASE)],
        )
        env = {
            **sim.connection_env(),
            "UNPOD_POKE_INTERVAL": str(POLL_SECONDS),
            "UNPOD_REPORT_DIR": str(report_dir),
        }
        with AirflowServices(tmp_path / "airflow-home", env=env) as af:
            log(f"Airflow healthy at {af.base_url}; simulator at {sim.base_url}")

            def run_polls() -> int:
                """Status looks (lists of the space's runs) the simulator served; only Airflow calls it."""
                return sum(
                    1 for r in sim.requests if DEMO_SPACE_TOKEN in r["path"] and r["path"].endswith("/runs/")
                )

            def failure_context() -> str:
                tis = af.api("GET", f"/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances")
                states = {ti["task_id"]: ti["state"] for ti in tis["task_instances"]}
                return f"task states {states}\n--- standalone log ---\n{tail(af.log_path, 120)}"

            # The DAG is parsed by the dag-processor (no import errors), then unpaused and triggered.
            wait_for(
                lambda: af.api("GET", f"/dags/{DAG_ID}", expect=(200, 404)).get("dag_id"),
                timeout=120,
                what=f"{DAG_ID} parsed",
            )
            errors = af.api("GET", "/importErrors")["import_errors"]
            assert not errors, f"import errors in dags_examples: {errors}"
            af.api("PATCH", f"/dags/{DAG_ID}", json={"is_paused": False})
            conf = {"run_id": run_id, "space_token": DEMO_SPACE_TOKEN, "report_dir": str(report_dir)}
            dag_run = af.api(
                "POST",
                f"/dags/{DAG_ID}/dagRuns",
                expect=200,
                json={"logical_date": None, "conf": conf},
            )
            dag_run_id = dag_run["dag_run_id"]
            log(f"triggered {DAG_ID} run {dag_run_id} for Unpod run {run_id}")
            ti_path = f"/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances/{SENSOR_TASK}"

            def sensor_state() -> str | None:
                return af.api("GET", ti_path, expect=(200, 404)).get("state")

            seen_states: list[str | None] = []

            def deferred() -> bool:
                state = sensor_state()
                if not seen_states or seen_states[-1] != state:
                    seen_states.append(state)
                assert state not in ("failed", "upstream_failed", "success"), failure_context()
                return state == "deferred"

            # ---- phase 1: pending -> the sensor defers --------------------------------------
            try:
                wait_for(deferred, timeout=150, interval=0.5, what="the sensor to defer")
            except TimeoutError as err:
                raise AssertionError(f"{err}; states seen {seen_states}\n{failure_context()}") from None
            log(f"sensor deferred (states seen: {seen_states}); Unpod run is {sim.run_status(run_id)}")
            assert sim.run_status(run_id) == "pending"
            pool = af.api("GET", "/pools/default_pool")
            assert pool["deferred_slots"] == 1 and pool["running_slots"] == 0, pool
            polls = run_polls()
            wait_for(lambda: run_polls() >= polls + 2, timeout=60, what="the triggerer to poll the run")
            assert sensor_state() == "deferred"

            # ---- phase 2: running -> still deferred, still polling ---------------------------
            sim.advance(PHASE)
            assert sim.run_status(run_id) == "running"
            polls = run_polls()
            wait_for(lambda: run_polls() >= polls + 2, timeout=60, what="polls of the running run")
            assert sensor_state() == "deferred", failure_context()
            pool = af.api("GET", "/pools/default_pool")
            assert pool["deferred_slots"] == 1 and pool["running_slots"] == 0, pool
            log("run running: sensor still deferred, triggerer still polling, no worker slot used")

            # ---- phase 3: completed -> the DAG run succeeds ----------------------------------
            sim.advance(PHASE)
            assert sim.run_status(run_id) == "completed"

            def finished() -> str | None:
                state = af.api("GET", f"/dags/{DAG_ID}/dagRuns/{dag_run_id}")["state"]
                return state if state in ("success", "failed") else None

            try:
                final = wait_for(finished, timeout=150, interval=1.0, what="the DAG run to finish")
            except TimeoutError as err:
                raise AssertionError(f"{err}\n{failure_context()}") from None
            assert final == "success", failure_context()
            log("DAG run success")
            tis = af.api("GET", f"/dags/{DAG_ID}/dagRuns/{dag_run_id}/taskInstances")["task_instances"]
            assert {ti["task_id"]: ti["state"] for ti in tis} == {
                "wait_for_run": "success",
                "fetch_tasks": "success",
                "summarise": "success",
                "write_report": "success",
            }
            sensor = next(ti for ti in tis if ti["task_id"] == SENSOR_TASK)
            assert sensor["try_number"] == 1, sensor  # resumed from the trigger, not retried

        # ---- the report holds the simulator's figures ----------------------------------------
        report_files = sorted(report_dir.glob("unpod_run_report_*.json"))
        assert [p.name for p in report_files] == [f"unpod_run_report_{run_id}.json"], report_files
        report = json.loads(report_files[0].read_text())
        expected = _expected_figures(sim.run_tasks(run_id))
        assert report["run_id"] == run_id
        assert report["space_token"] == DEMO_SPACE_TOKEN
        assert report["run_status"] == "completed"
        assert expected["tasks"] == N_TASKS and expected["completed"] == N_TASKS
        for key, value in expected.items():
            got = report[key]
            if isinstance(value, float):
                assert got == pytest.approx(value, abs=1e-3), (key, got, value)
            else:
                assert got == value, (key, got, value)
        assert (report_dir / f"unpod_run_report_{run_id}.txt").read_text().startswith("Unpod run report")
        log(f"report checked: {json.dumps({k: report[k] for k in expected})}")
