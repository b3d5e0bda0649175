"""The fail-closed promises, in both hooks, over real HTTP against a simulator that misbehaves.

Each class of the "Fail closed" issue has its tests here: lists that disagree with themselves
(short, repeated, empty first page, dropping count) are retried and then a typed error, never a
shorter list; a token the server echoes (JSON, HTML, text, Location) is scrubbed from every
message, log line and event; a server that trickles its status line and headers meets the
deadline of the whole exchange; a decoded body past the size cap is refused while it is read
(a gzip bomb, a plain large body); certificate failures are their own typed error, never
retried, never "uncertain"; netrc, cookies, CA variables and proxies in the environment never
change who gets the token. The sync hook (requests) and the async hook (httpx) run the same
cases through one small adaptor, ``Side``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import set_conn, unpod_requests

from unpod_provider import protocol
from unpod_provider.exceptions import (
    UnpodBadRequestError,
    UnpodConfigError,
    UnpodCreateRunUncertainError,
    UnpodError,
    UnpodInconsistentListError,
    UnpodProtocolError,
    UnpodResponseTooLargeError,
    UnpodServerError,
    UnpodTimeoutError,
    UnpodTLSError,
)
from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook
from unpod_provider.protocol import RetryPolicy
from unpod_provider.testing import DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.triggers.unpod import RunCompletedTrigger

ATTEMPTS = 3
RUNS_PATH = f"/spaces/{DEMO_SPACE_TOKEN}/runs/"
CONTACTS = [{"name": "Rajesh Kumar", "contact_number": "+919988776655"}]
FAST = RetryPolicy(max_attempts=ATTEMPTS, base_delay=0.001)


# --------------------------------------------------------------------------------------------
# Both hooks behind one small interface
# --------------------------------------------------------------------------------------------


class Side:
    """One hook, sync or async, with the calls both have: the runs list and finding a run."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def runs(self, space: str = DEMO_SPACE_TOKEN, page_size: int = 10) -> list[dict[str, Any]]:
        if self.kind == "sync":
            with UnpodHook(retry_limit=ATTEMPTS, retry_delay=0.001) as hook:
                return hook.list_space_runs(space, page_size=page_size)

        async def read() -> list[dict[str, Any]]:
            async with UnpodAsyncHook(
                retry_policy=RetryPolicy(max_attempts=ATTEMPTS, base_delay=0.001)
            ) as hook:
                return [run async for run in hook.aiter_space_runs(space, page_size=page_size)]

        return asyncio.run(read())

    def find(self, run_id: str, space: str = DEMO_SPACE_TOKEN, page_size: int = 10) -> dict[str, Any] | None:
        if self.kind == "sync":
            with UnpodHook(retry_limit=ATTEMPTS, retry_delay=0.001) as hook:
                return hook.find_run(space, run_id, page_size=page_size)

        async def find() -> dict[str, Any] | None:
            async with UnpodAsyncHook(
                retry_policy=RetryPolicy(max_attempts=ATTEMPTS, base_delay=0.001)
            ) as hook:
                return await hook.afind_run(space, run_id, page_size=page_size)

        return asyncio.run(find())


@pytest.fixture(params=["sync", "async"])
def side(request: pytest.FixtureRequest) -> Side:
    return Side(request.param)


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    return unpod_simulator_shared


def ids(items: list[dict[str, Any]]) -> list[str]:
    return [str(item["run_id"]) for item in items]


def space_with_runs(sim: UnpodSimulator, n: int = 35) -> str:
    space = sim.add_space(n_tasks=0, n_runs=0, name="Fail-closed space")
    for _ in range(n):
        sim.add_run(space, n_tasks=1, final_status="completed")
    return space


# --------------------------------------------------------------------------------------------
# 1. Lists never come back short
# --------------------------------------------------------------------------------------------


def test_a_short_page_once_is_read_again_and_the_list_is_whole(sim: UnpodSimulator, side: Side) -> None:
    space = space_with_runs(sim)
    sim.inject("short_page", path=f"/spaces/{space}/runs/", query={"page": "2"}, keep=3)
    assert ids(side.runs(space)) == ids(sim.space_runs(space))
    asked = [r["query"]["page"] for r in unpod_requests(sim, "/runs/")]
    assert asked.count("2") == 2  # once short, once whole
    if side.kind == "async":
        assert asked == ["1", "2", "2", "3", "4"]


@pytest.mark.parametrize(
    ("kind", "params", "page", "says"),
    [
        ("short_page", {"keep": 3}, "2", "page 2 holds 3 items, but with 35 in all and 10 per page"),
        ("short_page", {"keep": 0}, "1", "page 1 is empty but says the total is 35"),
        ("repeat_page", {}, "2", "page 2 repeats 10 items already read"),
        ("drop_count", {"by": 8}, "3", "page 3 says the total is 27, an earlier page said 35"),
    ],
    ids=["short-page", "empty-first-page", "repeated-page", "dropping-count"],
)
def test_a_list_that_keeps_disagreeing_is_a_typed_error_not_a_shorter_list(
    sim: UnpodSimulator, side: Side, kind: str, params: dict[str, Any], page: str, says: str
) -> None:
    space = space_with_runs(sim)
    sim.inject(kind, path=f"/spaces/{space}/runs/", query={"page": page}, times=None, **params)
    with pytest.raises(UnpodInconsistentListError, match=says) as info:
        side.runs(space)
    assert info.value.retryable
    # Every attempt asked again (the sync hook's concurrent read also fetched it once ahead).
    ahead = 1 if side.kind == "sync" and page != "1" else 0
    assert [r["query"]["page"] for r in unpod_requests(sim, "/runs/")].count(page) == ATTEMPTS + ahead


def test_a_run_that_exists_is_never_not_found_because_a_page_was_short(
    sim: UnpodSimulator, side: Side
) -> None:
    space = space_with_runs(sim)
    wanted = sim.space_runs(space)[15]["run_id"]  # on page 2 of 10 runs a page
    sim.inject("short_page", path=f"/spaces/{space}/runs/", query={"page": "2"}, keep=2, times=None)
    with pytest.raises(UnpodInconsistentListError):
        side.find(wanted, space)
    sim.clear_faults()
    found = side.find(wanted, space)
    assert found is not None and found["run_id"] == wanted


def test_the_list_operator_fails_instead_of_exporting_a_short_file(
    sim: UnpodSimulator, tmp_path: Path
) -> None:
    from fakes import FakeTI

    from unpod_provider.operators.unpod import ListRunTasksOperator

    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=100, final_status="completed")
    sim.inject("short_page", path=f"/runs/{run_id}/tasks/", query={"page": "2"}, keep=27, times=None)
    out = tmp_path / "calls.jsonl"
    op = ListRunTasksOperator(
        task_id="calls",
        space_token=DEMO_SPACE_TOKEN,
        run_id=run_id,
        page_size=50,
        output_path=f"file://{out}",
        unpod_retry_limit=ATTEMPTS,
        unpod_retry_delay=0.001,
    )
    ti = FakeTI()
    with pytest.raises(UnpodInconsistentListError, match="page 2 holds 27 items"):
        op.execute({"ti": ti})  # type: ignore[arg-type]
    assert not out.exists() and not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# 2. A token the server echoes is never shown
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("body", ["json", "html", "text"])
def test_an_echoed_token_is_scrubbed_from_errors_and_retry_logs(
    sim: UnpodSimulator,
    side: Side,
    body: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    sim.inject("echo_token", path=RUNS_PATH, status=502, body=body, times=None)
    with caplog.at_level(logging.DEBUG), pytest.raises(UnpodServerError) as info:
        side.runs()
    error = info.value
    out, err = capfd.readouterr()
    logs = caplog.text + out + err
    shown = [
        str(error),
        repr(error),
        str(error.server_message),
        json.dumps(error.__dict__, default=str),
        logs,
    ]
    assert all(sim.token not in text for text in shown)
    assert "retrying in" in logs
    if body != "html":  # the HTML page's preview stops before the echo
        assert "Token ***" in str(error)  # the echo was read, and scrubbed


def test_an_echoed_token_in_a_location_header_is_scrubbed(sim: UnpodSimulator, side: Side) -> None:
    sim.inject("echo_token", path=RUNS_PATH, status=302, body="location", times=None)
    with pytest.raises(UnpodProtocolError, match="redirect") as info:
        side.runs()
    assert sim.token not in str(info.value) and "auth=***" in str(info.value)


def test_an_echoed_token_in_a_success_envelope_never_reaches_a_message(sim: UnpodSimulator) -> None:
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=3, final_status="completed")
    sim.inject("echo_token", path=f"/runs/{run_id}/tasks/", status=200, body="json", times=None)
    with UnpodHook() as hook:
        tasks = hook.list_run_tasks(DEMO_SPACE_TOKEN, run_id)
    assert len(tasks) == 3 and sim.token not in json.dumps(tasks)


def test_an_echoed_token_is_scrubbed_from_the_triggers_event(sim: UnpodSimulator) -> None:
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1, timeline=[("running", 0)])
    sim.inject("echo_token", path=RUNS_PATH, status=401, body="json", times=None)
    trigger = RunCompletedTrigger(space_token=DEMO_SPACE_TOKEN, run_id=run_id, poll_interval=0.01)

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in trigger.run()]

    (event,) = asyncio.run(collect())
    assert event["status"] == "error" and event["error_type"] == "UnpodAuthError"
    assert sim.token not in json.dumps(event) and "***" in event["message"]


def test_an_echoed_token_is_scrubbed_from_a_create_error(sim: UnpodSimulator) -> None:
    sim.inject("echo_token", path="/tasks/create/", method="POST", status=400, body="json")
    with UnpodHook() as hook, pytest.raises(UnpodBadRequestError) as info:
        hook.create_run(DEMO_SPACE_TOKEN, pilot="sales-bot", context="Follow up", documents=CONTACTS)
    assert sim.token not in str(info.value) and sim.token not in str(info.value.server_message)
    assert sim.create_count == 0


def test_a_password_in_a_bad_host_url_is_not_echoed() -> None:
    with pytest.raises(UnpodConfigError) as info:
        protocol.ClientConfig.from_connection_fields(
            conn_id="unpod_default",
            host="https://admin:hunter2secret@unpod.ai:notaport",
            password="t" * 40,
            extra={"org_handle": "acme"},
        )
    assert "hunter2secret" not in str(info.value) and "unpod.ai" in str(info.value)


# --------------------------------------------------------------------------------------------
# 3. The deadline covers the whole exchange: status line and headers too
# --------------------------------------------------------------------------------------------

#: One header byte every 0.02 s: each gap far within the 0.25 s read timeout, the whole status
#: line and headers far beyond the deadline of 4 read timeouts (1 s).
HEADER_TRICKLE = {"interval": 0.02, "chunk_bytes": 1}
READ_TIMEOUT = 0.25


def test_headers_sent_byte_by_byte_end_at_the_deadline(
    sim: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, timeout=READ_TIMEOUT)
    sim.inject("header_trickle", path=RUNS_PATH, times=None, **HEADER_TRICKLE)
    with pytest.raises(UnpodTimeoutError, match="whole exchange took over 1s") as info:
        side.runs()
    assert info.value.request_sent is True and info.value.retryable
    assert len(unpod_requests(sim, "/runs/")) == ATTEMPTS


def test_a_create_whose_answer_trickles_is_uncertain_and_sent_once(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, timeout=READ_TIMEOUT)
    sim.inject("header_trickle", path="/tasks/", method="POST", **HEADER_TRICKLE)
    with UnpodHook() as hook, pytest.raises(UnpodCreateRunUncertainError, match="whole exchange"):
        hook.create_run(DEMO_SPACE_TOKEN, pilot="sales-bot", context="Follow up", documents=CONTACTS)
    assert len([r for r in sim.requests if r["method"] == "POST"]) == 1


def test_the_test_button_is_bounded_by_its_own_deadline(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, timeout=READ_TIMEOUT)
    sim.inject("header_trickle", path="/organizations/", times=None, **HEADER_TRICKLE)
    ok, message = UnpodHook().test_connection()
    assert not ok and "whole exchange took over 0.25s" in message
    assert len(unpod_requests(sim, "/organizations/")) == 2  # the Test's own retry limit


# --------------------------------------------------------------------------------------------
# 4. A size cap on every decoded response, enforced while reading
# --------------------------------------------------------------------------------------------


def test_a_gzip_bomb_is_refused_while_it_inflates(
    sim: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, max_response_mb=1)
    sim.inject("gzip_bomb", path=RUNS_PATH, inflated_bytes=1 << 30, times=None)
    tracemalloc.start()
    try:
        with pytest.raises(UnpodResponseTooLargeError, match="larger than the cap of 1 MB") as info:
            side.runs()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert not info.value.retryable
    assert len(unpod_requests(sim, "/runs/")) == 1
    assert peak < 128 << 20  # far below the 1 GiB the body inflates to


@pytest.mark.parametrize("chunked", [False, True])
def test_a_plain_body_over_the_cap_is_refused(
    sim: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch, chunked: bool
) -> None:
    set_conn(monkeypatch, sim, max_response_mb=1)
    sim.inject("big_body", path=RUNS_PATH, bytes=64 << 20, chunked=chunked, times=None)
    with pytest.raises(UnpodResponseTooLargeError):
        side.runs()
    assert len(unpod_requests(sim, "/runs/")) == 1


def test_a_create_answer_over_the_cap_is_uncertain(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, sim, max_response_mb=1)
    sim.inject("big_body", path="/tasks/create/", method="POST", bytes=8 << 20)
    with UnpodHook() as hook, pytest.raises(UnpodCreateRunUncertainError, match="larger than the cap"):
        hook.create_run(DEMO_SPACE_TOKEN, pilot="sales-bot", context="Follow up", documents=CONTACTS)


@pytest.mark.parametrize("value", [0, -1, "lots", True, 1e9])
def test_a_bad_size_cap_is_a_config_error(value: Any) -> None:
    with pytest.raises(UnpodConfigError, match="max_response_mb"):
        protocol.ClientConfig.from_connection_fields(
            conn_id="unpod_default",
            host=None,
            password="t" * 40,
            extra={"org_handle": "acme", "max_response_mb": value},
        )


# --------------------------------------------------------------------------------------------
# 5. TLS: what the connection says is what happens
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_sim() -> Iterator[UnpodSimulator]:
    with UnpodSimulator(tls=True) as sim:
        yield sim


@pytest.fixture
def tls(tls_sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch) -> UnpodSimulator:
    tls_sim.reset()
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)
    return tls_sim


def test_an_untrusted_certificate_is_a_tls_error_not_retried(
    tls: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, tls)
    with pytest.raises(UnpodTLSError, match="TLS handshake") as info:
        side.runs()
    assert not info.value.retryable and info.value.request_sent is False
    assert unpod_requests(tls) == []  # no request ever reached the server


def test_a_create_with_an_untrusted_certificate_is_not_uncertain(
    tls: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    set_conn(monkeypatch, tls)
    with UnpodHook() as hook, pytest.raises(UnpodTLSError) as info:
        hook.create_run(DEMO_SPACE_TOKEN, pilot="sales-bot", context="Follow up", documents=CONTACTS)
    assert not isinstance(info.value, UnpodCreateRunUncertainError)
    assert tls.create_count == 0


def test_verify_false_wins_over_the_ca_variables_of_the_environment(
    tls: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import certifi

    set_conn(monkeypatch, tls, verify=False)
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, certifi.where())  # a bundle that does not trust the simulator
    assert ids(side.runs()) == ids(tls.space_runs(DEMO_SPACE_TOKEN))


def test_a_ca_bundle_comes_from_the_connection_never_the_environment(
    tls: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE"):
        monkeypatch.setenv(name, str(tls.ca_file))
    set_conn(monkeypatch, tls)
    with pytest.raises(UnpodTLSError):
        side.runs()
    set_conn(monkeypatch, tls, ca_bundle=str(tls.ca_file))
    assert ids(side.runs()) == ids(tls.space_runs(DEMO_SPACE_TOKEN))


# --------------------------------------------------------------------------------------------
# 6. The environment never changes who gets the token
# --------------------------------------------------------------------------------------------


def test_a_netrc_entry_for_the_host_never_replaces_the_token(
    sim: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login intruder password stolen\n", encoding="utf-8")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    monkeypatch.setenv("HOME", str(tmp_path))
    side.runs()
    assert {r["headers"].get("authorization") for r in unpod_requests(sim)} == {"Token ***"}


def test_cookies_from_the_server_are_never_sent_back(sim: UnpodSimulator, side: Side) -> None:
    sim.inject(
        "extra_headers", path=RUNS_PATH, headers={"Set-Cookie": "sessionid=abc123; Path=/"}, times=None
    )
    side.runs(page_size=3)  # several pages over one client
    logged = unpod_requests(sim, "/runs/")
    assert len(logged) > 1 and all("cookie" not in r["headers"] for r in logged)


class RecordingProxy:
    """A loopback TCP listener that records what arrives and answers 502 (a proxy that fails)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.received: list[bytes] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data and (chunk := conn.recv(4096)):
                        data += chunk
                    self.received.append(data)
                    conn.sendall(
                        b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def proxy() -> Iterator[RecordingProxy]:
    recorder = RecordingProxy()
    yield recorder
    recorder.close()


def test_a_loopback_server_is_never_reached_through_a_proxy(
    sim: UnpodSimulator, side: Side, monkeypatch: pytest.MonkeyPatch, proxy: RecordingProxy
) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, proxy.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert ids(side.runs()) == ids(sim.space_runs(DEMO_SPACE_TOKEN))
    assert proxy.received == []


def test_an_https_server_is_reached_through_the_environments_proxy_by_connect_only(
    side: Side, monkeypatch: pytest.MonkeyPatch, proxy: RecordingProxy
) -> None:
    token = "ProxySeesNoToken0123456789abcdef01234567"
    conn = {"conn_type": "unpod", "host": "https://unpod.invalid", "password": token}
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps({**conn, "extra": {"org_handle": "acme"}}))
    monkeypatch.setenv("HTTPS_PROXY", proxy.url)
    monkeypatch.delenv("https_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(UnpodError):  # the proxy refuses the tunnel
        side.runs()
    assert proxy.received and all(data.startswith(b"CONNECT unpod.invalid:443 ") for data in proxy.received)
    assert all(token.encode() not in data for data in proxy.received)


@pytest.mark.parametrize(
    ("base_url", "environ", "expected"),
    [
        ("https://unpod.ai", {"HTTPS_PROXY": "http://proxy:3128"}, "http://proxy:3128"),
        ("https://unpod.ai", {"https_proxy": "proxy:3128"}, "http://proxy:3128"),
        ("https://unpod.ai", {"ALL_PROXY": "http://u:p@proxy:3128/x"}, "http://u:p@proxy:3128"),
        ("https://unpod.ai", {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": ".unpod.ai"}, None),
        ("https://api.unpod.ai", {"HTTPS_PROXY": "http://proxy:3128", "no_proxy": "unpod.ai"}, None),
        ("https://unpod.ai", {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "*"}, None),
        (
            "https://unpod.ai",
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "unpod.ai:8443"},
            "http://proxy:3128",
        ),
        ("http://unpod.example", {"HTTP_PROXY": "http://proxy:3128", "ALL_PROXY": "http://proxy:3128"}, None),
        ("https://127.0.0.1:8443", {"HTTPS_PROXY": "http://proxy:3128"}, None),
        ("https://unpod.ai", {}, None),
    ],
)
def test_which_requests_use_a_proxy(base_url: str, environ: dict[str, str], expected: str | None) -> None:
    assert protocol.proxy_for(base_url, environ) == expected


def test_a_socks_proxy_is_a_config_error_that_hides_its_password() -> None:
    with pytest.raises(UnpodConfigError, match="http:// or https://") as info:
        protocol.proxy_for("https://unpod.ai", {"HTTPS_PROXY": "socks5://user:pw123@proxy:1080"})
    assert "pw123" not in str(info.value)


# --------------------------------------------------------------------------------------------
# The bounded body reader both hooks share
# --------------------------------------------------------------------------------------------


def _compressed(data: bytes, wbits: int) -> bytes:
    import zlib

    encoder = zlib.compressobj(9, zlib.DEFLATED, wbits)
    return encoder.compress(data) + encoder.flush()


@pytest.mark.parametrize(
    ("encoding", "wbits"), [("gzip", 31), ("x-gzip", 31), ("deflate", 15), ("deflate", -15), ("identity", 0)]
)
def test_the_body_reader_decodes_what_it_asks_for(encoding: str, wbits: int) -> None:
    from unpod_provider.hooks._transport import BodyReader

    data = json.dumps({"data": ["x" * 1000] * 500}).encode()
    body = data if encoding == "identity" else _compressed(data, wbits)
    reader = BodyReader(encoding, cap=len(data))
    for start in range(0, len(body), 777):  # as the network delivers it
        reader.feed(body[start : start + 777])
    assert reader.finish() == data


def test_the_body_reader_stops_at_the_cap_while_inflating() -> None:
    from unpod_provider.hooks._transport import BodyReader, _TooLarge

    bomb = _compressed(b"a" * (64 << 20), 31)
    reader = BodyReader("gzip", cap=1 << 20)
    with pytest.raises(_TooLarge):
        reader.feed(bomb)
    assert len(reader.data) <= 1 << 20


@pytest.mark.parametrize(
    ("encoding", "body", "says"),
    [
        ("gzip", _compressed(b"{}" * 1000, 31)[:-20], "ended early"),
        ("gzip", b"\x1f\x8b not really gzip", "not valid gzip"),
        ("br", b"whatever", "was not asked for"),
    ],
)
def test_the_body_reader_refuses_what_is_not_what_it_says(encoding: str, body: bytes, says: str) -> None:
    from unpod_provider.hooks._transport import BodyReader, _Undecodable

    with pytest.raises(_Undecodable, match=says):
        reader = BodyReader(encoding, cap=1 << 20)
        reader.feed(body)
        reader.finish()


def test_a_body_that_is_not_what_its_encoding_says_is_a_typed_error_in_both_hooks(
    sim: UnpodSimulator, side: Side
) -> None:
    sim.inject(
        "http",
        path=RUNS_PATH,
        status=200,
        body="plainly not gzip",
        headers={"Content-Encoding": "gzip"},
        times=None,
    )
    with pytest.raises(UnpodError, match="could not be decoded"):
        side.runs()
