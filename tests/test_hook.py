"""UnpodHook with a mocked transport: ``requests.Session.request`` answers from a scripted fake API.

Every request the hook makes is recorded (method, path, params, JSON body, headers, session), so
the tests can say exactly what was sent, how often, and with which wait between attempts.
"""

from __future__ import annotations

import email.utils
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from requests.structures import CaseInsensitiveDict

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
    UnpodInconsistentListError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRateLimitError,
    UnpodServerError,
    UnpodTimeoutError,
)
from unpod_provider.hooks.unpod import UnpodHook

DATA = Path(__file__).parent / "data"
PREFIX = protocol.API_PREFIX.rstrip("/")  # paths in these tests start with "/"
SPACE = "8KZAMRAHSXXXXXXMAYNASMJC"
RUN = "R40fe5eface1511f082ac156368e7acc4"
#: A recognisable token: it must never show up in a log line, an error or a repr.
TOKEN = "SeCrEtT0KeN4a1b2c3d4e5f60718293a4b5c6d7e8"
BASE = "http://127.0.0.1:8765"

HTML_502 = b"<html><head><title>502 Bad Gateway</title></head><body><center>nginx</center></body></html>"


def sample(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def envelope(data: Any, count: int | None = None, message: str = "ok") -> bytes:
    body: dict[str, Any] = {"status_code": 200, "message": message, "data": data}
    if count is not None:
        body["count"] = count
    return json.dumps(body).encode()


def make_task(n: int, status: str = "completed") -> dict[str, Any]:
    return {"task_id": f"T{n:032x}", "run_id": RUN, "status": status, "output": {"n": n}}


def make_run(n: int, status: str = "completed") -> dict[str, Any]:
    return {"run_id": f"R{n:032x}", "status": status, "created": "2025-11-30T17:51:52"}


def chain(error: BaseException) -> list[BaseException]:
    seen = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


# --------------------------------------------------------------------------------------------
# The fake API
# --------------------------------------------------------------------------------------------


@dataclass
class Sent:
    """One request as it left the hook."""

    method: str
    url: str
    params: dict[str, Any] | None
    json: Any
    headers: dict[str, str]
    session: requests.Session
    allow_redirects: bool
    timeout: Any

    @property
    def path(self) -> str:
        return urlsplit(self.url).path

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc


def response(
    status: int = 200, body: bytes | str = b"", headers: dict[str, str] | None = None
) -> requests.Response:
    r = requests.Response()
    r.status_code = status
    r._content = body.encode() if isinstance(body, str) else body
    r.headers = CaseInsensitiveDict(headers or {})
    r.encoding = "utf-8"
    return r


Reply = requests.Response | BaseException | Callable[[Sent], Any]


class FakeApi:
    """Scripted answers per path; a path's last scripted answer repeats. Records every request."""

    def __init__(self) -> None:
        self.sent: list[Sent] = []
        self.routes: dict[tuple[str, str], list[Reply]] = {}

    def on(self, path: str, *replies: Reply, method: str = "GET") -> FakeApi:
        self.routes[(method, PREFIX + path)] = list(replies)
        return self

    def paged(
        self,
        path: str,
        items: list[dict[str, Any]] | Callable[[], list[dict[str, Any]]],
        *,
        cap: int | None = None,
        not_found_past_end: bool = False,
    ) -> FakeApi:
        """Serve ``items`` page by page like the server (``page``/``page_size``, count = total)."""

        def serve(sent: Sent) -> requests.Response:
            current = items() if callable(items) else items
            params = sent.params or {}
            page, size = int(params.get("page", 1)), int(params.get("page_size", 50))
            if cap is not None:
                size = min(size, cap)
            chunk = current[(page - 1) * size : page * size]
            if not chunk and page > 1 and not_found_past_end:
                return response(404, b'{"detail": "Invalid page."}')
            return response(200, envelope(chunk, count=len(current)))

        return self.on(path, serve)

    def __call__(self, session: requests.Session, method: str, url: str, **kwargs: Any) -> requests.Response:
        headers = {k: v for k, v in session.headers.items() if isinstance(v, str)}
        sent = Sent(
            method=method,
            url=url,
            params=dict(kwargs["params"]) if kwargs.get("params") is not None else None,
            json=kwargs.get("json"),
            headers=headers,
            session=session,
            allow_redirects=kwargs.get("allow_redirects", True),
            timeout=kwargs.get("timeout"),
        )
        self.sent.append(sent)
        replies = self.routes.get((method, sent.path))
        if not replies:
            return response(404, b'{"message": "no such route in the fake API"}')
        reply = replies.pop(0) if len(replies) > 1 else replies[0]
        if isinstance(reply, BaseException):
            raise reply
        if callable(reply) and not isinstance(reply, requests.Response):
            reply = reply(sent)
            if isinstance(reply, BaseException):
                raise reply
        return reply

    def paths(self) -> list[str]:
        return [s.path[len(PREFIX) :] for s in self.sent]

    def pages(self) -> list[int]:
        return [int((s.params or {})["page"]) for s in self.sent]


@pytest.fixture
def api(mocker: Any) -> FakeApi:
    fake = FakeApi()
    mocker.patch.object(requests.Session, "request", autospec=True, side_effect=fake)
    return fake


@pytest.fixture
def sleeps(mocker: Any) -> list[float]:
    """The waits tenacity asked for between attempts (none really happen)."""
    recorded: list[float] = []
    fake_time = mocker.patch("tenacity.nap.time")
    fake_time.sleep.side_effect = recorded.append
    return recorded


def set_conn(monkeypatch: pytest.MonkeyPatch, conn_id: str = "unpod_default", **fields: Any) -> None:
    conn: dict[str, Any] = {
        "conn_type": "unpod",
        "host": BASE,
        "password": TOKEN,
        "extra": {"org_handle": "acme"},
    }
    extra = fields.pop("extra", None)
    conn.update(fields)
    if extra is not None:
        conn["extra"] = {**conn["extra"], **extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(conn))


@pytest.fixture
def conn(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    set_conn(monkeypatch)
    return lambda **fields: set_conn(monkeypatch, **fields)


@pytest.fixture
def make_hook(conn: Any, sleeps: list[float]) -> Iterator[Callable[..., UnpodHook]]:
    """Hooks with tiny retry delays whose log goes to a stdlib logger (so caplog sees it)."""
    hooks: list[UnpodHook] = []

    def factory(conn_id: str = "unpod_default", **kwargs: Any) -> UnpodHook:
        kwargs.setdefault("retry_delay", 0.01)
        kwargs.setdefault("retry_limit", 3)
        hook = UnpodHook(conn_id, **kwargs)
        hook._log = logging.getLogger("tests.unpod.hook")  # type: ignore[assignment]
        hooks.append(hook)
        return hook

    yield factory
    for hook in hooks:
        hook.close()


@pytest.fixture
def hook(make_hook: Callable[..., UnpodHook]) -> UnpodHook:
    return make_hook()


# --------------------------------------------------------------------------------------------
# Every hook method
# --------------------------------------------------------------------------------------------


def test_list_organizations(api: FakeApi, hook: UnpodHook) -> None:
    orgs = [{"name": "Acme", "domain_handle": "acme", "role": "owner", "token": "O1"}]
    api.on("/organizations/", response(200, envelope(orgs, count=1)))
    assert hook.list_organizations() == orgs
    assert [(s.method, s.path, s.params) for s in api.sent] == [("GET", f"{PREFIX}/organizations/", None)]
    assert api.sent[0].url == f"{BASE}{PREFIX}/organizations/"


def test_list_spaces_returns_the_sample(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", response(200, sample("spaces_list")))
    spaces = hook.list_spaces()
    assert [s["token"] for s in spaces] == [SPACE]
    assert api.paths() == ["/spaces/"]
    assert api.sent[0].params is None


def test_get_space(api: FakeApi, hook: UnpodHook) -> None:
    space = {"name": "Sales", "token": SPACE, "agents": [{"name": "Bot", "handle": "bot", "type": "voice"}]}
    api.on(f"/spaces/{SPACE}/", response(200, envelope(space)))
    assert hook.get_space(SPACE) == space
    assert api.paths() == [f"/spaces/{SPACE}/"]


def test_list_space_tasks_reads_every_page(api: FakeApi, hook: UnpodHook) -> None:
    items = [make_task(n) for n in range(140, 0, -1)]
    api.paged(f"/spaces/{SPACE}/tasks/", items)
    assert hook.list_space_tasks(SPACE, page_size=20) == items
    assert sorted(api.pages()) == [1, 2, 3, 4, 5, 6, 7]  # each once (concurrent: in any order)
    assert all(s.params == {"page": s.params["page"], "page_size": 20} for s in api.sent if s.params)


def test_iter_space_tasks_is_lazy(api: FakeApi, hook: UnpodHook) -> None:
    items = [make_task(n) for n in range(60, 0, -1)]
    api.paged(f"/spaces/{SPACE}/tasks/", items)
    iterator = hook.iter_space_tasks(SPACE, page_size=20)
    assert api.sent == []
    assert next(iterator) == items[0]
    assert api.pages() == [1]
    assert list(iterator) == items[1:]
    assert api.pages() == [1, 2, 3]


def test_list_and_iter_space_runs(api: FakeApi, hook: UnpodHook) -> None:
    runs = [make_run(n) for n in range(30, 0, -1)]
    api.paged(f"/spaces/{SPACE}/runs/", runs)
    assert hook.list_space_runs(SPACE, page_size=25) == runs
    assert list(hook.iter_space_runs(SPACE, page_size=25)) == runs
    assert api.pages() == [1, 2, 1, 2]
    assert {s.path for s in api.sent} == {f"{PREFIX}/spaces/{SPACE}/runs/"}


def test_default_page_size_is_sent_explicitly(api: FakeApi, hook: UnpodHook) -> None:
    api.paged(f"/spaces/{SPACE}/runs/", [make_run(1)])
    hook.list_space_runs(SPACE)
    assert api.sent[0].params == {"page": 1, "page_size": 100}


def test_get_run_found_on_the_third_page(api: FakeApi, hook: UnpodHook) -> None:
    runs = [make_run(n, status="running") for n in range(100, 0, -1)]
    wanted = runs[45]
    api.paged(f"/spaces/{SPACE}/runs/", runs)
    assert hook.get_run(SPACE, wanted["run_id"], page_size=20) == wanted
    assert api.pages() == [1, 2, 3]


def test_get_run_not_found_names_the_run(api: FakeApi, hook: UnpodHook) -> None:
    api.paged(f"/spaces/{SPACE}/runs/", [make_run(n) for n in range(50, 0, -1)])
    with pytest.raises(UnpodNotFoundError) as info:
        hook.get_run(SPACE, RUN, page_size=20)
    assert RUN in str(info.value) and SPACE in str(info.value)
    assert (info.value.resource, info.value.identifier) == ("run", RUN)
    assert api.pages() == [1, 2, 3]
    assert hook.find_run(SPACE, RUN, page_size=20) is None


def test_list_run_tasks_returns_the_sample(api: FakeApi, hook: UnpodHook) -> None:
    api.paged(f"/spaces/{SPACE}/runs/{RUN}/tasks/", json.loads(sample("run_tasks_completed_call"))["data"])
    tasks = hook.list_run_tasks(SPACE, RUN)
    assert [t["task_id"] for t in tasks] == ["TASK_SPACE_456789", "TASK_SPACE_456790"]
    assert tasks[0]["output"]["duration"] == 76.769
    assert list(hook.iter_run_tasks(SPACE, RUN, status="failed")) == [tasks[1]]


def test_list_run_tasks_of_an_unknown_run_is_empty(api: FakeApi, hook: UnpodHook) -> None:
    api.on(f"/spaces/{SPACE}/runs/{RUN}/tasks/", response(200, envelope([], count=0)))
    assert hook.list_run_tasks(SPACE, RUN) == []
    assert list(hook.iter_run_tasks(SPACE, RUN)) == []
    assert len(api.sent) == 2


@pytest.mark.parametrize(
    ("status", "expected"),
    [("completed", {"completed"}), (["failed", "Pending"], {"failed", "pending"}), ("FAILED", {"failed"})],
)
def test_status_filter_runs_on_the_client(
    api: FakeApi, hook: UnpodHook, status: Any, expected: set[str]
) -> None:
    states = ["completed", "failed", "pending", "in_progress"]
    items = [make_task(n, status=states[n % 4]) for n in range(40, 0, -1)]
    api.paged(f"/spaces/{SPACE}/tasks/", items)
    api.paged(f"/spaces/{SPACE}/runs/{RUN}/tasks/", items)
    runs = [make_run(n, status=states[n % 4]) for n in range(40, 0, -1)]
    api.paged(f"/spaces/{SPACE}/runs/", runs)

    got_tasks = hook.list_space_tasks(SPACE, page_size=20, status=status)
    got_run_tasks = hook.list_run_tasks(SPACE, RUN, page_size=20, status=status)
    got_runs = hook.list_space_runs(SPACE, page_size=20, status=status)

    assert got_tasks == [t for t in items if t["status"] in expected]
    assert got_run_tasks == got_tasks
    assert got_runs == [r for r in runs if r["status"] in expected]
    assert got_tasks and len(got_tasks) < len(items)
    # The server only ever sees page and page_size.
    assert all(set(s.params or {}) == {"page", "page_size"} for s in api.sent)


# --------------------------------------------------------------------------------------------
# create_run
# --------------------------------------------------------------------------------------------

CONTACTS = [{"name": "Rajesh", "contact_number": "+919988776655", "document_id": "lead-1"}]
CREATE_DOC = f"/spaces/{SPACE}/tasks/create/"
CREATE_SRV = f"/spaces/{SPACE}/tasks/"


def create(hook: UnpodHook) -> dict[str, Any]:
    return hook.create_run(SPACE, pilot="sales-bot", context="Follow up on the demo", documents=CONTACTS)


def test_create_run_posts_to_the_documented_path(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, response(200, sample("create_run_response")), method="POST")
    result = create(hook)
    assert result["run_id"] == "R8ff2ccdefe9a11f0878d43cd8a99e069"
    assert result["task_ids"] == ["T8ff2ccdffe9a11f0878d43cd8a99e069"]
    (sent,) = api.sent
    assert (sent.method, sent.path, sent.params) == ("POST", PREFIX + CREATE_DOC, None)
    assert sent.json == {
        "pilot": "sales-bot",
        "context": "Follow up on the demo",
        "documents": CONTACTS,
        "schedule": {"type": "now"},
    }


def test_create_run_falls_back_to_the_server_path_on_404(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, response(404, b"<h1>Not Found</h1>"), method="POST")
    api.on(CREATE_SRV, response(201, sample("create_run_response")), method="POST")
    assert create(hook)["run_id"] == "R8ff2ccdefe9a11f0878d43cd8a99e069"
    assert [(s.method, s.path) for s in api.sent] == [
        ("POST", PREFIX + CREATE_DOC),
        ("POST", PREFIX + CREATE_SRV),
    ]
    assert api.sent[0].json == api.sent[1].json


def test_create_run_falls_back_on_405_too(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, response(405, b'{"detail": "Method \\"POST\\" not allowed."}'), method="POST")
    api.on(CREATE_SRV, response(200, sample("create_run_response")), method="POST")
    assert create(hook)["run_id"].startswith("R8ff")
    assert api.paths() == [CREATE_DOC, CREATE_SRV]


def test_create_run_404_on_both_paths_is_not_found(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, response(404, b'{"message": "Space not found"}'), method="POST")
    api.on(CREATE_SRV, response(404, b'{"message": "Space not found"}'), method="POST")
    with pytest.raises(UnpodNotFoundError, match="Space not found") as info:
        create(hook)
    assert info.value.identifier == SPACE
    assert len(api.sent) == 2


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (response(400, sample("error_400_missing_org")), UnpodBadRequestError),
        (response(401, sample("error_401_invalid_token")), UnpodAuthError),
        (response(403, b""), UnpodAuthError),
        (response(206, sample("error_206_invalid_space")), UnpodBusinessError),
        (response(302, b"", {"Location": "https://evil.example/"}), UnpodProtocolError),
    ],
)
def test_create_run_other_refusals_do_not_fall_back_or_retry(
    api: FakeApi, hook: UnpodHook, reply: requests.Response, error: type[UnpodError]
) -> None:
    api.on(CREATE_DOC, reply, method="POST")
    with pytest.raises(error) as info:
        create(hook)
    assert not isinstance(info.value, UnpodCreateRunUncertainError)
    assert api.paths() == [CREATE_DOC]


def test_create_run_validation_error_names_the_field(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, response(206, sample("error_206_validation")), method="POST")
    with pytest.raises(UnpodBusinessError) as info:
        create(hook)
    assert "context: This field is required." in str(info.value)
    assert info.value.errors == {"context": ["This field is required."]}
    assert len(api.sent) == 1


@pytest.mark.parametrize(
    "reply",
    [
        response(500, HTML_502),
        response(502, HTML_502),
        response(503, b""),
        requests.exceptions.ReadTimeout("read timed out"),
        requests.exceptions.ConnectionError("Connection aborted: RemoteDisconnected"),
        requests.exceptions.ChunkedEncodingError("IncompleteRead(10 bytes read, 90 more expected)"),
    ],
    ids=["500", "502-html", "503-empty", "read-timeout", "dropped", "cut-body"],
)
def test_create_run_is_never_retried_once_it_may_have_reached_the_server(
    api: FakeApi, hook: UnpodHook, sleeps: list[float], reply: Reply
) -> None:
    api.on(CREATE_DOC, reply, method="POST")
    with pytest.raises(UnpodCreateRunUncertainError) as info:
        create(hook)
    assert "may or may not exist" in str(info.value)
    assert SPACE in str(info.value)
    assert len(api.sent) == 1
    assert sleeps == []


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b'{"status_code": 200, "data": {"run_id": "R8ff2',
        b'{"status_code": 200, "data": {"task_ids": []}}',
    ],
    ids=["empty", "truncated", "no-run-id"],
)
def test_create_run_with_an_unreadable_success_is_uncertain(
    api: FakeApi, hook: UnpodHook, body: bytes
) -> None:
    # The server said 200: the run was probably created, only its answer is unreadable.
    api.on(CREATE_DOC, response(200, body), method="POST")
    with pytest.raises(UnpodCreateRunUncertainError):
        create(hook)
    assert len(api.sent) == 1


def test_create_run_retries_when_the_request_never_left(
    api: FakeApi, hook: UnpodHook, sleeps: list[float]
) -> None:
    api.on(
        CREATE_DOC,
        requests.exceptions.ConnectTimeout("connect timed out"),
        _refused(),
        response(200, sample("create_run_response")),
        method="POST",
    )
    assert create(hook)["run_id"].startswith("R8ff")
    assert len(api.sent) == 3
    assert len(sleeps) == 2


def _refused() -> requests.exceptions.ConnectionError:
    from urllib3.exceptions import MaxRetryError, NewConnectionError

    reason = NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")  # type: ignore[arg-type]
    return requests.exceptions.ConnectionError(MaxRetryError(None, "/x", reason))  # type: ignore[arg-type]


def test_create_run_retries_a_429(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    api.on(
        CREATE_DOC,
        response(429, b"", {"Retry-After": "3"}),
        response(200, sample("create_run_response")),
        method="POST",
    )
    assert create(hook)["run_id"].startswith("R8ff")
    assert sleeps == [3.0]


def test_create_run_refused_connection_exhausted_is_a_connection_error(api: FakeApi, hook: UnpodHook) -> None:
    api.on(CREATE_DOC, _refused(), method="POST")
    with pytest.raises(UnpodConnectionError, match="could not connect") as info:
        create(hook)
    assert info.value.request_sent is False
    assert len(api.sent) == 3


def test_create_run_validates_before_sending(api: FakeApi, hook: UnpodHook) -> None:
    with pytest.raises(ValueError, match="context"):
        hook.create_run(SPACE, pilot="bot", context="", documents=CONTACTS)
    with pytest.raises(ValueError, match="space_token"):
        hook.create_run("../x", pilot="bot", context="c", documents=CONTACTS)
    assert api.sent == []


# --------------------------------------------------------------------------------------------
# test_connection
# --------------------------------------------------------------------------------------------

ORGS = [{"name": "Acme", "domain_handle": "acme"}, {"name": "Other", "domain_handle": "other.org"}]


def test_test_connection_success(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/organizations/", response(200, envelope(ORGS, count=2)))
    api.on("/spaces/", response(200, envelope([{"token": "S1"}, {"token": "S2"}], count=2)))
    assert hook.test_connection() == (True, "Connected to org 'acme' (2 spaces)")
    assert api.paths() == ["/organizations/", "/spaces/"]


def test_test_connection_wrong_org_handle(api: FakeApi, conn: Any, make_hook: Any) -> None:
    conn(extra={"org_handle": "nope.example"})
    api.on("/organizations/", response(200, envelope(ORGS, count=2)))
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "'nope.example' is not one of its organizations" in message
    assert "'acme'" in message and "'other.org'" in message
    assert api.paths() == ["/organizations/"]


def test_test_connection_bad_token(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/organizations/", response(401, sample("error_401_invalid_token")))
    ok, message = hook.test_connection()
    assert ok is False
    assert "HTTP 401" in message and "Invalid token." in message
    assert len(api.sent) == 1
    assert TOKEN not in message


def test_test_connection_without_a_token_sends_nothing(api: FakeApi, conn: Any, make_hook: Any) -> None:
    conn(password="")
    ok, message = make_hook().test_connection()
    assert ok is False
    assert "API token missing" in message
    assert "unpod_default" in message
    assert api.sent == []


def test_test_connection_server_down(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/organizations/", response(503, HTML_502))
    ok, message = hook.test_connection()
    assert ok is False
    assert "HTTP 503" in message


# --------------------------------------------------------------------------------------------
# Every error class
# --------------------------------------------------------------------------------------------


def test_401_is_an_auth_error_sent_once(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    api.on(f"/spaces/{SPACE}/", response(401, sample("error_401_invalid_token")))
    with pytest.raises(UnpodAuthError, match=r"Invalid token\.") as info:
        hook.get_space(SPACE)
    assert info.value.status_code == 401
    assert len(api.sent) == 1 and sleeps == []


def test_403_is_an_auth_error_sent_once(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", response(403, b'{"detail": "You do not have permission to perform this action."}'))
    with pytest.raises(UnpodAuthError, match=r"HTTP 403.*permission") as info:
        hook.list_spaces()
    assert info.value.status_code == 403
    assert len(api.sent) == 1


def test_404_space_names_the_space_token(api: FakeApi, hook: UnpodHook) -> None:
    api.on(f"/spaces/{SPACE}/", response(404, sample("error_404_space")))
    with pytest.raises(UnpodNotFoundError) as info:
        hook.get_space(SPACE)
    assert SPACE in str(info.value)
    assert (info.value.resource, info.value.identifier, info.value.status_code) == ("space", SPACE, 404)
    assert len(api.sent) == 1


def test_404_on_the_first_page_of_a_list_is_not_found(api: FakeApi, hook: UnpodHook) -> None:
    api.on(f"/spaces/{SPACE}/tasks/", response(404, sample("error_404_space")))
    with pytest.raises(UnpodNotFoundError, match=SPACE):
        hook.list_space_tasks(SPACE)
    assert len(api.sent) == 1


def test_400_missing_org_is_a_bad_request(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", response(400, sample("error_400_missing_org")))
    with pytest.raises(UnpodBadRequestError, match="Organization handle is required"):
        hook.list_spaces()
    assert len(api.sent) == 1


def test_206_invalid_space_is_a_business_error_not_retried(
    api: FakeApi, hook: UnpodHook, sleeps: list[float]
) -> None:
    api.on(f"/spaces/{SPACE}/runs/", response(206, sample("error_206_invalid_space")))
    with pytest.raises(UnpodBusinessError, match="Invalid Space Token"):
        hook.list_space_runs(SPACE)
    assert len(api.sent) == 1 and sleeps == []


def test_429_retry_after_is_honoured(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    api.on(
        "/spaces/",
        response(429, b"Too Many Requests", {"Retry-After": "7"}),
        response(200, sample("spaces_list")),
    )
    assert len(hook.list_spaces()) == 1
    assert sleeps == [7.0]
    assert len(api.sent) == 2


def test_429_with_an_http_date_retry_after(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=30)
    header = email.utils.format_datetime(when, usegmt=True)
    api.on("/spaces/", response(429, b"", {"Retry-After": header}), response(200, sample("spaces_list")))
    hook.list_spaces()
    (wait,) = sleeps
    # The date has a one-second resolution; the wait is what is left of the 30 seconds.
    assert 25.0 < wait <= 30.0


def test_429_retry_after_is_capped_by_the_policy(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    api.on("/spaces/", response(429, b"", {"Retry-After": "86400"}), response(200, sample("spaces_list")))
    hook.list_spaces()
    assert sleeps == [hook.retry_policy.max_retry_after]


def test_a_429_pauses_every_page_request_of_the_fetch(api: FakeApi, conn: Any) -> None:
    """Polite to the server: after a 429 (Retry-After: 1) on page 3, no other page request of
    the concurrent fetch is sent until the pause is over; the list is still whole, in order."""
    import threading
    import time

    items = [make_task(n) for n in range(200, 0, -1)]
    lock = threading.Lock()
    started: list[tuple[float, int]] = []
    limited_at: list[float] = []

    def serve(sent: Sent) -> requests.Response:
        page, size = int(sent.params["page"]), int(sent.params["page_size"])  # type: ignore[index]
        with lock:
            started.append((time.monotonic(), page))
            first_page_3 = page == 3 and not limited_at
            if first_page_3:
                limited_at.append(time.monotonic())
        if first_page_3:
            return response(429, b'{"detail": "Request was throttled."}', {"Retry-After": "1"})
        time.sleep(0.3)  # slow pages: without the pause, the other threads would go on at once
        return response(200, envelope(items[(page - 1) * size : page * size], count=len(items)))

    api.on(f"/spaces/{SPACE}/tasks/", serve)
    with UnpodHook(retry_delay=0.01, max_concurrency=4) as hook:
        got = hook.list_space_tasks(SPACE, page_size=10)
    assert [t["task_id"] for t in got] == [t["task_id"] for t in items]
    assert sorted(page for _, page in started) == sorted([*range(1, 21), 3])
    (t429,) = limited_at
    # A thread may have passed its check just before the pause began: allow a moment for that.
    during_pause = [page for at, page in started if t429 + 0.25 < at < t429 + 0.9]
    assert during_pause == []
    assert any(at >= t429 + 0.9 for at, _ in started)  # and the fetch went on afterwards


def test_a_429_pause_never_exceeds_the_retry_budget(api: FakeApi, conn: Any, sleeps: list[float]) -> None:
    """Retry-After beyond ``max_retry_seconds`` fails the request at once, and holds the other
    page threads back no longer than that budget."""
    api.on("/spaces/", response(429, b"", {"Retry-After": "100"}))
    with UnpodHook(retry_delay=0.01, max_retry_seconds=5) as hook:
        with pytest.raises(UnpodRateLimitError):
            hook.list_spaces()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as other_page_thread:
            held_back = other_page_thread.submit(hook._throttle.remaining).result()
        assert 4.0 < held_back <= 5.0  # not the 100 s the server asked for
    assert len(api.sent) == 1 and sleeps == []


def test_429_exhausted_is_a_rate_limit_error(api: FakeApi, make_hook: Any, sleeps: list[float]) -> None:
    hook = make_hook(retry_limit=4)
    api.on("/spaces/", response(429, b"", {"Retry-After": "1"}))
    with pytest.raises(UnpodRateLimitError) as info:
        hook.list_spaces()
    assert info.value.retry_after == 1.0
    assert len(api.sent) == 4
    assert sleeps == [1.0, 1.0, 1.0]


def test_5xx_then_success_recovers_with_backoff(api: FakeApi, make_hook: Any, sleeps: list[float]) -> None:
    hook = make_hook(retry_limit=5, retry_delay=0.01)
    api.on(
        "/spaces/",
        response(500, b"<h1>Server Error (500)</h1>"),
        response(503, b""),
        response(504, b'{"message": "upstream timed out"}'),
        response(200, sample("spaces_list")),
    )
    assert hook.list_spaces()[0]["token"] == SPACE
    assert len(api.sent) == 4
    assert len(sleeps) == 3
    # Exponential backoff with jitter in [0.5, 1] of 0.01 * 2**(n-1).
    for attempt, wait in enumerate(sleeps, start=1):
        ceiling = 0.01 * 2 ** (attempt - 1)
        assert ceiling / 2 <= wait <= ceiling


def test_html_502_ends_in_a_server_error_not_a_json_error(
    api: FakeApi, hook: UnpodHook, sleeps: list[float]
) -> None:
    api.on("/spaces/", response(502, HTML_502, {"Content-Type": "text/html"}))
    with pytest.raises(UnpodServerError, match="HTTP 502") as info:
        hook.list_spaces()
    assert not any(isinstance(e, json.JSONDecodeError) for e in chain(info.value))
    assert "Bad Gateway" in str(info.value)
    assert len(api.sent) == 3 and len(sleeps) == 2


def test_an_empty_body_is_retried_then_a_typed_error(
    api: FakeApi, hook: UnpodHook, sleeps: list[float]
) -> None:
    api.on(f"/spaces/{SPACE}/tasks/", response(200, b""))
    with pytest.raises(UnpodIncompleteResponseError, match="empty response body"):
        hook.list_space_tasks(SPACE)
    assert len(api.sent) == hook.retry_policy.max_attempts
    assert len(sleeps) == hook.retry_policy.max_attempts - 1


@pytest.mark.parametrize(
    "body",
    [
        b'{"count": 140, "status_code": 200, "data": [{"task_id": "T1"}, {"task_id": "T',
        b'{"count": 1, "status_code": 200, "data": [{"task_id": "T1"}]} and more',
        b'{"count": 1, "status_code": 200, "data": [{"task_id": "T\xff1"}]}',
        b'{"count": 1, "status_code": 200, "data": [{"task_id": "T1", "cost": NaN}]}',
    ],
    ids=["truncated-but-whole", "trailing-garbage", "bad-utf8", "nan"],
)
def test_a_whole_body_that_is_not_json_is_a_protocol_error_not_retried(
    api: FakeApi, hook: UnpodHook, sleeps: list[float], body: bytes
) -> None:
    """The body arrived whole (a cut one fails in the transport): the next answer would be the same."""
    api.on(f"/spaces/{SPACE}/tasks/", response(200, body))
    with pytest.raises(UnpodProtocolError, match="is not valid JSON") as info:
        hook.list_space_tasks(SPACE)
    assert not isinstance(info.value, UnpodIncompleteResponseError) and not info.value.retryable
    assert not any(isinstance(e, json.JSONDecodeError) for e in chain(info.value))
    assert len(api.sent) == 1 and sleeps == []


def test_a_200_that_is_not_json_is_not_retried(api: FakeApi, hook: UnpodHook) -> None:
    api.on(f"/spaces/{SPACE}/tasks/", response(200, b"<html>maintenance</html>"))
    with pytest.raises(UnpodProtocolError, match="is not valid JSON"):
        hook.list_space_tasks(SPACE)
    assert len(api.sent) == 1


def test_body_cut_off_mid_stream_is_retried(api: FakeApi, hook: UnpodHook, sleeps: list[float]) -> None:
    api.on(
        "/spaces/",
        requests.exceptions.ChunkedEncodingError("Connection broken: IncompleteRead"),
        response(200, sample("spaces_list")),
    )
    assert len(hook.list_spaces()) == 1
    assert len(api.sent) == 2 and len(sleeps) == 1


def test_dropped_connection_is_retried_then_a_connection_error(
    api: FakeApi, hook: UnpodHook, sleeps: list[float]
) -> None:
    api.on("/spaces/", requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())"))
    with pytest.raises(UnpodConnectionError, match="lost the connection") as info:
        hook.list_spaces()
    assert info.value.request_sent is True
    assert len(api.sent) == 3 and len(sleeps) == 2
    assert not any(isinstance(e, requests.RequestException) for e in chain(info.value))


def test_dropped_connection_then_success(api: FakeApi, hook: UnpodHook) -> None:
    api.on(
        "/spaces/",
        requests.exceptions.ConnectionError("('Connection aborted.', ConnectionResetError(104))"),
        response(200, sample("spaces_list")),
    )
    assert len(hook.list_spaces()) == 1


def test_read_timeout_is_a_timeout_error(api: FakeApi, make_hook: Any, sleeps: list[float]) -> None:
    hook = make_hook(timeout=2.5)
    api.on("/spaces/", requests.exceptions.ReadTimeout("Read timed out. (read timeout=2.5)"))
    with pytest.raises(UnpodTimeoutError, match=r"read timeout of 2\.5s"):
        hook.list_spaces()
    assert len(api.sent) == 3
    assert api.sent[0].timeout == (2.5, 2.5)


def test_read_timeout_while_reading_the_body_is_a_timeout_error(api: FakeApi, hook: UnpodHook) -> None:
    from urllib3.exceptions import ReadTimeoutError

    # requests reports a body that stops arriving as a ConnectionError wrapping urllib3's timeout.
    cut = requests.exceptions.ConnectionError(ReadTimeoutError(None, "/x", "Read timed out."))  # type: ignore[arg-type]
    api.on("/spaces/", cut)
    with pytest.raises(UnpodTimeoutError, match="no answer within the read timeout") as info:
        hook.list_spaces()
    assert info.value.request_sent is True
    assert len(api.sent) == 3


def test_connect_timeout_is_a_timeout_error(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", requests.exceptions.ConnectTimeout("connect timed out"))
    with pytest.raises(UnpodTimeoutError, match="connecting to") as info:
        hook.list_spaces()
    assert info.value.request_sent is False


def test_redirect_is_a_protocol_error_and_is_not_followed(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", response(301, b"", {"Location": "https://evil.example/api/v2/platform/spaces/"}))
    with pytest.raises(UnpodProtocolError, match="redirect") as info:
        hook.list_spaces()
    assert "evil.example" in str(info.value)
    assert len(api.sent) == 1
    assert api.sent[0].allow_redirects is False
    assert all(s.host == "127.0.0.1:8765" for s in api.sent)


def test_non_200_success_on_a_read_is_an_error(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/spaces/", response(202, envelope([])))
    with pytest.raises(UnpodProtocolError, match="HTTP 202"):
        hook.list_spaces()


def test_wrong_envelope_shape_is_a_protocol_error(api: FakeApi, hook: UnpodHook) -> None:
    api.on(f"/spaces/{SPACE}/", response(200, envelope([{"token": SPACE}])))
    with pytest.raises(UnpodProtocolError, match="should be an object"):
        hook.get_space(SPACE)


# --------------------------------------------------------------------------------------------
# Pagination
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("not_found_past_end", [False, True])
def test_140_tasks_in_pages_of_20_never_asks_for_page_8(
    api: FakeApi, hook: UnpodHook, not_found_past_end: bool
) -> None:
    items = [make_task(n) for n in range(140, 0, -1)]
    api.paged(f"/spaces/{SPACE}/tasks/", items, not_found_past_end=not_found_past_end)
    assert hook.list_space_tasks(SPACE, page_size=20) == items
    assert sorted(api.pages()) == [1, 2, 3, 4, 5, 6, 7]  # each once, in whatever order they left


def test_a_404_past_the_end_ends_a_list_without_count(api: FakeApi, hook: UnpodHook) -> None:
    items = [make_task(n) for n in range(40, 0, -1)]
    pages = {1: items[:20], 2: items[20:]}

    def serve(sent: Sent) -> requests.Response:
        page = sent.params["page"] if sent.params else 1
        if page in pages:
            return response(200, envelope(pages[page]))
        return response(404, b'{"detail": "Invalid page."}')

    api.on(f"/spaces/{SPACE}/tasks/", serve)
    assert hook.list_space_tasks(SPACE, page_size=20) == items
    assert api.pages() == [1, 2, 3]


def test_page_size_above_a_server_cap_still_returns_everything_once(
    api: FakeApi, hook: UnpodHook, caplog: pytest.LogCaptureFixture
) -> None:
    items = [make_task(n) for n in range(140, 0, -1)]
    api.paged(f"/spaces/{SPACE}/tasks/", items, cap=100)
    with caplog.at_level(logging.WARNING, logger="tests.unpod.hook"):
        got = hook.list_space_tasks(SPACE, page_size=500)
    assert got == items
    assert api.pages() == [1, 1, 2]  # a short first page is asked for again: a cap answers the same
    assert all(s.params and s.params["page_size"] == 500 for s in api.sent)
    assert "500 were asked for" in caplog.text


def test_items_added_between_pages_are_not_duplicated_or_lost(
    api: FakeApi, hook: UnpodHook, caplog: pytest.LogCaptureFixture
) -> None:
    original = [make_task(n) for n in range(140, 0, -1)]
    current = list(original)

    def serve(sent: Sent) -> requests.Response:
        assert sent.params is not None
        page, size = sent.params["page"], sent.params["page_size"]
        answer = response(200, envelope(current[(page - 1) * size : page * size], count=len(current)))
        if page in (2, 4):  # three new tasks arrive (newest first) after pages 2 and 4 are read
            top = int(current[0]["task_id"][1:], 16)
            current[:0] = [make_task(top + k) for k in (3, 2, 1)]
        return answer

    api.on(f"/spaces/{SPACE}/tasks/", serve)
    with caplog.at_level(logging.WARNING, logger="tests.unpod.hook"):
        # Page after page, so the tasks arrive exactly after pages 2 and 4 (the campaign and
        # test_campaign's regression tests cover arrivals during a concurrent read).
        got = list(hook.iter_space_tasks(SPACE, page_size=20, max_concurrency=1))
    ids = [t["task_id"] for t in got]
    assert len(ids) == len(set(ids))
    assert {t["task_id"] for t in original} <= set(ids)
    assert "moved from 140 to 143" in caplog.text
    assert "moved from 143 to 146" in caplog.text
    assert len(api.sent) <= 9


@pytest.mark.parametrize("page_size", [0, -5, 1001, 10**6, True, 2.5, "20"])
def test_page_size_out_of_range_is_refused_before_any_request(
    api: FakeApi, hook: UnpodHook, page_size: Any
) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: hook.list_space_tasks(SPACE, page_size=page_size),
        lambda: hook.iter_space_tasks(SPACE, page_size=page_size),
        lambda: hook.list_space_runs(SPACE, page_size=page_size),
        lambda: hook.iter_space_runs(SPACE, page_size=page_size),
        lambda: hook.list_run_tasks(SPACE, RUN, page_size=page_size),
        lambda: hook.iter_run_tasks(SPACE, RUN, page_size=page_size),
        lambda: hook.get_run(SPACE, RUN, page_size=page_size),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="page_size"):
            call()
    assert api.sent == []


def test_page_size_bounds_are_accepted(api: FakeApi, hook: UnpodHook) -> None:
    api.paged(f"/spaces/{SPACE}/tasks/", [make_task(n) for n in range(3, 0, -1)])
    assert len(hook.list_space_tasks(SPACE, page_size=1)) == 3
    assert len(hook.list_space_tasks(SPACE, page_size=1000)) == 3
    assert [s.params for s in api.sent] == [
        {"page": 1, "page_size": 1},
        {"page": 2, "page_size": 1},
        {"page": 3, "page_size": 1},
        {"page": 1, "page_size": 1000},
    ]


@pytest.mark.parametrize(("max_concurrency", "expected_peak"), [(None, 10), (1, 1), (3, 3)])
def test_pages_in_flight_never_exceed_max_concurrency(
    api: FakeApi, make_hook: Callable[..., UnpodHook], max_concurrency: int | None, expected_peak: int
) -> None:
    """Page 1 alone, then pages 2..40 with at most ``max_concurrency`` requests in flight
    (default 10), the list still whole and in API order."""
    import threading
    import time

    items = [make_task(n) for n in range(400, 0, -1)]
    lock = threading.Lock()
    in_flight = [0]
    peak = [0]
    first_page_alone = []

    def serve(sent: Sent) -> requests.Response:
        with lock:
            in_flight[0] += 1
            peak[0] = max(peak[0], in_flight[0])
            if sent.params and sent.params["page"] == 1:
                first_page_alone.append(in_flight[0] == 1)
        time.sleep(0.05)  # long enough for every worker thread to be started and busy
        with lock:
            in_flight[0] -= 1
        page, size = int(sent.params["page"]), int(sent.params["page_size"])  # type: ignore[index]
        return response(200, envelope(items[(page - 1) * size : page * size], count=len(items)))

    api.on(f"/spaces/{SPACE}/tasks/", serve)
    kwargs = {} if max_concurrency is None else {"max_concurrency": max_concurrency}
    hook = make_hook(**kwargs)
    got = hook.list_space_tasks(SPACE, page_size=10)
    assert [t["task_id"] for t in got] == [t["task_id"] for t in items]
    assert sorted(s.params["page"] for s in api.sent) == list(range(1, 41))  # type: ignore[index]
    assert first_page_alone == [True]
    assert peak[0] == expected_peak


@pytest.mark.parametrize(("max_concurrency", "most_requests"), [(1, 4), (8, 4 + 16)])
def test_a_server_ignoring_page_is_detected(
    api: FakeApi, make_hook: Callable[..., UnpodHook], max_concurrency: int, most_requests: int
) -> None:
    """Page 2 repeats page 1: asked again while retries last, then a typed error (the
    concurrent fetch may have at most its window of further pages in flight by then)."""
    hook = make_hook(max_concurrency=max_concurrency)
    api.on(f"/spaces/{SPACE}/tasks/", response(200, envelope([make_task(n) for n in range(20)], count=500)))
    with pytest.raises(UnpodInconsistentListError, match="page 2 repeats 20 items already read"):
        hook.list_space_tasks(SPACE, page_size=20)
    assert 4 <= len(api.sent) <= most_requests
    if max_concurrency == 1:
        assert len(api.sent) == 4


def test_a_server_ignoring_page_without_ids_or_count_is_caught_within_a_few_pages(
    api: FakeApi, hook: UnpodHook
) -> None:
    """No count and no ids: the same full page for every ``page`` used to be read 100,000 times."""
    api.on(f"/spaces/{SPACE}/tasks/", response(200, envelope([{"name": f"call {n}"} for n in range(20)])))
    with pytest.raises(UnpodInconsistentListError, match="page 2 repeats the page before it exactly"):
        hook.list_space_tasks(SPACE, page_size=20)
    assert len(api.sent) == 1 + hook.retry_policy.max_attempts  # page 1, then page 2 asked again


# --------------------------------------------------------------------------------------------
# Identifiers
# --------------------------------------------------------------------------------------------

BAD_IDS = [
    "../admin",
    "a/b",
    "/",
    "%2F",
    "a%2Fb",
    "a b",
    "\tA",
    "A\r\nX-Evil: 1",
    "A\n",
    "\u00c9T\u00c9",
    "a" * 129,
    "",
    "..",
]


@pytest.mark.parametrize("bad", BAD_IDS)
def test_bad_identifiers_are_refused_before_any_request(api: FakeApi, hook: UnpodHook, bad: str) -> None:
    calls: list[tuple[str, Callable[[], Any]]] = [
        ("space_token", lambda: hook.get_space(bad)),
        ("space_token", lambda: hook.list_space_tasks(bad)),
        ("space_token", lambda: hook.iter_space_tasks(bad)),
        ("space_token", lambda: hook.list_space_runs(bad)),
        ("space_token", lambda: hook.iter_space_runs(bad)),
        ("space_token", lambda: hook.get_run(bad, RUN)),
        ("run_id", lambda: hook.get_run(SPACE, bad)),
        ("run_id", lambda: hook.find_run(SPACE, bad)),
        ("space_token", lambda: hook.list_run_tasks(bad, RUN)),
        ("run_id", lambda: hook.list_run_tasks(SPACE, bad)),
        ("run_id", lambda: hook.iter_run_tasks(SPACE, bad)),
        ("space_token", lambda: hook.create_run(bad, pilot="p", context="c", documents=CONTACTS)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=name):
            call()
    assert api.sent == []


def test_get_space_dotdot_admin_sends_nothing(api: FakeApi, hook: UnpodHook) -> None:
    with pytest.raises(ValueError, match="not a valid identifier"):
        hook.get_space("../admin")
    assert api.sent == []


# --------------------------------------------------------------------------------------------
# Headers, session, TLS and plain http
# --------------------------------------------------------------------------------------------


def test_headers_on_every_request(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/organizations/", response(200, envelope(ORGS)))
    api.on(f"/spaces/{SPACE}/", response(200, envelope({"token": SPACE})))
    hook.list_organizations()
    hook.get_space(SPACE)
    for sent in api.sent:
        assert sent.headers["Authorization"] == f"Token {TOKEN}"
        assert sent.headers["Org-Handle"] == "acme"
        assert sent.headers["Accept"] == "application/json"
        assert sent.headers["User-Agent"] == f"airflow-provider-unpod/{__version__}"


@pytest.mark.parametrize(("scheme", "sent_as"), [("Bearer", "Bearer"), ("jwt", "JWT"), ("TOKEN", "Token")])
def test_auth_scheme_extra(api: FakeApi, conn: Any, make_hook: Any, scheme: str, sent_as: str) -> None:
    conn(extra={"auth_scheme": scheme})
    api.on("/organizations/", response(200, envelope(ORGS)))
    make_hook().list_organizations()
    assert api.sent[0].headers["Authorization"] == f"{sent_as} {TOKEN}"


def test_one_session_is_reused(api: FakeApi, hook: UnpodHook) -> None:
    api.on("/organizations/", response(200, envelope(ORGS)))
    api.paged(f"/spaces/{SPACE}/tasks/", [make_task(n) for n in range(50, 0, -1)])
    hook.list_organizations()
    hook.list_space_tasks(SPACE, page_size=10)
    hook.list_organizations()
    assert len(api.sent) == 7
    assert {id(s.session) for s in api.sent} == {id(hook.get_conn())}
    hook.close()
    hook.list_organizations()
    assert api.sent[-1].session is not api.sent[0].session


def test_tls_verification_is_on_by_default(api: FakeApi, conn: Any, make_hook: Any) -> None:
    conn(host="https://unpod.example.com")
    hook = make_hook()
    api.on("/organizations/", response(200, envelope(ORGS)))
    hook.list_organizations()
    assert hook.get_conn().verify is True
    assert api.sent[0].url == f"https://unpod.example.com{PREFIX}/organizations/"


def test_tls_verification_off_only_with_the_extra_and_a_warning(
    api: FakeApi, conn: Any, make_hook: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conn(host="https://unpod.internal", extra={"verify": False})
    hook = make_hook()
    with caplog.at_level(logging.WARNING, logger="tests.unpod.hook"):
        assert hook.get_conn().verify is False
    assert "TLS certificate verification is OFF" in caplog.text
    assert "unpod_default" in caplog.text


@pytest.mark.parametrize("value", ["false", "no", "0", 0])
def test_verify_false_spellings(conn: Any, make_hook: Any, value: Any) -> None:
    conn(host="https://unpod.internal", extra={"verify": value})
    assert make_hook().config.verify is False


def test_plain_http_to_a_remote_host_is_refused(api: FakeApi, conn: Any, make_hook: Any) -> None:
    conn(host="http://unpod.example.com")
    hook = make_hook()
    with pytest.raises(UnpodConfigError, match=r"plain http.*allow_insecure_http"):
        hook.list_spaces()
    assert api.sent == []


def test_plain_http_to_a_remote_host_with_the_opt_in(api: FakeApi, conn: Any, make_hook: Any) -> None:
    conn(host="http://unpod.example.com:3001", extra={"allow_insecure_http": True})
    api.on("/spaces/", response(200, sample("spaces_list")))
    make_hook().list_spaces()
    assert api.sent[0].url == f"http://unpod.example.com:3001{PREFIX}/spaces/"


@pytest.mark.parametrize("host", ["http://localhost:3001", "http://127.0.0.1:8000", "http://[::1]:9000"])
def test_plain_http_to_loopback_is_allowed(api: FakeApi, conn: Any, make_hook: Any, host: str) -> None:
    conn(host=host)
    api.on("/spaces/", response(200, sample("spaces_list")))
    make_hook().list_spaces()
    assert api.sent[0].url.startswith(host + PREFIX)


def test_connection_is_read_once(api: FakeApi, hook: UnpodHook, mocker: Any) -> None:
    spy = mocker.patch.object(UnpodHook, "get_connection", wraps=UnpodHook.get_connection)
    api.on("/organizations/", response(200, envelope(ORGS)))
    hook.list_organizations()
    hook.list_organizations()
    assert spy.call_count == 1


def test_hook_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="unpod_conn_id"):
        UnpodHook("")
    with pytest.raises(ValueError, match="timeout"):
        UnpodHook(timeout=0)
    with pytest.raises(ValueError, match="retry_limit"):
        UnpodHook(retry_limit=0)
    with pytest.raises(ValueError, match="retry_delay"):
        UnpodHook(retry_delay=-1)


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------


def test_the_token_never_reaches_logs_errors_or_reprs(
    api: FakeApi,
    make_hook: Any,
    mocker: Any,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The log masker is switched off: the hook itself must not log the token.
    masked = mocker.patch("unpod_provider.hooks.unpod._mask")
    caplog.set_level(logging.DEBUG)
    hook = make_hook(retry_limit=2)
    api.on("/organizations/", response(401, sample("error_401_invalid_token")))
    api.on("/spaces/", response(502, HTML_502))
    api.on(f"/spaces/{SPACE}/", response(429, b"", {"Retry-After": "1"}))
    api.on(f"/spaces/{SPACE}/runs/", requests.exceptions.ReadTimeout(f"timeout for {TOKEN}?"))
    api.on(f"/spaces/{SPACE}/tasks/", requests.exceptions.ConnectionError("reset"))
    api.on(CREATE_DOC, response(500, b""), method="POST")
    calls: list[Callable[[], Any]] = [
        hook.list_organizations,
        hook.list_spaces,
        lambda: hook.get_space(SPACE),
        lambda: hook.list_space_runs(SPACE),
        lambda: hook.list_space_tasks(SPACE),
        lambda: create(hook),
    ]
    errors: list[BaseException] = []
    for call in calls:
        with pytest.raises(UnpodError) as info:
            call()
        errors.append(info.value)
    assert hook.test_connection()[0] is False
    # Something was logged (the retries), and none of it holds the token.
    assert "retrying in" in caplog.text
    assert TOKEN not in caplog.text
    for record in caplog.records:
        assert TOKEN not in record.getMessage()
    out = capsys.readouterr()
    assert TOKEN not in out.out and TOKEN not in out.err
    for err in errors:
        for e in chain(err):
            assert TOKEN not in str(e) and TOKEN not in repr(e)
            assert TOKEN not in repr(vars(e))
    assert TOKEN not in repr(hook) and TOKEN not in str(hook)
    assert TOKEN not in repr(hook.config)
    assert hook.config.token == TOKEN
    masked.assert_called_with(TOKEN)


def test_the_token_is_registered_with_the_log_masker(conn: Any, mocker: Any) -> None:
    import airflow.sdk.log

    mask = mocker.patch.object(airflow.sdk.log, "mask_secret")
    UnpodHook().config  # noqa: B018 - reading the connection registers the token
    mask.assert_any_call(TOKEN)


def test_config_errors_do_not_echo_the_token(conn: Any) -> None:
    conn(password=TOKEN + "\r\nX-Evil: 1")
    with pytest.raises(UnpodConfigError, match="control character") as info:
        UnpodHook().config  # noqa: B018
    assert TOKEN not in str(info.value)


def test_retry_log_names_the_request(api: FakeApi, hook: UnpodHook, caplog: pytest.LogCaptureFixture) -> None:
    api.on("/spaces/", response(503, b""), response(200, sample("spaces_list")))
    with caplog.at_level(logging.WARNING, logger="tests.unpod.hook"):
        hook.list_spaces()
    (record,) = [r for r in caplog.records if r.name == "tests.unpod.hook"]
    assert "GET /api/v2/platform/spaces/ failed (attempt 1 of 3)" in record.getMessage()
