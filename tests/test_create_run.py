"""CreateRunOperator and UnpodHook.create_run over real HTTP against the Unpod simulator.

What is checked: the documented create path first and the server's only after a 404/405; a
create that may have reached the server is never sent again (the simulator counts the runs it
created), while a 429 or a refused connection is retried; the server's 206 field errors and the
local row-by-row checks (before any request); waiting in poke and deferrable mode (the real
``RunCompletedTrigger``) with the sensor's code; XComArg and file documents, a 5,000-contact
batch in one POST; template rendering; task retries that resume the earlier try's run; the API
token in no log or XCom; and the ``unpod_daily_campaign`` example DAG under ``airflow dags test``.
"""

from __future__ import annotations

import asyncio
import csv
import importlib
import importlib.util
import json
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from airflow.sdk import DAG, BaseOperator
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred
from fakes import FakeTI

from unpod_provider import protocol
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodConnectionError,
    UnpodCreateRunUncertainError,
    UnpodInconsistentListError,
    UnpodResumeConflictError,
    UnpodRunFailedError,
    UnpodRunNotFinishedError,
    UnpodServerError,
)
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.operators import unpod as operators_module
from unpod_provider.operators.unpod import CreateRunOperator, read_documents
from unpod_provider.sensors.unpod import XCOM_RUN_KEY
from unpod_provider.testing import DEMO_AGENT_HANDLE, DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.testing.dag_runner import DagTestRunner
from unpod_provider.triggers.unpod import RunCompletedTrigger

SPACE = DEMO_SPACE_TOKEN
PREFIX = f"/api/v2/platform/spaces/{SPACE}"
DOCS_PATH = f"{PREFIX}/tasks/create/"
SERVER_PATH = f"{PREFIX}/tasks/"
DATA = Path(__file__).resolve().parent / "data"
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags_examples"
CONTACTS = [
    {"name": "Avery Collins", "contact_number": "+15555550101", "document_id": "lead-001"},
    {"name": "Morgan Diaz", "email": "morgan.diaz@example.net", "document_id": "lead-004"},
    {"name": "Riley Nguyen", "contact_number": "+15555550103", "email": "riley@example.org"},
]
#: Simulated seconds the simulator's clock moves after each look at a run.
STEP = 10.0


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class CreateRunTI(FakeTI):
    """``FakeTI`` plus what the create-run operator reads: the try number and where it stands,
    and how many requests the simulator had seen when the run reference was pushed."""

    def __init__(
        self, sim: UnpodSimulator | None = None, *, try_number: int = 1, xcoms: dict[Any, Any] | None = None
    ) -> None:
        super().__init__(xcoms)
        self.sim = sim
        self.try_number = try_number
        self.task_id = "start_campaign"
        self.map_index = -1
        self.requests_at_push: int | None = None

    def xcom_push(self, key: str, value: Any) -> None:
        super().xcom_push(key, value)
        if self.sim is not None:
            self.requests_at_push = len(self.sim.requests)


def make_context(ti: CreateRunTI, dag_run_start: datetime | None = None, **params: Any) -> Any:
    start = dag_run_start or datetime.now(timezone.utc) - timedelta(minutes=1)
    return {"ti": ti, "params": params, "dag_run": SimpleNamespace(start_date=start)}


def make_op(**overrides: Any) -> CreateRunOperator:
    kwargs: dict[str, Any] = {
        "task_id": "start_campaign",
        "space_token": SPACE,
        "pilot": DEMO_AGENT_HANDLE,
        "context": "Offer a demo of the new plan",
        "documents": CONTACTS,
        "poke_interval": 0.01,
        "unpod_retry_limit": 3,
        "unpod_retry_delay": 0.01,
        "deferrable": False,
    }
    kwargs.update(overrides)
    return CreateRunOperator(**kwargs)


def posts(sim: UnpodSimulator) -> list[tuple[str, int | None]]:
    return [(r["path"], r["status"]) for r in sim.requests if r["method"] == "POST"]


def run_trigger(trigger: RunCompletedTrigger) -> dict[str, Any]:
    """Run the trigger as the triggerer does: rebuilt from ``serialize()``, in an event loop."""
    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in rebuilt.run()]

    events = asyncio.run(collect())
    assert len(events) == 1, events
    return events[0]


def run_to_end(mode: str, ti: FakeTI, **overrides: Any) -> Any:
    """Create and wait in ``mode``; deferrable: execute, the real trigger, execute_complete."""
    overrides = {"wait_for_completion": True, "deferrable": mode == "deferrable", **overrides}
    context = make_context(ti)
    if mode == "poke":
        return make_op(**overrides).execute(context)
    try:
        return make_op(**overrides).execute(context)  # finished at the first look: no deferral
    except TaskDeferred as deferred:
        assert deferred.method_name == "execute_complete" and deferred.timeout is None
        assert isinstance(deferred.trigger, RunCompletedTrigger)
        event = run_trigger(deferred.trigger)
    json.dumps(event)
    # A fresh operator resumes, as in the triggerer/worker split: only the event crosses over.
    return make_op(**overrides).execute_complete(context, event)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> str:
    with path.open("w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path.as_uri()


def lead(i: int) -> dict[str, str]:
    return {"document_id": f"lead-{i:05d}", "name": f"Lead {i}", "contact_number": f"+1555{i:07d}"}


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    """The session simulator, reset, with ``AIRFLOW_CONN_UNPOD_DEFAULT`` pointing at it, serving
    the documented create path too (the real server answers it 404: see the fallback tests)."""
    unpod_simulator_shared.create_paths = "both"
    return unpod_simulator_shared


@pytest.fixture
def moving_sim(sim: UnpodSimulator, clock_moves_per_look: Any) -> UnpodSimulator:
    """New runs go pending -> running -> completed, one status per look (sync or async)."""
    sim.state.update_settings(default_timeline=[("pending", 0), ("running", STEP), ("completed", 2 * STEP)])
    return clock_moves_per_look(sim, STEP)


# --------------------------------------------------------------------------------------------
# Construction: no I/O, template fields, checks at parse time
# --------------------------------------------------------------------------------------------


def test_no_io_in_init_and_template_fields(mocker: Any) -> None:
    get_connection = mocker.patch.object(UnpodHook, "get_connection")
    op = make_op(documents="{{ params.leads }}", space_token="{{ params.space }}")
    get_connection.assert_not_called()
    assert "hook" not in op.__dict__
    assert set(op.template_fields) == {
        "space_token",
        "pilot",
        "context",
        "documents",
        "schedule",
        "filters",
        "unpod_conn_id",
    }


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"on_retry": "maybe"}, "on_retry"),
        ({"poke_interval": 0}, "poke_interval"),
        ({"timeout": -1}, "timeout"),
        ({"success_states": ["failed"]}, "both contain failed"),
        ({"not_found_grace_period": -1}, "not_found_grace_period"),
        ({"schedule": "tomorrow"}, "schedule type"),
        ({"unpod_retry_limit": 0}, "retry_limit"),
    ],
)
def test_bad_arguments_refused_at_parse_time(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_op(**overrides)


def test_deferrable_default_comes_from_config() -> None:
    import inspect

    from airflow.configuration import conf

    default = inspect.signature(CreateRunOperator.__init__).parameters["deferrable"].default
    assert default is conf.getboolean("operators", "default_deferrable", fallback=False)
    assert make_op(poke_interval=timedelta(seconds=5), timeout=timedelta(hours=1)).timeout == 3600.0


# --------------------------------------------------------------------------------------------
# Creating: paths, fallback, no second POST once the server may have it, retries that are safe
# --------------------------------------------------------------------------------------------


def test_creates_at_the_documented_path_and_pushes_the_run_id(sim: UnpodSimulator) -> None:
    ti = CreateRunTI(sim)
    result = make_op().execute(make_context(ti))
    assert set(result) == {"run_id", "task_ids", "status"}
    run_id = result["run_id"]
    assert re.fullmatch(r"R[0-9a-f]{32}", run_id) and len(result["task_ids"]) == 3
    assert result["status"] == dict.fromkeys(result["task_ids"], "pending")  # the server's map
    assert ti.pushed == {XCOM_RUN_KEY: {"space_token": SPACE, "run_id": run_id}}
    assert posts(sim) == [(DOCS_PATH, 200)] and sim.create_count == 1
    (post,) = [r for r in sim.requests if r["method"] == "POST"]
    assert post["body"] == {
        "pilot": DEMO_AGENT_HANDLE,
        "context": "Offer a demo of the new plan",
        "documents": CONTACTS,
        "schedule": {"type": "now"},
    }
    assert [t["input"] for t in sim.run_tasks(run_id)][::-1] == CONTACTS  # newest first
    assert {t["ref_id"] for t in sim.run_tasks(run_id)} == {"lead-001", "lead-004", None}


def test_accepts_the_docs_string_status(sim: UnpodSimulator) -> None:
    sim.docs_mode = True
    result = make_op().execute(make_context(CreateRunTI()))
    assert result["status"] == "pending" and len(result["task_ids"]) == 3


@pytest.mark.parametrize("status", [404, 405])
def test_falls_back_to_the_server_path_on_404_or_405_only(sim: UnpodSimulator, status: int) -> None:
    if status == 404:
        sim.create_paths = "server"  # the documented path does not exist (Django's HTML 404)
    else:
        sim.inject("http", path="/tasks/create/", method="POST", status=405, body={"detail": "nope"})
    result = make_op().execute(make_context(CreateRunTI()))
    assert posts(sim) == [(DOCS_PATH, status), (SERVER_PATH, 200)]
    assert sim.create_count == 1 and sim.get_run(result["run_id"])["n_tasks"] == 3


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        (
            {"kind": "http", "status": 400, "body": {"status_code": 400, "message": "bad"}},
            UnpodBadRequestError,
        ),
        (
            {"kind": "http", "status": 401, "body": {"message": "Invalid token.", "status_code": 401}},
            UnpodAuthError,
        ),
        ({"kind": "http", "status": 403, "body": ""}, UnpodAuthError),
        ({"kind": "business_error", "message": "Invalid Space Token"}, UnpodBusinessError),
    ],
    ids=["400", "401", "403", "206"],
)
def test_other_refusals_neither_fall_back_nor_retry(
    sim: UnpodSimulator, fault: dict[str, Any], error: type[Exception]
) -> None:
    sim.inject(path="/tasks/create/", method="POST", times=None, **fault)
    ti = CreateRunTI()
    with pytest.raises(error) as info:
        make_op().execute(make_context(ti))
    assert not isinstance(info.value, UnpodCreateRunUncertainError)
    assert [path for path, _ in posts(sim)] == [DOCS_PATH]
    assert sim.create_count == 0 and ti.pushed == {}


@pytest.mark.parametrize(
    ("fault", "processed"),
    [
        ({"kind": "server_error", "status": 500, "body": "html"}, False),
        ({"kind": "server_error", "status": 502, "body": "empty"}, False),
        ({"kind": "server_error", "status": 503, "body": "json"}, False),
        ({"kind": "server_error", "status": 504, "body": "html"}, False),
        ({"kind": "disconnect"}, True),
        ({"kind": "drop_connection"}, True),
        ({"kind": "slow", "seconds": 0.8, "stage": "headers"}, False),
        ({"kind": "slow", "seconds": 0.8, "stage": "body"}, True),
    ],
    ids=["500", "502", "503", "504", "disconnect", "dropped-body", "timeout-before", "timeout-after"],
)
def test_never_sent_twice_once_it_may_have_reached_the_server(
    sim: UnpodSimulator, fault: dict[str, Any], processed: bool
) -> None:
    sim.inject(path="/tasks/create/", method="POST", times=None, **fault)
    ti = CreateRunTI()
    with pytest.raises(UnpodCreateRunUncertainError) as info:
        make_op(unpod_retry_limit=5, unpod_timeout=0.3).execute(make_context(ti))
    message = str(info.value)
    assert "may or may not exist" in message and "runs" in message and SPACE in message
    assert sim.token not in message
    assert len(posts(sim)) == 1 and ti.pushed == {}
    deadline = time.monotonic() + 5
    while processed and sim.create_count == 0 and time.monotonic() < deadline:
        time.sleep(0.05)  # a slow answer: the server finishes the create after the client gave up
    assert sim.create_count == (1 if processed else 0)


def test_429_is_retried_and_creates_once(sim: UnpodSimulator) -> None:
    sim.inject("rate_limit", path="/tasks/create/", method="POST", retry_after=0, times=2)
    result = make_op().execute(make_context(CreateRunTI()))
    assert posts(sim) == [(DOCS_PATH, 429), (DOCS_PATH, 429), (DOCS_PATH, 200)]
    assert sim.create_count == 1 and result["run_id"]


def test_refused_connection_is_retried_then_a_connection_error(
    monkeypatch: pytest.MonkeyPatch, mocker: Any
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conn = {"conn_type": "unpod", "host": f"http://127.0.0.1:{port}", "password": "x" * 40}
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps({**conn, "extra": {"org_handle": "acme"}}))
    from unpod_provider.hooks import _transport

    send = mocker.spy(_transport, "send")
    with pytest.raises(UnpodConnectionError, match="could not connect") as info:
        make_op(unpod_retry_limit=3).execute(make_context(CreateRunTI()))
    assert not isinstance(info.value, UnpodCreateRunUncertainError) and info.value.request_sent is False
    assert send.call_count == 3


def test_the_servers_206_validation_error_names_the_field(sim: UnpodSimulator) -> None:
    body = json.loads((DATA / "error_206_validation.json").read_text(encoding="utf-8"))
    sim.inject("http", path="/tasks/create/", method="POST", status=206, body=body)
    with pytest.raises(UnpodBusinessError) as info:
        make_op().execute(make_context(CreateRunTI()))
    assert "context: This field is required." in str(info.value)
    assert info.value.errors == {"context": ["This field is required."]}
    assert len(posts(sim)) == 1

    # The simulator's own validation, like the server's: a pilot that is not an agent of the space.
    with pytest.raises(UnpodBusinessError, match="pilot: Agent 'nobody' is not an agent of this space"):
        make_op(pilot="nobody").execute(make_context(CreateRunTI()))
    assert sim.create_count == 0


@pytest.mark.parametrize(
    ("schedule", "status"),
    [
        (None, "pending"),
        ("now", "pending"),
        ("auto", "queued"),
        ({"type": "custom", "calling_date": "2999-01-01", "calling_time": "09:30"}, "scheduled"),
    ],
)
def test_schedule_forms(sim: UnpodSimulator, schedule: Any, status: str) -> None:
    result = make_op(schedule=schedule).execute(make_context(CreateRunTI()))
    assert sim.run_status(result["run_id"]) == status
    (post,) = [r for r in sim.requests if r["method"] == "POST"]
    assert post["body"]["schedule"] == protocol.validate_schedule(schedule)


# --------------------------------------------------------------------------------------------
# Checking every contact before any request
# --------------------------------------------------------------------------------------------


def bad_csv(tmp_path: Path) -> str:
    rows = [lead(i) for i in range(1, 17)] + [{"document_id": "lead-x", "name": "Nobody"}]
    return write_csv(tmp_path / "leads.csv", rows, ["document_id", "name", "contact_number", "email"])


def write_text(tmp_path: Path, name: str, text: str) -> str:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return (tmp_path / name).as_uri()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"documents": [*CONTACTS[:2], {"name": "Nobody"}]}, r"documents row 3 \('Nobody'\) has neither"),
        ({"documents": [CONTACTS[0], "x"]}, "documents row 2 must be an object"),
        ({"documents": [{"email": "not-an-email"}]}, "documents row 1 has neither"),
        ({"documents": []}, "documents is empty"),
        ({"documents": {"contact_number": "+15555550101"}}, "single object"),
        ({"documents": bad_csv}, r"documents row 17 \(line 18 of leads.csv\) \('Nobody'\) has neither"),
        (
            {"documents": lambda p: write_text(p, "l.jsonl", '{"email": "a@example.com"}\n\n{"name": "X"\n')},
            r"documents row 2 \(line 3 of l.jsonl\) is not valid JSON",
        ),
        (
            {"documents": lambda p: write_text(p, "l.jsonl", '{"email": "a@example.com"}\n[1]\n')},
            r"documents row 2 \(line 2 of l.jsonl\) must be an object",
        ),
        (
            {"documents": lambda p: write_text(p, "l.json", '[{"email": "a@example.com"}, {"name": "X"}]')},
            r"documents row 2 \(in l.json\) \('X'\) has neither",
        ),
        (
            {"documents": lambda p: write_text(p, "l.csv", "name,phone\nA,+1555\n")},
            "neither a contact_number nor an email column",
        ),
        (
            {"documents": lambda p: write_text(p, "l.csv", "name,email\nA,a@example.com,extra\n")},
            "more cells",
        ),
        ({"documents": lambda p: write_text(p, "l.csv", "")}, "holds no contacts"),
        ({"documents": lambda p: write_text(p, "l.txt", "a@example.com")}, "cannot tell its format"),
        ({"documents": lambda p: (p / "missing.csv").as_uri()}, "does not exist"),
        ({"documents": "[{'name': 'python repr'}]"}, "not valid JSON"),
        ({"pilot": " "}, "pilot"),
        ({"context": ""}, "context is required"),
        ({"schedule": {"type": "custom", "calling_date": "2001-01-01", "calling_time": "10:00"}}, "future"),
        ({"space_token": "DEMO/../x"}, "space_token"),
        ({"filters": "x"}, "filters must be an object"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_invalid_input_refused_before_any_request(
    sim: UnpodSimulator, tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    overrides = {k: v(tmp_path) if callable(v) else v for k, v in overrides.items()}
    ti = CreateRunTI()
    op = make_op(**overrides)
    with pytest.raises(ValueError, match=message):
        op.execute(make_context(ti))
    assert sim.requests == [] and ti.pushed == {} and "hook" not in op.__dict__


def test_read_documents_forms(tmp_path: Path) -> None:
    uri = write_csv(
        tmp_path / "a.csv",
        [{"name": " Ann ", "contact_number": "+15555550101", "email": ""}],
        ["name", "contact_number", "email"],
    )
    assert read_documents(uri) == [{"name": "Ann", "contact_number": "+15555550101"}]  # empty cells left out
    assert read_documents(str(tmp_path / "a.csv")) == read_documents(uri)  # a plain local path too
    assert read_documents(json.dumps(CONTACTS)) == CONTACTS  # a JSON array rendered as text
    assert read_documents([{"contact_number": 15555550101}]) == [{"contact_number": "15555550101"}]


# --------------------------------------------------------------------------------------------
# Where documents come from: XComArg, files (5,000 contacts), templates
# --------------------------------------------------------------------------------------------


def test_documents_from_an_xcomarg(sim: UnpodSimulator) -> None:
    with DAG("create_run_xcomarg", schedule=None):
        select = BaseOperator(task_id="select_leads")
        op = make_op(documents=select.output)
    assert select in op.upstream_list
    ti = CreateRunTI(xcoms={("select_leads", "return_value"): CONTACTS})
    context = make_context(ti)
    op.render_template_fields(context)
    assert op.documents == CONTACTS
    result = op.execute(context)
    assert [t["input"] for t in sim.run_tasks(result["run_id"])][::-1] == CONTACTS


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_a_5000_contact_batch_from_a_file_is_one_post(sim: UnpodSimulator, tmp_path: Path, fmt: str) -> None:
    leads = [lead(i) for i in range(5000)]
    for i in range(0, 5000, 7):  # some leads have only an email
        leads[i] = {"document_id": leads[i]["document_id"], "email": f"lead{i}@example.com"}
    path = tmp_path / f"leads.{fmt}"
    if fmt == "csv":
        uri = write_csv(path, leads, ["document_id", "name", "contact_number", "email"])
    else:
        path.write_text("".join(json.dumps(d) + "\n" for d in leads), encoding="utf-8")
        uri = path.as_uri()
    result = make_op(documents=uri, xcom_warn_bytes=None).execute(make_context(CreateRunTI()))
    assert posts(sim) == [(DOCS_PATH, 200)]  # one request for the whole batch
    (post,) = [r for r in sim.requests if r["method"] == "POST"]
    assert post["body"]["documents"] == leads
    assert sim.create_count == 1 and len(result["task_ids"]) == 5000
    assert sim.get_run(result["run_id"])["n_tasks"] == 5000
    assert sim.state.runs[result["run_id"]].documents == leads


def test_documents_path_and_space_token_are_templated(sim: UnpodSimulator, tmp_path: Path) -> None:
    uri = write_csv(
        tmp_path / "today.csv", [lead(i) for i in range(4)], ["document_id", "name", "contact_number"]
    )
    op = make_op(
        space_token="{{ params.space }}",
        pilot="{{ params.pilot }}",
        documents="{{ params.leads }}",
        schedule="{{ params.when }}",
    )
    ti = CreateRunTI(sim)
    context = make_context(ti, space=SPACE, pilot=DEMO_AGENT_HANDLE, leads=uri, when="auto")
    op.render_template_fields(context)
    assert (op.space_token, op.documents, op.schedule) == (SPACE, uri, "auto")
    result = op.execute(context)
    assert posts(sim) == [(DOCS_PATH, 200)] and sim.get_run(result["run_id"])["n_tasks"] == 4
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": SPACE, "run_id": result["run_id"]}


# --------------------------------------------------------------------------------------------
# Waiting: the sensor's code, poke and deferrable
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_waits_through_pending_and_running_and_returns_the_run(moving_sim: UnpodSimulator, mode: str) -> None:
    sim = moving_sim
    ti = CreateRunTI(sim)
    result = run_to_end(mode, ti)
    run_id = ti.pushed[XCOM_RUN_KEY]["run_id"]
    assert ti.requests_at_push == 1  # pushed right after the POST, before the first look
    listed = {r["run_id"]: r for r in sim.space_runs(SPACE)}[run_id]
    assert result == listed and result["status"] == "completed"
    looks = [r for r in sim.requests if r["path"] == f"{PREFIX}/runs/"]
    assert len(looks) == 3  # pending (worker), running, completed (triggerer when deferrable)
    assert sim.create_count == 1


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_a_failed_run_fails_the_task_without_retries(moving_sim: UnpodSimulator, mode: str) -> None:
    moving_sim.state.update_settings(default_timeline=[("running", 0), ("failed", STEP)])
    ti = CreateRunTI()
    with pytest.raises(UnpodRunFailedError) as info:
        run_to_end(mode, ti)
    assert isinstance(info.value, AirflowFailException) and info.value.run_status == "failed"
    assert info.value.run_id == ti.pushed[XCOM_RUN_KEY]["run_id"]


@pytest.mark.parametrize("mode", ["poke", "deferrable"])
def test_wait_timeout_names_the_last_status(sim: UnpodSimulator, mode: str) -> None:
    sim.state.update_settings(default_timeline=[("running", 0)])
    ti = CreateRunTI()
    with pytest.raises(UnpodRunNotFinishedError) as info:
        run_to_end(mode, ti, timeout=0.2)
    run_id = ti.pushed[XCOM_RUN_KEY]["run_id"]
    assert "running" in str(info.value) and run_id in str(info.value)


def test_api_token_is_in_no_log_xcom_or_rendered_field(
    moving_sim: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = moving_sim
    ti = CreateRunTI(sim)
    result = run_to_end("deferrable", ti)
    sim.inject("disconnect", path="/tasks/create/", method="POST")
    with pytest.raises(UnpodCreateRunUncertainError) as info:
        make_op().execute(make_context(CreateRunTI()))
    out = capsys.readouterr()
    assert "Starting an Unpod run in space" in out.out  # the operator's log is captured here
    for text in (out.out, out.err, json.dumps(ti.pushed), json.dumps(result), str(info.value)):
        assert sim.token not in text
    op = make_op()
    assert all(sim.token not in json.dumps(getattr(op, f), default=str) for f in op.template_fields)


# --------------------------------------------------------------------------------------------
# Task retries: resume the earlier try's run instead of starting a second one
# --------------------------------------------------------------------------------------------


def test_retry_after_an_uncertain_create_resumes_the_run_the_server_made(
    moving_sim: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = moving_sim
    sim.inject("disconnect", path="/tasks/create/", method="POST")  # created, but the answer is lost
    with pytest.raises(UnpodCreateRunUncertainError):
        make_op(wait_for_completion=True).execute(make_context(CreateRunTI(try_number=1)))
    assert sim.create_count == 1
    (created,) = [r for r in sim.space_runs(SPACE) if r["status"] == "pending"]

    ti = CreateRunTI(try_number=2)  # Airflow 3 cleared the first try's XComs
    result = make_op(wait_for_completion=True).execute(make_context(ti))
    assert sim.create_count == 1 and len(posts(sim)) == 1  # no second run
    assert result["run_id"] == created["run_id"] and result["status"] == "completed"
    assert ti.pushed[XCOM_RUN_KEY]["run_id"] == created["run_id"]
    assert f"run {created['run_id']} (created" in capsys.readouterr().out


def test_retry_without_wait_returns_the_earlier_runs_tasks(sim: UnpodSimulator) -> None:
    first = make_op().execute(make_context(CreateRunTI()))
    again = make_op().execute(make_context(CreateRunTI(try_number=3)))
    assert again["run_id"] == first["run_id"] and sorted(again["task_ids"]) == sorted(first["task_ids"])
    assert again["status"] == first["status"]
    assert sim.create_count == 1


@pytest.mark.parametrize(
    ("case", "creates"),
    [
        ("no earlier run", 1),
        ("other contacts", 2),
        ("before the dag run started", 2),
        ("on_retry=create", 2),
    ],
)
def test_retry_starts_a_run_when_no_earlier_one_matches(sim: UnpodSimulator, case: str, creates: int) -> None:
    if case != "no earlier run":
        docs = {"other contacts": [lead(1), lead(2), lead(3)]}
        make_op(documents=docs.get(case, CONTACTS)).execute(make_context(CreateRunTI()))
    start = datetime.now(timezone.utc) + (
        timedelta(hours=1) if case == "before the dag run started" else -timedelta(minutes=1)
    )
    on_retry = "create" if case == "on_retry=create" else "resume"
    result = make_op(on_retry=on_retry).execute(make_context(CreateRunTI(try_number=2), dag_run_start=start))
    assert sim.create_count == creates
    assert result["run_id"] == sim.space_runs(SPACE)[0]["run_id"]  # the newest run: the new one


@pytest.mark.parametrize(
    ("earlier", "shared"),
    [
        ([*CONTACTS, lead(9)], "3 of the 3 contacts of this try and 1 other task)"),
        (CONTACTS[:1], "1 of the 3 contacts of this try)"),
    ],
    ids=["one contact more", "tasks not all listed yet"],
)
def test_retry_fails_closed_when_a_run_shares_some_contacts(
    sim: UnpodSimulator, earlier: list[dict[str, Any]], shared: str
) -> None:
    first = make_op(documents=earlier).execute(make_context(CreateRunTI()))
    with pytest.raises(UnpodResumeConflictError) as info:
        make_op().execute(make_context(CreateRunTI(try_number=2)))
    assert info.value.run_ids == [first["run_id"]]
    assert first["run_id"] in str(info.value) and shared in str(info.value)
    assert "on_retry='create'" in str(info.value)
    assert sim.create_count == 1 and len(posts(sim)) == 1  # never a second campaign


def test_retry_fails_closed_when_a_candidates_tasks_cannot_be_read(sim: UnpodSimulator) -> None:
    make_op().execute(make_context(CreateRunTI()))
    sim.inject("server_error", path_regex=r"/runs/R[0-9a-f]+/tasks/", status=503, times=None)
    with pytest.raises(UnpodServerError):
        make_op(unpod_retry_limit=2, unpod_retry_delay=0.001).execute(make_context(CreateRunTI(try_number=2)))
    assert sim.create_count == 1 and len(posts(sim)) == 1


def test_retry_fails_closed_when_a_page_of_a_candidates_tasks_is_short(sim: UnpodSimulator) -> None:
    """One short page while the earlier run's tasks are read: an error, never a second run."""
    make_op().execute(make_context(CreateRunTI()))
    sim.inject("short_page", path_regex=r"/runs/R[0-9a-f]+/tasks/$", keep=1, times=None)
    with pytest.raises(UnpodInconsistentListError):
        make_op(unpod_retry_limit=3, unpod_retry_delay=0.001).execute(make_context(CreateRunTI(try_number=2)))
    assert sim.create_count == 1 and len(posts(sim)) == 1


def test_retry_fails_closed_with_more_candidates_than_it_checks(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(operators_module, "RETRY_MAX_CANDIDATES", 2)
    for n in range(3):
        make_op(documents=[lead(10 + n)]).execute(make_context(CreateRunTI()))
    start = datetime.now(timezone.utc) - timedelta(minutes=1)
    with pytest.raises(UnpodResumeConflictError, match="more than 2 runs were created"):
        make_op().execute(make_context(CreateRunTI(try_number=2), dag_run_start=start))
    assert sim.create_count == 3


def test_retry_with_on_retry_fail_starts_nothing(sim: UnpodSimulator) -> None:
    make_op().execute(make_context(CreateRunTI()))
    with pytest.raises(AirflowFailException, match=f"check the runs of space {SPACE}"):
        make_op(on_retry="fail").execute(make_context(CreateRunTI(try_number=2)))
    assert sim.create_count == 1 and len(posts(sim)) == 1


# --------------------------------------------------------------------------------------------
# The example DAG end to end under `airflow dags test`
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def dag_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagTestRunner]:
    """One migrated AIRFLOW_HOME (embedded SQLite) for the subprocess tests of this module."""
    home = tmp_path_factory.mktemp("create-run-airflow-home")
    with DagTestRunner(DAGS_FOLDER, airflow_home=home) as runner:
        runner.prepare()
        yield runner


def load_campaign_module() -> Any:
    spec = importlib.util.spec_from_file_location("example_campaign", DAGS_FOLDER / "unpod_daily_campaign.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_campaign_helpers_and_shipped_leads() -> None:
    module = load_campaign_module()
    leads = read_documents(module.LEADS_PATH)
    assert len(leads) == 20
    assert all(d.get("contact_number", "+1555").startswith("+1555") for d in leads)
    assert sum("contact_number" not in d for d in leads) >= 3  # some leads have only an email
    tasks: list[dict[str, Any]] = [
        {
            "task_id": "T2",
            "ref_id": "b",
            "status": "failed",
            "input": {"name": "B"},
            "output": {"error": "busy"},
        },
        {
            "task_id": "T1",
            "ref_id": "a",
            "status": "completed",
            "input": {"name": "A", "email": "a@example.com"},
            "output": {"duration": 12.5, "post_call_data": {"summary": {"status": "Interested"}}},
        },
    ]
    rows = module.result_rows(tasks)
    assert [r["ref_id"] for r in rows] == ["a", "b"] and rows[0]["duration_seconds"] == 12.5
    summary = module.summarise(rows, {"run_id": "R1", "status": "partially_completed"})
    assert summary["statuses"] == {"completed": 1, "failed": 1} and summary["outcomes"] == {"Interested": 1}


@pytest.mark.slow
def test_daily_campaign_dag_creates_waits_deferrably_and_writes_the_results(
    dag_runner: DagTestRunner, unpod_simulator_shared: UnpodSimulator, tmp_path: Path
) -> None:
    sim = unpod_simulator_shared
    env = {**sim.connection_env(), "UNPOD_POKE_INTERVAL": "1", "UNPOD_REPORT_DIR": str(tmp_path)}
    result = dag_runner.run("unpod_daily_campaign", env=env, timeout=240)
    result.raise_for_failure()
    assert result.task_states == {
        "start_campaign": "success",
        "fetch_results": "success",
        "write_results": "success",
    }
    # As on the real server: the documented path is a 404, then tasks/ creates the run.
    assert posts(sim) == [(DOCS_PATH, 404), (SERVER_PATH, 200)] and sim.create_count == 1
    run_id = sim.space_runs(SPACE)[0]["run_id"]  # the newest run: the one the DAG started
    assert sim.get_run(run_id)["n_tasks"] == 20
    # Created, then waited in the (inline) triggerer: pending -> in_progress -> completed.
    assert "running trigger in line" in result.output
    looks = re.findall(rf"Unpod run {run_id} \(space {SPACE}\) is '(\w+)'", result.output)
    assert looks and looks[0] == "pending" and "in_progress" in looks
    assert f"Unpod run {run_id} finished with status 'completed'" in result.output

    tasks = {t["task_id"]: t for t in sim.run_tasks(run_id)}
    with (tmp_path / f"unpod_daily_campaign_{run_id}.csv").open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    leads = read_documents(load_campaign_module().LEADS_PATH)
    assert len(rows) == len(tasks) == len(leads) == 20
    assert [r["ref_id"] for r in rows] == [d["document_id"] for d in leads]
    for row in rows:
        task = tasks[row["task_id"]]
        assert row["status"] == task["status"] == "completed"
        assert row["outcome"] == task["output"]["post_call_data"]["summary"]["status"]
        assert float(row["duration_seconds"]) == pytest.approx(task["output"]["duration"])
        assert row["contact_number"] == task["input"].get("contact_number", "")
    summary = json.loads((tmp_path / f"unpod_daily_campaign_{run_id}.json").read_text(encoding="utf-8"))
    assert summary["run_id"] == run_id and summary["calls"] == 20 and summary["run_status"] == "completed"
    assert f"Campaign run {run_id}: 20 calls (20 completed)" in result.output
    assert sim.token not in result.output
    assert all(t["user_info"]["user_token"] not in result.output for t in tasks.values())
