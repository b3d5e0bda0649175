"""P3: waiting costs nothing. Many deferred run waits served by one asyncio loop, like the triggerer.

One child process runs ``RunCompletedTrigger.run()`` for every wait as a task of one event loop
(what the triggerer does) against the simulator in another process, with a 1 s poll interval.
While every run is still ``running`` it measures, over a fixed window: the child's peak RSS, its
CPU seconds per minute, and the requests the simulator received per wait per look. Then every
run is completed and each trigger must yield exactly one ``success`` event with its own run.
Requests per wait per interval are the simulator's runs-list requests per look (each wait looks
once per poll interval), counted over the whole life of the waits.

Scenarios: 1,000 waits over 1,000 spaces and 1,000 waits sharing 10 spaces, each with the
triggers sharing a client and a per-space runs lookup (the default), and the same with
``RunCompletedTrigger.share_requests = False`` (each trigger its own client and requests, the
behaviour before sharing) as the baseline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import (
    BenchmarkError,
    SimulatorProcess,
    child_main,
    cpu_seconds,
    current_rss_mb,
    peak_rss_mb,
    run_child,
    simulator,
)

MODULE = "benchmarks.p3_waits"
RUNS_SUFFIX = "/runs/"


def make_waits(sim: SimulatorProcess, n_waits: int, n_spaces: int) -> list[tuple[str, str]]:
    """``n_waits`` running runs spread evenly over ``n_spaces`` new spaces: ``[(space, run_id)]``."""
    if n_spaces < 1 or n_waits < n_spaces:
        raise ValueError("need 1 <= n_spaces <= n_waits")
    spaces = [sim.client.add_space(n_tasks=0) for _ in range(n_spaces)]
    return [
        (spaces[i % n_spaces], sim.client.add_run(spaces[i % n_spaces], n_tasks=1, timeline=[["running", 0]]))
        for i in range(n_waits)
    ]


def scenario(
    sim: SimulatorProcess,
    workdir: Path,
    *,
    n_waits: int,
    n_spaces: int,
    share: bool,
    poll_interval: float,
    warmup: float,
    window: float,
) -> dict[str, Any]:
    """Measure one scenario in a fresh child process; checks one success event per wait."""
    waits = make_waits(sim, n_waits, n_spaces)
    payload = {
        "sim_url": sim.base_url,
        "waits": waits,
        "share": share,
        "poll_interval": poll_interval,
        "warmup": warmup,
        "window": window,
    }
    result = run_child(
        MODULE,
        payload,
        workdir=workdir,
        env={"AIRFLOW_CONN_UNPOD_DEFAULT": sim.connection_json()},
        timeout=300 + 2 * (warmup + window),
    )
    if result["events_ok"] != n_waits:
        raise BenchmarkError(f"P3: {result['events_ok']} of {n_waits} waits ended with one success event")
    result.update({"n_waits": n_waits, "n_spaces": n_spaces, "share": share})
    return result


# --------------------------------------------------------------------------------------------
# The child: one event loop driving every trigger
# --------------------------------------------------------------------------------------------


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Run in the child process (see ``scenario``)."""
    return asyncio.run(_measure(payload))


async def _measure(payload: dict[str, Any]) -> dict[str, Any]:
    import unpod_provider.triggers.unpod as triggers
    from unpod_provider.testing import SimulatorClient

    control = SimulatorClient(payload["sim_url"], timeout=120.0)
    waits: list[tuple[str, str]] = [(str(s), str(r)) for s, r in payload["waits"]]
    poll_interval = float(payload["poll_interval"])
    triggers.RunCompletedTrigger.share_requests = bool(payload["share"])

    looks = 0
    real_check = triggers.check_run

    def counting_check(*args: Any, **kwargs: Any) -> triggers.RunCheck:
        nonlocal looks
        looks += 1  # check_run is called exactly once per completed look
        return real_check(*args, **kwargs)

    triggers.check_run = counting_check  # type: ignore[assignment]

    events: list[list[dict[str, Any]]] = [[] for _ in waits]

    async def drive(index: int, trigger: triggers.RunCompletedTrigger) -> None:
        """What the triggerer does with a trigger: iterate ``run()`` and keep the events."""
        async for event in trigger.run():
            events[index].append(event.payload)

    def runs_requests() -> int:
        return sum(1 for r in control.requests() if str(r.get("path", "")).endswith(RUNS_SUFFIX))

    await asyncio.to_thread(control.reset_requests)
    rss_before = current_rss_mb()
    end_time = time.time() + 3600
    tasks = [
        asyncio.create_task(
            drive(
                i,
                triggers.RunCompletedTrigger(
                    space_token=space, run_id=run_id, poll_interval=poll_interval, end_time=end_time
                ),
            )
        )
        for i, (space, run_id) in enumerate(waits)
    ]
    await asyncio.sleep(float(payload["warmup"]))
    requests_0 = await asyncio.to_thread(runs_requests)
    looks_0, cpu_0, t_0 = looks, cpu_seconds(), time.monotonic()
    await asyncio.sleep(float(payload["window"]))
    looks_1, cpu_1, t_1 = looks, cpu_seconds(), time.monotonic()
    requests_1 = await asyncio.to_thread(runs_requests)
    rss_waiting = current_rss_mb()

    def finish_all() -> None:
        for _, run_id in waits:
            control.set_run_status(run_id, "completed")

    await asyncio.to_thread(finish_all)
    done, pending = await asyncio.wait(tasks, timeout=120 + 10 * poll_interval)
    for task in pending:
        task.cancel()
    for task in done:
        if task.exception() is not None:
            raise BenchmarkError(f"a trigger raised: {task.exception()!r}")
    requests_total = await asyncio.to_thread(runs_requests)
    events_ok = sum(
        1
        for (_, run_id), got in zip(waits, events, strict=True)
        if len(got) == 1 and got[0]["status"] == "success" and got[0]["run"]["run_id"] == run_id
    )
    elapsed = t_1 - t_0
    window_looks = looks_1 - looks_0
    window_requests = requests_1 - requests_0
    n = len(waits)
    return {
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "rss_before_mb": round(rss_before, 1),
        "rss_waiting_mb": round(rss_waiting, 1),
        "cpu_s_per_min": round((cpu_1 - cpu_0) / elapsed * 60.0, 2),
        "window_s": round(elapsed, 2),
        "window_looks": window_looks,
        "window_requests": window_requests,
        "window_requests_per_look": round(window_requests / window_looks, 4) if window_looks else None,
        "cpu_ms_per_look": round((cpu_1 - cpu_0) / window_looks * 1000, 3) if window_looks else None,
        "mean_look_interval_s": round(n * elapsed / window_looks, 3) if window_looks else None,
        "looks_total": looks,
        "requests_total": requests_total,
        # Each wait looks once per poll interval, so requests per look = per wait per interval.
        # Counted over the whole life of the waits (exact; the window cuts looks in flight).
        "requests_per_wait_per_interval": round(requests_total / looks, 4) if looks else None,
        "events_ok": events_ok,
        "pending_after_finish": len(pending),
    }


def run(
    workdir: Path,
    *,
    n_waits: int = 1000,
    n_shared_spaces: int = 10,
    poll_interval: float = 1.0,
    warmup: float = 4.0,
    window: float = 10.0,
    baseline: bool = True,
) -> dict[str, Any]:
    """Every P3 scenario against one simulator; returns the figures for ``results.json``."""
    out: dict[str, Any] = {}
    common = {"poll_interval": poll_interval, "warmup": warmup, "window": window}
    with simulator(workdir) as sim:
        out["own_spaces"] = scenario(sim, workdir, n_waits=n_waits, n_spaces=n_waits, share=True, **common)
        out["shared_spaces"] = scenario(
            sim, workdir, n_waits=n_waits, n_spaces=n_shared_spaces, share=True, **common
        )
        if baseline:
            out["own_spaces_unshared"] = scenario(
                sim, workdir, n_waits=n_waits, n_spaces=n_waits, share=False, **common
            )
            out["shared_spaces_unshared"] = scenario(
                sim, workdir, n_waits=n_waits, n_spaces=n_shared_spaces, share=False, **common
            )
        out["simulator_peak_rss_mb"] = sim.peak_rss_mb()
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return child_main(argv, measure)


if __name__ == "__main__":
    raise SystemExit(main())
