"""The example DAGs: they parse with no connection and no network, and run green end to end.

The end-to-end tests run ``airflow dags test`` in a subprocess (``DagTestRunner``) against the
simulator, sharing one migrated SQLite ``AIRFLOW_HOME`` for the session, and check what the DAGs
produced (report, scores, JSONL) against the simulator's own data, and that the API token
appears nowhere in Airflow's output.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import re
import socket
import statistics
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from unpod_provider import protocol
from unpod_provider.testing import DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.testing.dag_runner import (
    DagTestError,
    DagTestResult,
    DagTestRunner,
    timeline_on_first_look,
)

DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags_examples"
DAG_IDS = {"unpod_run_report", "unpod_score_calls", "unpod_export_space", "unpod_daily_campaign"}
DAG_TIMEOUT = 240.0


def load_module(name: str) -> ModuleType:
    """Import an example DAG file as a module (for its pure helper functions)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", DAGS_FOLDER / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------------------------
# Parsing: no connection, no network, airflow.sdk imports
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access while parsing DAGs: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("AIRFLOW_CONN_UNPOD_DEFAULT", raising=False)


def test_example_dags_parse_without_connection_or_network(no_network: None) -> None:
    from airflow import settings
    from airflow.dag_processing.dagbag import DagBag

    # conftest.py points AIRFLOW__CORE__DAGS_FOLDER at dags_examples; DagBag() reads it.
    assert Path(settings.DAGS_FOLDER).resolve() == DAGS_FOLDER
    bag = DagBag()
    assert bag.import_errors == {}
    assert set(bag.dag_ids) == DAG_IDS
    for dag_id in DAG_IDS:
        dag = bag.dags[dag_id]  # (get_dag() would query the metadata database)
        assert dag.schedule is None
        assert dag.catchup is False
        params = dag.params.dump()
        assert params["space_token"] == DEMO_SPACE_TOKEN
        if dag_id in ("unpod_run_report", "unpod_score_calls"):
            assert params["run_id"] == ""


def test_space_token_default_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("UNPOD_SPACE_TOKEN", "OTHER0SPACE0TOKEN0000001")
    monkeypatch.setenv("UNPOD_REPORT_DIR", "/somewhere/reports")
    module = load_module("unpod_run_report")
    assert module.SPACE_TOKEN == "OTHER0SPACE0TOKEN0000001"
    assert module.REPORT_DIR == "/somewhere/reports"
    assert module.DEMO_SPACE_TOKEN == DEMO_SPACE_TOKEN


@pytest.mark.parametrize("path", sorted(DAGS_FOLDER.glob("*.py")), ids=lambda p: p.name)
def test_example_dags_import_airflow_only_from_the_sdk(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    modules = [node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)]
    modules += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    airflow_modules = [m for m in modules if m == "airflow" or m.startswith("airflow.")]
    assert airflow_modules and all(m == "airflow.sdk" for m in airflow_modules), airflow_modules


# --------------------------------------------------------------------------------------------
# The DAGs' pure helpers
# --------------------------------------------------------------------------------------------


def test_build_report_and_text() -> None:
    module = load_module("unpod_run_report")
    tasks = [
        {
            "task_id": "T1",
            "status": "completed",
            "output": {
                "duration": 30.0,
                "cost": 0.5,
                "post_call_data": {
                    "summary": {"status": "Interested"},
                    "classification": {"labels": ["A", "B"]},
                },
            },
        },
        {
            "task_id": "T2",
            "status": "completed",
            "output": {"duration": 90, "post_call_data": {"outcome": "Call Back"}},
        },
        {"task_id": "T3", "status": "failed", "output": {"error": "Number not reachable"}},
    ]
    report = module.build_report(tasks, {"run_id": "R1", "status": "partially_completed"}, "S1")
    assert report["tasks"] == 3 and report["completed"] == 2 and report["failed"] == 1
    assert report["total_duration_seconds"] == 120.0 and report["mean_duration_seconds"] == 60.0
    assert report["outcomes"] == {"Interested": 1, "Call Back": 1}
    assert report["labels"] == {"A": 1, "B": 1}
    assert report["errors"] == {"Number not reachable": 1}
    text = module.render_text(report)
    assert "run R1 in space S1" in text and "Tasks: 3 (2 completed, 1 failed)" in text
    assert "Mean call duration:    60.0 s" in text
    empty = module.build_report([], None, "S1")
    assert empty["mean_duration_seconds"] is None and "n/a" in module.render_text(empty)


def test_score_transcript_is_deterministic_and_bounded() -> None:
    module = load_module("unpod_score_calls")
    good = {
        "task_id": "T1",
        "input": {"name": "Ana"},
        "output": {
            "duration": 120.0,
            "transcript": [{"role": "user", "content": "Yes, tell me. Sounds good 👍"}] * 4,
            "post_call_data": {"summary": {"status": "Interested"}},
        },
    }
    bad = {"task_id": "T2", "output": {"transcript": [{"role": "user", "content": "नहीं, not interested"}]}}
    assert module.score_transcript(good) == module.score_transcript(good)
    assert module.score_transcript(good)["score"] == 100
    assert 0 <= module.score_transcript(bad)["score"] < 40
    assert module.score_transcript({})["score"] == 40
    summary = module.summarise([module.score_transcript(c) for c in (good, bad)])
    assert summary["calls"] == 2 and summary["good"] == 1 and summary["poor"] == 1
    assert summary["best"][0]["task_id"] == "T1"


# --------------------------------------------------------------------------------------------
# End to end under `airflow dags test`
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dag_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagTestRunner]:
    """One migrated AIRFLOW_HOME (embedded SQLite) for every subprocess test of the session."""
    home = tmp_path_factory.mktemp("dag-runner-airflow-home")
    with DagTestRunner(DAGS_FOLDER, airflow_home=home) as runner:
        runner.prepare()
        yield runner


def run_env(sim: UnpodSimulator, **extra: str) -> dict[str, str]:
    return {**sim.connection_env(), "UNPOD_POKE_INTERVAL": "1", **extra}


def assert_no_secrets(result: DagTestResult, sim: UnpodSimulator, run_ids: list[str] = ()) -> None:  # type: ignore[assignment]
    assert sim.token not in result.output
    for run_id in run_ids:
        for task in sim.run_tasks(run_id):
            assert task["user_info"]["user_token"] not in result.output


@pytest.mark.slow
def test_run_report_dag_waits_for_the_run_and_writes_the_report(
    dag_runner: DagTestRunner, unpod_simulator_shared: UnpodSimulator, tmp_path: Path
) -> None:
    sim = unpod_simulator_shared
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=15, timeline=[("pending", 0)])
    seen: list[str] = []
    with timeline_on_first_look(
        sim, run_id, [("pending", 0), ("running", 2), ("completed", 5)], on_start=lambda: seen.append("start")
    ) as started:
        result = dag_runner.run(
            "unpod_run_report",
            {"run_id": run_id},
            env=run_env(sim, UNPOD_REPORT_DIR=str(tmp_path)),
            timeout=DAG_TIMEOUT,
        )
    result.raise_for_failure()
    assert started.is_set() and seen == ["start"]
    assert result.task_states == {
        "wait_for_run": "success",
        "fetch_tasks": "success",
        "summarise": "success",
        "write_report": "success",
    }
    # The sensor deferred and the trigger watched the run go pending -> running -> completed.
    assert "running trigger in line" in result.output
    looks = re.findall(rf"Unpod run {run_id} \(space {DEMO_SPACE_TOKEN}\) is '(\w+)'", result.output)
    assert looks[0] == "pending" and "running" in looks
    assert f"Unpod run {run_id} finished with status 'completed'" in result.output
    runs_requests = [r for r in sim.requests if r["path"].endswith(f"/spaces/{DEMO_SPACE_TOKEN}/runs/")]
    assert len(runs_requests) >= 3

    # The report matches the simulator's own tasks.
    tasks = sim.run_tasks(run_id)
    report = json.loads((tmp_path / f"unpod_run_report_{run_id}.json").read_text(encoding="utf-8"))
    durations = [t["output"]["duration"] for t in tasks]
    assert report["run_id"] == run_id and report["run_status"] == "completed"
    assert report["tasks"] == report["completed"] == 15 and report["failed"] == 0
    assert report["total_duration_seconds"] == pytest.approx(sum(durations), abs=1e-3)
    assert report["mean_duration_seconds"] == pytest.approx(statistics.mean(durations), abs=1e-3)
    assert report["outcomes"] == dict(
        Counter(t["output"]["post_call_data"]["summary"]["status"] for t in tasks)
    )
    text = (tmp_path / f"unpod_run_report_{run_id}.txt").read_text(encoding="utf-8")
    assert (
        f"run {run_id} in space {DEMO_SPACE_TOKEN}" in text and "Tasks: 15 (15 completed, 0 failed)" in text
    )
    assert "Tasks: 15 (15 completed, 0 failed)" in result.output  # printed to the task log
    assert f"Fetched 15 tasks of run {run_id} in space {DEMO_SPACE_TOKEN}: 15 completed" in result.output
    assert_no_secrets(result, sim, [run_id])


@pytest.mark.slow
def test_score_calls_dag_maps_one_task_per_completed_call(
    dag_runner: DagTestRunner, unpod_simulator_shared: UnpodSimulator
) -> None:
    sim = unpod_simulator_shared
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=9, final_status="partially_completed")
    tasks = sim.run_tasks(run_id)
    completed = [t for t in tasks if t["status"] == "completed"]
    assert 0 < len(completed) < len(tasks)
    result = dag_runner.run("unpod_score_calls", {"run_id": run_id}, env=run_env(sim), timeout=DAG_TIMEOUT)
    result.raise_for_failure()
    mapped = {k: v for k, v in result.task_states.items() if k.startswith("score_call[")}
    assert mapped == {f"score_call[{i}]": "success" for i in range(len(completed))}
    assert result.task_states["summarise_scores"] == "success"

    module = load_module("unpod_score_calls")
    expected = module.summarise(
        [module.score_transcript(protocol.project(t, module.CALL_FIELDS)) for t in completed]
    )
    assert (
        f"Scored {expected['calls']} calls: mean {expected['mean_score']}, {expected['good']} good, "
        f"{expected['average']} average, {expected['poor']} poor"
    ) in result.output
    assert_no_secrets(result, sim, [run_id])


@pytest.mark.slow
def test_export_space_dag_streams_the_space_to_jsonl(
    dag_runner: DagTestRunner, unpod_simulator_shared: UnpodSimulator, tmp_path: Path
) -> None:
    sim = unpod_simulator_shared
    target = tmp_path / "export" / "tasks.jsonl"
    result = dag_runner.run(
        "unpod_export_space", {"output_path": f"file://{target}"}, env=run_env(sim), timeout=DAG_TIMEOUT
    )
    result.raise_for_failure()
    assert result.task_states == {"export_tasks": "success", "check_export": "success"}
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    lines = [json.loads(line) for line in target.read_text(encoding="utf-8").splitlines()]
    assert lines == [protocol.redact(t) for t in api]
    assert f"Exported {len(api)} tasks to file://{target}" in result.output
    assert sim.token not in result.output
    assert sim.token not in target.read_text(encoding="utf-8")
    assert all(t["user_info"]["user_token"] not in result.output for t in api)


@pytest.mark.slow
def test_runner_reports_a_failed_dag_run(
    dag_runner: DagTestRunner, unpod_simulator_shared: UnpodSimulator
) -> None:
    sim = unpod_simulator_shared
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=3, final_status="failed")
    result = dag_runner.run("unpod_run_report", {"run_id": run_id}, env=run_env(sim), timeout=DAG_TIMEOUT)
    assert not result.succeeded and result.returncode != 0 and not result.timed_out
    assert result.run_state == "failed"
    assert result.task_states["wait_for_run"] == "failed"
    assert result.failed_tasks["fetch_tasks"] == "upstream_failed"
    assert "failed" in result.output and sim.token not in result.output
    with pytest.raises(DagTestError, match="unpod_run_report"):
        result.raise_for_failure()


# --------------------------------------------------------------------------------------------
# The runner's pure parts
# --------------------------------------------------------------------------------------------


def test_runner_environment_is_isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SOMETHING", "postgres://real")
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql://prod-db")
    runner = DagTestRunner(DAGS_FOLDER, airflow_home=tmp_path / "home", env={"A": "1"})
    env = runner.environment({"B": "2"})
    assert "AIRFLOW_CONN_SOMETHING" not in env
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] == f"sqlite:///{tmp_path / 'home' / 'airflow.db'}"
    assert env["AIRFLOW_HOME"] == str(tmp_path / "home")
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == str(DAGS_FOLDER)
    assert env["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"
    assert (env["A"], env["B"]) == ("1", "2")
    inherited = DagTestRunner(DAGS_FOLDER, airflow_home=tmp_path, inherit_airflow_env=True).environment()
    assert inherited["AIRFLOW_CONN_SOMETHING"] == "postgres://real"


def test_result_properties_and_cli_json_parsing() -> None:
    from unpod_provider.testing.dag_runner import _json_or_none

    ok = DagTestResult("d", {}, 0, "out\n", "err\n", 1.0, run_state="success", task_states={"a": "success"})
    assert ok.succeeded and ok.output == "out\nerr\n" and ok.failed_tasks == {}
    ok.raise_for_failure()
    bad = DagTestResult("d", {}, 1, "", "boom", 1.0, run_state="failed", task_states={"a": "failed"})
    assert not bad.succeeded and bad.failed_tasks == {"a": "failed"}
    with pytest.raises(DagTestError, match="exited with code 1"):
        bad.raise_for_failure()
    timed_out = DagTestResult("d", {}, None, "", "", 9.0, timed_out=True)
    with pytest.raises(DagTestError, match="timed out"):
        timed_out.raise_for_failure()
    log = '2026-01-01T00:00:00Z [warning  ] something [py.warnings]\n[{"task_id": "a", "state": "success"}]\n'
    assert _json_or_none(log) == [{"task_id": "a", "state": "success"}]
    assert _json_or_none("no json here") is None
