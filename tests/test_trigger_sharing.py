"""RunCompletedTrigger sharing in one event loop: one client per connection, one lookup per space.

The triggerer runs every trigger in one asyncio loop. Triggers with the same connection (and
retry policy) share one ``UnpodAsyncHook``; those waiting on the same space share one runs-list
lookup per look. Each trigger must still yield exactly one event with its own run, and the last
one out closes the client. No assertion depends on how long something took.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from unpod_provider.exceptions import UnpodAuthError, UnpodServerError
from unpod_provider.hooks.unpod import UnpodAsyncHook
from unpod_provider.protocol import RetryPolicy
from unpod_provider.triggers.unpod import RunCompletedTrigger

SPACE_A = "SPACEAAAAAAAAAAAAAAAAAAA"
SPACE_B = "SPACEBBBBBBBBBBBBBBBBBBB"
FAST_RETRY = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02, max_retry_after=0.02).to_dict()


def run_id(n: int) -> str:
    return f"R{n:032x}"


def make_trigger(space: str, n: int, **overrides: Any) -> RunCompletedTrigger:
    kwargs: dict[str, Any] = {
        "space_token": space,
        "run_id": run_id(n),
        "poll_interval": 0.05,
        "retry": FAST_RETRY,
        "end_time": time.time() + 60,
    }
    kwargs.update(overrides)
    return RunCompletedTrigger(**kwargs)


async def collect(trigger: RunCompletedTrigger) -> list[dict[str, Any]]:
    return [event.payload async for event in trigger.run()]


class FakeSpaces:
    """Stands in for the API: runs per space; a run completes after ``looks_to_finish`` looks."""

    def __init__(self, runs: dict[str, list[str]], looks_to_finish: int = 3) -> None:
        self.runs = runs
        self.looks_to_finish = looks_to_finish
        self.lookups: list[tuple[str, str]] = []  # (space, "many" | run_id)
        self.looks_by_space: dict[str, int] = {}
        self.hooks: list[UnpodAsyncHook] = []
        self.closed: list[UnpodAsyncHook] = []
        self.error: BaseException | None = None
        self.errors: dict[str, BaseException] = {}  # by space
        self.hang = False

    def status(self, space: str) -> str:
        return "completed" if self.looks_by_space.get(space, 0) >= self.looks_to_finish else "running"

    def run_obj(self, space: str, rid: str) -> dict[str, Any]:
        return {"run_id": rid, "status": self.status(space), "space": space}

    async def _look(self, space: str, what: str) -> None:
        self.lookups.append((space, what))
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        if space in self.errors:
            raise self.errors[space]
        self.looks_by_space[space] = self.looks_by_space.get(space, 0) + 1

    def install(self, mocker: Any) -> None:
        fake = self

        async def afind_run(hook: Any, space: str, rid: str, *, page_size: int = 100) -> Any:
            await fake._look(space, rid)
            return fake.run_obj(space, rid) if rid in fake.runs.get(space, []) else None

        async def aiter_space_runs(hook: Any, space: str, *, page_size: int = 100) -> AsyncIterator[Any]:
            await fake._look(space, "many")
            for rid in fake.runs.get(space, []):
                yield fake.run_obj(space, rid)

        async def aclose(hook: Any) -> None:
            fake.closed.append(hook)

        real_hook = RunCompletedTrigger._hook

        def hook(trigger: RunCompletedTrigger) -> Any:
            made = real_hook(trigger)
            fake.hooks.append(made)
            return made

        mocker.patch.object(UnpodAsyncHook, "afind_run", afind_run)
        mocker.patch.object(UnpodAsyncHook, "aiter_space_runs", aiter_space_runs)
        mocker.patch.object(UnpodAsyncHook, "aclose", aclose)
        mocker.patch.object(RunCompletedTrigger, "_hook", hook)


async def test_waits_on_one_space_share_one_lookup_per_look(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(n) for n in range(10)]})
    fake.install(mocker)
    # A 1 s poll interval gathers looks for 50 ms (0.05 s gave 2.5 ms: on a loaded machine a
    # trigger could start its look after the batch had closed, and make a lookup of its own).
    triggers = [make_trigger(SPACE_A, n, poll_interval=1.0) for n in range(10)]
    results = await asyncio.gather(*(collect(trigger) for trigger in triggers))
    for n, events in enumerate(results):
        assert len(events) == 1
        assert events[0]["status"] == "success"
        assert events[0]["run"]["run_id"] == run_id(n)
    # Three looks for everyone: three lookups of the runs list, none per run.
    assert fake.lookups == [(SPACE_A, "many")] * 3
    assert len(fake.hooks) == 1 and fake.closed == fake.hooks


async def test_spaces_share_the_client_not_the_lookup(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1)], SPACE_B: [run_id(2)]})
    fake.install(mocker)
    a, b = await asyncio.gather(collect(make_trigger(SPACE_A, 1)), collect(make_trigger(SPACE_B, 2)))
    assert [e["run"]["space"] for e in a + b] == [SPACE_A, SPACE_B]
    # One waiter per space: its own lookup, exactly as a trigger alone (afind_run, one per look).
    assert sorted(fake.lookups) == sorted([(SPACE_A, run_id(1))] * 3 + [(SPACE_B, run_id(2))] * 3)
    assert len(fake.hooks) == 1 and fake.closed == fake.hooks


async def test_other_connection_or_retry_policy_gets_its_own_client(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1), run_id(2), run_id(3)]})
    fake.install(mocker)
    slower = {**FAST_RETRY, "max_attempts": 3}
    await asyncio.gather(
        collect(make_trigger(SPACE_A, 1)),
        collect(make_trigger(SPACE_A, 2, unpod_conn_id="other_unpod")),
        collect(make_trigger(SPACE_A, 3, retry=slower)),
    )
    assert len(fake.hooks) == 3
    assert {h.unpod_conn_id for h in fake.hooks} == {"unpod_default", "other_unpod"}
    assert sorted(map(id, fake.closed)) == sorted(map(id, fake.hooks))


async def test_sharing_can_be_turned_off(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1), run_id(2)]})
    fake.install(mocker)
    mocker.patch.object(RunCompletedTrigger, "share_requests", False)
    await asyncio.gather(collect(make_trigger(SPACE_A, 1)), collect(make_trigger(SPACE_A, 2)))
    assert len(fake.hooks) == 2 and len(fake.closed) == 2
    assert all(what != "many" for _, what in fake.lookups)  # every trigger looks on its own


async def test_one_cancelled_waiter_leaves_the_others_waiting(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(n) for n in range(3)]}, looks_to_finish=6)
    fake.install(mocker)
    tasks = [asyncio.create_task(collect(make_trigger(SPACE_A, n))) for n in range(3)]
    while len(fake.lookups) < 2:
        await asyncio.sleep(0.01)
    tasks[0].cancel()
    with pytest.raises(asyncio.CancelledError):
        await tasks[0]
    assert fake.closed == []  # the others still use the client
    rest = await asyncio.gather(*tasks[1:])
    assert [events[0]["status"] for events in rest] == ["success", "success"]
    assert len(fake.hooks) == 1 and fake.closed == fake.hooks


async def test_cancelling_every_waiter_stops_the_lookup_and_closes_the_client(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1), run_id(2)]})
    fake.install(mocker)
    fake.hang = True
    tasks = [asyncio.create_task(collect(make_trigger(SPACE_A, n))) for n in (1, 2)]
    while not fake.lookups:
        await asyncio.sleep(0.01)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(fake.hooks) == 1 and fake.closed == fake.hooks
    assert len(fake.lookups) == 1


async def test_a_lookup_error_reaches_every_waiter(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(n) for n in range(4)]})
    fake.install(mocker)
    fake.error = UnpodServerError("Unpod answered HTTP 503", status_code=503)
    results = await asyncio.gather(*(collect(make_trigger(SPACE_A, n)) for n in range(4)))
    for events in results:
        assert len(events) == 1
        assert (events[0]["status"], events[0]["error_type"], events[0]["status_code"]) == (
            "error",
            "UnpodServerError",
            503,
        )
    assert fake.lookups == [(SPACE_A, "many")]


async def test_refused_credentials_are_read_anew_by_later_triggers(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1), run_id(2)], SPACE_B: [run_id(3)]}, looks_to_finish=1)
    fake.install(mocker)
    # A waiter on another space keeps the shared hook alive (it looks rarely).
    holder = asyncio.create_task(collect(make_trigger(SPACE_B, 3, poll_interval=30.0)))
    fake.looks_to_finish = 10**6
    while not fake.lookups:
        await asyncio.sleep(0.01)
    fake.errors[SPACE_A] = UnpodAuthError("Unpod rejected the credentials (HTTP 401)", status_code=401)
    (event,) = await collect(make_trigger(SPACE_A, 1))
    assert event["error_type"] == "UnpodAuthError"
    assert len(fake.hooks) == 1 and fake.closed == []  # still held by the other waiter
    # A trigger that starts now does not reuse the refused hook: it reads the connection anew.
    del fake.errors[SPACE_A]
    fake.looks_to_finish = 0
    (event,) = await collect(make_trigger(SPACE_A, 2))
    assert event["status"] == "success"
    assert len(fake.hooks) == 2 and fake.closed == [fake.hooks[1]]
    holder.cancel()
    with pytest.raises(asyncio.CancelledError):
        await holder
    assert fake.closed == [fake.hooks[1], fake.hooks[0]]


# --------------------------------------------------------------------------------------------
# Over real HTTP against the simulator
# --------------------------------------------------------------------------------------------


async def test_sim_many_waits_one_client_one_lookup_per_space(
    unpod_simulator_shared: Any, mocker: Any
) -> None:
    import httpx

    from unpod_provider._compat import BaseHook

    sim = unpod_simulator_shared
    spaces = [sim.add_space(n_tasks=0) for _ in range(3)]
    waits = [
        (space, sim.add_run(space, n_tasks=1, timeline=[("running", 0)]))
        for space in spaces
        for _ in range(8)
    ]
    clients = mocker.spy(httpx.AsyncClient, "__init__")
    lookups = mocker.spy(BaseHook, "aget_connection")
    sim.reset_requests()
    tasks = [
        asyncio.create_task(collect(make_trigger(space, 0, run_id=rid, poll_interval=0.1)))
        for space, rid in waits
    ]
    while len(sim.requests) < 2 * len(spaces):  # every space looked at twice
        await asyncio.sleep(0.02)
    for _, rid in waits:
        sim.set_run_status(rid, "completed")
    results = await asyncio.gather(*tasks)
    for (space, rid), events in zip(waits, results, strict=True):
        assert len(events) == 1
        assert events[0]["status"] == "success"
        assert (events[0]["run"]["run_id"], events[0]["space_token"]) == (rid, space)
        assert sim.token not in json.dumps(events[0])
    assert clients.call_count == 1
    assert lookups.await_count == 1
    runs_requests = [r for r in sim.requests if r["path"].endswith("/runs/")]
    assert len(runs_requests) == len(sim.requests)
    # Each look of 8 waits on a space is one request: far fewer requests than looks.
    per_space = {
        space: sum(r["path"].endswith(f"/spaces/{space}/runs/") for r in runs_requests) for space in spaces
    }
    assert all(n >= 2 for n in per_space.values())
    assert len(runs_requests) * 4 <= len(waits) * max(per_space.values())


async def test_a_waiter_joining_as_the_last_one_leaves_gets_a_fresh_lookup(mocker: Any) -> None:
    fake = FakeSpaces({SPACE_A: [run_id(1), run_id(2)]}, looks_to_finish=1)
    fake.install(mocker)
    first = asyncio.create_task(collect(make_trigger(SPACE_A, 1, poll_interval=1.0)))
    await asyncio.sleep(0)  # the first look opened a batch and gathers for 50 ms
    first.cancel()  # the batch loses its only waiter...
    second = asyncio.create_task(collect(make_trigger(SPACE_A, 2, poll_interval=1.0)))  # ...as one arrives
    with pytest.raises(asyncio.CancelledError):
        await first
    (event,) = await second
    assert event["status"] == "success"
    assert fake.lookups == [(SPACE_A, run_id(2))]
