"""DAGs end to end under ``airflow dags test`` against the REAL Unpod server (the unpod-server kit).

- A DAG written here: ``RunCompletedSensor(deferrable=True, poke_interval=1)`` waits on a run
  created in ``small``, then ``ListRunTasksOperator`` fetches its tasks. While the DAG runs, the
  run is moved pending -> processing -> in_progress -> completed through the harness route, each
  step only after the sensor/trigger has looked (counted in the server's access log).
- The example DAGs in ``dags_examples/`` that fit the seeded data: ``unpod_export_space`` (the
  260 tasks of ``big``), ``unpod_run_report`` and ``unpod_score_calls`` (the seeded
  partially_completed run of ``big``), ``unpod_daily_campaign`` (``CreateRunOperator`` with the
  leads CSV in ``small``, then completed through the harness route).

Outputs are checked against the raw Mongo documents; the API token must appear nowhere.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from realkit import REPO_ROOT, TOKEN_CONN, Kit, Tally, item_differences, wait_until

from unpod_provider import protocol
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.testing.dag_runner import DagTestResult, DagTestRunner

EXAMPLES = REPO_ROOT / "dags_examples"
DAG_TIMEOUT = 300.0
WAIT_AND_FETCH = "real_server_wait_and_fetch"

WAIT_AND_FETCH_DAG = '''\
"""Written by tests/real_server/test_dags.py: wait for a run (deferrable), fetch its tasks, save them."""

from __future__ import annotations

import json

from airflow.sdk import dag, get_current_context, task

from unpod_provider.operators.unpod import ListRunTasksOperator
from unpod_provider.sensors.unpod import RunCompletedSensor


@dag(
    dag_id="real_server_wait_and_fetch",
    schedule=None,
    catchup=False,
    params={"space_token": "", "run_id": "", "out": ""},
)
def real_server_wait_and_fetch() -> None:
    wait = RunCompletedSensor(
        task_id="wait_for_run",
        space_token="{{ params.space_token }}",
        run_id="{{ params.run_id }}",
        deferrable=True,
        poke_interval=1,
        timeout=600,
    )
    fetch = ListRunTasksOperator(
        task_id="fetch_tasks",
        space_token="{{ params.space_token }}",
        run_id="{{ ti.xcom_pull(task_ids='wait_for_run')['run_id'] }}",
        redact=False,
    )

    @task
    def save(tasks: list, run: dict) -> int:
        with open(get_current_context()["params"]["out"], "w", encoding="utf-8") as handle:
            json.dump({"tasks": tasks, "run": run}, handle)
        return len(tasks)

    wait >> fetch
    save(fetch.output, wait.output)


real_server_wait_and_fetch()
'''


# --------------------------------------------------------------------------------------------
# Runners: one migrated SQLite AIRFLOW_HOME for the examples folder and the folder written here
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def airflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("real-server-airflow-home")


@pytest.fixture(scope="session")
def examples_runner(airflow_home: Path) -> DagTestRunner:
    runner = DagTestRunner(EXAMPLES, airflow_home=airflow_home)
    runner.prepare()
    return runner


@pytest.fixture(scope="session")
def custom_runner(airflow_home: Path, tmp_path_factory: pytest.TempPathFactory) -> DagTestRunner:
    folder = tmp_path_factory.mktemp("real-server-dags")
    (folder / f"{WAIT_AND_FETCH}.py").write_text(WAIT_AND_FETCH_DAG, encoding="utf-8")
    runner = DagTestRunner(folder, airflow_home=airflow_home)
    runner.prepare()
    return runner


def run_env(kit: Kit, **extra: str) -> dict[str, str]:
    return {**kit.connection_env(TOKEN_CONN), "UNPOD_POKE_INTERVAL": "1", **extra}


# --------------------------------------------------------------------------------------------
# A DAG run in the background, so the test can move the run while the sensor waits
# --------------------------------------------------------------------------------------------


@dataclass
class BackgroundDag:
    """``airflow dags test`` started in its own process group; output goes to files."""

    runner: DagTestRunner
    dag_id: str
    conf: dict[str, Any]
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    started: float

    @classmethod
    def start(
        cls, runner: DagTestRunner, dag_id: str, conf: Mapping[str, Any], env: Mapping[str, str], logs: Path
    ) -> BackgroundDag:
        runner.prepare()
        stdout_path, stderr_path = logs / f"{dag_id}.stdout", logs / f"{dag_id}.stderr"
        command = [runner.python, "-m", "airflow", "dags", "test", dag_id, "-c", json.dumps(dict(conf))]
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                command,
                env=runner.environment(env),
                cwd=str(runner.airflow_home),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
        return cls(runner, dag_id, dict(conf), process, stdout_path, stderr_path, time.monotonic())

    def running(self) -> bool:
        return self.process.poll() is None

    def output(self) -> str:
        return "".join(
            p.read_text(encoding="utf-8", errors="replace") for p in (self.stdout_path, self.stderr_path)
        )

    def kill(self) -> None:
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            if self.process.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=grace)

    def result(self, timeout: float = DAG_TIMEOUT) -> DagTestResult:
        timed_out = False
        try:
            self.process.wait(timeout=max(1.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            timed_out = True
            self.kill()
        run_id, run_state, states = self.runner.task_states(self.dag_id)
        return DagTestResult(
            dag_id=self.dag_id,
            conf=self.conf,
            returncode=None if timed_out else self.process.returncode,
            stdout=self.stdout_path.read_text(encoding="utf-8", errors="replace"),
            stderr=self.stderr_path.read_text(encoding="utf-8", errors="replace"),
            duration=time.monotonic() - self.started,
            timed_out=timed_out,
            run_id=run_id,
            run_state=run_state,
            task_states=states,
        )


@contextlib.contextmanager
def background_dag(
    runner: DagTestRunner, dag_id: str, conf: Mapping[str, Any], env: Mapping[str, str], logs: Path
) -> Iterator[BackgroundDag]:
    dag_run = BackgroundDag.start(runner, dag_id, conf, env, logs)
    try:
        yield dag_run
    finally:
        if dag_run.running():
            dag_run.kill()


def wait_for_looks(kit: Kit, dag_run: BackgroundDag, offset: int, space_key: str, n: int, what: str) -> int:
    """Wait until the space's runs list was read ``n`` times after ``offset``; the new offset."""

    def seen() -> bool:
        if not dag_run.running():
            raise AssertionError(
                f"the DAG ended before {what}:\n" + "\n".join(dag_run.output().splitlines()[-60:])
            )
        return kit.runs_looks_since(offset, space_key) >= n

    wait_until(seen, timeout=DAG_TIMEOUT, interval=0.2, what=what)
    return kit.log_offset()


def move_through(
    kit: Kit, dag_run: BackgroundDag, run_id: str, space_key: str, offset: int, steps: list[str]
) -> None:
    """After the first look: each status in ``steps``, moved on once two more looks saw it.

    Looks are sequential (one trigger), so the second look after a change started after the
    first one ended, after the change: it saw the new status.
    """
    wait_for_looks(kit, dag_run, offset, space_key, 1, f"the first look at run {run_id}")
    for i, status in enumerate(steps):
        last = i == len(steps) - 1
        kit.set_run_status(run_id, status, "completed" if last else None)
        if not last:
            wait_for_looks(
                kit, dag_run, kit.log_offset(), space_key, 2, f"two looks at run {run_id} '{status}'"
            )


def looks_in_output(output: str, run_id: str, space: str) -> list[str]:
    return re.findall(rf"Unpod run {run_id} \(space {space}\) is '(\w+)'", output)


def assert_dag_ok(tally: Tally, result: DagTestResult, kit: Kit, expected_states: Mapping[str, str]) -> None:
    tally.check(result.succeeded, f"{result.dag_id} did not succeed:\n{result.tail(80)}")
    for task_id, state in expected_states.items():
        tally.check(
            result.task_states.get(task_id) == state, f"{result.dag_id}: {task_id} {result.task_states}"
        )
    tally.check(kit.token not in result.output, f"{result.dag_id}: the API token is in Airflow's output")
    tally.check(kit.jwt not in result.output, f"{result.dag_id}: the JWT is in Airflow's output")
    tally.check(
        "does not know" not in result.output, f"{result.dag_id}: an unknown-status warning was logged"
    )


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"real_server_example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def new_run_in(kit: Kit, space_key: str, before: set[str]) -> Callable[[], str | None]:
    def find() -> str | None:
        fresh = [
            r["run_id"]
            for r in kit.mongo("runs", space_id=kit.space_id(space_key))
            if r["run_id"] not in before
        ]
        return fresh[-1] if fresh else None

    return find


# ============================================================================================
# The DAG written here: deferrable wait on a created run, through in-between statuses, then fetch
# ============================================================================================


def test_wait_then_fetch_dag_follows_the_run_the_harness_moves(
    custom_runner: DagTestRunner, kit: Kit, tally: Tally, tmp_path: Path
) -> None:
    small = kit.space("small")
    with UnpodHook(TOKEN_CONN) as h:
        created = h.create_run(
            small,
            pilot=kit.pilot,
            context="Real-server DAG test: call these contacts",
            documents=[
                {"name": f"DAG Contact {i}", "contact_number": f"+1555770{i:04d}", "document_id": f"dag-{i}"}
                for i in range(3)
            ],
        )
    run_id = created["run_id"]
    out = tmp_path / "fetched.json"
    offset = kit.log_offset()
    conf = {"space_token": small, "run_id": run_id, "out": str(out)}
    with background_dag(custom_runner, WAIT_AND_FETCH, conf, run_env(kit), tmp_path) as dag_run:
        move_through(kit, dag_run, run_id, "small", offset, ["processing", "in_progress", "completed"])
        result = dag_run.result()
    assert_dag_ok(
        tally, result, kit, {"wait_for_run": "success", "fetch_tasks": "success", "save": "success"}
    )
    looks = looks_in_output(result.output, run_id, small)
    tally.check(
        looks[:1] == ["pending"] and "processing" in looks and "in_progress" in looks,
        f"statuses the sensor and trigger logged: {looks}",
    )
    tally.check("running trigger in line" in result.output, "the sensor did not defer")
    saved = json.loads(out.read_text(encoding="utf-8"))
    docs = kit.mongo_newest_first("tasks", run_id=run_id)
    tally.compare_ids(
        "tasks the DAG fetched", [t["task_id"] for t in saved["tasks"]], [d["task_id"] for d in docs]
    )
    tally.check(
        sorted(created["task_ids"]) == sorted(d["task_id"] for d in docs), "created task ids vs Mongo"
    )
    by_id = {d["task_id"]: d for d in docs}
    for item in saved["tasks"]:
        diffs = item_differences("tasks", item, by_id.get(item["task_id"], {}))
        tally.check(not diffs, f"fetched task {item['task_id']}: {diffs[:5]}")
        tally.check(item.get("status") == "completed", f"task {item['task_id']} status {item.get('status')}")
    tally.check(saved["run"].get("status") == "completed", f"sensor's XCom run {saved['run']}")


# ============================================================================================
# The example DAGs
# ============================================================================================


def test_example_export_space_writes_every_task_of_big(
    examples_runner: DagTestRunner, kit: Kit, tally: Tally, tmp_path: Path
) -> None:
    big = kit.space("big")
    target = tmp_path / "big.jsonl"
    result = examples_runner.run(
        "unpod_export_space",
        {"space_token": big, "output_path": f"file://{target}"},
        env=run_env(kit),
        timeout=DAG_TIMEOUT,
    )
    assert_dag_ok(tally, result, kit, {"export_tasks": "success", "check_export": "success"})
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines() if line.strip()]
    docs = kit.mongo_newest_first("tasks", space_id=kit.space_id("big"))
    tally.compare_ids("exported tasks of big", [t["task_id"] for t in lines], [d["task_id"] for d in docs])
    by_id = {d["task_id"]: d for d in docs}
    for line in lines:
        diffs = item_differences("tasks", line, by_id.get(line["task_id"], {}), skip=("user_info",))
        tally.check(not diffs, f"exported task {line['task_id']}: {diffs[:5]}")
        user_info = line.get("user_info") or {}
        tally.check(
            "user_token" not in user_info and "location" not in user_info, f"not redacted: {line['task_id']}"
        )
    statuses = dict(Counter(d["status"] for d in docs).most_common())
    tally.check(
        f"Exported {len(docs)} tasks to file://{target}: {statuses}" in result.output, "the export line"
    )


@pytest.fixture
def partially_completed_run(kit: Kit) -> str:
    run_id = kit.seeded_run_ids("big")[1]
    assert kit.seeded_runs()[run_id]["status"] == "partially_completed"
    return run_id


def test_example_run_report_on_the_partially_completed_run(
    examples_runner: DagTestRunner, kit: Kit, tally: Tally, tmp_path: Path, partially_completed_run: str
) -> None:
    big, run_id = kit.space("big"), partially_completed_run
    result = examples_runner.run(
        "unpod_run_report",
        {"space_token": big, "run_id": run_id, "report_dir": str(tmp_path)},
        env=run_env(kit),
        timeout=DAG_TIMEOUT,
    )
    states = {
        "wait_for_run": "success",
        "fetch_tasks": "success",
        "summarise": "success",
        "write_report": "success",
    }
    assert_dag_ok(tally, result, kit, states)
    report = json.loads((tmp_path / f"unpod_run_report_{run_id}.json").read_text(encoding="utf-8"))
    docs = kit.mongo("tasks", run_id=run_id)
    statuses = Counter(d["status"] for d in docs)
    outcomes = Counter(
        s for d in docs if (s := protocol.get_path(d, "output.post_call_data.summary.status")) is not None
    )
    durations = [x for d in docs if isinstance(x := protocol.get_path(d, "output.duration"), (int, float))]
    errors = Counter(str(e) for d in docs if (e := protocol.get_path(d, "output.error")))
    expected = {
        "run_id": run_id,
        "run_status": "partially_completed",
        "tasks": len(docs),
        "completed": statuses["completed"],
        "failed": statuses["failed"],
        "statuses": dict(statuses),
        "outcomes": dict(outcomes),
        "errors": dict(errors),
        "calls_with_duration": len(durations),
    }
    got = {k: report.get(k) for k in expected}
    tally.check(got == expected, f"report {got} != Mongo {expected}")
    tally.check(
        report["total_duration_seconds"] == pytest.approx(sum(durations), abs=1e-3), f"durations {report}"
    )
    tally.check(
        (report["tasks"], report["completed"], report["failed"]) == (90, 30, 60), f"seed counts {report}"
    )
    tally.check("finished as 'partially_completed'" in result.output, "the partially_completed warning")


def test_example_score_calls_maps_one_task_per_completed_call(
    examples_runner: DagTestRunner, kit: Kit, tally: Tally, partially_completed_run: str
) -> None:
    big, run_id = kit.space("big"), partially_completed_run
    result = examples_runner.run(
        "unpod_score_calls", {"space_token": big, "run_id": run_id}, env=run_env(kit), timeout=DAG_TIMEOUT
    )
    completed = [d for d in kit.mongo_newest_first("tasks", run_id=run_id) if d["status"] == "completed"]
    mapped = {f"score_call[{i}]": "success" for i in range(len(completed))}
    assert_dag_ok(
        tally, result, kit, {"wait_for_run": "success", "fetch_completed_calls": "success", **mapped}
    )
    tally.check(
        {k: v for k, v in result.task_states.items() if k.startswith("score_call[")} == mapped,
        f"mapped score_call instances: {len([k for k in result.task_states if k.startswith('score_call[')])}",
    )
    tally.check(result.task_states.get("summarise_scores") == "success", f"{result.task_states}")
    module = load_example("unpod_score_calls")
    summary = module.summarise(
        [module.score_transcript(protocol.project(d, module.CALL_FIELDS)) for d in completed]
    )
    line = (
        f"Scored {summary['calls']} calls: mean {summary['mean_score']}, {summary['good']} good, "
        f"{summary['average']} average, {summary['poor']} poor"
    )
    tally.check(line in result.output, f"expected {line!r} in the output")


def test_example_daily_campaign_creates_the_run_waits_and_writes_results(
    examples_runner: DagTestRunner, kit: Kit, tally: Tally, tmp_path: Path
) -> None:
    small = kit.space("small")
    leads = list(csv.DictReader((EXAMPLES / "data" / "leads.csv").open(encoding="utf-8")))
    before = set(kit.mongo_ids("runs", space_id=kit.space_id("small")))
    offset = kit.log_offset()
    conf = {"space_token": small, "pilot": kit.pilot, "report_dir": str(tmp_path)}
    with background_dag(examples_runner, "unpod_daily_campaign", conf, run_env(kit), tmp_path) as dag_run:
        run_id = wait_until(new_run_in(kit, "small", before), timeout=DAG_TIMEOUT, what="the campaign's run")
        move_through(kit, dag_run, str(run_id), "small", offset, ["in_progress", "completed"])
        result = dag_run.result()
    states = {"start_campaign": "success", "fetch_results": "success", "write_results": "success"}
    assert_dag_ok(tally, result, kit, states)
    docs = kit.mongo_newest_first("tasks", run_id=str(run_id))
    tally.check(len(docs) == len(leads), f"{len(docs)} tasks in Mongo for {len(leads)} leads")
    tally.check(
        sorted(d["ref_id"] for d in docs) == sorted(r["document_id"] for r in leads),
        "ref_ids vs the leads' ids",
    )
    tally.check(all(d["assignee"] == kit.pilot for d in docs), "assignee of the campaign's tasks")
    rows = list(csv.DictReader((tmp_path / f"unpod_daily_campaign_{run_id}.csv").open(encoding="utf-8")))
    tally.check(
        sorted(r["task_id"] for r in rows) == sorted(d["task_id"] for d in docs),
        "results CSV task ids vs Mongo",
    )
    tally.check(
        all(r["status"] == "completed" for r in rows), f"statuses {Counter(r['status'] for r in rows)}"
    )
    summary = json.loads((tmp_path / f"unpod_daily_campaign_{run_id}.json").read_text(encoding="utf-8"))
    tally.check(
        summary.get("run_status") == "completed" and summary.get("calls") == len(leads), f"summary {summary}"
    )
    posts = kit.requests_since(offset, "POST", f"/spaces/{small}/tasks/")
    tally.check(
        posts
        == [
            f"/api/v2/platform/spaces/{small}/tasks/create/ 404",
            f"/api/v2/platform/spaces/{small}/tasks/ 200",
        ]
        or posts == [f"/api/v2/platform/spaces/{small}/tasks/ 200"],
        f"create requests {posts}",
    )
    looks = looks_in_output(result.output, str(run_id), small)
    tally.check("in_progress" in looks, f"statuses the wait logged: {looks}")
