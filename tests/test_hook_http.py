"""UnpodHook over real HTTP against the local Unpod simulator (FastAPI + uvicorn on 127.0.0.1).

The simulator's request log says what really went over the wire; its fault injection produces
the failures (429, HTML 5xx, cut bodies, dropped connections, slow answers, redirects). Retry
waits are recorded instead of slept (``tenacity.nap.time`` is replaced), so nothing here depends
on the wall clock except the read-timeout tests, which use sub-second timeouts.
"""

from __future__ import annotations

import http.server
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

from unpod_provider import __version__, protocol
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodConfigError,
    UnpodConnectionError,
    UnpodCreateRunUncertainError,
    UnpodError,
    UnpodIncompleteResponseError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRateLimitError,
    UnpodServerError,
    UnpodTimeoutError,
)
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.testing import (
    DEMO_AGENT_HANDLE,
    DEMO_SPACE_RUNS,
    DEMO_SPACE_TASKS,
    DEMO_SPACE_TOKEN,
    SIM_ORG_HANDLE,
    SIM_OTHER_ORG_HANDLE,
    SIM_TOKEN,
    UnpodSimulator,
)

PREFIX = protocol.API_PREFIX.rstrip("/")  # paths in these tests start with "/"
CONTACTS = [
    {"name": "Rajesh Kumar", "contact_number": "+919988776655", "document_id": "lead-1"},
    {"name": "Anita Rao", "email": "anita@example.com", "document_id": "lead-2"},
]
#: A recognisable token for the secrets test (the simulator accepts whatever it is given).
SECRET_TOKEN = "SeCrEtHtTp0123456789abcdef0123456789abcd"


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    """The session simulator, reset, with ``AIRFLOW_CONN_UNPOD_DEFAULT`` pointing at it."""
    return unpod_simulator_shared


@pytest.fixture
def sleeps(mocker: Any) -> list[float]:
    """Waits tenacity asked for between attempts; none really happen."""
    recorded: list[float] = []
    fake_time = mocker.patch("tenacity.nap.time")
    fake_time.sleep.side_effect = recorded.append
    return recorded


@pytest.fixture
def make_hook(sim: UnpodSimulator, sleeps: list[float]) -> Iterator[Callable[..., UnpodHook]]:
    hooks: list[UnpodHook] = []

    def factory(conn_id: str = "unpod_default", **kwargs: Any) -> UnpodHook:
        kwargs.setdefault("retry_delay", 0.01)
        kwargs.setdefault("retry_limit", 3)
        hook = UnpodHook(conn_id, **kwargs)
        hook._log = logging.getLogger("tests.unpod.http")  # type: ignore[assignment]
        hooks.append(hook)
        return hook

    yield factory
    for hook in hooks:
        hook.close()


@pytest.fixture
def hook(make_hook: Callable[..., UnpodHook]) -> UnpodHook:
    return make_hook()


def set_conn(
    monkeypatch: pytest.MonkeyPatch, sim: UnpodSimulator, conn_id: str = "unpod_default", **kw: Any
) -> None:
    conn = sim.connection_dict()
    extra = kw.pop("extra", {})
    conn.update(kw)
    conn["extra"] = {**conn["extra"], **extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


def unpod_requests(sim: UnpodSimulator) -> list[dict[str, Any]]:
    return [r for r in sim.requests if r["path"].startswith(PREFIX)]


def pages(sim: UnpodSimulator, path: str) -> list[int]:
    """The page numbers requested for ``path``, sorted: pages are fetched concurrently, so the
    order of requests varies, but each page must be asked for exactly as often as listed."""
    return sorted(int(r["query"]["page"]) for r in unpod_requests(sim) if r["path"] == PREFIX + path)


def ids(items: list[dict[str, Any]], key: str = "task_id") -> list[str]:
    return [item[key] for item in items]


# --------------------------------------------------------------------------------------------
# Every hook method
# --------------------------------------------------------------------------------------------


def test_list_organizations(sim: UnpodSimulator, hook: UnpodHook) -> None:
    orgs = hook.list_organizations()
    assert {o["domain_handle"] for o in orgs} == {SIM_ORG_HANDLE, SIM_OTHER_ORG_HANDLE}
    (request,) = unpod_requests(sim)
    assert (request["method"], request["path"], request["query"]) == ("GET", f"{PREFIX}/organizations/", {})


def test_list_spaces_and_get_space(sim: UnpodSimulator, hook: UnpodHook) -> None:
    spaces = hook.list_spaces()
    assert sorted(ids(spaces, "token")) == sorted(sim.space_tokens(SIM_ORG_HANDLE))
    assert DEMO_SPACE_TOKEN in ids(spaces, "token")
    space = hook.get_space(DEMO_SPACE_TOKEN)
    assert space["token"] == DEMO_SPACE_TOKEN
    assert DEMO_AGENT_HANDLE in [a["handle"] for a in space["agents"]]
    assert [r["path"] for r in unpod_requests(sim)] == [
        f"{PREFIX}/spaces/",
        f"{PREFIX}/spaces/{DEMO_SPACE_TOKEN}/",
    ]


def test_list_and_iter_space_tasks(sim: UnpodSimulator, hook: UnpodHook) -> None:
    expected = sim.space_tasks(DEMO_SPACE_TOKEN)
    assert len(expected) == DEMO_SPACE_TASKS
    assert ids(hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)) == ids(expected)
    iterator = hook.iter_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
    first = next(iterator)
    assert first["task_id"] == expected[0]["task_id"]
    assert pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/tasks/") == [1, 1, 2, 3]  # the lazy read: page 1 only
    assert ids([first, *iterator]) == ids(expected)


def test_list_and_iter_space_runs(sim: UnpodSimulator, hook: UnpodHook) -> None:
    expected = sim.space_runs(DEMO_SPACE_TOKEN)
    assert len(expected) == DEMO_SPACE_RUNS
    assert ids(hook.list_space_runs(DEMO_SPACE_TOKEN, page_size=10), "run_id") == ids(expected, "run_id")
    assert ids(list(hook.iter_space_runs(DEMO_SPACE_TOKEN, page_size=10)), "run_id") == ids(
        expected, "run_id"
    )
    assert pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/runs/") == [1, 1, 2, 2, 3, 3]


def test_get_run_found_on_the_third_page(sim: UnpodSimulator, hook: UnpodHook) -> None:
    space = sim.add_space(n_tasks=60, n_runs=60)
    runs = sim.space_runs(space)
    wanted = runs[45]["run_id"]
    run = hook.get_run(space, wanted, page_size=20)
    assert run["run_id"] == wanted
    assert run["status"] == runs[45]["status"]
    assert pages(sim, f"/spaces/{space}/runs/") == [1, 2, 3]


def test_get_run_not_found_names_the_run(sim: UnpodSimulator, hook: UnpodHook) -> None:
    missing = "R" + "0" * 32
    with pytest.raises(UnpodNotFoundError) as info:
        hook.get_run(DEMO_SPACE_TOKEN, missing, page_size=10)
    assert missing in str(info.value)
    assert info.value.identifier == missing
    assert pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/runs/") == [1, 2, 3]


def test_list_and_iter_run_tasks(sim: UnpodSimulator, hook: UnpodHook) -> None:
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=45, final_status="completed")
    expected = sim.run_tasks(run_id)
    got = hook.list_run_tasks(DEMO_SPACE_TOKEN, run_id, page_size=20)
    assert ids(got) == ids(expected)
    assert len(got) == 45
    assert all(t["run_id"] == run_id and t["output"] for t in got)
    assert ids(list(hook.iter_run_tasks(DEMO_SPACE_TOKEN, run_id, page_size=20))) == ids(expected)
    assert pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/runs/{run_id}/tasks/") == [1, 1, 2, 2, 3, 3]


def test_run_tasks_of_an_unknown_run_is_empty(sim: UnpodSimulator, hook: UnpodHook) -> None:
    unknown = "R" + "f" * 32
    assert hook.list_run_tasks(DEMO_SPACE_TOKEN, unknown) == []
    assert list(hook.iter_run_tasks(DEMO_SPACE_TOKEN, unknown)) == []
    assert [r["status"] for r in unpod_requests(sim)] == [200, 200]


@pytest.mark.parametrize("status", ["completed", ["failed", "cancelled"]])
def test_status_filter_is_applied_on_the_client(sim: UnpodSimulator, hook: UnpodHook, status: Any) -> None:
    wanted = {status} if isinstance(status, str) else set(status)
    all_runs = sim.space_runs(DEMO_SPACE_TOKEN)
    all_tasks = sim.space_tasks(DEMO_SPACE_TOKEN)
    runs = hook.list_space_runs(DEMO_SPACE_TOKEN, page_size=10, status=status)
    tasks = hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=30, status=status)
    assert ids(runs, "run_id") == [r["run_id"] for r in all_runs if r["status"] in wanted]
    assert ids(tasks) == [t["task_id"] for t in all_tasks if t["status"] in wanted]
    assert 0 < len(runs) < len(all_runs)
    assert 0 < len(tasks) < len(all_tasks)
    run_id = runs[0]["run_id"]
    run_tasks = hook.list_run_tasks(DEMO_SPACE_TOKEN, run_id, status=status)
    assert all(t["status"] in wanted for t in run_tasks)
    for request in unpod_requests(sim):
        assert set(request["query"]) == {"page", "page_size"}


def test_create_run_on_the_documented_path(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.create_paths = "both"  # a server that has the documented path (the real one does not)
    result = hook.create_run(
        DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="Renewal offer", documents=CONTACTS
    )
    assert result["run_id"].startswith("R")
    assert len(result["task_ids"]) == 2
    assert set(result["status"]) == set(result["task_ids"])
    (request,) = unpod_requests(sim)
    assert (request["method"], request["path"]) == (
        "POST",
        f"{PREFIX}/spaces/{DEMO_SPACE_TOKEN}/tasks/create/",
    )
    assert request["body"]["pilot"] == DEMO_AGENT_HANDLE
    assert request["body"]["schedule"] == {"type": "now"}
    assert sim.create_count == 1
    assert sim.space_runs(DEMO_SPACE_TOKEN)[0]["run_id"] == result["run_id"]


def test_create_run_with_the_docs_string_status(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.docs_mode = True
    result = hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert isinstance(result["status"], str)


def test_create_run_falls_back_to_the_server_path_on_404(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.create_paths = "server"
    result = hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert [(r["path"], r["status"]) for r in unpod_requests(sim)] == [
        (f"{PREFIX}/spaces/{DEMO_SPACE_TOKEN}/tasks/create/", 404),
        (f"{PREFIX}/spaces/{DEMO_SPACE_TOKEN}/tasks/", 200),
    ]
    assert sim.create_count == 1
    assert result["run_id"] == sim.space_runs(DEMO_SPACE_TOKEN)[0]["run_id"]


@pytest.mark.parametrize(
    ("kind", "params"),
    [
        ("server_error", {"status": 500, "body": "html"}),
        ("server_error", {"status": 502, "body": "empty"}),
        ("disconnect", {}),
        ("drop_connection", {}),
    ],
)
def test_create_run_is_not_retried_after_a_5xx_or_a_lost_answer(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float], kind: str, params: dict[str, Any]
) -> None:
    sim.inject(kind, path="/tasks/create/", method="POST", times=None, **params)
    with pytest.raises(UnpodCreateRunUncertainError, match="may or may not exist"):
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert len(unpod_requests(sim)) == 1
    assert sleeps == []


def test_create_run_is_not_retried_after_a_read_timeout(sim: UnpodSimulator, make_hook: Any) -> None:
    hook = make_hook(timeout=0.2)
    sim.inject("slow", path="/tasks/create/", method="POST", seconds=1.5)
    with pytest.raises(UnpodCreateRunUncertainError, match="read timeout"):
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert len(unpod_requests(sim)) == 1


def test_create_run_validation_206_names_the_field(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.inject(
        "business_error",
        path="/tasks/create/",
        message="There is some Validation error",
        errors={"context": ["This field is required."]},
    )
    with pytest.raises(UnpodBusinessError) as info:
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert "context: This field is required." in str(info.value)
    assert len(unpod_requests(sim)) == 1


def test_create_run_with_an_unknown_pilot_is_refused_by_the_server(
    sim: UnpodSimulator, hook: UnpodHook
) -> None:
    sim.create_paths = "both"
    with pytest.raises(UnpodBusinessError, match="pilot: Agent 'nobody' is not an agent"):
        hook.create_run(DEMO_SPACE_TOKEN, pilot="nobody", context="c", documents=CONTACTS)
    assert sim.create_count == 0
    assert len(unpod_requests(sim)) == 1


def test_test_connection_success(sim: UnpodSimulator) -> None:
    n_spaces = len(sim.space_tokens(SIM_ORG_HANDLE))
    assert UnpodHook().test_connection() == (True, f"Connected to org 'acme' ({n_spaces} spaces)")


def test_test_connection_wrong_org_handle(sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, sim, extra={"org_handle": "initech"})
    ok, message = UnpodHook().test_connection()
    assert ok is False
    assert "org handle 'initech' is not one of its organizations" in message
    assert "'acme'" in message


def test_test_connection_bad_token(sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, sim, password="0" * 40)
    ok, message = UnpodHook().test_connection()
    assert ok is False
    assert "HTTP 401" in message and "Invalid token." in message
    assert len(unpod_requests(sim)) == 1


def test_test_connection_without_a_token(sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> None:
    set_conn(monkeypatch, sim, password="")
    ok, message = UnpodHook().test_connection()
    assert ok is False
    assert "API token missing" in message
    assert unpod_requests(sim) == []


# --------------------------------------------------------------------------------------------
# Every error class
# --------------------------------------------------------------------------------------------


def test_401_is_sent_once(sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, make_hook: Any) -> None:
    set_conn(monkeypatch, sim, password="f" * 40)
    with pytest.raises(UnpodAuthError, match="HTTP 401") as info:
        make_hook().list_spaces()
    assert info.value.server_message == "Invalid token."
    assert len(unpod_requests(sim)) == 1


def test_403_is_an_auth_error(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.inject(
        "http", path="/spaces/", status=403, body={"detail": "You do not have permission."}, times=None
    )
    with pytest.raises(UnpodAuthError, match="HTTP 403"):
        hook.list_spaces()
    assert len(unpod_requests(sim)) == 1


def test_404_space_names_the_token(sim: UnpodSimulator, hook: UnpodHook) -> None:
    missing = "NOSUCHSPACE0000000000000"
    with pytest.raises(UnpodNotFoundError, match="Space not found") as info:
        hook.get_space(missing)
    assert missing in str(info.value)
    assert (info.value.resource, info.value.identifier) == ("space", missing)
    assert len(unpod_requests(sim)) == 1


def test_space_of_another_org_is_not_found(sim: UnpodSimulator, hook: UnpodHook) -> None:
    other = sim.space_tokens(SIM_OTHER_ORG_HANDLE)[0]
    with pytest.raises(UnpodNotFoundError, match=other):
        hook.get_space(other)


def test_400_missing_org(sim: UnpodSimulator, hook: UnpodHook) -> None:
    body = {"status_code": 400, "message": "Organization handle is required in Org-Handle header", "data": {}}
    sim.inject("http", path="/spaces/", status=400, body=body, times=None)
    with pytest.raises(UnpodBadRequestError, match="Organization handle is required"):
        hook.list_spaces()
    assert len(unpod_requests(sim)) == 1


def test_206_invalid_space_is_not_retried(sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]) -> None:
    with pytest.raises(UnpodBusinessError, match="Invalid Space Token"):
        hook.list_space_runs("NOSUCHSPACE0000000000000")
    with pytest.raises(UnpodBusinessError, match="Invalid Space Token"):
        hook.list_run_tasks("NOSUCHSPACE0000000000000", "R" + "1" * 32)
    assert [r["status"] for r in unpod_requests(sim)] == [206, 206]
    assert sleeps == []


def test_429_retry_after_seconds_is_honoured(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    sim.inject("rate_limit", path="/spaces/", retry_after=4)
    assert len(hook.list_spaces()) == len(sim.space_tokens(SIM_ORG_HANDLE))
    assert sleeps == [4.0]
    assert [r["status"] for r in unpod_requests(sim)] == [429, 200]


def test_429_retry_after_http_date_is_honoured(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    sim.inject("rate_limit", path="/spaces/", retry_after_date=30, body="html")
    hook.list_spaces()
    (wait,) = sleeps
    assert 25.0 < wait <= 30.0  # an HTTP date has one-second resolution


def test_429_exhausted_is_a_rate_limit_error(
    sim: UnpodSimulator, make_hook: Any, sleeps: list[float]
) -> None:
    hook = make_hook(retry_limit=4)
    sim.inject("rate_limit", path="/spaces/", retry_after=1, times=None)
    with pytest.raises(UnpodRateLimitError, match="HTTP 429") as info:
        hook.list_spaces()
    assert info.value.retry_after == 1.0
    assert len(unpod_requests(sim)) == 4
    assert sleeps == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("body", ["html", "json", "empty"])
def test_5xx_then_success_recovers(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float], body: str
) -> None:
    sim.inject("server_error", path=f"/spaces/{DEMO_SPACE_TOKEN}/runs/", status=503, body=body, times=2)
    assert len(hook.list_space_runs(DEMO_SPACE_TOKEN)) == DEMO_SPACE_RUNS
    assert [r["status"] for r in unpod_requests(sim)] == [503, 503, 200]
    assert len(sleeps) == 2


def test_html_502_ends_in_a_server_error(sim: UnpodSimulator, hook: UnpodHook) -> None:
    sim.inject("server_error", path="/spaces/", status=502, body="html", times=None)
    with pytest.raises(UnpodServerError, match="HTTP 502") as info:
        hook.list_spaces()
    assert "Bad Gateway" in str(info.value)
    assert not isinstance(info.value, json.JSONDecodeError)
    assert info.value.__cause__ is None
    assert len(unpod_requests(sim)) == 3


def test_empty_body_is_retried_then_recovers(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    sim.inject("empty_body", path="/spaces/")
    assert len(hook.list_spaces()) >= 1
    assert len(sleeps) == 1


def test_persistent_empty_body_ends_in_a_typed_error(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    sim.inject("empty_body", path="/spaces/", times=None)
    with pytest.raises(UnpodIncompleteResponseError, match="empty response body"):
        hook.list_spaces()
    assert len(sleeps) == hook.retry_policy.max_attempts - 1


def test_a_cut_body_is_retried_and_nothing_is_lost(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    """Fewer bytes than the Content-Length announced: cut off, retried."""
    sim.inject("drop_connection", path=f"/spaces/{DEMO_SPACE_TOKEN}/tasks/", query={"page": "2"})
    got = hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
    assert ids(got) == ids(sim.space_tasks(DEMO_SPACE_TOKEN))
    assert pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/tasks/") == [1, 2, 2, 3]


def test_a_whole_body_that_is_not_json_is_not_retried(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float]
) -> None:
    """JSON cut short but with a Content-Length that matches: whole, and not JSON: not retried."""
    sim.inject("truncated_json", path=f"/spaces/{DEMO_SPACE_TOKEN}/tasks/", query={"page": "2"}, times=None)
    with pytest.raises(UnpodProtocolError, match="is not valid JSON") as info:
        hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
    assert not isinstance(info.value, UnpodIncompleteResponseError)
    requested = pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/tasks/")
    assert requested.count(1) == 1 and requested.count(2) == 1


@pytest.mark.parametrize("kind", ["drop_connection", "disconnect"])
def test_dropped_connection_is_retried(
    sim: UnpodSimulator, hook: UnpodHook, sleeps: list[float], kind: str
) -> None:
    sim.inject(kind, path=f"/spaces/{DEMO_SPACE_TOKEN}/tasks/", query={"page": "2"})
    got = hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
    assert ids(got) == ids(sim.space_tasks(DEMO_SPACE_TOKEN))
    requested = pages(sim, f"/spaces/{DEMO_SPACE_TOKEN}/tasks/")
    # Page 2 cut once and asked again; page 3 may be asked again too if its pooled connection
    # was the one that broke (concurrent pages, any order); nothing past the end.
    assert sorted(set(requested)) == [1, 2, 3] and requested.count(2) == 2 and requested.count(1) == 1
    assert 1 <= len(sleeps) <= 2


@pytest.mark.parametrize("kind", ["drop_connection", "disconnect"])
def test_dropped_connection_exhausted_is_a_connection_error(
    sim: UnpodSimulator, hook: UnpodHook, kind: str
) -> None:
    sim.inject(kind, path="/spaces/", times=None)
    with pytest.raises(UnpodConnectionError) as info:
        hook.list_spaces()
    assert info.value.request_sent is True
    assert not isinstance(info.value.__cause__, requests.RequestException)
    assert len(unpod_requests(sim)) == 3


def test_undecodable_body_is_a_typed_retried_error(sim: UnpodSimulator, hook: UnpodHook) -> None:
    """A body that says gzip but is not: a typed error (after the retries), not urllib3's."""
    sim.inject(
        "http",
        path="/spaces/",
        status=200,
        body="not gzip at all",
        headers={"Content-Encoding": "gzip"},
        times=None,
    )
    with pytest.raises(UnpodConnectionError, match=r"could not be decoded.*not valid gzip") as info:
        hook.list_spaces()
    assert info.value.request_sent is True
    assert len(unpod_requests(sim)) == 3


async def test_undecodable_body_is_a_typed_error_in_the_async_hook(sim: UnpodSimulator) -> None:
    from unpod_provider.hooks.unpod import UnpodAsyncHook
    from unpod_provider.protocol import RetryPolicy

    sim.inject(
        "http", path="/runs/", body="not gzip", headers={"Content-Encoding": "gzip"}, status=200, times=None
    )
    async with UnpodAsyncHook(retry_policy=RetryPolicy(max_attempts=2, base_delay=0.001)) as hook:
        with pytest.raises(UnpodConnectionError, match=r"could not be decoded.*not valid gzip") as info:
            await hook.afind_run(DEMO_SPACE_TOKEN, "R" + "0" * 32)
    assert info.value.request_sent is True
    assert len(unpod_requests(sim)) == 2


def test_refused_connection_is_a_connection_error(
    monkeypatch: pytest.MonkeyPatch, sleeps: list[float]
) -> None:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    conn = {"conn_type": "unpod", "host": f"http://127.0.0.1:{port}", "password": SIM_TOKEN}
    conn["extra"] = {"org_handle": "acme"}  # type: ignore[assignment]
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_CLOSED", json.dumps(conn))
    hook = UnpodHook("unpod_closed", retry_limit=2, retry_delay=0.01)
    with pytest.raises(UnpodConnectionError, match="could not connect") as info:
        hook.list_spaces()
    assert info.value.request_sent is False
    assert len(sleeps) == 1


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_read_timeout_is_a_timeout_error(sim: UnpodSimulator, make_hook: Any, stage: str) -> None:
    hook = make_hook(timeout=0.2, retry_limit=2)
    sim.inject("slow", path="/spaces/", seconds=1.5, stage=stage, times=None)
    with pytest.raises(UnpodTimeoutError, match=r"read timeout of 0\.2s") as info:
        hook.list_spaces()
    assert info.value.request_sent is True
    assert len(unpod_requests(sim)) == 2


def test_slow_answer_within_the_timeout_succeeds(sim: UnpodSimulator, make_hook: Any) -> None:
    hook = make_hook(timeout=5)
    sim.inject("latency", path="/spaces/", seconds=0.05)
    assert hook.list_spaces()


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[dict[str, str]] = []

    def do_GET(self) -> None:
        type(self).seen.append(dict(self.headers))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        body = b'{"status_code": 200, "data": []}'
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def redirect_target() -> Iterator[tuple[str, list[dict[str, str]]]]:
    """Another server on loopback that records every request it gets (it should get none)."""
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_a_protocol_error_and_the_token_stays_home(
    sim: UnpodSimulator, hook: UnpodHook, redirect_target: tuple[str, list[dict[str, str]]], status: int
) -> None:
    target, seen = redirect_target
    location = f"{target}{PREFIX}/spaces/"
    sim.inject("http", path="/spaces/", status=status, headers={"Location": location}, times=None)
    with pytest.raises(UnpodProtocolError, match="redirect") as info:
        hook.list_spaces()
    assert location in str(info.value)
    assert len(unpod_requests(sim)) == 1
    assert seen == []
    # The target works: a client that follows redirects would have sent the token there.
    assert requests.get(location, timeout=5).status_code == 200
    assert len(seen) == 1


# --------------------------------------------------------------------------------------------
# Pagination
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("not_found_past_end", [False, True])
def test_140_tasks_in_pages_of_20(sim: UnpodSimulator, hook: UnpodHook, not_found_past_end: bool) -> None:
    sim.not_found_past_end = not_found_past_end
    space = sim.add_space(n_tasks=140)
    got = hook.list_space_tasks(space, page_size=20)
    assert ids(got) == ids(sim.space_tasks(space))
    assert len(set(ids(got))) == 140
    assert pages(sim, f"/spaces/{space}/tasks/") == [1, 2, 3, 4, 5, 6, 7]
    assert all(r["query"]["page_size"] == "20" for r in unpod_requests(sim))


def test_page_size_above_the_server_cap(
    sim: UnpodSimulator, hook: UnpodHook, caplog: pytest.LogCaptureFixture
) -> None:
    sim.page_size_cap = 100
    space = sim.add_space(n_tasks=140)
    with caplog.at_level(logging.WARNING, logger="tests.unpod.http"):
        got = hook.list_space_tasks(space, page_size=500)
    assert ids(got) == ids(sim.space_tasks(space))
    assert len(set(ids(got))) == 140
    assert pages(sim, f"/spaces/{space}/tasks/") == [1, 1, 2]  # page 1 asked again: a cap, not a lag
    assert "500 were asked for" in caplog.text


def test_items_appended_between_pages(
    sim: UnpodSimulator, hook: UnpodHook, caplog: pytest.LogCaptureFixture
) -> None:
    space = sim.add_space(n_tasks=140)
    original = ids(sim.space_tasks(space))
    sim.inject("append", path=f"/spaces/{space}/tasks/", query={"page": "3"}, n=5)
    with caplog.at_level(logging.WARNING, logger="tests.unpod.http"):
        got = ids(hook.list_space_tasks(space, page_size=20))
    assert len(got) == len(set(got))
    assert set(original) <= set(got)
    assert len(sim.space_tasks(space)) == 145
    assert "moved from 140 to 145" in caplog.text


def test_runs_appended_while_looking_for_a_run(sim: UnpodSimulator, hook: UnpodHook) -> None:
    space = sim.add_space(n_tasks=50, n_runs=50)
    runs = ids(sim.space_runs(space), "run_id")
    sim.inject("append", path=f"/spaces/{space}/runs/", query={"page": "2"}, n=7, items="runs")
    assert hook.get_run(space, runs[-1], page_size=10)["run_id"] == runs[-1]
    assert ids(hook.list_space_runs(space, page_size=10), "run_id")[-50:] == runs


@pytest.mark.parametrize("page_size", [0, -1, 1001])
def test_page_size_out_of_range_sends_nothing(sim: UnpodSimulator, hook: UnpodHook, page_size: int) -> None:
    with pytest.raises(ValueError, match="page_size"):
        hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=page_size)
    with pytest.raises(ValueError, match="page_size"):
        hook.iter_space_runs(DEMO_SPACE_TOKEN, page_size=page_size)
    with pytest.raises(ValueError, match="page_size"):
        hook.list_run_tasks(DEMO_SPACE_TOKEN, "R1", page_size=page_size)
    assert unpod_requests(sim) == []


# --------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad", ["../admin", "a/b", "%2F", "DEMO SPACE", "X\r\nX-Evil: 1", "\u00e9t\u00e9", "A" * 129, "..", "/"]
)
def test_bad_identifiers_never_reach_the_server(sim: UnpodSimulator, hook: UnpodHook, bad: str) -> None:
    with pytest.raises(ValueError, match="space_token"):
        hook.get_space(bad)
    with pytest.raises(ValueError, match="space_token"):
        hook.list_space_tasks(bad)
    with pytest.raises(ValueError, match="space_token"):
        hook.list_space_runs(bad)
    with pytest.raises(ValueError, match="run_id"):
        hook.get_run(DEMO_SPACE_TOKEN, bad)
    with pytest.raises(ValueError, match="run_id"):
        hook.list_run_tasks(DEMO_SPACE_TOKEN, bad)
    with pytest.raises(ValueError, match="space_token"):
        hook.create_run(bad, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)
    assert unpod_requests(sim) == []


# --------------------------------------------------------------------------------------------
# Headers, session, TLS and plain http
# --------------------------------------------------------------------------------------------


def test_headers_on_the_wire(sim: UnpodSimulator, hook: UnpodHook) -> None:
    hook.list_organizations()
    hook.list_space_runs(DEMO_SPACE_TOKEN)
    for request in unpod_requests(sim):
        headers = request["headers"]
        assert headers["authorization"] == "Token ***"  # the simulator never logs the token itself
        assert headers["org-handle"] == SIM_ORG_HANDLE
        assert headers["accept"] == "application/json"
        assert headers["user-agent"] == f"airflow-provider-unpod/{__version__}"


@pytest.mark.parametrize("scheme", ["Bearer", "JWT"])
def test_bearer_and_jwt_schemes(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, make_hook: Any, scheme: str
) -> None:
    set_conn(monkeypatch, sim, extra={"auth_scheme": scheme})
    assert make_hook().list_organizations()
    assert unpod_requests(sim)[0]["headers"]["authorization"] == f"{scheme} ***"


def test_one_session_for_every_request(sim: UnpodSimulator, hook: UnpodHook, mocker: Any) -> None:
    spy = mocker.spy(requests.Session, "request")
    hook.list_organizations()
    hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=50)
    hook.get_space(DEMO_SPACE_TOKEN)
    sessions = {id(call.args[0]) for call in spy.call_args_list}
    assert spy.call_count == 5
    assert sessions == {id(hook.get_conn())}


def test_tls_verify_off_needs_the_extra_and_warns(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, make_hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    assert make_hook().get_conn().verify is True
    set_conn(monkeypatch, sim, extra={"verify": False})
    hook = make_hook()
    with caplog.at_level(logging.WARNING, logger="tests.unpod.http"):
        assert hook.get_conn().verify is False
        assert hook.list_organizations()
    assert "TLS certificate verification is OFF" in caplog.text


def test_plain_http_to_a_remote_host_is_refused(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, make_hook: Any
) -> None:
    set_conn(monkeypatch, sim, host="http://unpod.example.com")
    with pytest.raises(UnpodConfigError, match="allow_insecure_http"):
        make_hook().list_organizations()
    assert unpod_requests(sim) == []


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


def create_in_demo_space(hook: UnpodHook) -> dict[str, Any]:
    return hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="c", documents=CONTACTS)


def test_the_token_is_in_no_log_error_or_repr(
    monkeypatch: pytest.MonkeyPatch,
    mocker: Any,
    sleeps: list[float],
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    mocker.patch("unpod_provider.hooks.unpod._mask")  # the hook must not rely on the log masker
    caplog.set_level(logging.DEBUG)  # urllib3, tenacity retries, uvicorn, the hook
    with UnpodSimulator(token=SECRET_TOKEN, log_level="debug") as sim:
        monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", sim.connection_json())
        hook = UnpodHook(retry_limit=2, retry_delay=0.01, timeout=0.3)
        hook._log = logging.getLogger("tests.unpod.http.secret")  # type: ignore[assignment]
        plain = UnpodHook(retry_limit=2, retry_delay=0.01, timeout=0.3)  # keeps Airflow's own logger
        sim.inject("server_error", path="/organizations/", status=502, times=None)
        sim.inject("rate_limit", path="/spaces/", retry_after=1, times=None)
        sim.inject("slow", path=f"/spaces/{DEMO_SPACE_TOKEN}/runs/", seconds=1.0, times=None)
        sim.inject("drop_connection", path=f"/spaces/{DEMO_SPACE_TOKEN}/tasks/", times=None)
        sim.inject("server_error", path="/tasks/create/", status=500, times=None)
        errors: list[BaseException] = []
        for h in (hook, plain):
            calls: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
                (h.list_organizations, ()),
                (h.list_spaces, ()),
                (h.list_space_runs, (DEMO_SPACE_TOKEN,)),
                (h.list_space_tasks, (DEMO_SPACE_TOKEN,)),
                (h.get_space, ("NOSUCHSPACE0000000000000",)),
                (create_in_demo_space, (h,)),
            ]
            for call, args in calls:
                with pytest.raises(UnpodError) as info:
                    call(*args)
                errors.append(info.value)
            assert h.test_connection()[0] is False
            h.close()
        assert h.config.token == SECRET_TOKEN
        assert all(r["headers"]["authorization"] == "Token ***" for r in unpod_requests(sim))
    assert "retrying in" in caplog.text  # the retries were logged ...
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert SECRET_TOKEN not in caplog.text  # ... without the token
    for record in caplog.records:
        assert SECRET_TOKEN not in record.getMessage()
    out = capsys.readouterr()
    assert SECRET_TOKEN not in out.out and SECRET_TOKEN not in out.err
    for err in errors:
        assert SECRET_TOKEN not in str(err) and SECRET_TOKEN not in repr(err)
        assert SECRET_TOKEN not in repr(vars(err))
    assert SECRET_TOKEN not in repr(hook) and SECRET_TOKEN not in repr(hook.config)
    assert SECRET_TOKEN not in repr(plain) and SECRET_TOKEN not in repr(plain.config)
