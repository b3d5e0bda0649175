"""Hostile and malformed input: refused early, typed, and never an unexpected exception.

- Identifiers with ``/``, ``..``, ``%2F``, whitespace, CR/LF, non-ASCII or over 128 characters
  are refused with a ``ValueError`` naming the parameter, before any request, by every hook
  method (sync and async), every operator and the sensor (after template rendering, in
  ``execute``) and the trigger.
- CR/LF in the org handle or the API token (header injection) is a typed ``UnpodConfigError``
  that does not echo the token, raised before any request.
- ``page_size`` outside 1..1000 and pages below 1 are refused with a clear error.
- Envelope parsing survives fuzzing: arbitrary JSON, arbitrary bytes and deep nesting given to
  ``parse_response`` / ``parse_envelope`` / ``PageWalk.feed`` give a value or an ``UnpodError``
  (``UnpodProtocolError`` for a 200, the status's own error otherwise), never anything else.

Every "before any request" is checked against the simulator's request log.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from fakes import FakeTI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unpod_provider import protocol
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodConfigError,
    UnpodError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRateLimitError,
    UnpodServerError,
)
from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook
from unpod_provider.protocol import Envelope, PageWalk
from unpod_provider.testing import DEMO_AGENT_HANDLE, DEMO_SPACE_TOKEN, UnpodSimulator

GOOD_RUN = "R" + "0" * 32
BAD_IDENTIFIERS = [
    pytest.param("a/b", id="slash"),
    pytest.param("..", id="dotdot"),
    pytest.param("../../organizations", id="traversal"),
    pytest.param("%2F", id="encoded-slash"),
    pytest.param("SPACE%2F..%2Fx", id="encoded-traversal"),
    pytest.param(" SPACE", id="leading-space"),
    pytest.param("SPACE ", id="trailing-space"),
    pytest.param("SP ACE", id="inner-space"),
    pytest.param("SPACE\t", id="tab"),
    pytest.param("SPACE\r\nX-Injected: 1", id="crlf"),
    pytest.param("SPACE\n", id="lf"),
    pytest.param("\x00", id="nul"),
    pytest.param("ŚPACE", id="non-ascii"),
    pytest.param("SPACE\u200b", id="zero-width"),
    pytest.param("x" * 129, id="129-chars"),
    pytest.param("", id="empty"),
    pytest.param("a?page=2", id="query"),
    pytest.param("a#frag", id="fragment"),
    pytest.param(None, id="none"),
    pytest.param(42, id="int"),
]
#: Bad values a Jinja template can render to (a string).
BAD_RENDERED = [p for p in BAD_IDENTIFIERS if isinstance(p.values[0], str) and p.values[0]]


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    return unpod_simulator_shared


def no_requests(sim: UnpodSimulator) -> None:
    sent = [r for r in sim.requests if r["path"].startswith("/api/")]
    assert sent == [], f"{len(sent)} request(s) were sent: {sent[:2]}"


def test_128_characters_is_the_limit() -> None:
    assert protocol.validate_identifier("x" * 128, "space_token") == "x" * 128
    assert protocol.validate_identifier("A-b_9", "run_id") == "A-b_9"
    with pytest.raises(ValueError, match="space_token is 129 characters long"):
        protocol.validate_identifier("x" * 129, "space_token")


# --------------------------------------------------------------------------------------------
# Hook methods (sync and async)
# --------------------------------------------------------------------------------------------

DOCS = [{"name": "Ana", "contact_number": "+911234567890"}]

#: (name, call(hook, space_token, run_id)) for every sync hook method that takes an identifier.
SYNC_CALLS: list[tuple[str, Callable[[UnpodHook, Any, Any], Any]]] = [
    ("get_space", lambda h, s, r: h.get_space(s)),
    ("iter_space_tasks", lambda h, s, r: h.iter_space_tasks(s)),
    ("list_space_tasks", lambda h, s, r: h.list_space_tasks(s)),
    ("iter_space_runs", lambda h, s, r: h.iter_space_runs(s)),
    ("list_space_runs", lambda h, s, r: h.list_space_runs(s)),
    ("find_run", lambda h, s, r: h.find_run(s, r)),
    ("get_run", lambda h, s, r: h.get_run(s, r)),
    ("iter_run_tasks", lambda h, s, r: h.iter_run_tasks(s, r)),
    ("list_run_tasks", lambda h, s, r: h.list_run_tasks(s, r)),
    (
        "create_run",
        lambda h, s, r: h.create_run(s, pilot=DEMO_AGENT_HANDLE, context="Say hello", documents=DOCS),
    ),
]
TAKES_RUN_ID = {"find_run", "get_run", "iter_run_tasks", "list_run_tasks"}


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS)
@pytest.mark.parametrize(("method", "call"), SYNC_CALLS, ids=[name for name, _ in SYNC_CALLS])
def test_hook_refuses_a_bad_space_token_before_any_request(
    sim: UnpodSimulator, method: str, call: Callable[..., Any], bad: Any
) -> None:
    with UnpodHook(retry_limit=1) as hook, pytest.raises(ValueError, match="space_token"):
        call(hook, bad, GOOD_RUN)  # iter_*: refused at the call, not at the first next()
    no_requests(sim)


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS)
@pytest.mark.parametrize(
    ("method", "call"), [c for c in SYNC_CALLS if c[0] in TAKES_RUN_ID], ids=sorted(TAKES_RUN_ID)
)
def test_hook_refuses_a_bad_run_id_before_any_request(
    sim: UnpodSimulator, method: str, call: Callable[..., Any], bad: Any
) -> None:
    with UnpodHook(retry_limit=1) as hook, pytest.raises(ValueError, match="run_id"):
        call(hook, DEMO_SPACE_TOKEN, bad)
    no_requests(sim)


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS)
async def test_async_hook_refuses_bad_identifiers_before_any_request(sim: UnpodSimulator, bad: Any) -> None:
    async with UnpodAsyncHook() as hook:
        with pytest.raises(ValueError, match="space_token"):
            await hook.afind_run(bad, GOOD_RUN)
        with pytest.raises(ValueError, match="run_id"):
            await hook.afind_run(DEMO_SPACE_TOKEN, bad)
        with pytest.raises(ValueError, match="space_token"):
            await hook.aiter_space_runs(bad).__anext__()
    no_requests(sim)


@pytest.mark.parametrize("size", [0, -1, 1001, 10**9, True, 2.5, "50", None])
def test_page_size_outside_1_to_1000_is_refused_before_any_request(sim: UnpodSimulator, size: Any) -> None:
    with UnpodHook() as hook:
        for call in (
            lambda: hook.list_space_tasks(DEMO_SPACE_TOKEN, page_size=size),
            lambda: hook.iter_space_runs(DEMO_SPACE_TOKEN, page_size=size),
            lambda: hook.list_run_tasks(DEMO_SPACE_TOKEN, GOOD_RUN, page_size=size),
            lambda: hook.find_run(DEMO_SPACE_TOKEN, GOOD_RUN, page_size=size),
        ):
            with pytest.raises(ValueError, match="page_size must be"):
                call()
    with pytest.raises(ValueError, match="page_size must be"):
        PageWalk(page_size=size, id_key="task_id")
    no_requests(sim)


@pytest.mark.parametrize("page", [0, -1, -(10**6), True, 1.0, "1", None])
def test_pages_below_1_are_refused(page: Any) -> None:
    with pytest.raises(ValueError, match="page must be a positive integer"):
        protocol.page_params(page, 50)


def test_page_size_bounds_are_accepted() -> None:
    assert protocol.page_params(1, 1) == {"page": 1, "page_size": 1}
    assert protocol.page_params(7, 1000) == {"page": 7, "page_size": 1000}


# --------------------------------------------------------------------------------------------
# Operators and the sensor: validated after rendering, in execute
# --------------------------------------------------------------------------------------------


def _operators() -> list[tuple[str, Callable[..., Any], tuple[str, ...]]]:
    """(name, factory(space_token=, run_id=), the identifier parameters it takes)."""
    from unpod_provider.operators.unpod import (
        CreateRunOperator,
        GetSpaceOperator,
        ListRunTasksOperator,
        ListSpaceRunsOperator,
        ListSpaceTasksOperator,
    )
    from unpod_provider.sensors.unpod import RunCompletedSensor

    def sensor(deferrable: bool) -> Callable[..., Any]:
        def make(space_token: str, run_id: str) -> Any:
            return RunCompletedSensor(
                task_id="t", space_token=space_token, run_id=run_id, deferrable=deferrable, poke_interval=1
            )

        return make

    return [
        (
            "GetSpaceOperator",
            lambda space_token, run_id: GetSpaceOperator(task_id="t", space_token=space_token),
            ("space_token",),
        ),
        (
            "ListSpaceTasksOperator",
            lambda space_token, run_id: ListSpaceTasksOperator(task_id="t", space_token=space_token),
            ("space_token",),
        ),
        (
            "ListSpaceRunsOperator",
            lambda space_token, run_id: ListSpaceRunsOperator(task_id="t", space_token=space_token),
            ("space_token",),
        ),
        (
            "ListRunTasksOperator",
            lambda space_token, run_id: ListRunTasksOperator(
                task_id="t", space_token=space_token, run_id=run_id
            ),
            ("space_token", "run_id"),
        ),
        (
            "CreateRunOperator",
            lambda space_token, run_id: CreateRunOperator(
                task_id="t", space_token=space_token, pilot=DEMO_AGENT_HANDLE, context="Hi", documents=DOCS
            ),
            ("space_token",),
        ),
        ("RunCompletedSensor(poke)", sensor(False), ("space_token", "run_id")),
        ("RunCompletedSensor(deferrable)", sensor(True), ("space_token", "run_id")),
    ]


OPERATOR_CASES = [
    pytest.param(name, param, id=f"{name}-{param}") for name, _, params in _operators() for param in params
]


@pytest.mark.parametrize("bad", BAD_RENDERED)
@pytest.mark.parametrize(("name", "param"), OPERATOR_CASES)
def test_operators_and_sensor_refuse_a_bad_rendered_identifier_in_execute(
    sim: UnpodSimulator, name: str, param: str, bad: str
) -> None:
    """The bad value arrives through a template (known only after rendering)."""
    factory = {n: f for n, f, _ in _operators()}[name]
    values = {"space_token": DEMO_SPACE_TOKEN, "run_id": GOOD_RUN, param: "{{ params.value }}"}
    operator = factory(**values)  # no error at parse time: the template is not rendered yet
    context: dict[str, Any] = {"ti": FakeTI(), "params": {"value": bad}, "task": operator}
    operator.render_template_fields(context)
    assert getattr(operator, param) == bad
    with pytest.raises(ValueError, match=param):
        operator.execute(context)
    no_requests(sim)


@pytest.mark.parametrize("bad", [None, 42, ["SPACE"], {"a": 1}])
@pytest.mark.parametrize(("name", "param"), OPERATOR_CASES)
def test_operators_and_sensor_refuse_non_string_identifiers(
    sim: UnpodSimulator, name: str, param: str, bad: Any
) -> None:
    factory = {n: f for n, f, _ in _operators()}[name]
    values: dict[str, Any] = {"space_token": DEMO_SPACE_TOKEN, "run_id": GOOD_RUN}
    operator = factory(**values)
    setattr(operator, param, bad)  # e.g. an XComArg that resolved to something else
    with pytest.raises(ValueError, match=param):
        operator.execute({"ti": FakeTI(), "params": {}})
    no_requests(sim)


@pytest.mark.parametrize("bad", BAD_IDENTIFIERS)
def test_trigger_refuses_bad_identifiers(bad: Any) -> None:
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    with pytest.raises(ValueError, match="space_token"):
        RunCompletedTrigger(space_token=bad, run_id=GOOD_RUN)
    with pytest.raises(ValueError, match="run_id"):
        RunCompletedTrigger(space_token=DEMO_SPACE_TOKEN, run_id=bad)


def test_identifiers_are_percent_encoded_in_paths() -> None:
    # Only safe characters pass validation; the path segment is still encoded (belt and braces).
    assert protocol.run_tasks_path("A-b_9", "R_1-x") == "/api/v2/platform/spaces/A-b_9/runs/R_1-x/tasks/"


# --------------------------------------------------------------------------------------------
# Header injection through the connection
# --------------------------------------------------------------------------------------------

INJECTED_TOKEN = "UNPODSECRET0123456789abcdef\r\nX-Injected: yes"
CYRILLIC_TOKEN = "UNPODSECRET\u0442\u043e\u043a\u0435\u043d0123456789abcdef"


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("password", INJECTED_TOKEN),
        ("password", "UNPODSECRET0123456789abcdef\nX-Injected: yes"),
        ("password", "UNPODSECRET0123\x00456789abcdef"),
        ("org_handle", "acme\r\nX-Injected: yes"),
        ("org_handle", "acme\rX"),
        # Not sendable as a header at all (httpx raised UnicodeEncodeError, requests sent latin-1).
        ("password", CYRILLIC_TOKEN),
        ("password", "UNPODSECRET\u00e90123456789abcdef"),
        ("org_handle", "\u0430\u043a\u043c\u0435"),
        ("org_handle", "acm\u00e9"),
    ],
)
def test_crlf_or_non_ascii_in_token_or_org_handle_is_refused_without_echoing_the_token(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, field: str, value: str
) -> None:
    conn = sim.connection_dict()
    if field == "password":
        conn["password"] = value
    else:
        conn["extra"]["org_handle"] = value
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps(conn))
    token = conn["password"]
    with UnpodHook() as hook, pytest.raises(UnpodConfigError) as info:
        hook.get_space(DEMO_SPACE_TOKEN)
    message = str(info.value) + repr(info.value)
    assert "control character" in message or "non-ASCII" in message
    assert ("API token" if field == "password" else "org_handle") in message
    assert token not in message and "UNPODSECRET" not in message
    ok, text = UnpodHook().test_connection()
    assert not ok and "UNPODSECRET" not in text
    no_requests(sim)


@pytest.mark.parametrize("token", [INJECTED_TOKEN, CYRILLIC_TOKEN])
async def test_bad_token_is_refused_by_the_async_hook_and_the_trigger(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, token: str
) -> None:
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    conn = sim.connection_dict()
    conn["password"] = token
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps(conn))
    async with UnpodAsyncHook() as hook:
        with pytest.raises(UnpodConfigError) as info:
            await hook.afind_run(DEMO_SPACE_TOKEN, GOOD_RUN)
    assert "UNPODSECRET" not in str(info.value)
    trigger = RunCompletedTrigger(space_token=DEMO_SPACE_TOKEN, run_id=GOOD_RUN, poll_interval=0.01)
    events = [event.payload async for event in trigger.run()]
    assert [(e["status"], e["error_type"]) for e in events] == [("error", "UnpodConfigError")]
    assert "UNPODSECRET" not in json.dumps(events)
    no_requests(sim)


# --------------------------------------------------------------------------------------------
# Envelope parsing under fuzzing
# --------------------------------------------------------------------------------------------

JSON_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=20)
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
ITEMS = st.lists(
    st.dictionaries(st.sampled_from(["task_id", "run_id", "status", "output", "x"]), JSON_VALUES, max_size=4),
    max_size=5,
)
ENVELOPES = st.fixed_dictionaries(
    {},
    optional={
        "count": st.one_of(JSON_VALUES, st.integers(-5, 10**15), st.just(10**400)),
        "status_code": st.one_of(st.sampled_from([200, 206, 400, 500, "200", 200.0, True]), JSON_VALUES),
        "message": JSON_VALUES,
        "data": st.one_of(ITEMS, JSON_VALUES),
        "errors": JSON_VALUES,
        "detail": JSON_VALUES,
    },
)
STATUSES = st.sampled_from(
    [
        200,
        200,
        200,
        201,
        202,
        204,
        206,
        301,
        302,
        400,
        401,
        403,
        404,
        405,
        409,
        418,
        429,
        500,
        502,
        503,
        504,
        599,
    ]
)


def _deep(depth: int, open_: str = "[", close: str = "]") -> str:
    return open_ * depth + "1" + close * depth


BODIES = st.one_of(
    ENVELOPES.map(lambda v: json.dumps(v).encode()),
    JSON_VALUES.map(lambda v: json.dumps(v).encode()),
    ENVELOPES.map(lambda v: json.dumps(v).encode()).flatmap(
        lambda b: st.integers(0, max(0, len(b) - 1)).map(lambda n: b[:n])  # cut off
    ),
    st.binary(max_size=64),
    st.text(max_size=64).map(lambda t: t.encode("utf-8")),
    st.integers(1, 5000).map(lambda d: ('{"count": 1, "data": ' + _deep(d) + "}").encode()),
    st.integers(1, 5000).map(lambda d: ('{"count": 1, "data": [{"task_id": ' + _deep(d) + "}]}").encode()),
    st.integers(1, 3000).map(
        lambda d: ('{"status_code": 206, "message": "m", "errors": {"a": ' + _deep(d) + "}}").encode()
    ),
)
HEADERS = st.one_of(
    st.just({}),
    st.fixed_dictionaries(
        {"Retry-After": st.one_of(st.text(max_size=30), st.sampled_from(["1", "-5", "1e400", "nan"]))}
    ),
)

#: The error types a status may give besides UnpodProtocolError.
BY_STATUS: dict[int, tuple[type[UnpodError], ...]] = {
    206: (UnpodBusinessError,),
    400: (UnpodBadRequestError,),
    401: (UnpodAuthError,),
    403: (UnpodAuthError,),
    404: (UnpodNotFoundError,),
    429: (UnpodRateLimitError,),
    500: (UnpodServerError,),
    502: (UnpodServerError,),
    503: (UnpodServerError,),
    504: (UnpodServerError,),
    599: (UnpodServerError,),
}


@settings(
    max_examples=1500, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(
    status=STATUSES,
    body=BODIES,
    headers=HEADERS,
    expect_list=st.booleans(),
    method=st.sampled_from(["GET", "POST"]),
)
def test_parse_response_gives_an_envelope_or_a_typed_error(
    status: int, body: bytes, headers: dict[str, str], expect_list: bool, method: str
) -> None:
    try:
        envelope = protocol.parse_response(status, body, headers, expect_list=expect_list, method=method)
    except UnpodError as err:
        # A success status that is not a usable envelope: a protocol error, or a business error
        # when the envelope's own status_code says so. Any other status: that status's error.
        allowed = (UnpodProtocolError, UnpodBusinessError, *BY_STATUS.get(status, (UnpodError,)))
        assert isinstance(err, allowed), (status, type(err))
        if status in BY_STATUS:
            assert isinstance(err, BY_STATUS[status]), (status, type(err))
        str(err), repr(err)  # printable
        return
    assert status == 200 or (status == 201 and method == "POST")
    assert isinstance(envelope, Envelope) and envelope.status_code == 200
    if expect_list:
        assert isinstance(envelope.data, list) and all(isinstance(i, dict) for i in envelope.data)
        assert envelope.count is None or (isinstance(envelope.count, int) and 0 <= envelope.count <= 10**12)
        walk = PageWalk(page_size=5, id_key="task_id")
        try:
            fresh = walk.feed(1, envelope)
        except UnpodProtocolError:
            return
        assert len(fresh) <= len(envelope.data)
    else:
        assert isinstance(envelope.data, dict)


@settings(
    max_examples=500, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(payload=st.one_of(ENVELOPES, JSON_VALUES), expect_list=st.booleans())
def test_parse_envelope_gives_an_envelope_or_a_typed_error(payload: Any, expect_list: bool) -> None:
    try:
        envelope = protocol.parse_envelope(payload, expect_list=expect_list)
    except (UnpodProtocolError, UnpodBusinessError):
        return
    assert isinstance(envelope, Envelope)


@settings(
    max_examples=300, deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck)
)
@given(pages=st.lists(st.tuples(ITEMS, st.one_of(st.none(), st.integers(0, 50))), min_size=1, max_size=8))
def test_page_walk_never_loops_and_never_fails_untyped(
    pages: list[tuple[list[dict[str, Any]], int | None]],
) -> None:
    walk = PageWalk(page_size=5, id_key="task_id", what="tasks")
    seen: list[Any] = []
    for number, (items, count) in enumerate(pages, start=1):
        if walk.next_page() is None:
            break
        assert walk.next_page() == number
        try:
            seen += walk.feed(number, Envelope(data=items, count=count))
        except UnpodProtocolError:
            break
    keyed = [str(i["task_id"]) for i in seen if i.get("task_id") is not None]
    assert len(keyed) == len(set(keyed))  # never the same id twice


@pytest.mark.parametrize("depth", [10, 500, 990, 1000, 5000, 100_000])
@pytest.mark.parametrize("status", [200, 206, 500])
def test_deeply_nested_bodies_are_typed_errors_or_values(depth: int, status: int) -> None:
    for body in (
        _deep(depth),
        '{"count": 1, "status_code": 200, "data": [{"task_id": ' + _deep(depth) + "}]}",
        '{"status_code": 206, "message": "m", "data": {"errors": ' + _deep(depth, '{"a":', "}") + "}}",
        '{"status_code": 200, "data": ' + _deep(depth, '{"a":', "}") + "}",
    ):
        try:
            envelope = protocol.parse_response(status, body.encode(), expect_list=True)
            PageWalk(page_size=5, id_key="task_id").feed(1, envelope)
        except UnpodError:
            pass


def test_huge_and_odd_counts_are_protocol_errors() -> None:
    for count in (10**400, -1, 1.5, "10", True, float("inf"), [1], {"n": 1}):
        body = json.dumps({"count": count, "status_code": 200, "data": []}).encode()
        with pytest.raises(UnpodProtocolError, match="count"):
            protocol.parse_response(200, body, expect_list=True)
    for data in (None, {}, "x", 1, [1], [None], [[]]):
        body = json.dumps({"count": 1, "status_code": 200, "data": data}).encode()
        with pytest.raises(UnpodProtocolError):
            protocol.parse_response(200, body, expect_list=True)
    with pytest.raises(UnpodProtocolError, match="no 'data'"):
        protocol.parse_response(200, b'{"count": 0, "status_code": 200}', expect_list=True)
