"""The simulator's mutable state: seeded world, switches, faults, clock and request log.

Everything a handler reads or a test changes goes through :class:`SimState` under one lock, so
the uvicorn thread and the test thread never see half an update. Pure Python: no FastAPI here.
"""

from __future__ import annotations

import copy
import itertools
import math
import random
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from unpod_provider.testing._faults import PRE_KINDS, Fault
from unpod_provider.testing._model import (
    DEFAULT_TIMELINE,
    DEMO_SPACE_NAME,
    DEMO_SPACE_RUNS,
    DEMO_SPACE_TASKS,
    DEMO_SPACE_TOKEN,
    SEED_EPOCH,
    SIM_ORG_HANDLE,
    SIM_OTHER_ORG_HANDLE,
    SIM_TOKEN,
    SimOrg,
    SimRun,
    SimSpace,
    default_agents,
    hex32,
    mixed_terminal_statuses,
    normalize_timeline,
    random_objective,
    slugify,
    space_token_for,
    split_tasks,
    user_count,
)

#: Request-log entries kept (oldest dropped first), so long benchmarks do not grow without bound.
MAX_LOGGED_REQUESTS = 50_000
CREATE_PATH_MODES = ("both", "docs", "server")
VALIDATION_MESSAGE = "There is some Validation error"


class SimState:
    """All simulator state. Methods take the lock; values returned are copies."""

    def __init__(
        self,
        *,
        seed: int = 0,
        token: str = SIM_TOKEN,
        clock: Callable[[], float] | None = None,
        latency: float = 0.0,
    ) -> None:
        """Seeded state for ``seed``; ``clock`` returns epoch seconds (default ``time.time``)."""
        self.lock = threading.RLock()
        self.token = token
        self.seed = seed
        self._clock: Callable[[], float] = clock or time.time
        self._initial_latency = float(latency)
        self.reset(seed)

    # ---------------------------------------------------------------------------- reset/seed

    def reset(self, seed: int | None = None) -> None:
        """Back to the seeded world: data, faults, log, clock offset, switches, create count."""
        with self.lock:
            if seed is not None:
                self.seed = seed
            self.offset = 0.0
            self.latency = self._initial_latency
            self.page_size_cap: int | None = None
            self.not_found_past_end = False
            # As the real server: POST tasks/create/ is Django's 404 page, POST tasks/ creates.
            self.create_paths = "server"
            self.docs_mode = False
            # As the real server with the Token scheme: organizations/spaces refuse it (401).
            self.spaces_need_jwt = False
            self.default_timeline: list[tuple[str, float]] = list(DEFAULT_TIMELINE)
            self.create_count = 0
            self.faults: list[Fault] = []
            self.requests: list[dict[str, Any]] = []
            self._run_seq = itertools.count(1)
            self._space_seq = itertools.count(1)
            self.orgs: dict[str, SimOrg] = {}
            self.spaces: dict[str, SimSpace] = {}
            self.runs: dict[str, SimRun] = {}
            self._seed_world()

    def _seed_world(self) -> None:
        """Two orgs, the demo space and a few smaller spaces (one empty, one in the other org)."""
        self.orgs[SIM_ORG_HANDLE] = SimOrg(
            id=789,
            name="Acme Corp",
            handle=SIM_ORG_HANDLE,
            token=space_token_for("org", SIM_ORG_HANDLE),
            domain="acme.example",
            role="owner",
            is_private_domain=True,
        )
        self.orgs[SIM_OTHER_ORG_HANDLE] = SimOrg(
            id=790,
            name="Globex Ltd",
            handle=SIM_OTHER_ORG_HANDLE,
            token=space_token_for("org", SIM_OTHER_ORG_HANDLE),
            domain="globex.example",
            role="member",
            is_private_domain=False,
        )
        self.add_space(
            n_tasks=DEMO_SPACE_TASKS,
            n_runs=DEMO_SPACE_RUNS,
            name=DEMO_SPACE_NAME,
            token=DEMO_SPACE_TOKEN,
            description="Seeded demo space: outbound sales calls in mixed terminal states.",
        )
        self.add_space(n_tasks=12, n_runs=2, name="Support follow-ups")
        self.add_space(n_tasks=30, n_runs=4, name="Renewals Q1")
        self.add_space(n_tasks=0, n_runs=0, name="Empty space")
        self.add_space(n_tasks=8, n_runs=1, name="Globex collections", org_handle=SIM_OTHER_ORG_HANDLE)

    # ---------------------------------------------------------------------------- clock

    def now(self) -> float:
        """The simulator's time (epoch seconds): the injected clock plus ``advance`` offsets."""
        return float(self._clock()) + self.offset

    def advance(self, seconds: float) -> float:
        """Move the clock forward (runs progress along their timelines); returns the new now."""
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or math.isnan(seconds):
            raise ValueError(f"seconds must be a number, got {seconds!r}")
        with self.lock:
            self.offset += float(seconds)
            return self.now()

    # ---------------------------------------------------------------------------- world edits

    def add_space(
        self,
        n_tasks: int = 0,
        n_runs: int | None = None,
        *,
        name: str | None = None,
        token: str | None = None,
        org_handle: str = SIM_ORG_HANDLE,
        agents: Sequence[Mapping[str, Any]] | None = None,
        statuses: Sequence[str] | None = None,
        description: str = "",
    ) -> SimSpace:
        """Add a space with ``n_tasks`` tasks spread over ``n_runs`` seeded runs (lazy: no task built).

        ``n_runs`` None picks a sensible number (at most 25). ``statuses`` gives the runs'
        statuses (cycled); default a deterministic mix of terminal statuses.
        """
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 0:
            raise ValueError(f"n_tasks must be an integer >= 0, got {n_tasks!r}")
        if n_runs is None:
            n_runs = 0 if n_tasks == 0 else min(25, max(1, math.ceil(n_tasks / 6)))
        if isinstance(n_runs, bool) or not isinstance(n_runs, int) or n_runs < 0:
            raise ValueError(f"n_runs must be an integer >= 0, got {n_runs!r}")
        if n_tasks > 0 and n_runs == 0:
            raise ValueError("tasks belong to runs: n_runs must be >= 1 when n_tasks > 0")
        with self.lock:
            org = self.orgs.get(org_handle)
            if org is None:
                raise ValueError(f"unknown org handle {org_handle!r}; known: {sorted(self.orgs)}")
            number = next(self._space_seq)
            if token is None:
                token = space_token_for(self.seed, "space", number)
            if not isinstance(token, str) or not _SPACE_TOKEN_RE.fullmatch(token):
                raise ValueError(f"space token {token!r} must be 1-128 ASCII letters, digits, '_' or '-'")
            if token in self.spaces:
                raise ValueError(f"space token {token!r} already exists")
            name = name or f"Space {number}"
            rng = random.Random(f"{self.seed}:space:{token}")
            space = SimSpace(
                id=340 + number,
                token=token,
                name=name,
                slug=slugify(name, hex32(self.seed, "slug", token)[:8]),
                org=org,
                agents=[dict(a) for a in agents] if agents is not None else default_agents(),
                created=SEED_EPOCH + number * 3600.0,
                description=description,
            )
            self.spaces[token] = space
            sizes = split_tasks(rng, n_tasks, n_runs)
            if statuses:
                run_statuses = [statuses[i % len(statuses)] for i in range(n_runs)]
            else:
                run_statuses = mixed_terminal_statuses(rng, n_runs)
            started = space.created + 600.0
            for size, status in zip(sizes, run_statuses, strict=True):
                started += rng.uniform(1800.0, 7200.0)
                duration = 30.0 + size * 2.0
                timeline = [("pending", 0.0), ("in_progress", 5.0), (status, 5.0 + duration)]
                self._new_run(
                    space,
                    n_tasks=size,
                    timeline=timeline,
                    created=started,
                    objective=random_objective(rng),
                    run_mode=rng.choice(("prod", "prod", "prod", "test", "dev")),
                    user_index=rng.randrange(user_count()),
                )
                started += duration + size * 0.01
            return space

    def _new_run(
        self,
        space: SimSpace,
        *,
        n_tasks: int,
        timeline: Sequence[Sequence[Any]],
        created: float | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        run_mode: str = "prod",
        assignee: str | None = None,
        objective: str | None = None,
        user_index: int = 0,
    ) -> SimRun:
        """Create and register a run (caller holds the lock)."""
        number = next(self._run_seq)
        run_id = "R" + hex32(self.seed, "run", number)
        run = SimRun(
            run_id=run_id,
            space=space,
            seq=number,
            created=self.now() if created is None else created,
            timeline=normalize_timeline(timeline),
            n_tasks=n_tasks,
            seed=run_id,
            assignee=assignee or (space.agent_handles() or ["agent"])[0],
            objective=objective or "Follow up with potential clients for product demo",
            run_mode=run_mode,
            user_index=user_index,
            documents=[dict(d) for d in documents] if documents is not None else None,
        )
        space.runs.append(run)
        self.runs[run_id] = run
        return run

    def add_run(
        self,
        space_token: str,
        n_tasks: int = 20,
        *,
        timeline: Sequence[Sequence[Any]] | None = None,
        final_status: str | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        run_mode: str = "prod",
        assignee: str | None = None,
        objective: str | None = None,
    ) -> SimRun:
        """A new (newest) run created now. ``final_status`` = that status from the start."""
        if isinstance(n_tasks, bool) or not isinstance(n_tasks, int) or n_tasks < 0:
            raise ValueError(f"n_tasks must be an integer >= 0, got {n_tasks!r}")
        if timeline is not None and final_status is not None:
            raise ValueError("give timeline or final_status, not both")
        if documents is not None:
            n_tasks = len(documents)
        with self.lock:
            space = self._space(space_token)
            if final_status is not None:
                timeline = [(final_status, 0.0)]
            return self._new_run(
                space,
                n_tasks=n_tasks,
                timeline=timeline if timeline is not None else self.default_timeline,
                documents=documents,
                run_mode=run_mode,
                assignee=assignee,
                objective=objective,
            )

    def set_run_status(self, run_id: str, status: str) -> None:
        """Move a run to ``status`` now (any string, e.g. "paused"); later timeline steps dropped."""
        if not isinstance(status, str) or not status.strip():
            raise ValueError(f"status must be a non-empty string, got {status!r}")
        with self.lock:
            self._run(run_id).set_status(status.strip(), self.now())

    def set_run_timeline(
        self, run_id: str, timeline: Sequence[Sequence[Any]], *, restart: bool = True
    ) -> None:
        """Give a run a new timeline, counted from now (``restart``) or from its creation."""
        with self.lock:
            run = self._run(run_id)
            entries = normalize_timeline(timeline)
            if restart:
                elapsed = max(0.0, self.now() - run.created)
                entries = [(status, offset + elapsed) for status, offset in entries]
                history = [(s, off) for s, off in run.timeline if off <= elapsed]
                entries = history + entries
            run.timeline = entries

    def append_tasks(self, space_token: str, n: int, *, status: str = "completed") -> SimRun:
        """``n`` new tasks at the head of a space: one new run holding them, in ``status``."""
        with self.lock:
            return self.add_run(space_token, n, final_status=status)

    def append_runs(
        self, space_token: str, n: int, *, status: str = "completed", tasks_per_run: int = 1
    ) -> list[SimRun]:
        """``n`` new runs at the head of a space's runs."""
        with self.lock:
            return [self.add_run(space_token, tasks_per_run, final_status=status) for _ in range(n)]

    def append_items(
        self,
        space_token: str,
        n: int,
        *,
        items: str = "tasks",
        status: str = "completed",
        tasks_per_run: int = 1,
    ) -> list[SimRun]:
        """``n`` new tasks (one new run holding them) or ``n`` new runs at the head of a space."""
        if items == "runs":
            return self.append_runs(space_token, n, status=status, tasks_per_run=tasks_per_run)
        if items == "tasks":
            return [self.append_tasks(space_token, n, status=status)]
        raise ValueError(f"items must be 'tasks' or 'runs', got {items!r}")

    def append_run_tasks(self, run_id: str, n: int) -> None:
        """``n`` new tasks at the head of an existing run."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"n must be an integer >= 0, got {n!r}")
        with self.lock:
            self._run(run_id).n_tasks += n

    # ---------------------------------------------------------------------------- lookups

    def _space(self, token: str) -> SimSpace:
        """The space, or KeyError."""
        space = self.spaces.get(token)
        if space is None:
            raise KeyError(f"unknown space {token!r}")
        return space

    def _run(self, run_id: str) -> SimRun:
        """The run, or KeyError."""
        run = self.runs.get(run_id)
        if run is None:
            raise KeyError(f"unknown run {run_id!r}")
        return run

    def space(self, token: str) -> SimSpace | None:
        """The space with this token, or None."""
        return self.spaces.get(token)

    def space_by_id(self, space_id: str) -> SimSpace | None:
        """The space with this internal id, or None."""
        return next((s for s in self.spaces.values() if str(s.id) == str(space_id)), None)

    def org_spaces(self, org_handle: str) -> list[dict[str, Any]] | None:
        """The ``spaces/`` data of an org (newest first), or None for an unknown org."""
        with self.lock:
            if org_handle not in self.orgs:
                return None
            spaces = [s for s in self.spaces.values() if s.org.handle == org_handle]
            return [s.to_api(docs=self.docs_mode) for s in reversed(spaces)]

    def organizations(self) -> list[dict[str, Any]]:
        """The ``organizations/`` data."""
        with self.lock:
            return [org.to_api() for org in self.orgs.values()]

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as ``runs/`` lists it now, plus ``space_token`` and ``timeline`` (for tests)."""
        with self.lock:
            run = self._run(run_id)
            data = run.to_api(self.now())
            data["space_token"] = run.space.token
            data["n_tasks"] = run.n_tasks
            data["timeline"] = [list(entry) for entry in run.timeline]
            return data

    # ---------------------------------------------------------------------------- pages

    def runs_page(self, space: SimSpace, offset: int, limit: int | None) -> tuple[int, list[dict[str, Any]]]:
        """``(count, runs)`` newest first."""
        with self.lock:
            now = self.now()
            runs = space.runs[::-1]
            end = None if limit is None else offset + limit
            return len(runs), [run.to_api(now) for run in runs[offset:end]]

    def space_tasks_page(
        self, space: SimSpace, offset: int, limit: int | None, *, summary_status: str | None = None
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(count, tasks)`` newest first; tasks are generated only for the requested window."""
        with self.lock:
            now = self.now()
            if summary_status is not None:
                everything = [
                    task
                    for task in self._iter_space_tasks(space, 0, None, now)
                    if _summary_status(task) == summary_status
                ]
                end = None if limit is None else offset + limit
                return len(everything), everything[offset:end]
            return space.task_count(), list(self._iter_space_tasks(space, offset, limit, now))

    def _iter_space_tasks(self, space: SimSpace, offset: int, limit: int | None, now: float) -> Any:
        """Tasks of a space newest first from ``offset``, generated one by one."""
        produced = 0
        position = 0
        for run in reversed(space.runs):
            size = run.n_tasks
            if position + size <= offset:
                position += size
                continue
            for j in range(max(0, offset - position), size):
                if limit is not None and produced >= limit:
                    return
                yield run.task(size - 1 - j, now)
                produced += 1
            position += size

    def run_tasks_page(
        self, space: SimSpace, run_id: str, offset: int, limit: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        """``(count, tasks)`` of one run, newest first; an unknown run is ``(0, [])``."""
        with self.lock:
            run = self.runs.get(run_id)
            if run is None or run.space is not space:
                return 0, []
            now = self.now()
            end = run.n_tasks if limit is None else min(run.n_tasks, offset + limit)
            return run.n_tasks, [run.task(run.n_tasks - 1 - j, now) for j in range(offset, end)]

    def all_space_tasks(self, token: str) -> list[dict[str, Any]]:
        """Every task of a space as the server would list it now (newest first)."""
        with self.lock:
            return list(self._iter_space_tasks(self._space(token), 0, None, self.now()))

    def all_space_runs(self, token: str) -> list[dict[str, Any]]:
        """Every run of a space, newest first."""
        with self.lock:
            return self.runs_page(self._space(token), 0, None)[1]

    def all_run_tasks(self, run_id: str) -> list[dict[str, Any]]:
        """Every task of a run, newest first."""
        with self.lock:
            run = self._run(run_id)
            return self.run_tasks_page(run.space, run_id, 0, None)[1]

    # ---------------------------------------------------------------------------- create run

    def create_run(
        self, space_token: str, body: Any, *, string_status: bool = False
    ) -> tuple[int, dict[str, Any]]:
        """Validate a create-run body like the server; returns ``(http status, JSON payload)``."""
        with self.lock:
            space = self.spaces.get(space_token)
            if space is None:
                return 206, {"status_code": 206, "message": "Invalid Space Token", "data": {}}
            if not isinstance(body, Mapping):
                kind = type(body).__name__
                return _validation_error(
                    {"non_field_errors": [f"Invalid data. Expected a dictionary, but got {kind}."]}
                )
            errors: dict[str, list[str]] = {}
            for name in ("pilot", "context", "documents"):
                value = body.get(name)
                if value is None:
                    errors[name] = ["This field is required."]
                elif isinstance(value, str) and not value.strip():
                    errors[name] = ["This field may not be blank."]
            if errors:
                return _validation_error(errors)
            now = datetime.fromtimestamp(self.now(), timezone.utc)
            # What the real server's task service refuses with 400 "Task Creation Failed".
            if body.get("documents") == [] and not body.get("filters"):
                return _creation_failed("No tasks provided and filters missing in data")
            if _custom_schedule_in_past(body.get("schedule"), now):
                return _creation_failed("Scheduled time must be in the future.")
            checked, problems = _check_create_body(body)
            if problems:
                return _validation_error(problems)
            pilot = checked["pilot"]
            if pilot not in space.agent_handles():
                payload = _validation_error({"pilot": [f"Agent '{pilot}' is not an agent of this space."]})[1]
                payload["message"] = "Invalid Pilot"
                return 206, payload
            timeline = list(self.default_timeline)
            schedule = checked["schedule"]
            if schedule["type"] == "custom":
                when = _custom_time(schedule)
                delay = max(0.0, (when.timestamp() if when else self.now()) - self.now())
                timeline = [("scheduled", 0.0), ("in_progress", delay), ("completed", delay + 4.0)]
            elif schedule["type"] == "auto":
                timeline = [("queued", 0.0), *[(s, off) for s, off in timeline if off > 0]]
            run = self._new_run(
                space,
                n_tasks=len(checked["documents"]),
                timeline=timeline,
                documents=checked["documents"],
                assignee=pilot,
                objective=checked["context"],
            )
            self.create_count += 1
            status, _ = run.status_at(self.now())
            task_ids = [run.task_id(i) for i in range(run.n_tasks)]
            statuses: Any = (
                status
                if string_status
                else {tid: run.task_status(i, status) for i, tid in enumerate(task_ids)}
            )
            data = {"run_id": run.run_id, "task_ids": task_ids, "status": statuses}
            return 200, {"status_code": 200, "message": "Task Created Successfully", "data": data}

    # ---------------------------------------------------------------------------- faults

    def add_fault(self, fault: Fault) -> Fault:
        """Arm a fault."""
        with self.lock:
            self.faults.append(fault)
            return fault

    def clear_faults(self) -> None:
        """Disarm every fault."""
        with self.lock:
            self.faults = []

    def take_faults(
        self, method: str, path: str, query: Mapping[str, str]
    ) -> tuple[list[Fault], Fault | None]:
        """The pre faults and the (first) answering fault for a request, consuming them."""
        with self.lock:
            pre: list[Fault] = []
            answer: Fault | None = None
            for fault in self.faults:
                if not fault.matches(method, path, query):
                    continue
                if fault.kind in PRE_KINDS:
                    if fault.consume():
                        pre.append(fault)
                elif answer is None and fault.consume():
                    answer = fault
            self.faults = [f for f in self.faults if not f.exhausted]
            return pre, answer

    def fault_list(self) -> list[dict[str, Any]]:
        """Armed faults as dicts."""
        with self.lock:
            return [f.to_dict() for f in self.faults]

    # ---------------------------------------------------------------------------- request log

    def log_request(self, entry: dict[str, Any]) -> None:
        """Append a request-log entry (oldest dropped past the limit)."""
        with self.lock:
            self.requests.append(entry)
            if len(self.requests) > MAX_LOGGED_REQUESTS:
                del self.requests[: len(self.requests) - MAX_LOGGED_REQUESTS]

    def update_request(self, entry: dict[str, Any], **values: Any) -> None:
        """Update a logged entry in place (status, duration, body)."""
        with self.lock:
            entry.update(values)

    def request_log(self) -> list[dict[str, Any]]:
        """A deep copy of the request log."""
        with self.lock:
            return copy.deepcopy(self.requests)

    def reset_requests(self) -> None:
        """Empty the request log."""
        with self.lock:
            self.requests = []

    # ---------------------------------------------------------------------------- settings

    def settings(self) -> dict[str, Any]:
        """The switches as a dict."""
        with self.lock:
            return {
                "latency": self.latency,
                "page_size_cap": self.page_size_cap,
                "not_found_past_end": self.not_found_past_end,
                "create_paths": self.create_paths,
                "docs_mode": self.docs_mode,
                "spaces_need_jwt": self.spaces_need_jwt,
                "default_timeline": [list(e) for e in self.default_timeline],
            }

    def update_settings(self, **values: Any) -> dict[str, Any]:
        """Change switches (validated): latency, page_size_cap, not_found_past_end, create_paths, ..."""
        with self.lock:
            for key, value in values.items():
                if key == "latency":
                    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                        raise ValueError(f"latency must be a number of seconds >= 0, got {value!r}")
                    self.latency = float(value)
                elif key == "page_size_cap":
                    if value is not None and (
                        isinstance(value, bool) or not isinstance(value, int) or value < 1
                    ):
                        raise ValueError(f"page_size_cap must be an integer >= 1 or None, got {value!r}")
                    self.page_size_cap = value
                elif key in ("not_found_past_end", "docs_mode", "spaces_need_jwt"):
                    if not isinstance(value, bool):
                        raise ValueError(f"{key} must be true or false, got {value!r}")
                    setattr(self, key, value)
                elif key == "create_paths":
                    if value not in CREATE_PATH_MODES:
                        raise ValueError(f"create_paths must be one of {CREATE_PATH_MODES}, got {value!r}")
                    self.create_paths = value
                elif key == "default_timeline":
                    self.default_timeline = normalize_timeline(value)
                else:
                    raise ValueError(f"unknown setting {key!r}")
            return self.settings()

    def summary(self) -> dict[str, Any]:
        """A JSON-able overview (``GET /_sim/state``)."""
        with self.lock:
            return {
                "seed": self.seed,
                "now": self.now(),
                "create_count": self.create_count,
                "organizations": [org.handle for org in self.orgs.values()],
                "spaces": [
                    {
                        "token": s.token,
                        "name": s.name,
                        "org_handle": s.org.handle,
                        "tasks": s.task_count(),
                        "runs": len(s.runs),
                        "agents": s.agent_handles(),
                    }
                    for s in self.spaces.values()
                ],
                "settings": self.settings(),
                "faults": self.fault_list(),
            }


def _validation_error(errors: Any) -> tuple[int, dict[str, Any]]:
    return 206, {
        "status_code": 206,
        "message": VALIDATION_MESSAGE,
        "data": {"errors": errors},
        "errors": errors,
    }


_SPACE_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
SCHEDULE_TYPES = ("now", "auto", "custom")


def _summary_status(task: Mapping[str, Any]) -> Any:
    """``output.post_call_data.summary.status`` of a task (what the server's ``status`` filters)."""
    value: Any = task
    for key in ("output", "post_call_data", "summary", "status"):
        value = value.get(key) if isinstance(value, Mapping) else None
    return value


def _custom_time(schedule: Mapping[str, Any]) -> datetime | None:
    """The UTC time of a custom schedule, or None when it is not a date and a time."""
    day, clock = schedule.get("calling_date"), schedule.get("calling_time")
    if not isinstance(day, str) or not isinstance(clock, str):
        return None
    try:
        when = datetime.fromisoformat(f"{day.strip()}T{clock.strip()}")
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=timezone.utc)


def _check_create_body(body: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The simulator's own check of a create body (not the client's): ``(cleaned, field errors)``.

    Stricter than the real server in one way, on purpose: a contact needs a contact_number or
    an email (the real server would make a task that cannot call anyone).
    """
    problems: dict[str, list[str]] = {}
    pilot, context, documents = body.get("pilot"), body.get("context"), body.get("documents")
    if not isinstance(pilot, str) or any(ord(ch) < 32 for ch in pilot):
        problems["pilot"] = ["Not a valid string."]
    if not isinstance(context, str):
        problems["context"] = ["Not a valid string."]
    cleaned_documents: list[dict[str, Any]] = []
    if not isinstance(documents, list):
        problems["documents"] = [f'Expected a list of items but got type "{type(documents).__name__}".']
    else:
        for index, document in enumerate(documents):
            if not isinstance(document, Mapping):
                problems.setdefault("documents", []).append(f"Item {index}: expected a dictionary of items.")
                continue
            number, email = document.get("contact_number"), document.get("email")
            has_number = (
                isinstance(number, (str, int)) and not isinstance(number, bool) and str(number).strip()
            )
            if not has_number and not (isinstance(email, str) and "@" in email):
                problems.setdefault("documents", []).append(
                    f"Item {index}: a contact needs a contact_number or an email."
                )
                continue
            cleaned_documents.append(dict(document))
    schedule = body.get("schedule")
    if schedule is None:
        schedule = {"type": "now"}
    elif isinstance(schedule, str):
        schedule = {"type": schedule}
    if not isinstance(schedule, Mapping) or schedule.get("type") not in SCHEDULE_TYPES:
        problems["schedule"] = [f"type must be one of {', '.join(SCHEDULE_TYPES)}."]
    elif schedule["type"] == "custom" and _custom_time(schedule) is None:
        problems["schedule"] = ["calling_date (YYYY-MM-DD) and calling_time (HH:MM) are required."]
    filters = body.get("filters")
    if filters is not None and not isinstance(filters, Mapping):
        problems["filters"] = ["Expected a dictionary of items."]
    cleaned = {
        "pilot": pilot.strip() if isinstance(pilot, str) else pilot,
        "context": context,
        "documents": cleaned_documents,
        "schedule": dict(schedule) if isinstance(schedule, Mapping) else schedule,
    }
    return cleaned, problems


def _creation_failed(message: str) -> tuple[int, dict[str, Any]]:
    """The real server's 400 for a create its task service refuses."""
    errors = {"detail": message}
    return 400, {
        "status_code": 400,
        "message": "Task Creation Failed",
        "data": {"errors": errors},
        "errors": errors,
    }


def _custom_schedule_in_past(schedule: Any, now: datetime) -> bool:
    """Whether ``schedule`` is a custom date and time that is not in the future."""
    if not isinstance(schedule, Mapping) or schedule.get("type") != "custom":
        return False
    when = _custom_time(schedule)
    return when is not None and when <= now
