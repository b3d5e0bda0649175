"""RunCompletedTrigger: wait in the triggerer until an Unpod run finishes, without blocking the loop.

The trigger polls the space's runs through ``UnpodAsyncHook`` (httpx, async connection lookup,
the shared retry policy) and yields exactly one ``TriggerEvent`` that carries everything the
sensor's ``execute_complete`` needs, because ``dag.test()`` drops the kwargs given to ``defer()``.

Event payload (all plain JSON)::

    {"status": "success" | "failed" | "not_found" | "timeout" | "error",
     "run": {...} | None,          # the run object as the API returned it (last seen one)
     "run_id": str, "space_token": str,
     "run_status": str | None,     # last status seen, None if the run was never seen
     "message": str,               # human readable, never the API token
     "error_type": str | None,     # exception class name for "error" events
     "status_code": int | None}    # HTTP status of the failed request for "error" events

This module also holds ``check_run``, the one decision "is this run done, failed, or still
running?" used by both the sensor (poke/reschedule) and the trigger (deferrable).

Many waits, one triggerer: the triggers of one event loop that use the same connection (and
retry policy) share one ``UnpodAsyncHook``, so one HTTP client and one connection lookup, and
those that wait on runs of the same space share one ``_SpacePoller``: looks asked for within a
short gathering window (5% of the poll interval, at most 0.25 s) are served by one lookup of the
space's runs list, fanned out to every waiting trigger. A trigger alone behaves as before (one
``afind_run`` per look); each still yields exactly one event and releases what it shares when it
ends or is cancelled (the last one out closes the client).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, TypeVar

from airflow.triggers.base import BaseTrigger, TriggerEvent

from unpod_provider import protocol
from unpod_provider.exceptions import UnpodAuthError, UnpodConfigError, UnpodError
from unpod_provider.protocol import RetryPolicy

TRIGGER_CLASSPATH = "unpod_provider.triggers.unpod.RunCompletedTrigger"

#: The values of an event's ``status``.
EVENT_STATUSES = ("success", "failed", "not_found", "timeout", "error")

Outcome = Literal["success", "failed", "not_found", "waiting"]

_T = TypeVar("_T")

#: A look waits this share of the poll interval for the looks of other triggers of its space...
GATHER_FRACTION = 0.05
#: ...but never longer than this many seconds.
MAX_GATHER_SECONDS = 0.25
#: Runs-list lookups in flight at once over one shared client. httpx scans every pooled
#: connection on each request, so fewer connections cost less CPU per look (P3 benchmark:
#: 2.3 ms at 20, 1.7 ms at 8); 8 still serves ~40 looks/s at 200 ms of server latency.
MAX_LOOKUPS_IN_FLIGHT = 8


# --------------------------------------------------------------------------------------------
# The decision, shared by the sensor and the trigger
# --------------------------------------------------------------------------------------------


def validate_states(
    success_states: Iterable[str], failed_states: Iterable[str]
) -> tuple[list[str], list[str]]:
    """Normalize both lists and refuse a status that is in both (which outcome would win?)."""
    success = protocol.status_list(success_states, "success_states")
    failed = protocol.status_list(failed_states, "failed_states")
    overlap = sorted(set(success) & set(failed))
    if overlap:
        raise ValueError(f"success_states and failed_states both contain {', '.join(overlap)}")
    return list(success), list(failed)


@dataclass(frozen=True)
class RunCheck:
    """The verdict on one look at a run.

    ``outcome`` is ``waiting`` while the run is not finished (or not listed yet and the grace
    period is not over); ``unknown`` is True for a status the contract does not name.
    """

    outcome: Outcome
    status: str | None
    message: str
    unknown: bool = False


def check_run(
    run: Mapping[str, Any] | None,
    *,
    run_id: str,
    space_token: str,
    success_states: Iterable[str],
    failed_states: Iterable[str],
    grace_over: bool,
) -> RunCheck:
    """Decide what a run (or its absence from the runs list) means for a waiting task.

    Order: a success state wins, then a failed state, then any other terminal status fails
    (it is neither what the user asked for nor something that will change), then everything
    else (including statuses the API may add later) means "not finished yet".
    """
    where = f"Unpod run {run_id} (space {space_token})"
    if run is None:
        if grace_over:
            return RunCheck(
                "not_found",
                None,
                f"Run '{run_id}' not found in the runs of space '{space_token}' after the grace period",
            )
        return RunCheck("waiting", None, f"{where} is not in the space's runs yet")
    status = protocol.run_status(run)
    if status in success_states:
        return RunCheck("success", status, f"{where} finished with status '{status}'")
    if status in failed_states:
        return RunCheck("failed", status, f"{where} ended with status '{status}'")
    if protocol.is_terminal_run_status(status):
        return RunCheck(
            "failed",
            status,
            f"{where} ended with status '{status}', which is not one of the success states "
            f"({', '.join(success_states)})",
        )
    unknown = status not in protocol.KNOWN_RUN_STATUSES
    shown = status or "<none>"
    return RunCheck("waiting", status, f"{where} is '{shown}'", unknown=unknown)


def unknown_status_message(run_id: str, status: str | None) -> str:
    """The one warning logged the first time a run shows a status the contract does not name."""
    return (
        f"Unpod run {run_id} has status '{status or '<none>'}', which this provider does not know; "
        "treating it as not finished and waiting (logged once)"
    )


def make_event(
    status: str,
    *,
    run_id: str,
    space_token: str,
    message: str,
    run: Mapping[str, Any] | None = None,
    run_status: str | None = None,
    error: BaseException | None = None,
) -> dict[str, Any]:
    """The payload of the trigger's one event (see the module docstring for the schema)."""
    if status not in EVENT_STATUSES:
        raise ValueError(f"unknown event status {status!r}")
    return {
        "status": status,
        "run": dict(run) if run is not None else None,
        "run_id": run_id,
        "space_token": space_token,
        "run_status": run_status,
        "message": message,
        "error_type": type(error).__name__ if error is not None else None,
        "status_code": getattr(error, "status_code", None) if isinstance(error, UnpodError) else None,
    }


# --------------------------------------------------------------------------------------------
# The trigger
# --------------------------------------------------------------------------------------------


class RunCompletedTrigger(BaseTrigger):
    """Poll an Unpod run from the triggerer until it finishes, fails, vanishes or time runs out.

    Every argument is plain JSON (no API token, no callable) so the trigger can be stored and
    re-created in the triggerer; deadlines are wall-clock epoch seconds (``time.time()``).

    :param space_token: the space that holds the run.
    :param run_id: the run to wait for.
    :param unpod_conn_id: Airflow connection of type ``unpod`` (read with ``aget_connection``).
    :param poll_interval: seconds between two looks at the run (the sensor's ``poke_interval``).
    :param success_states: run statuses that end the wait successfully.
    :param failed_states: run statuses that end the wait with a failure.
    :param end_time: epoch seconds after which a ``timeout`` event is sent; None = no deadline.
    :param not_found_deadline: epoch seconds after which a run still absent from the runs list
        gives a ``not_found`` event; None = wait for it until ``end_time``.
    :param retry: ``RetryPolicy.to_dict()``; transient API errors are retried with backoff.
    :param last_status: the status the sensor saw before deferring (reported on timeout).
    :param page_size: runs per page when looking for the run.
    """

    def __init__(
        self,
        *,
        space_token: str,
        run_id: str,
        unpod_conn_id: str = "unpod_default",
        poll_interval: float = 60.0,
        success_states: Iterable[str] = protocol.DEFAULT_SUCCESS_STATES,
        failed_states: Iterable[str] = protocol.DEFAULT_FAILED_STATES,
        end_time: float | None = None,
        not_found_deadline: float | None = None,
        retry: Mapping[str, Any] | None = None,
        last_status: str | None = None,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
    ) -> None:
        super().__init__()
        self.space_token = protocol.validate_identifier(space_token, "space_token")
        self.run_id = protocol.validate_identifier(run_id, "run_id")
        if not isinstance(unpod_conn_id, str) or not unpod_conn_id:
            raise ValueError("unpod_conn_id must be a non-empty string")
        self.unpod_conn_id = unpod_conn_id
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, (int, float))
            or poll_interval <= 0
        ):
            raise ValueError(f"poll_interval must be a positive number of seconds, got {poll_interval!r}")
        self.poll_interval = float(poll_interval)
        self.success_states, self.failed_states = validate_states(success_states, failed_states)
        self.end_time = _epoch(end_time, "end_time")
        self.not_found_deadline = _epoch(not_found_deadline, "not_found_deadline")
        self.retry_policy = RetryPolicy.from_dict(retry)  # validates; rebuilt in the triggerer
        self.last_status = last_status if isinstance(last_status, str) else None
        self.page_size = protocol.validate_page_size(page_size)

    # ---- serialization ---------------------------------------------------------------------

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """Class path and plain-JSON kwargs; ``RunCompletedTrigger(**kwargs)`` is an equal trigger."""
        return (
            TRIGGER_CLASSPATH,
            {
                "space_token": self.space_token,
                "run_id": self.run_id,
                "unpod_conn_id": self.unpod_conn_id,
                "poll_interval": self.poll_interval,
                "success_states": list(self.success_states),
                "failed_states": list(self.failed_states),
                "end_time": self.end_time,
                "not_found_deadline": self.not_found_deadline,
                "retry": self.retry_policy.to_dict(),
                "last_status": self.last_status,
                "page_size": self.page_size,
            },
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RunCompletedTrigger):
            return NotImplemented
        return self.serialize() == other.serialize()

    def __hash__(self) -> int:
        return hash(json.dumps(self.serialize(), sort_keys=True))

    # ---- running ---------------------------------------------------------------------------

    #: Share one HTTP client per connection and one runs-list lookup per space between the
    #: triggers of an event loop. False: every trigger has its own client and makes its own
    #: requests (as before sharing existed; the benchmarks use it as their baseline).
    share_requests: ClassVar[bool] = True

    def _gather_seconds(self) -> float:
        """How long a look waits for other triggers' looks of the same space to join it."""
        return min(MAX_GATHER_SECONDS, GATHER_FRACTION * self.poll_interval)

    def _hook(self) -> Any:
        """The async hook (imported here: the triggerer needs httpx, a DAG file does not)."""
        from unpod_provider.hooks.unpod import UnpodAsyncHook

        return UnpodAsyncHook(self.unpod_conn_id, retry_policy=self.retry_policy)

    def _event(self, status: str, message: str, **kwargs: Any) -> TriggerEvent:
        return TriggerEvent(
            make_event(status, run_id=self.run_id, space_token=self.space_token, message=message, **kwargs)
        )

    def _timeout_event(self, run: Mapping[str, Any] | None, status: str | None, why: str) -> TriggerEvent:
        seen = f"last seen status '{status}'" if status else "the run was never seen in the runs list"
        return self._event(
            "timeout",
            f"Unpod run {self.run_id} (space {self.space_token}) did not finish before the deadline "
            f"({seen}){why}",
            run=run,
            run_status=status,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll until one terminal outcome, then yield exactly one event and stop.

        Transient errors (connection, timeouts, 429, 5xx) are retried inside the hook with the
        shared backoff; only an error that survives the whole policy ends in an ``error`` event.
        What the trigger shares (client, poller) is released before the event is yielded and on
        cancellation; the last trigger using the HTTP client closes it.
        """
        poller = _SpacePoller.join(self)
        try:
            event = await self._wait(poller)
        finally:
            # Also runs on asyncio.CancelledError (triggerer stop, task cleared).
            await poller.leave()
        yield event

    async def _wait(self, poller: _SpacePoller) -> TriggerEvent:
        """The polling loop; returns the one event to send."""
        run: Mapping[str, Any] | None = None
        status = self.last_status
        warned_unknown: set[str] = set()
        while True:
            if self.end_time is not None and time.time() >= self.end_time:
                return self._timeout_event(run, status, "")
            remaining = None if self.end_time is None else max(0.0, self.end_time - time.time())
            try:
                found = await asyncio.wait_for(
                    poller.look(self.run_id, gather=self._gather_seconds()), timeout=remaining
                )
            except asyncio.TimeoutError:
                # wait_for ran into the deadline (httpx timeouts arrive as typed UnpodErrors).
                return self._timeout_event(run, status, " while the last look at it was in progress")
            except UnpodError as err:
                return self._event(
                    "error",
                    f"Unpod API error while waiting for run {self.run_id}: {err}",
                    run=run,
                    run_status=status,
                    error=err,
                )
            except Exception as err:  # noqa: BLE001 - one event for anything, never a dead trigger
                return self._event(
                    "error",
                    f"Unexpected error while waiting for Unpod run {self.run_id}: "
                    f"{type(err).__name__}: {err}",
                    run=run,
                    run_status=status,
                    error=err,
                )
            grace_over = self.not_found_deadline is not None and time.time() >= self.not_found_deadline
            check = check_run(
                found,
                run_id=self.run_id,
                space_token=self.space_token,
                success_states=self.success_states,
                failed_states=self.failed_states,
                grace_over=grace_over,
            )
            if found is not None:
                run, status = found, check.status
            if check.outcome != "waiting":
                return self._event(check.outcome, check.message, run=found, run_status=check.status)
            if check.unknown and (check.status or "") not in warned_unknown:
                warned_unknown.add(check.status or "")
                self.log.warning("%s", unknown_status_message(self.run_id, check.status))
            else:
                self.log.info("%s; next look in %gs", check.message, self.poll_interval)
            sleep = self.poll_interval
            if self.end_time is not None:
                sleep = max(0.0, min(sleep, self.end_time - time.time()))
            await asyncio.sleep(sleep)


# --------------------------------------------------------------------------------------------
# Sharing between the triggers of one event loop (the triggerer runs them all in one loop)
# --------------------------------------------------------------------------------------------


class _SharedHook:
    """One ``UnpodAsyncHook`` (one HTTP client, one connection lookup) and how many use it."""

    def __init__(self, hook: Any, key: tuple[Any, ...] | None) -> None:
        self.hook = hook
        self.key = key
        self.users = 0
        self.retired = False
        # The hook reads its connection and builds its client lazily, on its first request, so
        # concurrent first requests would each read the connection (and race to build the
        # client). The first lookup runs alone; once one has succeeded, they run concurrently.
        self._first_use = asyncio.Lock()
        self._warm = False
        # httpx queues requests beyond its pool in a list it scans on every change (quadratic in
        # the queue); a bounded number in flight keeps it flat and is polite to the server.
        self._in_flight = asyncio.Semaphore(MAX_LOOKUPS_IN_FLIGHT)

    async def call(self, lookup: Callable[[Any], Awaitable[_T]]) -> _T:
        """``await lookup(hook)``: the first successful one alone, then a bounded number at once."""
        async with self._in_flight:
            if not self._warm:
                async with self._first_use:
                    if not self._warm:
                        result = await lookup(self.hook)
                        self._warm = True
                        return result
            # Not under the lock: the lookups queued behind the first one then run together.
            return await lookup(self.hook)


@dataclass(eq=False)
class _Batch:
    """The looks gathered into one lookup of a space's runs list."""

    future: asyncio.Future[dict[str, dict[str, Any]]]
    wanted: Counter[str] = field(default_factory=Counter)
    task: asyncio.Task[None] | None = None


class _Sharing:
    """What the triggers of one event loop share, by key. Only touched from that loop."""

    def __init__(self) -> None:
        self.hooks: dict[tuple[Any, ...], _SharedHook] = {}
        self.pollers: dict[tuple[Any, ...], _SpacePoller] = {}


class _SpacePoller:
    """Serves the looks of the triggers waiting on runs of one space (same connection, policy).

    ``look(run_id)`` joins the batch being gathered (or opens one that starts after the
    trigger's gathering window); the batch makes one lookup for every run id in it: a single
    id pages until that run is found (``afind_run``), several ids page the runs list until all
    are found. Each waiter gets its own copy of its run, or the error of the lookup.
    """

    #: Per event loop (weakly held: a closed loop drops its entry).
    _sharing: ClassVar[weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Sharing]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(
        self, shared: _SharedHook, space_token: str, page_size: int, key: tuple[Any, ...] | None
    ) -> None:
        self.shared = shared
        self.space_token = space_token
        self.page_size = page_size
        self.key = key
        self.users = 0
        self._open: _Batch | None = None
        self._batches: set[_Batch] = set()
        self._sharing_ref: _Sharing | None = None

    # ---- membership ------------------------------------------------------------------------

    @classmethod
    def join(cls, trigger: RunCompletedTrigger) -> _SpacePoller:
        """The poller for ``trigger``'s space, shared when allowed; no I/O (the hook is lazy)."""
        if not trigger.share_requests:
            alone = _SharedHook(trigger._hook(), None)
            alone.users = 1
            own = cls(alone, trigger.space_token, trigger.page_size, None)
            own.users = 1
            return own
        sharing = cls._sharing.setdefault(asyncio.get_running_loop(), _Sharing())
        hook_key = (trigger.unpod_conn_id, json.dumps(trigger.retry_policy.to_dict(), sort_keys=True))
        shared = sharing.hooks.get(hook_key)
        if shared is None or shared.retired:
            shared = _SharedHook(trigger._hook(), hook_key)
            sharing.hooks[hook_key] = shared
        shared.users += 1
        key = (*hook_key, trigger.space_token, trigger.page_size)
        poller = sharing.pollers.get(key)
        if poller is None or poller.shared is not shared:
            poller = cls(shared, trigger.space_token, trigger.page_size, key)
            poller._sharing_ref = sharing
            sharing.pollers[key] = poller
        poller.users += 1
        return poller

    async def leave(self) -> None:
        """One trigger is done with this poller; the last user of the hook closes it."""
        self.users -= 1
        sharing = self._sharing_ref
        if self.users <= 0:
            if sharing is not None and self.key is not None and sharing.pollers.get(self.key) is self:
                del sharing.pollers[self.key]
            tasks = [batch.task for batch in self._batches if batch.task is not None]
            for task in tasks:
                task.cancel()
            if tasks:  # let a lookup in flight unwind before its client is closed
                await asyncio.gather(*tasks, return_exceptions=True)
        shared = self.shared
        shared.users -= 1
        if shared.users <= 0:
            if sharing is not None and shared.key is not None and sharing.hooks.get(shared.key) is shared:
                del sharing.hooks[shared.key]
            await shared.hook.aclose()

    # ---- looking ---------------------------------------------------------------------------

    async def look(self, run_id: str, *, gather: float = 0.0) -> dict[str, Any] | None:
        """The run as the API lists it now (None if it is not listed), or the lookup's error."""
        batch = self._open
        if batch is None:
            loop = asyncio.get_running_loop()
            batch = _Batch(future=loop.create_future())
            batch.future.add_done_callback(_consume)
            self._open = batch
            self._batches.add(batch)
            batch.task = loop.create_task(self._serve(batch, gather))
        batch.wanted[run_id] += 1
        try:
            # shield: a waiter cancelled (deadline, triggerer stop) must not cancel the others' lookup.
            found = await asyncio.shield(batch.future)
        except asyncio.CancelledError:
            batch.wanted[run_id] -= 1
            if batch.wanted[run_id] <= 0:
                del batch.wanted[run_id]
            if not batch.wanted:
                # Nobody wants this lookup any more: stop it, and let a look that arrives
                # before the cancellation has run open a new batch instead of joining this one.
                if self._open is batch:
                    self._open = None
                if batch.task is not None and not batch.task.done():
                    batch.task.cancel()
            raise
        run = found.get(run_id)
        return dict(run) if run is not None else None

    async def _serve(self, batch: _Batch, gather: float) -> None:
        """Wait for the gathering window, close the batch, look up every run id in it once."""
        try:
            if gather > 0:
                await asyncio.sleep(gather)
            if self._open is batch:
                self._open = None
            wanted = set(batch.wanted)
            found = await self._find(wanted) if wanted else {}
        except asyncio.CancelledError:
            batch.future.cancel()
            raise
        except Exception as err:  # noqa: BLE001 - every waiter gets the lookup's error
            if isinstance(err, (UnpodAuthError, UnpodConfigError)):
                self._retire()
            if not batch.future.done():
                batch.future.set_exception(err)
        else:
            if not batch.future.done():
                batch.future.set_result(found)
        finally:
            if self._open is batch:
                self._open = None
            self._batches.discard(batch)
            if not batch.future.done():  # SystemExit and the like: release the waiters
                batch.future.cancel()

    async def _find(self, wanted: set[str]) -> dict[str, dict[str, Any]]:
        """One lookup of the space's runs for every id in ``wanted``: ``{run_id: run}`` of those found."""
        space_token, page_size = self.space_token, self.page_size
        if len(wanted) == 1:
            (run_id,) = wanted

            async def find_one(hook: Any) -> dict[str, dict[str, Any]]:
                run = await hook.afind_run(space_token, run_id, page_size=page_size)
                return {run_id: run} if run is not None else {}

            return await self.shared.call(find_one)

        async def find_many(hook: Any) -> dict[str, dict[str, Any]]:
            found: dict[str, dict[str, Any]] = {}
            async with contextlib.aclosing(hook.aiter_space_runs(space_token, page_size=page_size)) as runs:
                async for run in runs:
                    run_id = run.get("run_id")
                    if run_id in wanted and run_id not in found:
                        found[run_id] = run
                        if len(found) == len(wanted):
                            break
            return found

        return await self.shared.call(find_many)

    def _retire(self) -> None:
        """Credentials refused or unreadable: triggers that start from now on read them anew."""
        self.shared.retired = True


def _consume(future: asyncio.Future[Any]) -> None:
    """Mark a batch's error as retrieved, also when every waiter left before it arrived."""
    if not future.cancelled():
        future.exception()


def _positive_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def _epoch(value: Any, name: str) -> float | None:
    """A wall-clock deadline in epoch seconds, or None; refuses what cannot be one."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{name} must be epoch seconds (time.time()), got {value!r}")
    if value < 1e9:  # before 2001: a monotonic clock or a duration, not a wall-clock time
        raise ValueError(
            f"{name}={value!r} does not look like wall-clock epoch seconds; use time.time() + seconds"
        )
    return float(value)


__all__ = [
    "EVENT_STATUSES",
    "RunCheck",
    "RunCompletedTrigger",
    "check_run",
    "make_event",
    "unknown_status_message",
    "validate_states",
]
