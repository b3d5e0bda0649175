"""The API token appears nowhere but the Authorization header.

A recognisable token (``UNPODSECRET`` + hex) is given to the simulator and the connection, and
everything the provider produces is searched for it:

- in process (Airflow's secret masker switched off, so a leak shows instead of ``***``): every
  hook method (sync, async), operators (XCom values, rendered template fields, the JSONL file),
  the sensor in poke and deferrable mode, the trigger (repr, serialized kwargs, its event), retry
  log lines, typed errors (str, repr, formatted traceback), everything written to stdout/stderr
  and every log record at DEBUG (urllib3, httpx, httpcore, tenacity included), and the
  simulator's request log; every request that left the client (``requests`` and ``httpx``)
  carries the token in its Authorization header and nowhere else (URL, body, other headers);
- a small fault campaign (the one of ``test_campaign``, with its own recognisable token);
- every example DAG run end to end under ``airflow dags test``: its stdout/stderr, every file
  in its ``AIRFLOW_HOME`` (the SQLite database with XComs, rendered fields and trigger kwargs,
  the logs folder), the files it wrote, and the simulator's request log.

Also: TLS verification stays on unless the connection's extra says ``verify: false`` (which is
logged as a warning), and the token is never sent over plain ``http://`` to a host that is not
loopback unless the connection allows it (refused before any request is made).
"""

from __future__ import annotations

import asyncio
import importlib
import json
import logging
import secrets
import ssl
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTI
from test_campaign import SECRET_TOKEN as CAMPAIGN_TOKEN
from test_campaign import campaign_simulator, fast_retries, run_campaign  # noqa: F401 - fixture

from unpod_provider import protocol
from unpod_provider.exceptions import UnpodConfigError, UnpodError, UnpodProtocolError
from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook
from unpod_provider.testing import DEMO_AGENT_HANDLE, DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.testing.dag_runner import DagTestRunner, timeline_on_first_look

SECRET = "UNPODSECRET" + secrets.token_hex(16)
#: A second recognisable token the server refuses (401): it must not show up either.
WRONG = "UNPODSECRETWRONG" + secrets.token_hex(12)
DAGS_FOLDER = Path(__file__).resolve().parent.parent / "dags_examples"
LOGGERS = ("", "urllib3", "requests", "httpx", "httpcore", "tenacity", "unpod_provider", "airflow", "asyncio")


class Evidence:
    """Everything the provider produced, by where it came from."""

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []

    def add(self, where: str, value: Any) -> None:
        if isinstance(value, BaseException):
            text = f"{value}\n{value!r}\n" + "".join(traceback.format_exception(value))
            cause = value.__cause__ or value.__context__
            if cause is not None:
                text += f"\n{cause}\n{cause!r}"
        elif isinstance(value, str):
            text = value
        else:
            text = json.dumps(value, default=repr)
        self.texts.append((where, text))

    def leaks(self, *tokens: str) -> list[str]:
        return [
            f"{where}: ...{_around(text, t)}..." for where, text in self.texts for t in tokens if t in text
        ]


def _around(text: str, token: str) -> str:
    at = text.index(token)
    return text[max(0, at - 80) : at + len(token) + 20]


@pytest.fixture
def unmasked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Airflow's secret masker off (a leak shows as itself, not ``***``); what was to be masked."""
    registered: list[str] = []
    for name in (
        "airflow.sdk._shared.secrets_masker.secrets_masker",
        "airflow._shared.secrets_masker.secrets_masker",
    ):
        try:
            module = importlib.import_module(name)
        except ImportError:  # pragma: no cover - layout of other Airflow versions
            continue

        def add_mask(self: Any, secret: Any, name: str | None = None) -> None:
            if isinstance(secret, str):
                registered.append(secret)

        monkeypatch.setattr(module.SecretsMasker, "add_mask", add_mask)
        masker = module._secrets_masker()
        monkeypatch.setattr(masker, "patterns", set(), raising=False)
        monkeypatch.setattr(masker, "replacer", None, raising=False)
    return registered


@pytest.fixture(scope="module")
def secret_sim() -> Iterator[UnpodSimulator]:
    with UnpodSimulator(token=SECRET) as sim:
        yield sim


@pytest.fixture
def sim(secret_sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> UnpodSimulator:
    secret_sim.reset()
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", secret_sim.connection_json(timeout=0.5))
    wrong = secret_sim.connection_dict()
    wrong["password"] = WRONG
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_WRONG", json.dumps(wrong))
    return secret_sim


@pytest.fixture
def debug_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    return caplog


def _hook(**kwargs: Any) -> UnpodHook:
    return UnpodHook(retry_delay=0.001, **kwargs)


# --------------------------------------------------------------------------------------------
# In process: hooks, operators, sensor, trigger
# --------------------------------------------------------------------------------------------


def exercise_hooks(sim: UnpodSimulator, evidence: Evidence) -> None:
    """Every sync and async hook method, with retries (429, 5xx, cut bodies) and typed errors."""
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=30, final_status="completed")
    sim.inject("server_error", status=503, body="html", times=2)
    sim.inject("rate_limit", retry_after=0, times=1)
    sim.inject("drop_connection", path="/tasks/", times=1)
    sim.inject("drop_connection", path="/runs/", times=1)
    with _hook() as hook:
        evidence.add("repr(hook)", repr(hook) + str(hook) + repr(hook.config) + str(hook.config))
        evidence.add("list_organizations", hook.list_organizations())
        evidence.add("list_spaces", hook.list_spaces())
        evidence.add("get_space", hook.get_space(DEMO_SPACE_TOKEN))
        evidence.add("list_space_tasks", hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=25))
        evidence.add("list_space_runs", hook.list_space_runs(DEMO_SPACE_TOKEN, page_size=10))
        evidence.add("get_run", hook.get_run(DEMO_SPACE_TOKEN, run_id))
        evidence.add("list_run_tasks", hook.list_run_tasks(DEMO_SPACE_TOKEN, run_id, page_size=7))
        evidence.add(
            "create_run",
            hook.create_run(
                DEMO_SPACE_TOKEN,
                pilot=DEMO_AGENT_HANDLE,
                context="Say hello",
                documents=[{"name": "Ana", "contact_number": "+911234567890"}],
            ),
        )
        evidence.add("test_connection", list(hook.test_connection()))
    # Typed errors: retries spent (5xx, timeouts), refused credentials, business errors.
    failures: list[tuple[str, Any]] = [
        ("server_error", {"kind": "server_error", "status": 502, "body": "json", "times": None}),
        ("slow", {"kind": "slow", "seconds": 1.0, "times": None}),
        ("business_error", {"kind": "business_error", "times": 1}),
        ("cut", {"kind": "truncated_json", "times": None}),
    ]
    for label, fault in failures:
        sim.clear_faults()
        sim.inject(fault.pop("kind"), **fault)
        with _hook(retry_limit=2) as hook, pytest.raises(UnpodError) as info:
            hook.list_space_tasks(DEMO_SPACE_TOKEN)
        evidence.add(f"error {label}", info.value)
    sim.clear_faults()
    with _hook(unpod_conn_id="unpod_wrong") as hook, pytest.raises(UnpodError) as info:
        hook.get_space(DEMO_SPACE_TOKEN)
    evidence.add("401 error", info.value)
    evidence.add("401 test_connection", list(UnpodHook("unpod_wrong").test_connection()))

    async def async_part() -> None:
        sim.inject("server_error", status=500, body="html", times=1)
        async with UnpodAsyncHook(retry_policy=protocol.RetryPolicy(base_delay=0.001)) as hook:
            evidence.add("repr(async hook)", repr(hook))
            evidence.add("afind_run", await hook.afind_run(DEMO_SPACE_TOKEN, run_id))
            sim.inject("server_error", status=504, body="empty", times=None)
            with pytest.raises(UnpodError) as info:
                await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
            evidence.add("async error", info.value)
        sim.clear_faults()
        async with UnpodAsyncHook("unpod_wrong") as hook:
            with pytest.raises(UnpodError) as info:
                await hook.afind_run(DEMO_SPACE_TOKEN, run_id)
            evidence.add("async 401", info.value)

    asyncio.run(async_part())


def exercise_operators(sim: UnpodSimulator, evidence: Evidence, tmp_path: Path) -> None:
    """Operators after template rendering: return values, XCom pushes, rendered fields, files."""
    from airflow.sdk.exceptions import TaskDeferred

    from unpod_provider.operators.unpod import (
        CreateRunOperator,
        GetSpaceOperator,
        ListRunTasksOperator,
        ListSpaceRunsOperator,
        ListSpacesOperator,
        ListSpaceTasksOperator,
    )
    from unpod_provider.sensors.unpod import RunCompletedSensor
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=12, final_status="partially_completed")
    waiting = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=2, timeline=[("running", 0), ("completed", 0.5)])
    params = {"space": DEMO_SPACE_TOKEN, "run": run_id, "waiting": waiting, "out": str(tmp_path / "t.jsonl")}
    fast = {"unpod_retry_delay": 0.001}
    operators = [
        ListSpacesOperator(task_id="spaces", **fast),
        GetSpaceOperator(task_id="space", space_token="{{ params.space }}", **fast),
        ListSpaceRunsOperator(task_id="runs", space_token="{{ params.space }}", **fast),
        ListRunTasksOperator(
            task_id="run_tasks", space_token="{{ params.space }}", run_id="{{ params.run }}", **fast
        ),
        ListSpaceTasksOperator(
            task_id="export", space_token="{{ params.space }}", output_path="file://{{ params.out }}", **fast
        ),
        CreateRunOperator(
            task_id="create",
            space_token="{{ params.space }}",
            pilot=DEMO_AGENT_HANDLE,
            context="Say hello",
            documents=[{"name": "Ana", "contact_number": "+911234567890"}],
            **fast,
        ),
        RunCompletedSensor(
            task_id="poke",
            space_token="{{ params.space }}",
            run_id="{{ params.waiting }}",
            mode="poke",
            deferrable=False,
            poke_interval=0.05,
            unpod_retry_delay=0.001,
        ),
    ]
    sim.inject("server_error", status=503, body="html", times=3)
    for operator in operators:
        ti = FakeTI()
        context: dict[str, Any] = {"ti": ti, "params": params, "task": operator}
        operator.render_template_fields(context)
        evidence.add(
            f"{operator.task_id} rendered fields", {f: getattr(operator, f) for f in operator.template_fields}
        )
        evidence.add(f"{operator.task_id} return value", operator.execute(context))
        evidence.add(f"{operator.task_id} XCom pushes", ti.pushed)
    evidence.add("JSONL file", (tmp_path / "t.jsonl").read_text(encoding="utf-8"))

    deferring = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=2, timeline=[("running", 0), ("completed", 0.5)])
    sensor = RunCompletedSensor(
        task_id="wait", space_token=DEMO_SPACE_TOKEN, run_id=deferring, deferrable=True, poke_interval=0.05
    )
    ti = FakeTI()
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute({"ti": ti, "params": {}})
    trigger = deferred.value.trigger
    classpath, kwargs = trigger.serialize()
    evidence.add("trigger repr", repr(trigger) + str(trigger) + repr(deferred.value))
    evidence.add("trigger kwargs", [classpath, kwargs])
    rebuilt = RunCompletedTrigger(**json.loads(json.dumps(kwargs)))

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in rebuilt.run()]

    events = asyncio.run(collect())
    evidence.add("trigger events", events)
    evidence.add("execute_complete", sensor.execute_complete({"ti": ti, "params": {}}, events[0]))
    evidence.add("sensor XCom pushes", ti.pushed)


@pytest.mark.usefixtures("unmasked")
def test_token_appears_only_in_the_authorization_header(
    sim: UnpodSimulator,
    unmasked: list[str],
    debug_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    mocker: Any,
    tmp_path: Path,
) -> None:
    import httpx
    import requests

    sync_send = mocker.spy(requests.Session, "send")
    async_send = mocker.spy(httpx.AsyncClient, "send")
    evidence = Evidence()
    exercise_hooks(sim, evidence)
    exercise_operators(sim, evidence, tmp_path)

    out, err = capfd.readouterr()
    evidence.add("stdout", out)
    evidence.add("stderr", err)
    evidence.add("log text", debug_logs.text)
    for record in debug_logs.records:
        evidence.add(
            f"log record {record.name}", record.getMessage() + repr(record.args) + str(record.exc_info)
        )
    evidence.add("simulator request log", sim.requests)
    assert not evidence.leaks(SECRET, WRONG), "\n".join(evidence.leaks(SECRET, WRONG))
    # What was looked at is real: retries were logged, errors raised, requests sent.
    assert "retrying in" in out + err + debug_logs.text
    assert len(evidence.texts) > 40

    # Every request that left carried the token in its Authorization header, and only there.
    sent: list[tuple[str, str, Any, dict[str, str]]] = []
    for call in sync_send.call_args_list:
        prepared = call.args[1]
        sent.append((prepared.method, prepared.url, prepared.body, dict(prepared.headers)))
    for call in async_send.call_args_list:
        request = call.kwargs["request"] if "request" in call.kwargs else call.args[1]
        sent.append((request.method, str(request.url), request.content, dict(request.headers)))
    assert len(sent) > 30 and async_send.call_count > 3
    for method, url, body, headers in sent:
        authorization = headers.pop("Authorization", None) or headers.pop("authorization", None)
        assert authorization in (f"Token {SECRET}", f"Token {WRONG}"), (method, url)
        rest = json.dumps([method, url, str(body), headers])
        assert SECRET not in rest and WRONG not in rest, rest
    # The provider asks Airflow to mask the token wherever it is read.
    assert SECRET in unmasked and WRONG in unmasked


@pytest.mark.slow
@pytest.mark.usefixtures("unmasked", "fast_retries")
def test_fault_campaign_never_exposes_the_token(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A short campaign (the full one checks results, errors, files and request logs too)."""
    for name in LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    with campaign_simulator() as sim:
        monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", sim.connection_json(timeout=0.25))
        campaign = run_campaign(sim, tmp_path, 40)
        requests_log = json.dumps(sim.requests)
    out, err = capfd.readouterr()
    assert campaign.schedules >= 40 and not campaign.failures, campaign.failure_report()
    texts = {"stdout": out, "stderr": err, "logs": caplog.text, "request log": requests_log}
    texts["records"] = "\n".join(r.getMessage() + repr(r.args) for r in caplog.records)
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_text(encoding="utf-8", errors="replace")
    assert [where for where, text in texts.items() if CAMPAIGN_TOKEN in text] == []


# --------------------------------------------------------------------------------------------
# TLS verification and plain http
# --------------------------------------------------------------------------------------------


def _set_conn(monkeypatch: pytest.MonkeyPatch, host: str, **extra: Any) -> None:
    conn = {"conn_type": "unpod", "host": host, "password": SECRET, "extra": {"org_handle": "acme", **extra}}
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps(conn))


@pytest.fixture
def no_network(mocker: Any) -> Any:
    """Any attempt to open a connection fails the test."""
    import socket

    return mocker.patch.object(socket, "create_connection", side_effect=AssertionError("network used"))


@pytest.mark.parametrize(
    ("extra", "verify"), [({}, True), ({"verify": True}, True), ({"verify": "true"}, True)]
)
async def test_tls_verification_is_on_by_default(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, extra: dict[str, Any], verify: bool
) -> None:
    _set_conn(monkeypatch, "https://unpod.example", **extra)
    hook = UnpodHook()
    hook._log = logging.getLogger("tests.secrets.tls")  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="tests.secrets.tls"):
        assert hook.get_conn().verify is True
    async_hook = UnpodAsyncHook()
    async_hook._log = logging.getLogger("tests.secrets.tls")  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="tests.secrets.tls"):
        client = await async_hook._aclient()
        context = client._transport._pool._ssl_context
        assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
        await async_hook.aclose()
    assert "verification is OFF" not in caplog.text


@pytest.mark.parametrize("value", [False, "false", "False", 0, "no"])
async def test_tls_verification_off_only_when_asked_and_then_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, value: Any
) -> None:
    _set_conn(monkeypatch, "https://unpod.example", verify=value)
    hook = UnpodHook()
    hook._log = logging.getLogger("tests.secrets.tls")  # type: ignore[assignment]
    async_hook = UnpodAsyncHook()
    async_hook._log = logging.getLogger("tests.secrets.tls")  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, logger="tests.secrets.tls"):
        assert hook.get_conn().verify is False
        client = await async_hook._aclient()
        assert client._transport._pool._ssl_context.verify_mode == ssl.CERT_NONE
        await async_hook.aclose()
    warnings = [r for r in caplog.records if "TLS certificate verification is OFF" in r.getMessage()]
    assert len(warnings) == 2 and all(r.levelno == logging.WARNING for r in warnings)
    assert SECRET not in caplog.text


def test_an_unclear_verify_setting_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    _set_conn(monkeypatch, "https://unpod.example", verify="maybe")
    with pytest.raises(UnpodConfigError, match="verify must be true or false") as info:
        UnpodHook().config  # noqa: B018
    assert SECRET not in str(info.value)


@pytest.mark.parametrize(
    "host",
    [
        "http://unpod.example",
        "http://10.0.0.5:3001",
        "http://127.0.0.1.nip.io",
        "http://localhost.example.com",
    ],
)
async def test_token_never_sent_over_plain_http_to_a_remote_host(
    monkeypatch: pytest.MonkeyPatch, no_network: Any, host: str
) -> None:
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    _set_conn(monkeypatch, host)
    with pytest.raises(UnpodConfigError, match="refusing to send the API token over plain http") as info:
        UnpodHook().get_space(DEMO_SPACE_TOKEN)
    assert SECRET not in str(info.value)
    with pytest.raises(UnpodConfigError, match="plain http"):
        await UnpodAsyncHook().afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    trigger = RunCompletedTrigger(space_token=DEMO_SPACE_TOKEN, run_id="R" + "0" * 32, poll_interval=0.01)
    events = [event.payload async for event in trigger.run()]
    assert [(e["status"], e["error_type"]) for e in events] == [("error", "UnpodConfigError")]
    assert SECRET not in json.dumps(events)
    no_network.assert_not_called()
    # Allowed only when the connection says so explicitly.
    _set_conn(monkeypatch, host, allow_insecure_http=True)
    assert UnpodHook().config.base_url == host


@pytest.mark.parametrize(
    "host", ["http://localhost:3001", "http://127.0.0.1:3001", "http://[::1]:3001", "http://127.8.9.10"]
)
def test_plain_http_is_fine_on_loopback(monkeypatch: pytest.MonkeyPatch, host: str) -> None:
    _set_conn(monkeypatch, host)
    assert UnpodHook().config.base_url == host


def test_redirects_are_not_followed_so_the_token_stays_home(sim: UnpodSimulator) -> None:
    sim.inject("http", status=302, headers={"Location": "http://evil.example/steal"}, times=None)
    with _hook() as hook, pytest.raises(UnpodProtocolError, match="redirect") as info:
        hook.get_space(DEMO_SPACE_TOKEN)
    assert SECRET not in str(info.value)
    assert len([r for r in sim.requests if r["path"].startswith("/api/")]) == 1


# --------------------------------------------------------------------------------------------
# Every example DAG under `airflow dags test`
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def secret_runner(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DagTestRunner]:
    home = tmp_path_factory.mktemp("secrets-airflow-home")
    with DagTestRunner(DAGS_FOLDER, airflow_home=home) as runner:
        runner.prepare()
        yield runner


def _example_dag_ids() -> list[str]:
    """The DAG ids of every file in dags_examples (read from the files, no Airflow import)."""
    import re

    ids = []
    for path in sorted(DAGS_FOLDER.glob("*.py")):
        ids += re.findall(r"dag_id=\"([a-z0-9_]+)\"", path.read_text(encoding="utf-8"))
    return ids


@pytest.mark.slow
@pytest.mark.parametrize("dag_id", _example_dag_ids())
def test_example_dag_never_exposes_the_token(
    dag_id: str, secret_runner: DagTestRunner, secret_sim: UnpodSimulator, tmp_path: Path
) -> None:
    sim = secret_sim
    sim.reset()
    out_dir = tmp_path / "out"
    env = {
        **sim.connection_env(),
        "UNPOD_POKE_INTERVAL": "1",
        "UNPOD_REPORT_DIR": str(out_dir),
        "UNPOD_EXPORT_DIR": str(out_dir),
    }
    run_ids: list[str] = []
    if dag_id == "unpod_run_report":
        run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=6, timeline=[("pending", 0)])
        run_ids.append(run_id)
        with timeline_on_first_look(sim, run_id, [("pending", 0), ("running", 1), ("completed", 3)]):
            result = secret_runner.run(dag_id, {"run_id": run_id}, env=env, timeout=240)
    elif dag_id == "unpod_score_calls":
        run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=5, final_status="completed")
        run_ids.append(run_id)
        result = secret_runner.run(dag_id, {"run_id": run_id}, env=env, timeout=240)
    elif dag_id == "unpod_export_space":
        result = secret_runner.run(
            dag_id, {"output_path": f"file://{out_dir}/tasks.jsonl"}, env=env, timeout=240
        )
    elif dag_id == "unpod_daily_campaign":
        result = secret_runner.run(dag_id, {"report_dir": str(out_dir)}, env=env, timeout=240)
        run_ids += [r["run_id"] for r in sim.space_runs(DEMO_SPACE_TOKEN)[:1]]
    else:
        pytest.fail(f"example DAG {dag_id} is new: add how to run it to this test")
    result.raise_for_failure()

    places: dict[str, bytes] = {"stdout": result.stdout.encode(), "stderr": result.stderr.encode()}
    places["simulator request log"] = json.dumps(sim.requests).encode()
    for root in (secret_runner.airflow_home, out_dir):
        for path in root.rglob("*"):
            if path.is_file():
                places[str(path)] = path.read_bytes()
    assert any(p.endswith("airflow.db") for p in places)
    leaks = [where for where, data in places.items() if SECRET.encode() in data]
    assert leaks == [], f"API token found in {leaks}"
    # The tasks' user tokens (credential-like) stay out of logs, XCom and files too.
    user_tokens = {t["user_info"]["user_token"] for run_id in run_ids for t in sim.run_tasks(run_id)}
    found = [where for where, data in places.items() for u in user_tokens if u.encode() in data]
    assert found == [], f"a task's user_token found in {found}"
