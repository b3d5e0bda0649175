"""Fault campaign: random fault schedules against every read path, over real HTTP.

A hypothesis test draws fault schedules (429 with and without Retry-After, 500/502/503/504 with
JSON, HTML or empty bodies, cut bodies, connections dropped mid-response, answers slower than the
read timeout, 206 business errors, tasks appended between page reads, small latencies that shuffle
concurrent page requests, and 404s in the middle of a list) and injects each schedule into the
Unpod simulator before each of five operations:

- ``UnpodHook.list_space_tasks`` over a space of 200 tasks;
- ``UnpodHook.list_run_tasks`` over a finished run of 40 tasks (in that space);
- ``ListSpaceTasksOperator`` or ``ListRunTasksOperator`` (drawn per schedule) with
  ``output_path="file:///...jsonl"``, run through ``execute`` with a minimal context;
- ``RunCompletedSensor`` in poke mode and in deferrable mode (its trigger runs in an event loop),
  waiting for a run that goes from running to completed.

Every operation must either (a) return exactly the server's items, or (b) raise a typed
``UnpodError`` within its budget. For a list, "exactly" means: no duplicate ids; every item the
server held before the read started is there (no loss); anything else is an item appended during
the read (present on the server afterwards); and every item equals the server's item (the JSONL
export: the redacted item). When nothing was appended the list is the server's list, in order.
The sensor must return the run as the server lists it once completed. A typed error from an export
must leave no partial file behind. The API token (``UNPODSECRET...``) must appear in no result,
error, file or request-log entry.

A schedule counts as ``ok`` when all five operations returned the right data, as a typed error
when at least one ended in a typed error and nothing went wrong, and as lost / duplicated / hung
when an operation lost an item, returned one twice, or ran past a generous budget (a watchdog:
the operation runs in a thread that is given ``OPERATION_BUDGET`` seconds). Retry waits are real
but capped at a few milliseconds, so Retry-After values of up to 1 s keep the campaign fast.
Anything else (an untyped exception, other content than the server's, a leaked token) fails the
test too. The schedules that found bugs run first, as explicit examples (``REGRESSIONS``), and
each bug also has a focused test at the end of this file.

The tally is printed on one line (also without ``-s``), e.g.
``campaign: 512 schedules, 480 ok, 32 typed errors, 0 lost, 0 duplicated, 0 hung``.
Set ``UNPOD_CAMPAIGN_EXAMPLES`` to run more or fewer schedules.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import tenacity
from fakes import FakeTI
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from unpod_provider import protocol
from unpod_provider.exceptions import UnpodError, UnpodProtocolError
from unpod_provider.testing import UnpodSimulator

#: How many schedules the campaign runs (at least 500 in CI).
CAMPAIGN_EXAMPLES = int(os.environ.get("UNPOD_CAMPAIGN_EXAMPLES", "512"))
#: A recognisable API token: it must never show up anywhere but the Authorization header.
SECRET_TOKEN = "UNPODSECRET" + "7f3a9c0e5b2d4f6a8c1e3b5d7f9a0c2e"
#: Read timeout of every request (connection extra ``timeout``); a "slow" fault waits longer.
READ_TIMEOUT = 0.2
SLOW_SECONDS = 0.3
RETRY_LIMIT = 4
RETRY_DELAY = 0.001
#: Longest real sleep between retries (Retry-After of up to 1 s is asked for, this is slept).
MAX_REAL_SLEEP = 0.003
#: Watchdog budget of one operation: far above the worst case of the retry policy above.
OPERATION_BUDGET = 30.0
#: Size cap of one decoded response (connection extra); a "gzip_bomb" inflates far beyond it.
MAX_RESPONSE_MB = 8
BOMB_BYTES = 64 << 20
#: Ticks of the simulator clock (one per clock read) after which the watched run completes.
RUN_TICKS = 3

SPACE_TASKS = 160
RUN_TASKS = 40
WATCHED_RUN_TASKS = 3


# --------------------------------------------------------------------------------------------
# The simulator for the campaign: a clock that ticks, the secret token
# --------------------------------------------------------------------------------------------


class TickingClock:
    """The simulator's clock: one simulated second passes at every read.

    Pages of finished runs never change, and the watched run (timeline in ticks) finishes after
    a few looks whatever the real poll interval, so the campaign never waits for wall time.
    """

    def __init__(self) -> None:
        self._base = float(int(time.time()))
        self._ticks = 0
        self._lock = threading.Lock()

    def restart(self) -> None:
        """Back to the first tick: the same world is then built with the same timestamps."""
        with self._lock:
            self._ticks = 0

    def __call__(self) -> float:
        with self._lock:
            self._ticks += 1
            return self._base + self._ticks


@dataclass(frozen=True)
class World:
    """The data of one operation: a big space with a finished run, and a run to wait for."""

    space: str
    run_id: str
    watch_space: str
    watch_run: str


def build_world(sim: UnpodSimulator, clock: TickingClock | None = None) -> World:
    """Reset the simulator (data, faults, log, clock) and add the campaign's spaces and runs.

    The world is the same every time (same seed, same clock ticks), so its lists are computed once.
    """
    sim.reset()
    if clock is not None:
        clock.restart()
    space = sim.add_space(n_tasks=SPACE_TASKS, name="Campaign space")
    run_id = sim.add_run(space, n_tasks=RUN_TASKS, final_status="completed")
    watch_space = sim.add_space(n_tasks=0, n_runs=0, name="Watched space")
    watch_run = sim.add_run(
        watch_space, n_tasks=WATCHED_RUN_TASKS, timeline=[("running", 0), ("completed", RUN_TICKS)]
    )
    return World(space, run_id, watch_space, watch_run)


def campaign_simulator() -> UnpodSimulator:
    """A simulator with the secret token and a ticking clock (``sim.campaign_clock``); not started."""
    clock = TickingClock()
    sim = UnpodSimulator(token=SECRET_TOKEN, clock=clock, seed=7)
    sim.campaign_clock = clock  # type: ignore[attr-defined]
    return sim


@pytest.fixture(scope="module")
def campaign_sim() -> Iterator[UnpodSimulator]:
    """One simulator for every schedule (reset before each operation)."""
    with campaign_simulator() as sim:
        yield sim


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Retry waits really happen, but last at most ``MAX_REAL_SLEEP`` (sync and async)."""
    real_sleep = time.sleep

    class CappedTime:
        @staticmethod
        def sleep(seconds: float) -> None:
            real_sleep(min(max(0.0, seconds), MAX_REAL_SLEEP))

    monkeypatch.setattr(tenacity.nap, "time", CappedTime)
    original_init = tenacity.AsyncRetrying.__init__

    async def capped_async_sleep(seconds: float) -> None:
        await asyncio.sleep(min(max(0.0, seconds), MAX_REAL_SLEEP))

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs["sleep"] = capped_async_sleep
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(tenacity.AsyncRetrying, "__init__", init)


@pytest.fixture
def campaign_conn(campaign_sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    """``unpod_default`` points at the campaign simulator, with the short read timeout."""
    monkeypatch.setenv(
        "AIRFLOW_CONN_UNPOD_DEFAULT",
        campaign_sim.connection_json(timeout=READ_TIMEOUT, max_response_mb=MAX_RESPONSE_MB),
    )


# --------------------------------------------------------------------------------------------
# Fault schedules
# --------------------------------------------------------------------------------------------

#: Where a fault applies (a regex on the request path; None = every Unpod request).
TARGETS: dict[str, str | None] = {
    "any": None,
    "task lists": r"/tasks/$",
    "space tasks": r"/spaces/[^/]+/tasks/$",
    "run tasks": r"/runs/[^/]+/tasks/$",
    "runs": r"/runs/$",
}


@dataclass(frozen=True)
class FaultSpec:
    """One fault of a schedule, as ``sim.inject`` takes it (hashable, printable)."""

    kind: str
    params: tuple[tuple[str, Any], ...] = ()
    target: str = "any"
    page: int | None = None
    times: int | None = 1
    skip: int = 0

    def inject(self, sim: UnpodSimulator) -> None:
        sim.inject(
            self.kind,
            path_regex=TARGETS[self.target],
            query={"page": self.page} if self.page is not None else None,
            times=self.times,
            skip=self.skip,
            **dict(self.params),
        )


@dataclass(frozen=True)
class Schedule:
    """The faults of one example and the page size every operation uses."""

    faults: tuple[FaultSpec, ...]
    page_size: int = 50
    #: Which list the JSONL export reads: "space" (ListSpaceTasksOperator) or "run".
    export: str = "space"


def _spec(kind: str, **params: Any) -> Any:
    """A strategy of (kind, params) pairs with fixed values."""
    return st.just((kind, tuple(sorted(params.items()))))


def _params(kind: str, **strategies: Any) -> Any:
    """A strategy of (kind, params) pairs whose values are drawn."""
    return st.fixed_dictionaries(strategies).map(lambda d: (kind, tuple(sorted(d.items()))))


BODIES = st.sampled_from(["json", "html", "empty"])
ECHO_BODIES = ["json", "html", "text"]
FRACTIONS = st.sampled_from([0.0, 0.2, 0.5, 0.9, 0.999])

#: Faults that answer with an error a retry can get past.
TRANSIENT = st.one_of(
    _params("rate_limit", retry_after=st.sampled_from([None, 0, 0.5, 1, "soon"]), body=BODIES),
    _params("rate_limit", retry_after_date=st.sampled_from([0, 1])),
    _params("server_error", status=st.sampled_from([500, 502, 503, 504]), body=BODIES),
    _params("server_error", status=st.sampled_from([502, 503]), body=BODIES, retry_after=st.just(1)),
    _params("drop_connection", fraction=FRACTIONS),
    _spec("disconnect"),
    _spec("empty_body"),
    # Lists that disagree with themselves (a lagging replica, a stale cache): retried, then typed.
    _params("short_page", keep=st.sampled_from([0, 1, 7, 24])),
    _params("short_page", fraction=FRACTIONS),
    _spec("repeat_page"),
    _params("drop_count", by=st.sampled_from([1, 10, 100])),
    # The Authorization header echoed back (a proxy's error page): scrubbed, never shown.
    _params(
        "echo_token", status=st.sampled_from([500, 502, 503]), body=st.sampled_from(["json", "html", "text"])
    ),
)
#: Faults that end the operation with a typed error at once.
FATAL = st.one_of(
    _spec("business_error", message="Invalid Space Token"),
    _spec("business_error", message="There is some Validation error", errors={"page": ["invalid"]}),
    # A 404 in the middle of a list is not "past the end": the items after it must not be lost.
    _spec("http", status=404, body={"message": "Not found"}),
    # A whole body (its Content-Length matches) that is not JSON: not retried.
    _params("truncated_json", fraction=FRACTIONS),
    _params(
        "echo_token", status=st.sampled_from([400, 401, 302]), body=st.sampled_from(["json", "location"])
    ),
    _spec("gzip_bomb", inflated_bytes=BOMB_BYTES),
)
SLOW = st.one_of(
    _params("slow", seconds=st.just(SLOW_SECONDS), stage=st.sampled_from(["headers", "body"])),
    # Status line and headers a byte at a time: each gap within the read timeout, the whole
    # beyond the deadline of the exchange (4 read timeouts).
    _spec("header_trickle", interval=READ_TIMEOUT / 4, chunk_bytes=1),
)
SHUFFLE = _params("latency", seconds=st.sampled_from([0.005, 0.02, 0.05]))
APPEND = _params("append", n=st.integers(1, 40))

TARGET_NAMES = st.sampled_from(sorted(TARGETS))
PAGES = st.one_of(st.none(), st.integers(1, 6))
SKIPS = st.integers(0, 8)


@st.composite
def fault_specs(draw: st.DrawFn) -> FaultSpec:
    """One fault: what, where (path, page), how often, after how many matching requests."""
    kind, params = draw(st.one_of(TRANSIENT, TRANSIENT, FATAL, SLOW, SHUFFLE, APPEND, APPEND))
    if kind in ("slow", "latency", "append", "header_trickle"):
        times: int | None = draw(st.integers(1, 2) if kind == "slow" else st.integers(1, 4))
        if kind == "header_trickle":
            times = 1
    elif kind in ("business_error", "http", "gzip_bomb", "truncated_json") or (
        kind == "echo_token" and dict(params)["status"] < 500
    ):
        times = 1
    else:
        times = draw(st.one_of(st.integers(1, 3), st.integers(1, 3), st.none()))
    page = draw(PAGES)
    if kind == "http" and page is None:
        page = draw(st.integers(2, 6))  # a 404 on page 1 is a genuine "not found"
    if kind == "drop_count" and page is None:
        # A count that drops between answers. One that is wrong the same way in every answer of
        # a list cannot be told from a shorter list without asking past its end (not done).
        page = draw(st.integers(1, 6))
    return FaultSpec(kind, params, draw(TARGET_NAMES), page, times, draw(SKIPS))


SCHEDULES = st.builds(
    Schedule,
    faults=st.lists(fault_specs(), min_size=0, max_size=4).map(tuple),
    page_size=st.sampled_from([16, 25, 25, 50, 64, 100, 250]),
    export=st.sampled_from(["space", "run"]),
)


# --------------------------------------------------------------------------------------------
# Operations and their verdicts
# --------------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What one operation did. ``problems`` lists everything that is neither (a) nor (b)."""

    operation: str
    outcome: str  # ok, typed, lost, duplicated, hung, shown, wrong
    detail: str = ""
    error_type: str | None = None
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def make_context(ti: FakeTI) -> dict[str, Any]:
    return {"ti": ti, "params": {}}


def check_list(
    name: str, got: Sequence[Mapping[str, Any]], before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> Verdict:
    """Compare a returned list with the server's list before and after the read."""
    ids = [str(item.get("task_id")) for item in got]
    counts = Counter(ids)
    dups = sorted(i for i, n in counts.items() if n > 1)
    missing = [t["task_id"] for t in before if t["task_id"] not in counts]
    final = {t["task_id"]: t for t in after}
    phantom = [i for i in counts if i not in final]
    wrong = [i for i, item in zip(ids, got, strict=True) if i in final and dict(item) != final[i]]
    problems = []
    if missing:
        problems.append(f"{len(missing)} lost, e.g. {missing[:3]}")
    if dups:
        problems.append(f"{len(dups)} duplicated, e.g. {dups[:3]}")
    if phantom:
        problems.append(f"{len(phantom)} not on the server, e.g. {phantom[:3]}")
    if wrong:
        problems.append(f"{len(wrong)} with other content than the server's, e.g. {wrong[:3]}")
    if not problems and len(after) == len(before) and list(got) != before:
        problems.append("same items as the server but not in the server's order")
    if missing:
        outcome = "lost"
    elif dups:
        outcome = "duplicated"
    elif problems:
        outcome = "wrong"
    else:
        outcome = "ok"
    return Verdict(name, outcome, f"{len(got)} items", problems=problems)


def run_watched(fn: Callable[[], Any], budget: float = OPERATION_BUDGET) -> tuple[str, Any]:
    """Run ``fn`` in a thread; ``("hung", None)`` if it is still running after ``budget`` seconds."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn()
        except BaseException as err:  # noqa: BLE001 - every outcome is classified by the caller
            box["error"] = err

    thread = threading.Thread(target=target, name="campaign-operation", daemon=True)
    thread.start()
    thread.join(budget)
    if thread.is_alive():
        return "hung", None
    if "error" in box:
        return "error", box["error"]
    return "result", box.get("result")


class Campaign:
    """Runs the six operations of a schedule and keeps the tally."""

    def __init__(self, sim: UnpodSimulator, workdir: Path) -> None:
        self.sim = sim
        self.workdir = workdir
        self.schedules = 0
        self.tally: Counter[str] = Counter()
        self.operations: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.failures: list[tuple[Schedule, list[Verdict]]] = []
        self.seconds = 0.0
        self._lists: dict[tuple[str, World], list[dict[str, Any]]] = {}
        self.op_seconds: Counter[str] = Counter()

    # -- one schedule -------------------------------------------------------------------------

    def run(self, schedule: Schedule) -> list[Verdict]:
        """All operations under ``schedule``; the schedule's outcome goes into the tally."""
        started = time.monotonic()
        names = [
            n for n in OPERATIONS if not n.startswith("export") or n == f"export_{schedule.export}_tasks"
        ]
        verdicts = [self.operation(name, schedule) for name in names]
        self.seconds += time.monotonic() - started
        self.schedules += 1
        bad = [v for v in verdicts if v.outcome not in ("ok", "typed")]
        for verdict in verdicts:
            self.operations[f"{verdict.operation}:{verdict.outcome}"] += 1
            if verdict.error_type:
                self.errors[verdict.error_type] += 1
        outcomes = {v.outcome for v in verdicts}
        for name in ("lost", "duplicated", "hung", "shown", "wrong"):
            if name in outcomes:
                self.tally[name] += 1
        if not bad:
            self.tally["typed" if "typed" in outcomes else "ok"] += 1
        if bad or any(v.problems for v in verdicts):
            self.failures.append((schedule, verdicts))
        return verdicts

    def operation(self, name: str, schedule: Schedule) -> Verdict:
        """Fresh world, the schedule's faults, one operation, its verdict."""
        world = build_world(self.sim, getattr(self.sim, "campaign_clock", None))
        expected_before = self.expected(name, world)
        output = self.workdir / f"{name}.jsonl"
        output.unlink(missing_ok=True)
        for fault in schedule.faults:
            fault.inject(self.sim)
        action = ACTIONS[name]
        started = time.monotonic()
        kind, value = run_watched(lambda: action(world, schedule.page_size, output))
        self.op_seconds[name] += time.monotonic() - started
        if kind == "hung":
            self.sim.clear_faults()  # let it finish in the background
            return Verdict(name, "hung", f"still running after {OPERATION_BUDGET}s")
        if kind == "error":
            verdict = self.judge_error(name, value, output)
        else:
            verdict = self.judge_result(name, world, value, expected_before)
        leaks = self.leaks(name, value, output)
        verdict.problems += leaks
        if leaks:
            verdict.outcome = "shown"
        elif verdict.problems and verdict.outcome in ("ok", "typed"):
            verdict.outcome = "wrong"
        return verdict

    def expected(self, name: str, world: World, *, after: bool = False) -> list[dict[str, Any]]:
        """The server's list for operation ``name`` now (cached while nothing was appended)."""
        if name.startswith("sensor"):
            return []
        which = "space" if name.endswith("space_tasks") else "run"
        appended = after and any("append" in r["faults"] for r in self.sim.requests)
        key = (which, world)
        if appended or key not in self._lists:
            items = (
                self.sim.space_tasks(world.space) if which == "space" else self.sim.run_tasks(world.run_id)
            )
            if appended:
                return items
            self._lists[key] = items
        return self._lists[key]

    def judge_error(self, name: str, error: BaseException, output: Path) -> Verdict:
        if not isinstance(error, UnpodError):
            return Verdict(
                name,
                "wrong",
                f"untyped {type(error).__name__}: {error}",
                problems=[f"untyped error {type(error).__name__}: {str(error)[:200]}"],
            )
        verdict = Verdict(name, "typed", str(error)[:200], error_type=type(error).__name__)
        if name.startswith("sensor") and type(error).__name__ in (
            "UnpodRunFailedException",
            "UnpodRunNotFoundException",
        ):
            verdict.outcome = "wrong"
            verdict.problems.append(f"the completed run was reported as {type(error).__name__}")
        if output.exists():
            verdict.problems.append("a partial JSONL file was left behind after the error")
        return verdict

    def judge_result(self, name: str, world: World, value: Any, before: list[dict[str, Any]]) -> Verdict:
        if name.startswith("sensor"):
            listed = {r["run_id"]: r for r in self.sim.space_runs(world.watch_space)}[world.watch_run]
            if value != listed or listed.get("status") != "completed":
                return Verdict(
                    name, "wrong", "", problems=[f"sensor returned {value!r}, server has {listed!r}"]
                )
            return Verdict(name, "ok")
        after = self.expected(name, world, after=True)
        if name.startswith("export"):
            after = [protocol.redact(t) for t in after]
            before = [protocol.redact(t) for t in before]
        return check_list(name, value, before, after)

    def leaks(self, name: str, value: Any, output: Path) -> list[str]:
        """The API token in a result, an error, the export or the simulator's request log."""
        places = {
            "result or error": json.dumps(value, default=repr)
            + (str(value) if isinstance(value, BaseException) else ""),
            "request log": json.dumps(self.sim.requests, default=str),
        }
        if output.exists():
            places["JSONL file"] = output.read_text(encoding="utf-8")
        return [f"API token in the {where}" for where, text in places.items() if SECRET_TOKEN in text]

    # -- report -------------------------------------------------------------------------------

    def line(self) -> str:
        tally = self.tally
        return (
            f"campaign: {self.schedules} schedules, {tally['ok']} ok, {tally['typed']} typed errors, "
            f"{tally['lost']} lost, {tally['duplicated']} duplicated, {tally['hung']} hung, "
            f"{tally['shown']} shown"
        )

    def failure_report(self, limit: int = 5) -> str:
        lines = []
        for schedule, verdicts in self.failures[:limit]:
            lines.append(f"schedule {schedule!r}")
            lines += [f"  {v.operation}: {v.outcome} {v.detail} {v.problems}" for v in verdicts]
        return "\n".join(lines)


# -- the operations ----------------------------------------------------------------------------


def _hook() -> Any:
    from unpod_provider.hooks.unpod import UnpodHook

    return UnpodHook(retry_limit=RETRY_LIMIT, retry_delay=RETRY_DELAY, max_retry_seconds=10.0)


def hook_space_tasks(world: World, page_size: int, output: Path) -> list[dict[str, Any]]:
    with _hook() as hook:
        return hook.list_space_tasks(world.space, page_size=page_size)


def hook_run_tasks(world: World, page_size: int, output: Path) -> list[dict[str, Any]]:
    with _hook() as hook:
        return hook.list_run_tasks(world.space, world.run_id, page_size=page_size)


def _export(operator: Any, output: Path) -> list[dict[str, Any]]:
    result = operator.execute(make_context(FakeTI()))
    json.dumps(result)  # the XCom value is plain JSON
    assert result["path"].endswith(output.name), result
    lines = output.read_text(encoding="utf-8").splitlines()
    assert result["count"] == len(lines), (result, len(lines))
    return [json.loads(line) for line in lines]


def _list_options(page_size: int, output: Path) -> dict[str, Any]:
    return {
        "page_size": page_size,
        "output_path": f"file://{output}",
        "unpod_retry_limit": RETRY_LIMIT,
        "unpod_retry_delay": RETRY_DELAY,
        "unpod_timeout": READ_TIMEOUT,
    }


def export_space_tasks(world: World, page_size: int, output: Path) -> list[dict[str, Any]]:
    from unpod_provider.operators.unpod import ListSpaceTasksOperator

    operator = ListSpaceTasksOperator(
        task_id="export_space_tasks", space_token=world.space, **_list_options(page_size, output)
    )
    return _export(operator, output)


def export_run_tasks(world: World, page_size: int, output: Path) -> list[dict[str, Any]]:
    from unpod_provider.operators.unpod import ListRunTasksOperator

    operator = ListRunTasksOperator(
        task_id="export_run_tasks",
        space_token=world.space,
        run_id=world.run_id,
        **_list_options(page_size, output),
    )
    return _export(operator, output)


def sensor_poke(world: World, page_size: int, output: Path) -> Any:
    from unpod_provider.sensors.unpod import RunCompletedSensor

    sensor = RunCompletedSensor(
        task_id="wait",
        space_token=world.watch_space,
        run_id=world.watch_run,
        mode="poke",
        deferrable=False,
        poke_interval=0.002,
        timeout=20,
        unpod_retry_limit=RETRY_LIMIT,
        unpod_retry_delay=RETRY_DELAY,
    )
    return sensor.execute(make_context(FakeTI()))


def sensor_deferred(world: World, page_size: int, output: Path) -> Any:
    """Deferrable mode: one look, then the trigger (rebuilt from its kwargs) in an event loop."""
    from airflow.sdk.exceptions import TaskDeferred

    from unpod_provider.sensors.unpod import RunCompletedSensor
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    def make() -> RunCompletedSensor:
        return RunCompletedSensor(
            task_id="wait",
            space_token=world.watch_space,
            run_id=world.watch_run,
            deferrable=True,
            poke_interval=0.002,
            timeout=20,
            unpod_retry_limit=RETRY_LIMIT,
            unpod_retry_delay=RETRY_DELAY,
        )

    ti = FakeTI()
    try:
        return make().execute(make_context(ti))
    except TaskDeferred as deferred:
        _, kwargs = deferred.trigger.serialize()
        encoded = json.dumps(kwargs)
        if SECRET_TOKEN in encoded:  # counted as "shown" by the caller's leak check too
            raise AssertionError("API token in the trigger's serialized kwargs") from None
        trigger = RunCompletedTrigger(**json.loads(encoded))

        async def collect() -> list[dict[str, Any]]:
            return [event.payload async for event in trigger.run()]

        events = asyncio.run(collect())
    if len(events) != 1:
        raise AssertionError(f"the trigger sent {len(events)} events")
    if SECRET_TOKEN in json.dumps(events[0]):
        raise AssertionError("API token in the trigger event")
    return make().execute_complete(make_context(ti), events[0])


ACTIONS: dict[str, Callable[[World, int, Path], Any]] = {
    "hook_space_tasks": hook_space_tasks,
    "hook_run_tasks": hook_run_tasks,
    "export_space_tasks": export_space_tasks,
    "export_run_tasks": export_run_tasks,
    "sensor_poke": sensor_poke,
    "sensor_deferred": sensor_deferred,
}
OPERATIONS = tuple(ACTIONS)


# --------------------------------------------------------------------------------------------
# The campaign
# --------------------------------------------------------------------------------------------


def run_campaign(
    sim: UnpodSimulator, workdir: Path, examples: int, extra: Sequence[Schedule] = ()
) -> Campaign:
    """Run ``examples`` random schedules (derandomized: the same ones every time) plus ``extra``."""
    campaign = Campaign(sim, workdir)

    @settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(schedule=SCHEDULES)
    def one(schedule: Schedule) -> None:
        campaign.run(schedule)

    for schedule in extra:
        one = example(schedule=schedule)(one)
    one()
    return campaign


NOT_FOUND = (("body", {"message": "Not found"}), ("status", 404))

#: Schedules the campaign found bugs with (kept as explicit examples; see the regression tests).
REGRESSIONS = (
    # Tasks added while pages were fetched in parallel: a later page served before the addition
    # and an earlier one after it lost the items pushed between them.
    Schedule(
        faults=(FaultSpec("append", (("n", 15),), "space tasks", None, 3, 3),),
        page_size=64,
        export="space",
    ),
    Schedule(
        faults=(
            FaultSpec("rate_limit", (("retry_after_date", 0),), "any", 1, 3, 5),
            FaultSpec("append", (("n", 1),), "any", None, 1, 3),
        ),
        page_size=25,
        export="space",
    ),
    # A 404 for a page inside the reported total ended the list there: the rest was lost.
    Schedule(faults=(FaultSpec("http", NOT_FOUND, "task lists", 4, 1, 0),), page_size=64, export="space"),
    Schedule(faults=(FaultSpec("http", NOT_FOUND, "run tasks", 2, 1, 0),), page_size=25, export="run"),
    # 2 x 39 tasks added between two page reads (pages of 16): "pagination is not advancing".
    Schedule(
        faults=(
            FaultSpec("append", (("n", 39),), "any", None, 3, 7),
            FaultSpec("append", (("n", 39),), "any", None, 1, 7),
        ),
        page_size=16,
        export="space",
    ),
)


@pytest.mark.slow
@pytest.mark.usefixtures("fast_retries", "campaign_conn")
def test_fault_campaign(
    campaign_sim: UnpodSimulator, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    campaign = run_campaign(campaign_sim, tmp_path, CAMPAIGN_EXAMPLES, REGRESSIONS)
    # Every log line of every schedule (the retry warnings quote what the server said).
    out, err = capfd.readouterr()
    if SECRET_TOKEN in out + err:
        campaign.tally["shown"] += 1
    with capfd.disabled():
        print(f"\n{campaign.line()}")
        print(
            f"fault campaign took {campaign.seconds:.0f}s ("
            + ", ".join(f"{k} {v:.0f}s" for k, v in sorted(campaign.op_seconds.items()))
            + "); typed errors: "
            + ", ".join(f"{k} {v}" for k, v in sorted(campaign.errors.items()))
        )
    assert campaign.schedules >= min(CAMPAIGN_EXAMPLES, 500)
    assert campaign.tally["lost"] == 0, campaign.failure_report()
    assert campaign.tally["duplicated"] == 0, campaign.failure_report()
    assert campaign.tally["hung"] == 0, campaign.failure_report()
    assert campaign.tally["shown"] == 0, campaign.failure_report() or "the API token is in the log output"
    assert "retrying in" in out + err  # the log output was really looked at
    assert not campaign.failures, campaign.failure_report()


# --------------------------------------------------------------------------------------------
# Regression tests for the bugs the campaign found
# --------------------------------------------------------------------------------------------


def _task(n: int) -> dict[str, Any]:
    return {"task_id": f"T{n:04d}", "status": "completed"}


def test_pages_served_out_of_order_while_tasks_arrive_lose_nothing() -> None:
    """Page 3 served before 5 tasks arrive at the head, page 2 after: tasks 45..49 were lost.

    The totals tell (page 3 reports fewer than page 2), and the walk reads on sequentially from
    page 3. Deterministic: each page's first answer is fixed whatever the threads' order.
    """
    from unpod_provider.hooks._pages import walk_pages
    from unpod_provider.protocol import Envelope, PageWalk

    original = [_task(n) for n in range(100)]
    arrived = [_task(1000 + n) for n in range(5)]
    shift_on_first_fetch = {1: 0, 2: 5, 3: 0, 4: 0}
    fetched: Counter[int] = Counter()
    lock = threading.Lock()

    def fetch(page: int, checked: bool = False) -> Envelope:
        with lock:
            fetched[page] += 1
            shift = shift_on_first_fetch.get(page, 5) if fetched[page] == 1 else 5
        current = arrived[:shift] + original
        return Envelope(data=current[(page - 1) * 25 : page * 25], count=len(current))

    walk = PageWalk(page_size=25, id_key="task_id", what="tasks")
    got = list(walk_pages(walk, fetch, max_concurrency=4))
    ids = [t["task_id"] for t in got]
    assert len(ids) == len(set(ids))
    assert {t["task_id"] for t in original} <= set(ids)
    assert fetched[3] == 2  # read again, sequentially, after the out-of-order answer


@pytest.mark.usefixtures("fast_retries")
def test_tasks_arriving_during_a_parallel_read_are_not_lost(unpod_simulator: UnpodSimulator) -> None:
    """Over HTTP: page 2 held back until 7 tasks arrive, pages 3.. answered at once."""
    from unpod_provider.hooks.unpod import UnpodHook

    sim = unpod_simulator
    space = sim.add_space(n_tasks=200, name="Growing")
    before = sim.space_tasks(space)
    sim.inject("latency", path=f"/spaces/{space}/tasks/", query={"page": 2}, seconds=0.5)
    sim.inject("append", path=f"/spaces/{space}/tasks/", query={"page": 2}, n=7)
    with UnpodHook(retry_delay=0.001) as hook:
        got = hook.list_space_tasks(space, page_size=25)
    ids = [t["task_id"] for t in got]
    assert len(ids) == len(set(ids))
    assert {t["task_id"] for t in before} <= set(ids)
    assert set(ids) <= {t["task_id"] for t in sim.space_tasks(space)}


@pytest.mark.usefixtures("fast_retries")
@pytest.mark.parametrize("concurrency", [1, 8])
def test_a_404_inside_the_reported_total_is_an_error_not_the_end(
    unpod_simulator: UnpodSimulator, concurrency: int
) -> None:
    """``count`` says 140 tasks; page 3 (of 7) answers 404: the list must not end at 40 tasks."""
    from unpod_provider.exceptions import UnpodNotFoundError
    from unpod_provider.hooks.unpod import UnpodHook
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    sim = unpod_simulator
    sim.inject("http", path="/tasks/", query={"page": 3}, status=404, body={"detail": "Not found."})
    with UnpodHook(retry_delay=0.001, max_concurrency=concurrency) as hook, pytest.raises(UnpodNotFoundError):
        hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=20)
    # A 404 past the end (the server's total already held) still ends the list quietly.
    sim.clear_faults()
    sim.not_found_past_end = True
    with UnpodHook(retry_delay=0.001, max_concurrency=concurrency) as hook:
        assert len(hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=20)) == 140


async def test_a_404_inside_the_reported_total_stops_the_async_walk(
    unpod_simulator: UnpodSimulator,
) -> None:
    from unpod_provider.exceptions import UnpodNotFoundError
    from unpod_provider.hooks.unpod import UnpodAsyncHook
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    sim = unpod_simulator
    sim.inject("http", path="/runs/", query={"page": 2}, status=404, body={"detail": "Not found."})
    async with UnpodAsyncHook(retry_policy=protocol.RetryPolicy(base_delay=0.001)) as hook:
        with pytest.raises(UnpodNotFoundError):
            await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "f" * 32, page_size=10)


def test_walk_404_inside_the_total_is_not_the_end() -> None:
    from unpod_provider.protocol import Envelope, PageWalk

    walk = PageWalk(page_size=20, id_key="task_id")
    walk.feed(1, Envelope([_task(n) for n in range(20)], count=100))
    assert walk.end_on_not_found(2) is False and not walk.done
    full = PageWalk(page_size=20, id_key="task_id")
    full.feed(1, Envelope([_task(n) for n in range(20)], count=None))
    assert full.end_on_not_found(2) is True and full.done


def test_a_list_growing_by_several_pages_between_two_reads_is_read_to_the_end() -> None:
    """45 tasks arrive before page 6 (pages of 10): pages 6..9 hold only tasks already seen.

    The walk took that for a server ignoring ``page`` ("not advancing") and failed; repeats
    explained by the growth of the total are expected. A server that really ignores ``page``
    is still caught (the total does not grow).
    """
    from unpod_provider.hooks._pages import walk_pages
    from unpod_provider.protocol import Envelope, PageWalk

    original = [_task(n) for n in range(100)]
    arrived = [_task(1000 + n) for n in range(45)]

    def fetch(page: int, checked: bool = False) -> Envelope:
        current = (arrived if page >= 6 else []) + original
        return Envelope(data=current[(page - 1) * 10 : page * 10], count=len(current))

    got = list(walk_pages(PageWalk(page_size=10, id_key="task_id"), fetch, max_concurrency=1))
    ids = [t["task_id"] for t in got]
    assert len(ids) == len(set(ids)) == 100
    assert ids == [t["task_id"] for t in original]

    def ignores_page(page: int, checked: bool = False) -> Envelope:
        return Envelope(data=original[:10], count=100)

    with pytest.raises(UnpodProtocolError, match="page 2 repeats 10 items already read"):
        list(walk_pages(PageWalk(page_size=10, id_key="task_id"), ignores_page, max_concurrency=1))
