"""Time budgets: nothing the provider does can wait forever, and the trigger never blocks its loop.

- every request has a connect and a read timeout (sync ``requests`` and async ``httpx``);
- a server that never answers ends in ``UnpodTimeoutError`` after the retries (hook, async hook,
  trigger), also when it sends the headers and then stalls in the body;
- retries stop at ``max_retry_seconds`` (``RetryPolicy.max_total_seconds``): no wait is started
  that would end past it (measured on a fake clock: waits are recorded, not slept);
- a sensor's wait ends at its ``timeout``, in poke mode and deferred, even while a look hangs;
- 50 triggers against a slow server progress together: every one has made its first request
  before any has made its second, and a heartbeat coroutine is never held up for long compared
  with the server's latency (no absolute wall-clock threshold anywhere).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import tenacity
from fakes import FakeTI, set_conn, unpod_requests

from unpod_provider.exceptions import (
    UnpodBadRequestError,
    UnpodConnectionError,
    UnpodRateLimitError,
    UnpodServerError,
    UnpodTimeoutError,
)
from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook
from unpod_provider.protocol import DEFAULT_CONNECT_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS, RetryPolicy
from unpod_provider.sensors.unpod import RunCompletedSensor, UnpodSensorTimeout
from unpod_provider.testing import DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.triggers.unpod import RunCompletedTrigger

#: A server that "never answers": far longer than any timeout used here.
NEVER = 3.0


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    return unpod_simulator_shared


class FakeClock:
    """tenacity's clock and sleep: waits are recorded and advance the clock, nothing is slept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


@pytest.fixture
def fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(tenacity, "time", clock)  # RetryCallState's start and outcome times
    monkeypatch.setattr(tenacity.nap, "time", clock)  # Retrying's sleep
    original_init = tenacity.AsyncRetrying.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["sleep"] = clock.asleep
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(tenacity.AsyncRetrying, "__init__", init)
    return clock


# --------------------------------------------------------------------------------------------
# Every request has a connect and a read timeout
# --------------------------------------------------------------------------------------------


def test_every_sync_request_has_a_connect_and_a_read_timeout(sim: UnpodSimulator, mocker: Any) -> None:
    import requests

    spy = mocker.spy(requests.Session, "request")
    with UnpodHook() as hook:
        hook.get_space(DEMO_SPACE_TOKEN)
        hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
        hook.find_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert spy.call_count >= 5
    for call in spy.call_args_list:
        assert call.kwargs["timeout"] == (DEFAULT_CONNECT_TIMEOUT_SECONDS, DEFAULT_TIMEOUT_SECONDS)


@pytest.mark.parametrize(
    ("setting", "expected"), [(None, (10.0, 30.0)), (4.0, (4.0, 4.0)), (45, (10.0, 45.0))]
)
def test_timeouts_follow_the_connection_and_the_hook_argument(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, mocker: Any, setting: float | None, expected: Any
) -> None:
    import requests

    if setting is not None:
        set_conn(monkeypatch, sim, timeout=setting)
    spy = mocker.spy(requests.Session, "request")
    with UnpodHook() as hook:
        hook.get_space(DEMO_SPACE_TOKEN)
    assert spy.call_args.kwargs["timeout"] == expected
    with UnpodHook(timeout=2.5) as hook:  # the hook argument wins over the connection
        hook.get_space(DEMO_SPACE_TOKEN)
    assert spy.call_args.kwargs["timeout"] == (2.5, 2.5)


async def test_every_async_request_has_a_connect_and_a_read_timeout(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, timeout=7)
    async with UnpodAsyncHook() as hook:
        assert await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32) is None
        timeout = hook._client.timeout
    assert (timeout.connect, timeout.read, timeout.write, timeout.pool) == (7.0, 7.0, 7.0, 7.0)


# --------------------------------------------------------------------------------------------
# A server that never answers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_server_that_never_answers_ends_in_a_timeout_error_after_the_retries(
    sim: UnpodSimulator, stage: str
) -> None:
    sim.inject("slow", seconds=NEVER, stage=stage, times=None)
    with (
        UnpodHook(timeout=0.2, retry_limit=3, retry_delay=0.001) as hook,
        pytest.raises(UnpodTimeoutError) as info,
    ):
        hook.get_space(DEMO_SPACE_TOKEN)
    assert "read timeout of 0.2s" in str(info.value)
    assert len(unpod_requests(sim)) == 3  # every attempt was made, each one cut by the timeout


@pytest.mark.parametrize("stage", ["headers", "body"])
async def test_server_that_never_answers_ends_the_async_hook_and_the_trigger(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, stage: str
) -> None:
    set_conn(monkeypatch, sim, timeout=0.2)
    sim.inject("slow", seconds=NEVER, stage=stage, times=None)
    policy = RetryPolicy(max_attempts=3, base_delay=0.001)
    async with UnpodAsyncHook(retry_policy=policy) as hook:
        with pytest.raises(UnpodTimeoutError):
            await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert len(unpod_requests(sim)) == 3

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    sim.reset_requests()
    trigger = RunCompletedTrigger(
        space_token=DEMO_SPACE_TOKEN, run_id=run_id, poll_interval=0.01, retry=policy.to_dict()
    )
    events = [event.payload async for event in trigger.run()]  # no deadline: the retries end it
    assert [(e["status"], e["error_type"]) for e in events] == [("error", "UnpodTimeoutError")]
    assert len(unpod_requests(sim)) == 3


#: A trickled answer: 16 bytes every 0.1 s, each gap well within the 0.5 s read timeout used
#: below, the whole (a list of spaces or runs, KBs) many times longer than 4 read timeouts (2 s).
TRICKLE = {"interval": 0.1, "chunk_bytes": 16}


def test_trickled_body_ends_at_the_response_deadline(sim: UnpodSimulator) -> None:
    """The read timeout never fires (a byte keeps coming); the whole-response deadline does."""
    sim.inject("trickle", path="/spaces/", times=None, **TRICKLE)
    with (
        UnpodHook(timeout=0.5, retry_limit=2, retry_delay=0.001) as hook,
        pytest.raises(UnpodTimeoutError, match=r"whole exchange took over 2s") as info,
    ):
        hook.list_spaces()
    assert info.value.request_sent is True
    assert info.value.retryable
    assert len(unpod_requests(sim, "/spaces/")) == 2  # each attempt cut, then retried once


async def test_trickled_body_ends_the_async_hook_at_the_response_deadline(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, timeout=0.5)
    sim.inject("trickle", path="/runs/", times=None, **TRICKLE)
    async with UnpodAsyncHook(retry_policy=RetryPolicy(max_attempts=2, base_delay=0.001)) as hook:
        with pytest.raises(UnpodTimeoutError, match=r"whole exchange took over 2s"):
            await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert len(unpod_requests(sim, "/runs/")) == 2


def test_connection_closed_before_any_answer_ends_in_a_connection_error(sim: UnpodSimulator) -> None:
    sim.inject("disconnect", times=None)
    with (
        UnpodHook(timeout=0.5, retry_limit=3, retry_delay=0.001) as hook,
        pytest.raises(UnpodConnectionError),
    ):
        hook.get_space(DEMO_SPACE_TOKEN)
    assert len(unpod_requests(sim)) == 3


# --------------------------------------------------------------------------------------------
# The total retry budget
# --------------------------------------------------------------------------------------------


def test_retries_never_wait_past_max_retry_seconds(sim: UnpodSimulator, fake_clock: FakeClock) -> None:
    """503 with ``Retry-After: 5`` forever, budget 12 s: waits of 5 + 5, never a third."""
    sim.inject("server_error", status=503, body="json", retry_after=5, times=None)
    with (
        UnpodHook(retry_limit=100, retry_delay=0.001, max_retry_seconds=12) as hook,
        pytest.raises(UnpodServerError),
    ):
        hook.get_space(DEMO_SPACE_TOKEN)
    assert fake_clock.sleeps == [5.0, 5.0]
    assert sum(fake_clock.sleeps) <= 12
    assert len(unpod_requests(sim)) == 3


def test_exponential_backoff_stops_inside_the_budget(sim: UnpodSimulator, fake_clock: FakeClock) -> None:
    sim.inject("rate_limit", body="json", times=None)  # 429 without Retry-After
    with (
        UnpodHook(retry_limit=50, retry_delay=1.0, max_retry_seconds=20) as hook,
        pytest.raises(UnpodRateLimitError),
    ):
        hook.get_space(DEMO_SPACE_TOKEN)
    assert 2 <= len(fake_clock.sleeps) < 49
    assert sum(fake_clock.sleeps) <= 20


async def test_async_retries_never_wait_past_the_budget(
    sim: UnpodSimulator, fake_clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.inject("server_error", status=502, body="html", retry_after=5, times=None)
    policy = RetryPolicy(max_attempts=100, base_delay=0.001, max_total_seconds=12)
    async with UnpodAsyncHook(retry_policy=policy) as hook:
        with pytest.raises(UnpodServerError):
            await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert fake_clock.sleeps == [5.0, 5.0]


def test_a_retry_after_longer_than_the_budget_fails_at_once(
    sim: UnpodSimulator, fake_clock: FakeClock
) -> None:
    sim.inject("rate_limit", retry_after=3600, times=None)
    with UnpodHook(retry_limit=5, max_retry_seconds=60) as hook, pytest.raises(UnpodRateLimitError) as info:
        hook.get_space(DEMO_SPACE_TOKEN)
    assert fake_clock.sleeps == []
    assert info.value.retry_after == 3600
    assert len(unpod_requests(sim)) == 1


# --------------------------------------------------------------------------------------------
# A sensor's wait respects its timeout
# --------------------------------------------------------------------------------------------


def test_poke_sensor_ends_at_its_timeout(sim: UnpodSimulator) -> None:
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    sensor = RunCompletedSensor(
        task_id="wait",
        space_token=DEMO_SPACE_TOKEN,
        run_id=run_id,
        mode="poke",
        deferrable=False,
        poke_interval=0.05,
        timeout=0.3,
        unpod_retry_delay=0.001,
    )
    with pytest.raises(UnpodSensorTimeout) as info:
        sensor.execute({"ti": FakeTI(), "params": {}})
    assert info.value.run_status == "running" and "running" in str(info.value)
    looks = len(unpod_requests(sim, "/runs/"))
    assert 2 <= looks <= 0.3 / 0.05 + 2  # one look per poke interval until the timeout, no more


async def test_trigger_deadline_cuts_a_look_that_hangs(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read timeout 30 s, server silent for 3 s: the deadline (0.3 s away) ends the wait first."""
    set_conn(monkeypatch, sim, timeout=30)
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    sim.inject("slow", seconds=NEVER, times=None)
    trigger = RunCompletedTrigger(
        space_token=DEMO_SPACE_TOKEN, run_id=run_id, poll_interval=0.05, end_time=time.time() + 0.3
    )
    started = time.monotonic()
    events = [event.payload async for event in trigger.run()]
    assert [e["status"] for e in events] == ["timeout"]
    assert "while the last look at it was in progress" in events[0]["message"]
    assert time.monotonic() - started < NEVER  # the deadline ended it, not an answer or a timeout
    sensor = RunCompletedSensor(
        task_id="wait", space_token=DEMO_SPACE_TOKEN, run_id=run_id, deferrable=True, poke_interval=0.05
    )
    with pytest.raises(UnpodSensorTimeout):
        sensor.execute_complete({"ti": FakeTI()}, events[0])


# --------------------------------------------------------------------------------------------
# Many triggers, one event loop
# --------------------------------------------------------------------------------------------

TRIGGERS = 50
LATENCY = 0.5


@pytest.fixture
def slow_spaces(unpod_simulator: UnpodSimulator) -> Iterator[tuple[UnpodSimulator, list[tuple[str, str]]]]:
    """A fresh simulator with ``TRIGGERS`` spaces, each with a run that is still running.

    Every Unpod request takes ``LATENCY`` seconds to be answered.
    """
    sim = unpod_simulator
    pairs = []
    for i in range(TRIGGERS):
        space = sim.add_space(n_tasks=0, n_runs=0, name=f"Loop {i}")
        pairs.append((space, sim.add_run(space, n_tasks=1, timeline=[("running", 0)])))
    sim.latency = LATENCY
    yield sim, pairs
    sim.latency = 0.0


@pytest.mark.slow
async def test_fifty_triggers_progress_together_against_a_slow_server(
    slow_spaces: tuple[UnpodSimulator, list[tuple[str, str]]],
) -> None:
    sim, pairs = slow_spaces
    triggers = [
        RunCompletedTrigger(space_token=space, run_id=run_id, poll_interval=0.01, end_time=time.time() + 600)
        for space, run_id in pairs
    ]
    gaps: list[float] = []
    stop = asyncio.Event()

    async def heartbeat() -> None:
        last = time.monotonic()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    async def run(trigger: RunCompletedTrigger) -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    beat = asyncio.create_task(heartbeat())
    tasks = [asyncio.create_task(run(t)) for t in triggers]
    # Let every trigger make a few looks, then finish all runs: each trigger ends with one event.
    while (
        len({r["path"] for r in unpod_requests(sim, "/runs/")}) < TRIGGERS
        or len(unpod_requests(sim, "/runs/")) < 3 * TRIGGERS
    ):
        await asyncio.sleep(0.05)
    for _, run_id in pairs:
        sim.set_run_status(run_id, "completed")
    results = await asyncio.wait_for(asyncio.gather(*tasks), timeout=120)
    stop.set()
    await beat

    assert all([e["status"] for e in events] == ["success"] for events in results)
    first: dict[str, float] = {}
    later: dict[str, list[float]] = {}
    for look in sorted(unpod_requests(sim, "/runs/"), key=lambda r: r["time"]):
        if look["path"] in first:
            later.setdefault(look["path"], []).append(look["time"])
        else:
            first[look["path"]] = look["time"]
    assert len(first) == TRIGGERS
    # The first look reads the connection and opens the shared client alone; every other trigger
    # then made its first look before any of them made a second: none waited on another's looks.
    opener = min(first, key=first.__getitem__)
    seconds = [times[0] for path, times in later.items() if path != opener]
    print(
        f"first looks within {max(first.values()) - min(first.values()):.3f}s; max loop gap {max(gaps):.3f}s"
    )
    assert max(first.values()) < min(seconds)
    # The loop was never held for as long as one answer takes (a blocking call would hold it).
    assert max(gaps) < LATENCY / 2, f"event loop blocked for {max(gaps):.3f}s"


async def test_async_client_builds_its_tls_context_off_the_event_loop(
    sim: UnpodSimulator, mocker: Any
) -> None:
    """Reading the CA bundle takes tens of milliseconds: a thread does it, not the loop."""
    import threading

    from unpod_provider.hooks import _transport

    threads: list[threading.Thread] = []
    real = _transport.ssl.create_default_context

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.current_thread())
        return real(*args, **kwargs)

    mocker.patch.object(_transport.ssl, "create_default_context", spy)
    _transport.tls_context.cache_clear()
    async with UnpodAsyncHook() as hook:
        await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
        client = hook._client
    assert threads and threading.current_thread() not in threads
    assert client is not None
    async with UnpodAsyncHook() as other:  # built once per process, shared by the clients
        await other.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert len(threads) == 1
    _transport.tls_context.cache_clear()


def test_a_fatal_page_ends_a_concurrent_fetch_without_waiting_for_its_siblings_retries(
    sim: UnpodSimulator,
) -> None:
    """Page 2 is refused (400) while page 3 waits 1 s between attempts: the fetch ends with the
    400 at once, and page 3 is not asked for again afterwards."""
    space = sim.add_space(n_tasks=200, name="Stops")
    path = f"/spaces/{space}/tasks/"
    sim.inject("http", path=path, query={"page": "2"}, status=400, body={"message": "Bad page"}, times=None)
    sim.inject("server_error", path=path, query={"page": "3"}, status=503, retry_after=1, times=None)
    with UnpodHook(retry_limit=5, retry_delay=0.001) as hook, pytest.raises(UnpodBadRequestError):
        hook.list_space_tasks(space, page_size=20)
    asked_when_it_ended = [r["query"]["page"] for r in unpod_requests(sim, path)].count("3")
    time.sleep(2.5)  # long enough for two more of page 3's attempts, had it gone on
    asked = [r["query"]["page"] for r in unpod_requests(sim, path)].count("3")
    assert asked_when_it_ended <= 2 and asked <= 2  # (it used to make all 5 before the 400 was raised)


def test_a_poke_look_never_outlives_the_sensors_timeout(sim: UnpodSimulator) -> None:
    """timeout=1 and 503s for ever: the one look stops retrying at the timeout (it used to take
    the whole retry budget: here 8 attempts, over 10 s of backoff)."""
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("in_progress", 0)])
    sim.inject("server_error", path="/runs/", status=503, body="json", times=None)
    sensor = RunCompletedSensor(
        task_id="wait",
        space_token=DEMO_SPACE_TOKEN,
        run_id=run_id,
        mode="poke",
        poke_interval=0.01,
        timeout=1,
        unpod_retry_limit=8,
        unpod_retry_delay=0.2,
    )
    with pytest.raises((UnpodServerError, UnpodSensorTimeout)):
        sensor.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    assert len(unpod_requests(sim, "/runs/")) < 8
