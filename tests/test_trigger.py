"""RunCompletedTrigger: serialization, the one event it yields, retries, deadlines, cancellation.

Two layers: transport-level unit tests (``httpx.AsyncClient.send`` or the hook's ``afind_run``
mocked with pytest-mock), and the same behaviours over real HTTP against the Unpod simulator.
Delays are tiny; no assertion depends on how long something took.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import httpx
import pytest

from unpod_provider._compat import BaseHook
from unpod_provider.exceptions import UnpodAuthError
from unpod_provider.hooks.unpod import UnpodAsyncHook
from unpod_provider.protocol import RetryPolicy
from unpod_provider.triggers.unpod import RunCompletedTrigger, check_run

#: Airflow 3.1+ reads connections asynchronously; 3.0 only has the sync lookup.
HAS_ASYNC_LOOKUP = hasattr(BaseHook, "aget_connection")

SPACE = "SPACE0TOKEN0ABC123XYZ789"
RUN_ID = "R40fe5eface1511f082ac156368e7acc4"
API_TOKEN = "0123456789abcdef0123456789abcdef01234567"
FAST_RETRY = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02, max_retry_after=0.02).to_dict()
CONN_JSON = json.dumps(
    {
        "conn_type": "unpod",
        "host": "http://127.0.0.1:9",
        "password": API_TOKEN,
        "extra": {"org_handle": "unpod.tv"},
    }
)


def run_obj(status: str, run_id: str = RUN_ID) -> dict[str, Any]:
    return {
        "space_id": "346",
        "run_id": run_id,
        "run_mode": "dev",
        "status": status,
        "batch_count": 1,
        "created": "2025-11-30T17:51:52",
        "modified": "2025-11-30T17:51:52",
    }


def runs_response(*runs: dict[str, Any], status_code: int = 200, **extra: Any) -> httpx.Response:
    body = {
        "count": len(runs),
        "status_code": 200,
        "message": "Runs Fetched Successfully",
        "data": list(runs),
    }
    return streamed(status_code, json.dumps(body).encode(), **extra)


def error_response(status_code: int, text: str = "<html>oops</html>", **extra: Any) -> httpx.Response:
    return streamed(status_code, text.encode(), **extra)


def streamed(status_code: int, body: bytes, **extra: Any) -> httpx.Response:
    """A response as ``AsyncClient.send(..., stream=True)`` returns it: the body not read yet."""
    return httpx.Response(
        status_code, stream=httpx.ByteStream(body), request=httpx.Request("GET", "http://x/"), **extra
    )


def make_trigger(**overrides: Any) -> RunCompletedTrigger:
    kwargs: dict[str, Any] = {
        "space_token": SPACE,
        "run_id": RUN_ID,
        "poll_interval": 0.05,
        "retry": FAST_RETRY,
        "end_time": time.time() + 60,
    }
    kwargs.update(overrides)
    return RunCompletedTrigger(**kwargs)


async def collect(trigger: RunCompletedTrigger) -> list[dict[str, Any]]:
    """Every event the trigger yields until it stops (it must be exactly one)."""
    return [event.payload async for event in trigger.run()]


@pytest.fixture
def conn_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", CONN_JSON)


# --------------------------------------------------------------------------------------------
# serialization
# --------------------------------------------------------------------------------------------


def test_serialize_round_trips_with_plain_json_kwargs() -> None:
    trigger = make_trigger(
        unpod_conn_id="my_unpod",
        success_states=("Completed",),
        failed_states=["failed", "cancelled", "partially_completed"],
        not_found_deadline=time.time() + 30,
        last_status="running",
        page_size=50,
    )
    classpath, kwargs = trigger.serialize()
    assert classpath == "unpod_provider.triggers.unpod.RunCompletedTrigger"
    # Plain JSON, unchanged by a JSON round trip (what the triggerer stores and reads back).
    assert json.loads(json.dumps(kwargs)) == kwargs
    rebuilt = RunCompletedTrigger(**json.loads(json.dumps(kwargs)))
    assert rebuilt == trigger
    assert rebuilt.serialize() == (classpath, kwargs)
    assert kwargs["success_states"] == ["completed"]
    assert kwargs["retry"] == FAST_RETRY
    assert RetryPolicy.from_dict(kwargs["retry"]) == RetryPolicy.from_dict(FAST_RETRY)
    assert set(kwargs) == {
        "space_token",
        "run_id",
        "unpod_conn_id",
        "poll_interval",
        "success_states",
        "failed_states",
        "end_time",
        "not_found_deadline",
        "retry",
        "last_status",
        "page_size",
    }
    assert make_trigger(run_id="R" + "0" * 32) != trigger


def test_no_api_token_in_kwargs_or_repr(conn_env: None) -> None:
    trigger = make_trigger()
    _, kwargs = trigger.serialize()
    assert API_TOKEN not in json.dumps(kwargs)
    assert API_TOKEN not in repr(trigger)
    assert "password" not in json.dumps(kwargs)
    assert not any(callable(v) for v in kwargs.values())


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"run_id": "../R1"}, "run_id"),
        ({"space_token": "a/b"}, "space_token"),
        ({"poll_interval": 0}, "poll_interval"),
        ({"end_time": time.monotonic()}, "wall-clock"),
        ({"not_found_deadline": 12.5}, "wall-clock"),
        ({"success_states": ["failed"]}, "both contain failed"),
        ({"success_states": []}, "success_states"),
        ({"retry": {"max_attempts": 0}}, "retry_limit"),
    ],
)
def test_bad_kwargs_refused(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_trigger(**overrides)


# --------------------------------------------------------------------------------------------
# the shared decision
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome", "unknown"),
    [
        ("completed", "success", False),
        ("partially_completed", "success", False),
        ("COMPLETED", "success", False),
        ("failed", "failed", False),
        ("cancelled", "failed", False),
        ("pending", "waiting", False),
        ("scheduled", "waiting", False),
        ("queued", "waiting", False),
        ("running", "waiting", False),
        ("paused_by_operator", "waiting", True),
        ("", "waiting", True),
    ],
)
def test_check_run_defaults(status: str, outcome: str, unknown: bool) -> None:
    check = check_run(
        run_obj(status),
        run_id=RUN_ID,
        space_token=SPACE,
        success_states=("completed", "partially_completed"),
        failed_states=("failed", "cancelled"),
        grace_over=True,
    )
    assert (check.outcome, check.unknown) == (outcome, unknown)


def test_check_run_terminal_state_in_neither_list_fails() -> None:
    check = check_run(
        run_obj("partially_completed"),
        run_id=RUN_ID,
        space_token=SPACE,
        success_states=("completed",),
        failed_states=("failed",),
        grace_over=False,
    )
    assert check.outcome == "failed"
    assert "partially_completed" in check.message and RUN_ID in check.message


def test_check_run_absent_run_waits_then_is_not_found() -> None:
    common: dict[str, Any] = {
        "run_id": RUN_ID,
        "space_token": SPACE,
        "success_states": ("completed",),
        "failed_states": ("failed",),
    }
    assert check_run(None, grace_over=False, **common).outcome == "waiting"
    check = check_run(None, grace_over=True, **common)
    assert check.outcome == "not_found"
    assert RUN_ID in check.message and SPACE in check.message


# --------------------------------------------------------------------------------------------
# events, with the hook's lookup mocked
# --------------------------------------------------------------------------------------------


async def test_success_event_after_waiting(mocker: Any) -> None:
    find = mocker.patch.object(
        UnpodAsyncHook,
        "afind_run",
        side_effect=[run_obj("pending"), run_obj("running"), run_obj("completed")],
    )
    events = await collect(make_trigger())
    assert len(events) == 1
    event = events[0]
    assert event["status"] == "success"
    assert event["run"] == run_obj("completed")
    assert (event["run_id"], event["space_token"], event["run_status"]) == (RUN_ID, SPACE, "completed")
    assert event["error_type"] is None
    assert find.await_count == 3
    json.dumps(event)  # the payload is plain JSON


async def test_failed_event(mocker: Any) -> None:
    mocker.patch.object(UnpodAsyncHook, "afind_run", side_effect=[run_obj("running"), run_obj("cancelled")])
    (event,) = await collect(make_trigger())
    assert event["status"] == "failed"
    assert event["run_status"] == "cancelled"
    assert RUN_ID in event["message"] and "cancelled" in event["message"]


async def test_not_found_event_after_grace_deadline(mocker: Any) -> None:
    find = mocker.patch.object(UnpodAsyncHook, "afind_run", return_value=None)
    (event,) = await collect(make_trigger(not_found_deadline=time.time() + 0.1))
    assert event["status"] == "not_found"
    assert event["run"] is None and event["run_status"] is None
    assert find.await_count >= 2  # it kept looking during the grace period


async def test_run_appearing_within_grace_is_followed(mocker: Any) -> None:
    mocker.patch.object(UnpodAsyncHook, "afind_run", side_effect=[None, None, run_obj("completed")])
    (event,) = await collect(make_trigger(not_found_deadline=time.time() + 60))
    assert event["status"] == "success"


async def test_timeout_event_at_deadline_with_last_status(mocker: Any) -> None:
    find = mocker.patch.object(UnpodAsyncHook, "afind_run", return_value=run_obj("running"))
    (event,) = await collect(make_trigger(end_time=time.time() + 0.15))
    assert event["status"] == "timeout"
    assert event["run_status"] == "running"
    assert event["run"] == run_obj("running")
    assert "running" in event["message"]
    assert find.await_count >= 1


async def test_deadline_already_passed_times_out_without_a_request(mocker: Any) -> None:
    find = mocker.patch.object(UnpodAsyncHook, "afind_run", return_value=run_obj("running"))
    (event,) = await collect(make_trigger(end_time=time.time() - 1, last_status="queued"))
    assert event["status"] == "timeout"
    assert event["run_status"] == "queued"  # what the sensor saw before deferring
    find.assert_not_awaited()


async def test_deadline_cuts_a_look_that_hangs(mocker: Any) -> None:
    async def hang(*args: Any, **kwargs: Any) -> None:
        await asyncio.Event().wait()

    mocker.patch.object(UnpodAsyncHook, "afind_run", side_effect=hang)
    (event,) = await collect(make_trigger(end_time=time.time() + 0.1))
    assert event["status"] == "timeout"
    assert "in progress" in event["message"]


async def test_persistent_api_error_becomes_error_event(mocker: Any) -> None:
    mocker.patch.object(
        UnpodAsyncHook,
        "afind_run",
        side_effect=UnpodAuthError("Unpod rejected the credentials (HTTP 401)", status_code=401),
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "error"
    assert event["error_type"] == "UnpodAuthError"
    assert event["status_code"] == 401
    assert "HTTP 401" in event["message"]


async def test_unexpected_exception_becomes_error_event(mocker: Any) -> None:
    mocker.patch.object(UnpodAsyncHook, "afind_run", side_effect=KeyError("boom"))
    (event,) = await collect(make_trigger())
    assert event["status"] == "error"
    assert event["error_type"] == "KeyError"


def log_lines(log: Any) -> list[tuple[str, str]]:
    """(level, rendered message) of every call made on a mocked logger."""
    lines = []
    for call in log.method_calls:
        args = call.args
        if args and isinstance(args[0], str):
            lines.append((call[0], args[0] % tuple(args[1:]) if len(args) > 1 else args[0]))
    return lines


async def test_unknown_status_keeps_waiting_and_is_logged_once(mocker: Any) -> None:
    mocker.patch.object(
        UnpodAsyncHook,
        "afind_run",
        side_effect=[run_obj("paused"), run_obj("paused"), run_obj("paused"), run_obj("completed")],
    )
    log = mocker.patch.object(RunCompletedTrigger, "log", new_callable=mocker.PropertyMock).return_value
    (event,) = await collect(make_trigger())
    assert event["status"] == "success"
    lines = log_lines(log)
    unknown = [line for line in lines if "does not know" in line[1]]
    assert len(unknown) == 1 and unknown[0][0] == "warning" and "'paused'" in unknown[0][1]
    assert len(lines) == 3  # one line per look while waiting, nothing else


async def test_client_closed_before_the_event_is_yielded(mocker: Any) -> None:
    mocker.patch.object(UnpodAsyncHook, "afind_run", return_value=run_obj("completed"))
    close = mocker.spy(UnpodAsyncHook, "aclose")
    agen = make_trigger().run()
    event = await agen.__anext__()
    assert event.payload["status"] == "success"
    assert close.await_count == 1  # closed although the triggerer never resumes the generator
    with pytest.raises(StopAsyncIteration):
        await agen.__anext__()


async def test_cancellation_closes_the_client(mocker: Any) -> None:
    started = asyncio.Event()

    async def hang(*args: Any, **kwargs: Any) -> None:
        started.set()
        await asyncio.Event().wait()

    mocker.patch.object(UnpodAsyncHook, "afind_run", side_effect=hang)
    close = mocker.spy(UnpodAsyncHook, "aclose")
    task = asyncio.create_task(make_trigger().run().__anext__())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert close.await_count == 1


# --------------------------------------------------------------------------------------------
# transport level: httpx mocked under the real async hook
# --------------------------------------------------------------------------------------------


async def test_connection_is_read_with_the_async_lookup(mocker: Any) -> None:
    from airflow.sdk import Connection

    conn = Connection(
        conn_id="unpod_default",
        conn_type="unpod",
        host="http://127.0.0.1:9",
        password=API_TOKEN,
        extra=json.dumps({"org_handle": "unpod.tv"}),
    )
    loop_thread = threading.get_ident()
    sync_threads: list[int] = []
    if HAS_ASYNC_LOOKUP:
        aget = mocker.patch.object(BaseHook, "aget_connection", new=mocker.AsyncMock(return_value=conn))
        sync_get = mocker.patch.object(BaseHook, "get_connection", side_effect=AssertionError("sync lookup"))
    else:  # Airflow 3.0: no async lookup; the sync one must run off the event loop's thread

        def sync_lookup(conn_id: str) -> Any:
            sync_threads.append(threading.get_ident())
            return conn

        sync_get = mocker.patch.object(BaseHook, "get_connection", side_effect=sync_lookup)
    request = mocker.patch.object(
        httpx.AsyncClient, "send", new=mocker.AsyncMock(return_value=runs_response(run_obj("completed")))
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "success"
    if HAS_ASYNC_LOOKUP:
        aget.assert_awaited_once_with("unpod_default")
        sync_get.assert_not_called()
    else:
        assert len(sync_threads) == 1 and sync_threads[0] != loop_thread
    sent = request.await_args.kwargs["request"]
    assert (sent.method, sent.url.path) == ("GET", f"/api/v2/platform/spaces/{SPACE}/runs/")
    assert dict(sent.url.params) == {"page": "1", "page_size": "100"}


async def test_transient_5xx_and_429_are_retried_not_fatal(mocker: Any, conn_env: None) -> None:
    request = mocker.patch.object(
        httpx.AsyncClient,
        "send",
        new=mocker.AsyncMock(
            side_effect=[
                runs_response(run_obj("running")),
                error_response(503),
                error_response(429, headers={"Retry-After": "0"}),
                error_response(502),
                runs_response(run_obj("completed")),
            ]
        ),
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "success"
    assert request.await_count == 5


async def test_transport_errors_are_retried(mocker: Any, conn_env: None) -> None:
    mocker.patch.object(
        httpx.AsyncClient,
        "send",
        new=mocker.AsyncMock(
            side_effect=[
                httpx.ReadTimeout("slow"),
                httpx.RemoteProtocolError("cut"),
                runs_response(run_obj("failed")),
            ]
        ),
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "failed"


async def test_persistent_5xx_becomes_error_event(mocker: Any, conn_env: None) -> None:
    request = mocker.patch.object(
        httpx.AsyncClient, "send", new=mocker.AsyncMock(side_effect=lambda *a, **k: error_response(500))
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "error"
    assert event["error_type"] == "UnpodServerError"
    assert event["status_code"] == 500
    assert request.await_count == FAST_RETRY["max_attempts"]
    assert API_TOKEN not in json.dumps(event)


async def test_business_error_is_not_retried(mocker: Any, conn_env: None) -> None:
    body = {"status_code": 206, "message": "Invalid Space Token", "data": {}}
    request = mocker.patch.object(
        httpx.AsyncClient,
        "send",
        new=mocker.AsyncMock(return_value=streamed(206, json.dumps(body).encode())),
    )
    (event,) = await collect(make_trigger())
    assert event["status"] == "error"
    assert event["error_type"] == "UnpodBusinessError"
    assert "Invalid Space Token" in event["message"]
    assert request.await_count == 1


# ============================================================================================
# Over real HTTP against the Unpod simulator
# ============================================================================================

STEP = 10.0


@pytest.fixture
def sim(unpod_simulator_shared: Any, mocker: Any) -> Any:
    """The simulator, its clock moving ``STEP`` seconds after each look (real HTTP lookups)."""
    simulator = unpod_simulator_shared
    real = UnpodAsyncHook.afind_run

    async def afind_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return await real(self, *args, **kwargs)
        finally:
            simulator.advance(STEP)

    mocker.patch.object(UnpodAsyncHook, "afind_run", afind_run)
    return simulator


def sim_trigger(sim: Any, run_id: str, **overrides: Any) -> RunCompletedTrigger:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    return make_trigger(space_token=DEMO_SPACE_TOKEN, run_id=run_id, **overrides)


def looks(sim: Any) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["path"].endswith("/runs/")]


async def test_sim_success_event(sim: Any, mocker: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(
        DEMO_SPACE_TOKEN, n_tasks=2, timeline=[("pending", 0), ("running", STEP), ("completed", 2 * STEP)]
    )
    lookup = mocker.spy(BaseHook, "aget_connection" if HAS_ASYNC_LOOKUP else "get_connection")
    (event,) = await collect(sim_trigger(sim, run_id))
    assert event["status"] == "success"
    assert event["run"] == {r["run_id"]: r for r in sim.space_runs(DEMO_SPACE_TOKEN)}[run_id]
    assert event["run_status"] == "completed"
    assert len(looks(sim)) == 3
    assert lookup.call_count == 1  # the connection is read once (asynchronously where Airflow can)
    assert sim.token not in json.dumps(event)


async def test_sim_failed_event(sim: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0), ("failed", STEP)])
    (event,) = await collect(sim_trigger(sim, run_id))
    assert (event["status"], event["run_status"]) == ("failed", "failed")
    assert run_id in event["message"]
    assert len(looks(sim)) == 2


async def test_sim_not_found_event(sim: Any) -> None:
    missing = "R" + "f" * 32
    (event,) = await collect(sim_trigger(sim, missing, not_found_deadline=time.time() + 0.1))
    assert event["status"] == "not_found"
    assert missing in event["message"]


async def test_sim_timeout_event_at_the_deadline(sim: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    (event,) = await collect(sim_trigger(sim, run_id, end_time=time.time() + 0.2))
    assert event["status"] == "timeout"
    assert event["run_status"] == "running"
    assert event["run"]["run_id"] == run_id
    assert len(looks(sim)) >= 1


async def test_sim_transient_5xx_and_429_recovered(sim: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(
        DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("pending", 0), ("running", STEP), ("completed", 2 * STEP)]
    )
    path = f"/spaces/{DEMO_SPACE_TOKEN}/runs/"
    sim.inject("server_error", path=path, status=503, body="html", skip=1, times=1)
    sim.inject("rate_limit", path=path, retry_after=0, skip=1, times=1)
    sim.inject("server_error", path=path, status=500, body="empty", skip=1, times=1)
    sim.inject("disconnect", path=path, skip=1, times=1)
    retry = {**FAST_RETRY, "max_attempts": 5}  # four failures in a row, the fifth attempt works
    (event,) = await collect(sim_trigger(sim, run_id, retry=retry))
    assert event["status"] == "success"
    statuses = [r["status"] for r in looks(sim)]
    assert 503 in statuses and 429 in statuses and 500 in statuses
    assert statuses.count(200) == 3  # the three looks that got through


async def test_sim_persistent_error_event(sim: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    sim.inject("server_error", path="/runs/", status=504, skip=1, times=None)
    (event,) = await collect(sim_trigger(sim, run_id))
    assert event["status"] == "error"
    assert (event["error_type"], event["status_code"]) == ("UnpodServerError", 504)
    assert event["run_status"] == "running"  # the last status seen before the errors
    assert len(looks(sim)) == 1 + FAST_RETRY["max_attempts"]


async def test_sim_auth_error_is_not_retried(sim: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    conn = json.loads(sim.connection_json())
    conn["password"] = "f" * 40
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps(conn))
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, final_status="completed")
    (event,) = await collect(sim_trigger(sim, run_id))
    assert (event["status"], event["error_type"], event["status_code"]) == ("error", "UnpodAuthError", 401)
    assert len(looks(sim)) == 1
    assert "f" * 40 not in json.dumps(event)


async def test_sim_cancellation_closes_the_real_client(sim: Any, mocker: Any) -> None:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    hooks: list[UnpodAsyncHook] = []
    real_hook = RunCompletedTrigger._hook

    def keep(self: RunCompletedTrigger) -> Any:
        hooks.append(real_hook(self))
        return hooks[-1]

    mocker.patch.object(RunCompletedTrigger, "_hook", keep)
    task = asyncio.create_task(collect(sim_trigger(sim, run_id, poll_interval=0.05)))
    while len(looks(sim)) < 2:  # waiting: at least two looks made with one open client
        await asyncio.sleep(0.01)
    client = hooks[0]._client
    assert client is not None and not client.is_closed
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert client.is_closed
    assert hooks[0]._client is None
