"""P1: fetch many pages fast. 10,000 tasks (100 pages of 100) with 50 ms of latency per request.

The simulator runs in its own process with ``--latency 0.05`` (an ``await asyncio.sleep`` in its
middleware, so concurrent requests overlap). One child process then reads every task of the
space with each client, in turns, ``repeats`` times, and keeps the best time of each:

- ``hook``: ``UnpodHook().iter_space_tasks()`` (pages 2..N concurrently, default 10 at once);
- ``hook_8``: the same with ``max_concurrency=8`` (the figure the default is chosen against);
- ``hook_sequential``: the same with ``max_concurrency=1``;
- ``requests_loop`` (the baseline): the loop a user writes by hand with ``requests``, one page
  after another, stopping once ``count`` tasks are held (so it sends no extra request either);
- ``http_operator`` (when ``apache-airflow-providers-http`` can be set up for the benchmark):
  ``HttpOperator`` with a ``pagination_function``.

Every client must return the identical list (same tasks, same API order) and send exactly one
request per page, counted from the simulator's request log. For scale, the concurrent hook also
runs once with no latency: the simulator's CPU per page is then the bound, so baseline / that
time is the best ratio any client could show on this machine (``speedup_ceiling``).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import BenchmarkError, child_main, ratio, run_child, simulator
from benchmarks._deps import http_provider_path

MODULE = "benchmarks.p1_pages"
PAGE_SIZE = 100
CLIENTS = ("hook", "hook_8", "hook_sequential", "requests_loop", "http_operator")


def digest(tasks: Sequence[dict[str, Any]]) -> str:
    """A fingerprint of the list: same tasks, same order, same content."""
    h = hashlib.sha256()
    for task in tasks:
        h.update(json.dumps(task, sort_keys=True, ensure_ascii=False).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


# --------------------------------------------------------------------------------------------
# The clients (run in the child)
# --------------------------------------------------------------------------------------------


def fetch_with_hook(space: str, max_concurrency: int | None) -> list[dict[str, Any]]:
    from unpod_provider.hooks.unpod import UnpodHook

    with UnpodHook() if max_concurrency is None else UnpodHook(max_concurrency=max_concurrency) as hook:
        return list(hook.iter_space_tasks(space, page_size=PAGE_SIZE))


def connection() -> tuple[str, dict[str, str]]:
    """Base URL and request headers from ``AIRFLOW_CONN_UNPOD_DEFAULT``, as a user would set them."""
    import os

    conn = json.loads(os.environ["AIRFLOW_CONN_UNPOD_DEFAULT"])
    headers = {
        "Authorization": f"Token {conn['password']}",
        "Org-Handle": conn["extra"]["org_handle"],
        "Accept": "application/json",
    }
    return str(conn["host"]).rstrip("/"), headers


def fetch_with_requests_loop(space: str) -> list[dict[str, Any]]:
    """The baseline: the plain sequential loop a user writes with ``requests``."""
    import requests

    base_url, headers = connection()
    url = f"{base_url}/api/v2/platform/spaces/{space}/tasks/"
    tasks: list[dict[str, Any]] = []
    with requests.Session() as session:
        session.headers.update(headers)
        page = 1
        while True:
            response = session.get(url, params={"page": page, "page_size": PAGE_SIZE}, timeout=30)
            response.raise_for_status()
            body = response.json()
            tasks.extend(body["data"])
            if len(body["data"]) < PAGE_SIZE or len(tasks) >= body["count"]:
                return tasks
            page += 1


def fetch_with_http_operator(space: str) -> list[dict[str, Any]]:
    """``HttpOperator`` with a ``pagination_function`` (one request per page, sequential)."""
    import os
    from urllib.parse import parse_qs, urlsplit

    from airflow.providers.http.operators.http import HttpOperator

    base_url, headers = connection()
    os.environ["AIRFLOW_CONN_UNPOD_HTTP"] = base_url

    def next_page(response: Any) -> dict[str, Any] | None:
        body = response.json()
        page = int(parse_qs(urlsplit(response.request.url).query)["page"][0])
        if len(body["data"]) < PAGE_SIZE or page * PAGE_SIZE >= body["count"]:
            return None
        return {"data": {"page": page + 1, "page_size": PAGE_SIZE}}

    def all_tasks(responses: Any) -> list[dict[str, Any]]:
        return [task for response in responses for task in response.json()["data"]]

    operator = HttpOperator(
        task_id="export_tasks",
        http_conn_id="unpod_http",
        endpoint=f"api/v2/platform/spaces/{space}/tasks/",
        method="GET",
        data={"page": 1, "page_size": PAGE_SIZE},
        headers=headers,
        pagination_function=next_page,
        response_filter=all_tasks,
    )
    result: list[dict[str, Any]] = operator.execute(context={})  # type: ignore[arg-type]
    return result


def warm_up(space: str, *, http_operator: bool) -> None:
    """Imports, the connection lookup, the first TCP connection and the simulator's first
    rendering of the space's tasks (its own cost, which a real server does not have), outside
    the timed runs, so no client's first turn pays for them."""
    import requests

    from unpod_provider.hooks.unpod import UnpodHook

    with UnpodHook() as hook:
        hook.get_space(space)
        for _ in hook.iter_space_tasks(space, page_size=PAGE_SIZE):
            pass
    base_url, headers = connection()
    requests.get(
        f"{base_url}/api/v2/platform/spaces/{space}/", headers=headers, timeout=30
    ).raise_for_status()
    if http_operator:
        import airflow.providers.http.operators.http  # noqa: F401


def measure(payload: dict[str, Any]) -> dict[str, Any]:
    """Run in the child: every client ``repeats`` times, interleaved; best time of each."""
    from unpod_provider.testing import SimulatorClient

    control = SimulatorClient(payload["sim_url"], timeout=120.0)
    space = str(payload["space"])
    clients: dict[str, Callable[[], list[dict[str, Any]]]] = {
        "hook": lambda: fetch_with_hook(space, None),
        "hook_8": lambda: fetch_with_hook(space, 8),
        "hook_sequential": lambda: fetch_with_hook(space, 1),
        "requests_loop": lambda: fetch_with_requests_loop(space),
    }
    if payload.get("http_operator"):
        clients["http_operator"] = lambda: fetch_with_http_operator(space)
    warm_up(space, http_operator="http_operator" in clients)
    times: dict[str, list[float]] = {name: [] for name in clients}
    digests: dict[str, set[str]] = {name: set() for name in clients}
    counts: dict[str, set[int]] = {name: set() for name in clients}
    pages: dict[str, list[list[int]]] = {name: [] for name in clients}
    for _ in range(int(payload["repeats"])):
        for name, fetch in clients.items():
            control.reset_requests()
            started = time.perf_counter()
            tasks = fetch()
            times[name].append(time.perf_counter() - started)
            log = control.requests()
            pages[name].append(
                sorted(
                    int(r["query"].get("page", 0))
                    for r in log
                    if str(r["path"]).endswith(f"/spaces/{space}/tasks/")
                )
            )
            digests[name].add(digest(tasks))
            counts[name].add(len(tasks))
    # The floor: the concurrent hook with no injected latency, bounded by the simulator's CPU.
    control.settings(latency=0.0)
    floor = []
    for _ in range(int(payload["repeats"])):
        started = time.perf_counter()
        fetch_with_hook(space, None)
        floor.append(time.perf_counter() - started)
    control.settings(latency=float(payload["latency"]))
    clients_out: dict[str, Any] = {
        name: {
            "best_s": round(min(times[name]), 4),
            "times_s": [round(t, 4) for t in times[name]],
            "tasks": sorted(counts[name]),
            "digests": sorted(digests[name]),
            "pages_requested": pages[name],
        }
        for name in clients
    }
    from unpod_provider.hooks._pages import DEFAULT_MAX_CONCURRENCY

    return {
        "clients": clients_out,
        "hook_no_latency_s": round(min(floor), 4),
        "default_max_concurrency": DEFAULT_MAX_CONCURRENCY,
    }


# --------------------------------------------------------------------------------------------
# The parent
# --------------------------------------------------------------------------------------------


def run(
    workdir: Path,
    *,
    n_tasks: int = 10_000,
    latency: float = 0.05,
    repeats: int = 2,
    http_operator: bool = True,
) -> dict[str, Any]:
    """Set up the space, measure in a child, check identical results and one request per page."""
    extra_path = http_provider_path() if http_operator else None
    env: dict[str, str] = {}
    with simulator(workdir, latency=latency) as sim:
        space = sim.client.add_space(n_tasks=n_tasks)
        env["AIRFLOW_CONN_UNPOD_DEFAULT"] = sim.connection_json()
        if extra_path is not None:
            import os

            env["PYTHONPATH"] = os.pathsep.join(
                [str(Path(__file__).resolve().parent.parent), str(extra_path)]
            )
        payload = {
            "sim_url": sim.base_url,
            "latency": latency,
            "space": space,
            "repeats": repeats,
            "http_operator": extra_path is not None,
        }
        measured = run_child(MODULE, payload, workdir=workdir, env=env, timeout=900)
    clients: dict[str, Any] = measured["clients"]
    n_pages = -(-n_tasks // PAGE_SIZE)
    expected_pages = list(range(1, n_pages + 1))
    all_digests = {d for c in clients.values() for d in c["digests"]}
    if len(all_digests) != 1:
        raise BenchmarkError(f"P1: the clients returned different task lists: {all_digests}")
    for name, c in clients.items():
        if c["tasks"] != [n_tasks]:
            raise BenchmarkError(f"P1: {name} returned {c['tasks']} tasks, expected {n_tasks}")
        for got in c["pages_requested"]:
            if got != expected_pages:
                raise BenchmarkError(f"P1: {name} did not request each of the {n_pages} pages once: {got}")
    baseline = clients["requests_loop"]["best_s"]
    out: dict[str, Any] = {
        "n_tasks": n_tasks,
        "pages": n_pages,
        "latency_s": latency,
        "repeats": repeats,
        "identical_results": True,
        "one_request_per_page": True,
        "requests_per_client_run": n_pages,
        "clients": {
            name: {k: v for k, v in c.items() if k != "pages_requested"} for name, c in clients.items()
        },
        "speedup": ratio(baseline, clients["hook"]["best_s"]),
        # Without latency the simulator's own CPU per page bounds any client: the best possible.
        "hook_no_latency_s": measured["hook_no_latency_s"],
        "speedup_ceiling": ratio(baseline, measured["hook_no_latency_s"]),
        "speedup_sequential_hook": ratio(baseline, clients["hook_sequential"]["best_s"]),
        "speedup_hook_8": ratio(baseline, clients["hook_8"]["best_s"]),
        "default_max_concurrency": measured["default_max_concurrency"],
    }
    if "http_operator" in clients:
        out["speedup_vs_http_operator"] = ratio(clients["http_operator"]["best_s"], clients["hook"]["best_s"])
    else:
        out["http_operator"] = "not measured (apache-airflow-providers-http could not be set up)"
    return out


def main(argv: Sequence[str] | None = None) -> int:
    return child_main(argv, measure)


if __name__ == "__main__":
    raise SystemExit(main())
