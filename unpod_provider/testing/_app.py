"""The simulator's ASGI application.

Three layers:

- FastAPI routes for the Unpod API (paths written out, behaviour of the real server: envelopes,
  206/400/401/404 bodies, pagination, create-run validation, none of it taken from the client);
- FastAPI routes for the ``/_sim/`` control API (no Unpod token needed);
- a raw ASGI middleware in front of both that logs every Unpod request (never the token),
  redirects slash-less paths (301, like Django's APPEND_SLASH) and injects faults, including
  the ones a framework cannot express: a cut body, a connection closed mid-response.

Imported only when a server starts (FastAPI is not imported by ``unpod_provider.testing``).
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import json
import logging
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fastapi import FastAPI, Request
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from unpod_provider.testing._faults import Fault
from unpod_provider.testing._state import SimState

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTROL_PREFIX = "/_sim"
LOGGED_HEADERS = ("org-handle", "accept", "content-type", "user-agent", "cookie")
MAX_LOGGED_BODY = 1_000_000

#: The server's API prefix and routes, written out here: the simulator is an oracle for the
#: client, so it takes none of the client's path builders (a wrong client path must fail).
API_PREFIX = "/api/v2/platform/"
#: The real server's page size when a request sends none.
SERVER_DEFAULT_PAGE_SIZE = 50
ROUTES: dict[str, str] = {
    "organizations": "/api/v2/platform/organizations/",
    "spaces": "/api/v2/platform/spaces/",
    "space": "/api/v2/platform/spaces/{space_token}/",
    "space_tasks": "/api/v2/platform/spaces/{space_token}/tasks/",
    "space_runs": "/api/v2/platform/spaces/{space_token}/runs/",
    "run_tasks": "/api/v2/platform/spaces/{space_token}/runs/{run_id}/tasks/",
    "create_docs": "/api/v2/platform/spaces/{space_token}/tasks/create/",
    "create_server": "/api/v2/platform/spaces/{space_token}/tasks/",
}

DJANGO_404_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Not Found</title>\n</head>\n<body>\n'
    "  <h1>Not Found</h1><p>The requested resource was not found on this server.</p>\n</body>\n</html>\n"
)
DJANGO_500_HTML = (
    '<!doctype html>\n<html lang="en">\n<head>\n  <title>Server Error (500)</title>\n</head>\n<body>\n'
    "  <h1>Server Error (500)</h1><p></p>\n</body>\n</html>\n"
)
REASONS = {
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Time-out",
}


def nginx_html(status: int) -> str:
    """The error page nginx sends for ``status`` (what a proxy in front of Unpod answers)."""
    title = f"{status} {REASONS.get(status, 'Error')}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
        "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
    )


def dumps(payload: Any) -> bytes:
    """JSON like DRF renders it: compact, UTF-8, non-ASCII kept."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response rendered like DRF."""
    return Response(
        content=dumps(payload), status_code=status, media_type="application/json", headers=headers
    )


class _PageBeforeFirst(Exception):
    """``page`` < 1 on a list: the real server answers 206 "Tasks Fetch Failed"."""


class ConnectionDropped(Exception):
    """Raised to make uvicorn close a connection when the transport is not reachable."""


class _QuietDroppedConnections(logging.Filter):
    """Hide uvicorn's complaints about the connections the simulator drops on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        if str(record.msg).startswith("ASGI callable returned without completing response"):
            return False
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, ConnectionDropped)


def _install_log_filter() -> None:
    """Install the filter once per process."""
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _QuietDroppedConnections) for f in logger.filters):
        logger.addFilter(_QuietDroppedConnections())


def _int_param(value: str | None, default: int) -> int:
    """The server's parsing: an integer, else the default (never an error)."""
    if value is None:
        return default
    try:
        return int(value.strip())
    except ValueError:
        return default


def _redact_authorization(value: str) -> str:
    """``"Token abc..."`` -> ``"Token ***"``; the credential itself is never kept."""
    parts = value.strip().split(None, 1)
    if len(parts) == 2 and parts[0].isalpha() and len(parts[0]) <= 16:
        return f"{parts[0]} ***"
    return "***"


# ============================================================================================
# The ASGI middleware: log, redirect, faults
# ============================================================================================


class SimulatorMiddleware:
    """Outermost ASGI app: request log, slash redirect, fault injection for non-control paths."""

    def __init__(self, app: ASGIApp, state: SimState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Log the request, apply faults, serve (or answer as a fault says)."""
        path = scope.get("path", "")
        if scope["type"] != "http" or path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/"):
            await self.app(scope, receive, send)
            return
        state = self.state
        method = scope["method"]
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        entry: dict[str, Any] = {
            "time": time.time(),
            "method": method,
            "path": path,
            "query": {k: self._scrub(v) for k, v in query.items()},
            "headers": self._logged_headers(headers),
            "status": None,
            "faults": [],
            "duration": None,
            "body": None,
        }
        state.log_request(entry)
        started = time.monotonic()
        body = bytearray()

        async def logged_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                body.extend(message.get("body", b""))
                if not message.get("more_body", False) and body:
                    state.update_request(entry, body=self._logged_body(bytes(body), headers))
            return message

        async def logged_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                state.update_request(entry, status=message["status"])
            await send(message)

        try:
            if state.latency > 0:
                await asyncio.sleep(state.latency)
            pre, answer = state.take_faults(method, path, query)
            kinds = [f.kind for f in pre] + ([answer.kind] if answer else [])
            state.update_request(entry, faults=kinds)
            for fault in pre:
                await self._pre(fault, path)
            if answer is None:
                await self._serve(scope, logged_receive, logged_send)
            else:
                await self._answer(answer, scope, logged_receive, logged_send, send, entry)
        finally:
            state.update_request(entry, duration=round(time.monotonic() - started, 6))

    # -- logging helpers ---------------------------------------------------------------------

    def _scrub(self, value: str) -> str:
        """Replace the API token in a logged value."""
        token = self.state.token
        return value.replace(token, "***") if token and token in value else value

    def _logged_headers(self, headers: dict[str, str]) -> dict[str, str]:
        """The headers kept in the log, Authorization reduced to its scheme."""
        logged = {name: self._scrub(headers[name]) for name in LOGGED_HEADERS if name in headers}
        if "authorization" in headers:
            logged["authorization"] = _redact_authorization(headers["authorization"])
        return logged

    def _logged_body(self, raw: bytes, headers: dict[str, str]) -> Any:
        """The request body for the log (JSON decoded when possible, token scrubbed)."""
        if len(raw) > MAX_LOGGED_BODY:
            return {"_size": len(raw)}
        text = self._scrub(raw.decode("utf-8", "replace"))
        if "json" in headers.get("content-type", ""):
            try:
                return json.loads(text)
            except ValueError:
                pass
        return text

    # -- normal serving ----------------------------------------------------------------------

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The API itself, behind Django's APPEND_SLASH: slash-less paths get a 301."""
        path = scope["path"]
        if path.startswith(API_PREFIX.rstrip("/")) and not path.endswith("/"):
            raw_path = scope.get("raw_path") or path.encode("utf-8")
            location = raw_path + b"/"
            if scope.get("query_string"):
                location += b"?" + scope["query_string"]
            await _send_all(
                send, 301, b"", [(b"location", location), (b"content-type", b"text/html; charset=utf-8")]
            )
            return
        await self.app(scope, receive, send)

    async def _capture(self, scope: Scope, receive: Receive) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Run the API and keep its answer instead of sending it (to cut or delay it)."""
        status = 500
        headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def capture_send(message: Message) -> None:
            nonlocal status, headers
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(bytes(message.get("body", b"")))

        await self._serve(scope, receive, capture_send)
        return status, headers, b"".join(chunks)

    # -- faults ------------------------------------------------------------------------------

    async def _pre(self, fault: Fault, path: str) -> None:
        """Apply a pre fault (latency, append) before the request is served."""
        params = fault.params
        if fault.kind == "latency":
            await asyncio.sleep(params["seconds"])
        elif fault.kind == "append":
            self._append(params, path)

    def _append(self, params: dict[str, Any], path: str) -> None:
        """Add items to the request's space (or run) before it is answered."""
        if not path.startswith(API_PREFIX):
            return
        parts = path[len(API_PREFIX) :].strip("/").split("/")
        if len(parts) < 2 or parts[0] != "spaces" or self.state.space(parts[1]) is None:
            return
        token, n = parts[1], params["n"]
        run_tasks = len(parts) >= 5 and parts[2] == "runs" and parts[4] == "tasks"
        items = params["items"] or ("runs" if parts[2:] == ["runs"] else "tasks")
        if run_tasks and items == "tasks":
            run = self.state.runs.get(parts[3])
            if run is not None and run.space.token == token:
                self.state.append_run_tasks(parts[3], n)
            return
        self.state.append_items(
            token, n, items=items, status=params["status"], tasks_per_run=params["tasks_per_run"]
        )

    async def _answer(
        self,
        fault: Fault,
        scope: Scope,
        receive: Receive,
        send: Send,
        raw_send: Send,
        entry: dict[str, Any] | None = None,
    ) -> None:
        """Answer the request as the fault says (``entry``: its log entry, for raw answers)."""
        kind, p = fault.kind, fault.params
        if kind == "slow":
            if p["stage"] == "headers":
                await asyncio.sleep(p["seconds"])
                await self._serve(scope, receive, send)
                return
            status, headers, body = await self._capture(scope, receive)
            half = len(body) // 2
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body[:half], "more_body": True})
            await asyncio.sleep(p["seconds"])
            await send({"type": "http.response.body", "body": body[half:], "more_body": False})
        elif kind == "rate_limit":
            extra: list[tuple[bytes, bytes]] = []
            retry_after = _retry_after_value(p["retry_after"], p["retry_after_date"])
            if retry_after is not None:
                extra.append((b"retry-after", retry_after.encode("latin-1")))
            payload, ctype = _error_body(429, p["body"], {"detail": "Request was throttled."})
            await _send_all(send, 429, payload, [(b"content-type", ctype), *extra])
        elif kind == "server_error":
            status = p["status"]
            extra = []
            retry_after = _retry_after_value(p["retry_after"], None)
            if retry_after is not None:
                extra.append((b"retry-after", retry_after.encode("latin-1")))
            fallback = {"message": REASONS[status], "status_code": status}
            payload, ctype = _error_body(status, p["body"], fallback)
            await _send_all(send, status, payload, [(b"content-type", ctype), *extra])
        elif kind == "http":
            body_value = p["body"]
            if isinstance(body_value, (dict, list)):
                payload = dumps(body_value)
            elif isinstance(body_value, bytes):
                payload = body_value
            else:
                payload = str(body_value or "").encode("utf-8")
            headers = [(b"content-type", str(p["content_type"]).encode("latin-1"))]
            headers += [
                (str(k).lower().encode("latin-1"), str(v).encode("latin-1"))
                for k, v in (p["headers"] or {}).items()
            ]
            await _send_all(send, p["status"], payload, headers)
        elif kind == "business_error":
            business: dict[str, Any] = {"status_code": 206, "message": p["message"], "data": {}}
            if p["errors"] is not None:
                business = {**business, "data": {"errors": p["errors"]}, "errors": p["errors"]}
            await _send_all(send, 206, dumps(business), [(b"content-type", b"application/json")])
        elif kind == "empty_body":
            await _send_all(send, p["status"], b"", [(b"content-type", b"application/json")])
        elif kind == "truncated_json":
            status, headers, body = await self._capture(scope, receive)
            keep = _cut_size(len(body), p)
            await _send_all(send, status, body[:keep], _without_length(headers))
        elif kind == "drop_connection":
            status, headers, body = await self._capture(scope, receive)
            keep = _cut_size(len(body), p)
            declared = max(len(body), keep + 1)
            headers = [*_without_length(headers), (b"content-length", str(declared).encode())]
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body[:keep], "more_body": True})
            await _close_connection(raw_send)
        elif kind == "trickle":
            status, headers, body = await self._capture(scope, receive)
            hung_up = asyncio.ensure_future(_until_disconnect(receive))
            try:
                await send({"type": "http.response.start", "status": status, "headers": headers})
                step = p["chunk_bytes"]
                for offset in range(0, len(body), step):
                    more = offset + step < len(body)
                    chunk = body[offset : offset + step]
                    await send({"type": "http.response.body", "body": chunk, "more_body": more})
                    if more:
                        await asyncio.sleep(p["interval"])
                        if hung_up.done():
                            return
            finally:
                hung_up.cancel()
        elif kind == "disconnect":
            await self._capture(scope, receive)  # the request reached the server; the answer is lost
            await _close_connection(raw_send, abort=True)
        elif kind in ("short_page", "drop_count"):
            status, headers, body = await self._capture(scope, receive)
            envelope = _list_envelope(body)
            if envelope is not None:
                envelope = _short_page(envelope, p) if kind == "short_page" else _drop_count(envelope, p)
                body = dumps(envelope)
            await _send_all(send, status, body, headers)
        elif kind == "repeat_page":
            await self._serve(_previous_page_scope(scope), receive, send)
        elif kind == "echo_token":
            await self._echo_token(p, scope, receive, send)
        elif kind == "header_trickle":
            status, headers, body = await self._capture(scope, receive)
            if entry is not None:
                self.state.update_request(entry, status=status)
            await _header_trickle(p, status, headers, body, receive, send, raw_send)
        elif kind == "gzip_bomb":
            await _gzip_bomb(p, receive, send)
        elif kind == "big_body":
            await _big_body(p, receive, send)
        elif kind == "extra_headers":
            status, headers, body = await self._capture(scope, receive)
            headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in p["headers"].items()]
            await _send_all(send, status, body, headers)
        else:  # pragma: no cover - validate_params refuses unknown kinds
            raise ValueError(f"unknown fault kind {kind!r}")

    async def _echo_token(self, p: dict[str, Any], scope: Scope, receive: Receive, send: Send) -> None:
        """A server that reflects the request's Authorization value (a leak the client must not log)."""
        value = _request_header(scope, b"authorization")
        parts = value.split(None, 1)
        bare = parts[1] if len(parts) == 2 else value
        status, body_kind = p["status"], p["body"]
        if status == 200 and body_kind == "json":
            real_status, headers, body = await self._capture(scope, receive)
            envelope = _json_value(body)
            if isinstance(envelope, dict):
                body = dumps({**envelope, "message": f"echo: {value}"})
            await _send_all(send, real_status, body, headers)
            return
        title = f"{_reason(status)} ({status})"
        extra: list[tuple[bytes, bytes]] = []
        if body_kind == "json":
            payload = dumps(
                {
                    "message": f"bad auth header: {value}",
                    "detail": value,
                    "status_code": status,
                    "errors": {"token": [bare]},
                }
            )
            ctype = b"application/json"
        elif body_kind == "html":
            payload = (
                f'<!doctype html>\n<html lang="en">\n<head>\n  <title>{title}</title>\n</head>\n<body>\n'
                f"  <h1>{title}</h1><p>Invalid HTTP_AUTHORIZATION header: {value}</p>\n</body>\n</html>\n"
            ).encode()
            ctype = b"text/html; charset=utf-8"
        elif body_kind == "text":
            payload = f"{title}: bad auth header: {value}\n".encode()
            ctype = b"text/plain; charset=utf-8"
        else:  # location
            location = f"https://elsewhere.example/login?auth={bare}"
            extra.append((b"location", location.encode("latin-1")))
            payload = (
                f'<html><body><p>Login again: <a href="{location}">{location}</a></p>'
                f"<p>Rejected Authorization: {value}</p></body></html>\n"
            ).encode()
            ctype = b"text/html; charset=utf-8"
        await _send_all(send, status, payload, [(b"content-type", ctype), *extra])


# -- fault helpers -------------------------------------------------------------------------

#: gzip bombs by inflated size, built once per process (a 1 GiB bomb takes seconds to build)
_GZIP_BOMBS: dict[int, bytes] = {}
_GZIP_BOMBS_LOCK = threading.Lock()
_MIB = 1 << 20
_BOMB_CHUNK = 64 * 1024
_PADDED_PREFIX = b'{"count":0,"status_code":200,"message":"'
_PADDED_SUFFIX = b'","data":[]}'


def _reason(status: int) -> str:
    """The reason phrase of a status code ("Error" when unknown)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _request_header(scope: Scope, name: bytes) -> str:
    """The first value of a request header ("" when absent)."""
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return ""


def _json_value(body: bytes) -> Any:
    """The body parsed as JSON, or None."""
    try:
        return json.loads(body)
    except ValueError:
        return None


def _list_envelope(body: bytes) -> dict[str, Any] | None:
    """The ``{"count", ..., "data": [...]}`` envelope of a list answer, or None (not one)."""
    envelope = _json_value(body)
    if isinstance(envelope, dict) and "count" in envelope and isinstance(envelope.get("data"), list):
        return envelope
    return None


def _short_page(envelope: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """``data`` cut to its first ``keep`` items (or ``fraction`` of them), count unchanged."""
    data = envelope["data"]
    keep = p["keep"] if p["keep"] is not None else int(len(data) * p["fraction"])
    return {**envelope, "data": data[:keep]}


def _drop_count(envelope: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    """``count`` set ``to`` / lowered ``by`` / halved (never below 0); a non-integer count is kept."""
    count = envelope["count"]
    if isinstance(count, bool) or not isinstance(count, int):
        return envelope
    if p["to"] is not None:
        lowered = p["to"]
    elif p["by"] is not None:
        lowered = count - p["by"]
    else:
        lowered = count // 2
    return {**envelope, "count": max(0, lowered)}


def _previous_page_scope(scope: Scope) -> Scope:
    """A copy of the scope asking for page N-1 (the scope itself for page 1)."""
    pairs = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
    page = _int_param(dict(pairs).get("page"), 1)
    if page <= 1:
        return scope
    pairs = [(key, str(page - 1) if key == "page" else value) for key, value in pairs]
    return {**scope, "query_string": urlencode(pairs).encode("latin-1")}


async def _header_trickle(
    p: dict[str, Any],
    status: int,
    headers: list[tuple[bytes, bytes]],
    body: bytes,
    receive: Receive,
    send: Send,
    raw_send: Send,
) -> None:
    """Write the answer as raw HTTP/1.1, its head ``chunk_bytes`` at a time, then close.

    The bytes go straight to uvicorn's transport (ASGI cannot pace the head). Writing stops as
    soon as the client hangs up. The request cycle is marked as started first, so uvicorn never
    answers a second time. Without a reachable transport the answer is sent normally.
    """
    owner: Any = getattr(raw_send, "__self__", None)
    transport: Any = getattr(owner, "transport", None)
    if owner is None or not (hasattr(transport, "write") and hasattr(transport, "is_closing")):
        await _send_all(send, status, body, headers)
        return
    skipped = (b"content-length", b"connection", b"date", b"transfer-encoding")
    lines = [f"HTTP/1.1 {status} {_reason(status)}\r\n".encode("latin-1")]
    lines += [name + b": " + value + b"\r\n" for name, value in headers if name.lower() not in skipped]
    lines += [
        b"date: " + email.utils.formatdate(usegmt=True).encode("latin-1") + b"\r\n",
        b"content-length: " + str(len(body)).encode("latin-1") + b"\r\n",
        b"connection: close\r\n\r\n",
    ]
    head = b"".join(lines)
    owner.response_started = True  # uvicorn must not send a 500 of its own after this
    hung_up = asyncio.ensure_future(_until_disconnect(receive))

    def gone() -> bool:
        """Whether the client has hung up (stop writing)."""
        return hung_up.done() or bool(transport.is_closing())

    try:
        step = p["chunk_bytes"]
        for offset in range(0, len(head), step):
            if gone():
                return
            transport.write(head[offset : offset + step])
            await asyncio.sleep(p["interval"])
        if gone():
            return
        transport.write(body)
    finally:
        hung_up.cancel()
    await _close_connection(raw_send)


def gzip_bomb_body(inflated_bytes: int) -> bytes:
    """Gzip bytes inflating to a ``inflated_bytes``-long JSON envelope (cached per size)."""
    with _GZIP_BOMBS_LOCK:
        cached = _GZIP_BOMBS.get(inflated_bytes)
        if cached is None:
            compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
            pieces = [compressor.compress(_PADDED_PREFIX)]
            remaining = max(0, inflated_bytes - len(_PADDED_PREFIX) - len(_PADDED_SUFFIX))
            filler = b"a" * _MIB
            while remaining > 0:
                size = min(remaining, _MIB)
                pieces.append(compressor.compress(filler if size == _MIB else filler[:size]))
                remaining -= size
            pieces += [compressor.compress(_PADDED_SUFFIX), compressor.flush()]
            cached = _GZIP_BOMBS[inflated_bytes] = b"".join(pieces)
        return cached


async def _gzip_bomb(p: dict[str, Any], receive: Receive, send: Send) -> None:
    """A small gzip body that inflates to a huge JSON envelope, sent in 64 KiB chunks."""
    payload = await asyncio.to_thread(gzip_bomb_body, p["inflated_bytes"])
    headers = [
        (b"content-type", b"application/json"),
        (b"content-encoding", b"gzip"),
        (b"content-length", str(len(payload)).encode()),
    ]
    hung_up = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await send({"type": "http.response.start", "status": p["status"], "headers": headers})
        for offset in range(0, len(payload), _BOMB_CHUNK):
            if hung_up.done():
                return
            more = offset + _BOMB_CHUNK < len(payload)
            await send(
                {
                    "type": "http.response.body",
                    "body": payload[offset : offset + _BOMB_CHUNK],
                    "more_body": more,
                }
            )
            await asyncio.sleep(0)  # let a hang-up be noticed
    finally:
        hung_up.cancel()


async def _big_body(p: dict[str, Any], receive: Receive, send: Send) -> None:
    """A valid envelope of ~``bytes`` bytes, its padding made 1 MiB at a time while sending."""
    padding = max(0, p["bytes"] - len(_PADDED_PREFIX) - len(_PADDED_SUFFIX))
    total = len(_PADDED_PREFIX) + padding + len(_PADDED_SUFFIX)
    headers = [(b"content-type", b"application/json")]
    if not p["chunked"]:
        headers.append((b"content-length", str(total).encode()))
    hung_up = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": _PADDED_PREFIX, "more_body": True})
        while padding > 0:
            if hung_up.done():
                return
            size = min(padding, _MIB)
            await send({"type": "http.response.body", "body": b"a" * size, "more_body": True})
            padding -= size
            await asyncio.sleep(0)  # let a hang-up be noticed
        if not hung_up.done():
            await send({"type": "http.response.body", "body": _PADDED_SUFFIX, "more_body": False})
    finally:
        hung_up.cancel()


async def _until_disconnect(receive: Receive) -> None:
    """Return once the client has closed the connection (request body messages are skipped)."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _retry_after_value(retry_after: Any, retry_after_date: Any) -> str | None:
    """The Retry-After header: seconds, raw text, or an HTTP date N seconds ahead."""
    if retry_after_date is not None:
        return email.utils.formatdate(time.time() + float(retry_after_date), usegmt=True)
    if retry_after is None:
        return None
    if isinstance(retry_after, float) and retry_after.is_integer():
        retry_after = int(retry_after)
    return str(retry_after)


def _error_body(status: int, kind: str, json_payload: Any) -> tuple[bytes, bytes]:
    """Body and content type of an error answer: ``json``, ``html``, ``text`` or ``empty``."""
    if kind == "json":
        return dumps(json_payload), b"application/json"
    if kind == "html":
        page = DJANGO_500_HTML if status == 500 else nginx_html(status)
        return page.encode("utf-8"), b"text/html; charset=utf-8"
    if kind == "text":
        return REASONS.get(status, "Error").encode("utf-8"), b"text/plain; charset=utf-8"
    return b"", b"text/html; charset=utf-8"


def _cut_size(length: int, params: dict[str, Any]) -> int:
    """How many body bytes to keep: ``bytes`` or ``fraction`` of it, always fewer than all."""
    keep = params["bytes"] if params.get("bytes") is not None else int(length * params["fraction"])
    return max(0, min(int(keep), length - 1))


def _without_length(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Headers without Content-Length (it is set again by the sender)."""
    return [(k, v) for k, v in headers if k.lower() != b"content-length"]


async def _send_all(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    """A complete response with an exact Content-Length."""
    headers = [*_without_length(headers), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _close_connection(raw_send: Send, *, abort: bool = False) -> None:
    """Close the client connection now (bytes already written are flushed unless ``abort``).

    ASGI has no "close" message, so this reaches uvicorn's transport through its ``send``
    (a bound method of the request cycle). Fallback: raise, and uvicorn closes the connection.
    """
    owner = getattr(raw_send, "__self__", None)
    transport = getattr(owner, "transport", None)
    if transport is None or not hasattr(transport, "close"):
        raise ConnectionDropped("connection dropped by the Unpod simulator")
    if abort:
        transport.abort()
    else:
        transport.close()
    for _ in range(200):  # let uvicorn notice, so it neither logs nor answers 500
        if getattr(owner, "disconnected", True):
            return
        await asyncio.sleep(0.005)


# ============================================================================================
# The FastAPI app: Unpod API + control API
# ============================================================================================


def create_app(state: SimState) -> ASGIApp:
    """The full simulator ASGI app for ``state``."""
    _install_log_filter()
    api = FastAPI(
        title="Unpod simulator",
        redirect_slashes=False,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @api.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404:
            return Response(DJANGO_404_HTML, status_code=404, media_type="text/html")
        if exc.status_code == 405:
            return json_response({"detail": f'Method "{request.method}" not allowed.'}, 405)
        return json_response({"detail": str(exc.detail)}, exc.status_code)

    @api.exception_handler(_PageBeforeFirst)
    async def page_before_first(request: Request, exc: _PageBeforeFirst) -> Response:
        # The real server: its task service refuses a negative skip, the proxy answers 206.
        errors = {"detail": "skip must be >= 0"}
        return json_response(
            {
                "status_code": 206,
                "message": "Tasks Fetch Failed",
                "data": {"errors": errors},
                "errors": errors,
            },
            206,
        )

    # -- helpers -------------------------------------------------------------------------------

    def auth_error(request: Request, *, jwt_only: bool = False) -> Response | None:
        """401 unless ``Authorization: Token|Bearer|JWT <token>`` carries the simulator's token.

        ``jwt_only`` (organizations and spaces with ``spaces_need_jwt``): as the real server,
        whose views there only take JWT/Bearer, a Token header counts as no credentials at all.
        """
        parts = request.headers.get("authorization", "").split()
        schemes = ("bearer", "jwt") if jwt_only and state.spaces_need_jwt else ("token", "bearer", "jwt")
        if len(parts) == 2 and parts[0].lower() in schemes and parts[1] == state.token:
            return None
        if jwt_only and state.spaces_need_jwt and (not parts or parts[0].lower() not in schemes):
            return json_response(
                {"message": "Authentication credentials were not provided.", "status_code": 401},
                401,
                headers={"WWW-Authenticate": 'JWT realm="api"'},
            )
        if jwt_only and state.spaces_need_jwt:
            return json_response(
                {"message": "Invalid or expired token.", "status_code": 401},
                401,
                headers={"WWW-Authenticate": 'JWT realm="api"'},
            )
        return json_response(
            {"message": "Invalid token.", "status_code": 401}, 401, headers={"WWW-Authenticate": "Token"}
        )

    def org_handle_error(request: Request) -> tuple[str, Response | None]:
        """The Org-Handle, or the server's 400 when it is missing."""
        handle = request.headers.get("org-handle", "").strip()
        if not handle:
            return "", json_response(
                {
                    "status_code": 400,
                    "message": "Organization handle is required in Org-Handle header",
                    "data": {},
                },
                400,
            )
        return handle, None

    def invalid_space() -> Response:
        """The server's 206 for an unknown space token."""
        return json_response({"status_code": 206, "message": "Invalid Space Token", "data": {}}, 206)

    def window(request: Request, default_size: int) -> tuple[int, int | None, int]:
        """``(page, limit, offset)``; limit None = everything (page_size=0)."""
        page = _int_param(request.query_params.get("page"), 1)
        if page < 1:
            raise _PageBeforeFirst
        size = _int_param(request.query_params.get("page_size"), default_size)
        if size < 0:
            size = default_size
        limit: int | None = size if size > 0 else None
        cap = state.page_size_cap
        if cap is not None:
            limit = cap if limit is None else min(limit, cap)
        offset = (page - 1) * limit if limit else 0
        return page, limit, offset

    def listing(page: int, offset: int, total: int, items: list[dict[str, Any]], message: str) -> Response:
        """A list envelope, or 404 past the end when ``not_found_past_end``."""
        if state.not_found_past_end and page > 1 and offset >= total:
            return json_response({"detail": "Invalid page."}, 404)
        return json_response({"count": total, "status_code": 200, "message": message, "data": items})

    # -- Unpod API -----------------------------------------------------------------------------

    @api.get(ROUTES["organizations"])
    async def organizations(request: Request) -> Response:
        if (error := auth_error(request, jwt_only=True)) is not None:
            return error
        data = state.organizations()
        return json_response(
            {
                "count": len(data),
                "status_code": 200,
                "message": "Organizations fetched successfully",
                "data": data,
            }
        )

    @api.get(ROUTES["spaces"])
    async def spaces(request: Request) -> Response:
        if (error := auth_error(request, jwt_only=True)) is not None:
            return error
        handle, error = org_handle_error(request)
        if error is not None:
            return error
        data = state.org_spaces(handle)
        if data is None:
            return json_response({"message": "Organization not found"}, 404)
        return json_response(
            {"count": len(data), "status_code": 200, "message": "Spaces fetched successfully", "data": data}
        )

    @api.get(ROUTES["space"])
    async def space_detail(request: Request, space_token: str) -> Response:
        if (error := auth_error(request, jwt_only=True)) is not None:
            return error
        handle, error = org_handle_error(request)
        if error is not None:
            return error
        with state.lock:
            space = state.space(space_token)
            if space is None or space.org.handle != handle:
                return json_response({"message": "Space not found"}, 404)
            data = space.detail(docs=state.docs_mode)
        return json_response({"status_code": 200, "message": "Space fetched successfully", "data": data})

    @api.get(ROUTES["space_tasks"])
    async def space_tasks(request: Request, space_token: str) -> Response:
        if (error := auth_error(request)) is not None:
            return error
        space = state.space(space_token)
        if space is None:
            return invalid_space()
        default = 20 if state.docs_mode else SERVER_DEFAULT_PAGE_SIZE
        page, limit, offset = window(request, default)
        summary_status = request.query_params.get("status")
        total, items = state.space_tasks_page(space, offset, limit, summary_status=summary_status)
        return listing(page, offset, total, items, "Tasks Fetched Successfully")

    @api.get(ROUTES["space_runs"])
    async def space_runs(request: Request, space_token: str) -> Response:
        if (error := auth_error(request)) is not None:
            return error
        space = state.space(space_token)
        if space is None:
            return invalid_space()
        page, limit, offset = window(request, SERVER_DEFAULT_PAGE_SIZE)
        total, items = state.runs_page(space, offset, limit)
        return listing(page, offset, total, items, "Runs Fetched Successfully")

    @api.get(ROUTES["run_tasks"])
    async def run_tasks(request: Request, space_token: str, run_id: str) -> Response:
        if (error := auth_error(request)) is not None:
            return error
        space = state.space(space_token)
        if space is None:
            return invalid_space()
        page, limit, offset = window(request, SERVER_DEFAULT_PAGE_SIZE)
        total, items = state.run_tasks_page(space, run_id, offset, limit)
        return listing(page, offset, total, items, "Tasks Fetched Successfully")

    async def create(request: Request, space_token: str) -> Response:
        """Create a run (both create paths land here)."""
        if (error := auth_error(request)) is not None:
            return error
        try:
            raw = await request.body()
        except ClientDisconnect:  # the client gave up before its body was read: nothing is created
            return Response(status_code=499)
        try:
            body = json.loads(raw) if raw.strip() else {}
        except ValueError as err:
            return json_response({"detail": f"JSON parse error - {err}"}, 400)
        status, payload = state.create_run(space_token, body, string_status=state.docs_mode)
        return json_response(payload, status)

    @api.post(ROUTES["create_docs"])
    async def create_docs(request: Request, space_token: str) -> Response:
        if state.create_paths == "server":
            return Response(DJANGO_404_HTML, status_code=404, media_type="text/html")
        return await create(request, space_token)

    @api.post(ROUTES["create_server"])
    async def create_server(request: Request, space_token: str) -> Response:
        if state.create_paths == "docs":
            return json_response({"detail": 'Method "POST" not allowed.'}, 405)
        return await create(request, space_token)

    _add_control_routes(api, state)
    return SimulatorMiddleware(api, state)


# ============================================================================================
# Control API
# ============================================================================================


class BadControlRequest(ValueError):
    """A control request whose body is not a JSON object (answered 400)."""


async def _json_body(request: Request) -> dict[str, Any]:
    """A control request's JSON object body ({} when empty)."""
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError as err:
        raise BadControlRequest(f"the request body is not JSON: {err}") from None
    if not isinstance(body, dict):
        raise BadControlRequest("the request body must be a JSON object")
    return body


def _control(action: Callable[[], Any]) -> Response:
    """Run a control action; bad input is a 400 (404 for an unknown space/run), never a 500."""
    try:
        return json_response(action())
    except KeyError as err:
        return json_response({"error": str(err.args[0] if err.args else err)}, 404)
    except (ValueError, TypeError) as err:
        return json_response({"error": str(err)}, 400)


def _add_control_routes(api: FastAPI, state: SimState) -> None:
    """``/_sim/...``: what the Python API does, over HTTP, for out-of-process use."""
    c = CONTROL_PREFIX

    @api.exception_handler(BadControlRequest)
    async def bad_control_request(request: Request, exc: BadControlRequest) -> Response:
        return json_response({"error": str(exc)}, 400)

    @api.get(c + "/health")
    async def health() -> Response:
        return json_response({"ok": True})

    @api.get(c + "/state")
    async def summary() -> Response:
        return _control(state.summary)

    @api.post(c + "/reset")
    async def reset(request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            state.reset(body.get("seed"))
            return {"ok": True}

        return _control(action)

    @api.get(c + "/faults")
    async def faults() -> Response:
        return _control(state.fault_list)

    @api.post(c + "/faults")
    async def add_fault(request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            spec = dict(body)
            kind = spec.pop("kind", None)
            if not isinstance(kind, str):
                raise ValueError("a fault needs a 'kind'")
            params = spec.pop("params", None) or {}
            return state.add_fault(Fault.create(kind, **spec, **params)).to_dict()

        return _control(action)

    @api.delete(c + "/faults")
    async def clear_faults() -> Response:
        state.clear_faults()
        return json_response({"ok": True})

    @api.get(c + "/requests")
    async def requests_log() -> Response:
        return _control(state.request_log)

    @api.delete(c + "/requests")
    async def reset_requests() -> Response:
        state.reset_requests()
        return json_response({"ok": True})

    @api.get(c + "/settings")
    async def settings() -> Response:
        return _control(state.settings)

    @api.post(c + "/settings")
    async def update_settings(request: Request) -> Response:
        body = await _json_body(request)
        return _control(lambda: state.update_settings(**body))

    @api.post(c + "/clock/advance")
    async def advance(request: Request) -> Response:
        body = await _json_body(request)
        return _control(lambda: {"now": state.advance(body.get("seconds", 0))})

    @api.post(c + "/spaces")
    async def add_space(request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            space = state.add_space(**body)
            return {"token": space.token, "name": space.name, "runs": [r.run_id for r in space.runs]}

        return _control(action)

    @api.get(c + "/spaces/{token}/tasks")
    async def all_space_tasks(token: str) -> Response:
        return _control(lambda: state.all_space_tasks(token))

    @api.get(c + "/spaces/{token}/runs")
    async def all_space_runs(token: str) -> Response:
        return _control(lambda: state.all_space_runs(token))

    @api.post(c + "/spaces/{token}/append")
    async def append(token: str, request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            runs = state.append_items(
                token,
                body.get("n", 1),
                items=body.get("items", "tasks"),
                status=body.get("status", "completed"),
                tasks_per_run=body.get("tasks_per_run", 1),
            )
            return {"runs": [r.run_id for r in runs]}

        return _control(action)

    @api.post(c + "/runs")
    async def add_run(request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            spec = dict(body)
            space = spec.pop("space", None) or spec.pop("space_token", None)
            if not isinstance(space, str):
                raise ValueError("a run needs 'space' (the space token)")
            run = state.add_run(space, **spec)
            return {"run_id": run.run_id, "n_tasks": run.n_tasks}

        return _control(action)

    @api.get(c + "/runs/{run_id}")
    async def get_run(run_id: str) -> Response:
        return _control(lambda: state.get_run(run_id))

    @api.get(c + "/runs/{run_id}/tasks")
    async def all_run_tasks(run_id: str) -> Response:
        return _control(lambda: state.all_run_tasks(run_id))

    @api.post(c + "/runs/{run_id}/status")
    async def set_status(run_id: str, request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            state.set_run_status(run_id, body.get("status", ""))
            return state.get_run(run_id)

        return _control(action)

    @api.post(c + "/runs/{run_id}/timeline")
    async def set_timeline(run_id: str, request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            state.set_run_timeline(
                run_id, body.get("timeline") or [], restart=bool(body.get("restart", True))
            )
            return state.get_run(run_id)

        return _control(action)

    @api.post(c + "/runs/{run_id}/append")
    async def append_run_tasks(run_id: str, request: Request) -> Response:
        body = await _json_body(request)

        def action() -> dict[str, Any]:
            state.append_run_tasks(run_id, body.get("n", 1))
            return state.get_run(run_id)

        return _control(action)
