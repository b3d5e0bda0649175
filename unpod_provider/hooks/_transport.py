"""The HTTP exchanges of both hooks: one sync (requests) and one async (httpx) transport.

What they share is written once here: which failures exist and what each one says
(``transport_error``), what the environment may and may not change (no netrc, no cookies, no
CA variables; a proxy only for https, never for loopback: ``protocol.proxy_for``), the size cap
on a decoded body and the deadline on the whole exchange, from sending the request to the last
byte of the answer. ``requests``, ``urllib3`` and ``httpx`` are imported where they are used.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import heapq
import itertools
import os
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Mapping
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import TYPE_CHECKING, Any

from unpod_provider import protocol
from unpod_provider.exceptions import (
    UnpodConnectionError,
    UnpodError,
    UnpodResponseTooLargeError,
    UnpodTimeoutError,
    UnpodTLSError,
    UnpodTransportError,
)
from unpod_provider.protocol import ClientConfig

if TYPE_CHECKING:
    import httpx
    import requests

#: Most bytes taken from the socket at a time while a body is read.
READ_CHUNK_BYTES = 64 * 1024

Answer = tuple[int, bytes, Mapping[str, str]]


# --------------------------------------------------------------------------------------------
# One table: each transport failure, its error class and its one message
# --------------------------------------------------------------------------------------------


def transport_error(
    kind: str, *, method: str, path: str, config: ClientConfig, detail: str = ""
) -> UnpodError:
    """The typed error for a failed exchange. ``kind`` is one of the rows below.

    ``request_sent`` tells a create whether it may be sent again: only when the request
    certainly never left (no connection, no TLS session).
    """
    base, what = config.base_url, f"{method} {path}"
    suffix = f" ({config.scrub(detail)})" if detail else ""
    error: UnpodError
    if kind == "connect":
        error = UnpodConnectionError(f"{what}: could not connect to {base}{suffix}").with_sent(False)
    elif kind == "connect_timeout":
        error = UnpodTimeoutError(
            f"{what}: connecting to {base} timed out after {config.connect_timeout:g}s"
        ).with_sent(False)
    elif kind == "tls":
        error = UnpodTLSError(
            f"{what}: the TLS handshake with {base} failed{suffix}; check the server's certificate, "
            "or the connection's extra ca_bundle (a PEM file) or verify"
        )
    elif kind == "read_timeout":
        error = UnpodTimeoutError(
            f"{what}: no answer within the read timeout of {config.timeout:g}s"
        ).with_sent(True)
    elif kind == "deadline":
        error = UnpodTimeoutError(
            f"{what}: the whole exchange took over {config.response_deadline:g}s "
            "(the server sent its answer too slowly)"
        ).with_sent(True)
    elif kind == "cut":
        error = UnpodConnectionError(
            f"{what}: lost the connection to {base} before the whole answer arrived{suffix}"
        ).with_sent(True)
    elif kind == "decode":
        error = UnpodConnectionError(
            f"{what}: the response body could not be decoded as its Content-Encoding says{suffix}"
        ).with_sent(True)
    elif kind == "too_large":
        limit = config.max_response_bytes / (1024 * 1024)
        error = UnpodResponseTooLargeError(
            f"{what}: the response is larger than the cap of {limit:g} MB (connection extra "
            "max_response_mb); refused while reading"
        )
    else:  # pragma: no cover - a programming error
        raise ValueError(f"unknown transport failure {kind!r}")
    return error


class _TooLarge(Exception):
    """The decoded body passed the size cap (raised while reading)."""


class _Undecodable(Exception):
    """The body is not what its Content-Encoding says (or uses one we never asked for)."""


#: What both hooks accept, and decode themselves with a bound on every step.
ACCEPT_ENCODING = "gzip, deflate"


class BodyReader:
    """Collects a response body, decoding gzip/deflate, refused once it passes ``cap`` bytes.

    Every decompression step yields at most ``READ_CHUNK_BYTES``, so a small compressed body
    that inflates to gigabytes (a "zip bomb") costs the cap, not its inflated size. One reader
    for both hooks: httpx and urllib3 decode a whole network read at once.
    """

    def __init__(self, content_encoding: str | None, cap: int) -> None:
        encoding = (content_encoding or "identity").strip().lower()
        self.cap = cap
        self.data = bytearray()
        self._raw_deflate_tried = False
        self._decoder: Any
        if encoding in ("", "identity"):
            self._decoder = None
        elif encoding in ("gzip", "x-gzip"):
            self._decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._decoder = zlib.decompressobj(zlib.MAX_WBITS)
        else:
            raise _Undecodable(f"Content-Encoding {encoding[:30]!r} was not asked for")
        self._encoding = encoding

    def feed(self, raw: bytes) -> None:
        if self._decoder is None:
            self._add(raw)
            return
        pending = raw
        while pending:
            try:
                out = self._decoder.decompress(pending, READ_CHUNK_BYTES)
            except zlib.error:
                if self._encoding == "deflate" and not self._raw_deflate_tried and not self.data:
                    # Some servers send raw deflate without the zlib wrapper.
                    self._raw_deflate_tried = True
                    self._decoder = zlib.decompressobj(-zlib.MAX_WBITS)
                    continue
                raise _Undecodable("the body is not valid " + self._encoding) from None
            self._add(out)
            pending = self._decoder.unconsumed_tail

    def finish(self) -> bytes:
        if self._decoder is not None:
            try:
                self._add(self._decoder.flush())
            except zlib.error:
                raise _Undecodable("the body is not valid " + self._encoding) from None
            if not self._decoder.eof and self.data:
                raise _Undecodable(f"the {self._encoding} stream ended early")
        return bytes(self.data)

    def _add(self, chunk: bytes) -> None:
        if len(self.data) + len(chunk) > self.cap:
            raise _TooLarge
        self.data += chunk


def _declared_too_large(headers: Mapping[str, str], cap: int) -> bool:
    """Whether an identity-encoded answer announces more bytes than the cap allows."""
    encoding = (headers.get("content-encoding") or "identity").strip().lower()
    length = headers.get("content-length")
    if encoding != "identity" or not length or not length.strip().isdigit():
        return False
    return int(length) > cap


def _chain_has(err: BaseException, types: tuple[type[BaseException], ...]) -> BaseException | None:
    """The first error of ``types`` that ``err`` is or wraps (reason, args, cause, context)."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, types):
            return current
        reason = getattr(current, "reason", None)
        if isinstance(reason, BaseException):
            current = reason
            continue
        args = getattr(current, "args", ())
        nested = next((a for a in args if isinstance(a, BaseException)), None)
        current = nested or current.__cause__ or current.__context__
    return None


def _tls_detail(err: BaseException) -> str:
    """What the TLS library said (local text: the certificate check, never the server's body)."""
    found = _chain_has(err, (ssl.SSLError,))
    if found is None:
        return type(err).__name__
    message = getattr(found, "verify_message", None) or getattr(found, "reason", None)
    return str(message or type(found).__name__)[:200]


def _no_cookies() -> CookieJar:
    """A cookie jar that keeps nothing: a server's cookies are never sent back."""
    return CookieJar(policy=DefaultCookiePolicy(allowed_domains=[]))


# --------------------------------------------------------------------------------------------
# The deadline of a whole sync exchange
# --------------------------------------------------------------------------------------------


class _Exchange:
    """One sync request in flight: its deadline, and the connection it is using."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.connection: Any = None
        self.expired = False
        self.finished = False
        self.lock = threading.Lock()

    def expire(self) -> None:
        """Past the deadline: shut the socket down, so the blocked read in the other thread ends."""
        with self.lock:
            if self.finished:
                return
            self.expired = True
            sock = getattr(self.connection, "sock", None)
            if sock is not None:
                # The plain socket call, also for a TLS socket: unblocks its reader at once.
                with contextlib.suppress(OSError):
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)

    def finish(self) -> None:
        with self.lock:
            self.finished = True
            self.connection = None


class _Watchdog:
    """One daemon thread that expires the exchanges whose deadline has passed."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Exchange]] = []
        self._order = itertools.count()
        self._thread: threading.Thread | None = None

    def watch(self, exchange: _Exchange) -> None:
        with self._cond:
            heapq.heappush(self._heap, (exchange.deadline, next(self._order), exchange))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="unpod-deadlines", daemon=True)
                self._thread.start()
            elif self._heap[0][2] is exchange:
                # Woken only when this deadline comes first: deadlines mostly grow, so most
                # requests never wake the thread (it would compete for the GIL on every request).
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._heap and self._heap[0][2].finished:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, _, exchange = self._heap[0]
                left = deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            exchange.expire()

    def _after_fork(self) -> None:
        self._cond = threading.Condition()
        self._heap = []
        self._thread = None


_watchdog = _Watchdog()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_watchdog._after_fork)

_current = threading.local()


def _attach(connection: Any) -> None:
    """Tell this thread's exchange which connection it uses (so its deadline can close it)."""
    exchange = getattr(_current, "exchange", None)
    if exchange is not None:
        exchange.connection = connection


@functools.cache
def _adapter_class() -> type[Any]:
    """An ``HTTPAdapter`` whose connections report to the exchange that uses them."""
    import requests
    from urllib3 import connection, connectionpool

    def reporting(base: type[Any]) -> type[Any]:
        """``base`` whose ``connect`` and ``request`` tell this thread's exchange about it."""

        class Reporting(base):  # type: ignore[misc, valid-type]
            def connect(self) -> None:
                _attach(self)
                super().connect()

            def request(self, *args: Any, **kwargs: Any) -> None:
                _attach(self)
                super().request(*args, **kwargs)

        return Reporting

    HTTPConnection = reporting(connection.HTTPConnection)
    HTTPSConnection = reporting(connection.HTTPSConnection)

    class HTTPPool(connectionpool.HTTPConnectionPool):
        ConnectionCls = HTTPConnection

    class HTTPSPool(connectionpool.HTTPSConnectionPool):
        ConnectionCls = HTTPSConnection

    pools = {"http": HTTPPool, "https": HTTPSPool}

    class DeadlineAdapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = pools

        def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
            manager = super().proxy_manager_for(proxy, **proxy_kwargs)
            manager.pool_classes_by_scheme = pools
            return manager

    return DeadlineAdapter


# --------------------------------------------------------------------------------------------
# Sync: requests
# --------------------------------------------------------------------------------------------


def build_session(config: ClientConfig, *, pool_size: int) -> requests.Session:
    """A session that the environment cannot redirect: no netrc, no cookies, no CA variables."""
    import requests

    session = requests.Session()
    adapter = _adapter_class()(pool_maxsize=pool_size)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update(config.headers())
    session.headers["Accept-Encoding"] = ACCEPT_ENCODING
    session.verify = config.tls_verify
    session.trust_env = False
    session.cookies.set_policy(DefaultCookiePolicy(allowed_domains=[]))
    proxy = protocol.proxy_for(config.base_url, os.environ)
    session.proxies = {"https": proxy} if proxy else {}
    return session


def send(
    session: requests.Session,
    config: ClientConfig,
    method: str,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
) -> Answer:
    """One exchange within ``config.response_deadline``; failures become typed errors."""
    import requests

    exchange = _Exchange(time.monotonic() + config.response_deadline)
    _current.exchange = exchange
    _watchdog.watch(exchange)
    try:
        response = session.request(
            method,
            config.url(path),
            params=params,
            json=json_body,
            timeout=(config.connect_timeout, config.timeout),
            verify=config.tls_verify,
            allow_redirects=False,
            stream=True,
        )
        with response:
            body = _read_body(response, config.max_response_bytes)
        if exchange.expired:  # cut by the deadline: what was read may look whole but is not
            raise transport_error("deadline", method=method, path=path, config=config)
        return response.status_code, body, response.headers
    except _TooLarge:
        raise transport_error("too_large", method=method, path=path, config=config) from None
    except _Undecodable as err:
        raise transport_error("decode", method=method, path=path, config=config, detail=str(err)) from None
    except Exception as err:
        if exchange.expired:
            raise transport_error("deadline", method=method, path=path, config=config) from None
        if isinstance(err, requests.RequestException):
            raise _requests_error(err, method, path, config) from None
        raise
    finally:
        exchange.finish()
        _current.exchange = None


def _requests_error(
    err: requests.RequestException, method: str, path: str, config: ClientConfig
) -> UnpodError:
    import requests
    from urllib3.exceptions import NameResolutionError, NewConnectionError, ReadTimeoutError

    def fail(kind: str, detail: str = "") -> UnpodError:
        return transport_error(kind, method=method, path=path, config=config, detail=detail)

    if isinstance(err, requests.exceptions.SSLError):
        return fail("tls", _tls_detail(err))
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return fail("connect_timeout")
    if isinstance(err, requests.exceptions.Timeout):
        return fail("read_timeout")
    if isinstance(err, requests.exceptions.ContentDecodingError):
        return fail("decode", type(err).__name__)
    if isinstance(err, requests.exceptions.ChunkedEncodingError):
        return fail("cut", type(err).__name__)
    if isinstance(err, requests.exceptions.ConnectionError):
        if _chain_has(err, (ReadTimeoutError,)):
            return fail("read_timeout")
        if _chain_has(err, (NewConnectionError, NameResolutionError, ConnectionRefusedError)):
            return fail("connect", type(err).__name__)
        return fail("cut", type(err).__name__)
    return fail("cut", type(err).__name__)


def _read_body(response: requests.Response, cap: int) -> bytes:
    """The decoded body of a streamed response, refused once it passes ``cap`` bytes.

    ``read1`` returns whatever has arrived; the watchdog ends a read that outlives the
    exchange's deadline. urllib3 errors become the ``requests`` errors ``iter_content`` raises,
    so one mapping serves both.
    """
    import requests
    from urllib3 import exceptions as urllib3_errors

    if _declared_too_large(response.headers, cap):
        raise _TooLarge
    raw = response.raw
    if raw is None:  # a Response built in memory already holds its (decoded) body
        content = response.content or b""
        if len(content) > cap:
            raise _TooLarge
        return content
    reader = BodyReader(response.headers.get("content-encoding"), cap)
    try:
        while chunk := raw.read1(READ_CHUNK_BYTES, decode_content=False):
            reader.feed(chunk)
    except urllib3_errors.ReadTimeoutError as err:
        raise requests.exceptions.ConnectionError(err) from err
    except (urllib3_errors.ProtocolError, urllib3_errors.SSLError, OSError) as err:
        raise requests.exceptions.ChunkedEncodingError(err) from err
    return reader.finish()


# --------------------------------------------------------------------------------------------
# Async: httpx
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def tls_context(verify: bool | str) -> ssl.SSLContext:
    """The client TLS context for ``verify`` (False, True or a CA file), built once per process.

    Built here rather than by httpx so that no environment variable (``SSL_CERT_FILE``) can
    change what is trusted: the default is certifi's bundle, as in the sync hook.
    """
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    if verify is True:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    return ssl.create_default_context(cafile=verify)


def build_async_client(config: ClientConfig, context: ssl.SSLContext) -> httpx.AsyncClient:
    """An ``httpx.AsyncClient`` the environment cannot redirect (no netrc, proxies or cookies from it)."""
    import httpx

    proxy = protocol.proxy_for(config.base_url, os.environ)
    return httpx.AsyncClient(
        base_url=config.base_url,
        headers={**config.headers(), "Accept-Encoding": ACCEPT_ENCODING},
        verify=context,
        timeout=httpx.Timeout(config.timeout, connect=config.connect_timeout),
        follow_redirects=False,
        trust_env=False,
        proxy=proxy,
        cookies=_no_cookies(),
    )


async def asend(
    client: httpx.AsyncClient,
    config: ClientConfig,
    method: str,
    path: str,
    *,
    params: Mapping[str, Any] | None = None,
    json_body: Any = None,
) -> Answer:
    """One exchange within ``config.response_deadline``; failures become typed errors."""
    import httpx

    cap = config.max_response_bytes

    async def exchange() -> Answer:
        async with client.stream(method, path, params=params, json=json_body) as response:
            if _declared_too_large(response.headers, cap):
                raise _TooLarge
            reader = BodyReader(response.headers.get("content-encoding"), cap)
            async for chunk in response.aiter_raw():
                reader.feed(chunk)
            return response.status_code, reader.finish(), response.headers

    def fail(kind: str, detail: str = "") -> UnpodError:
        return transport_error(kind, method=method, path=path, config=config, detail=detail)

    try:
        return await asyncio.wait_for(exchange(), config.response_deadline)
    except asyncio.TimeoutError:  # not TimeoutError: on Python 3.10 they are different classes
        raise fail("deadline") from None
    except _TooLarge:
        raise fail("too_large") from None
    except _Undecodable as err:
        raise fail("decode", str(err)) from None
    except httpx.ConnectTimeout:
        raise fail("connect_timeout") from None
    except httpx.TimeoutException:
        raise fail("read_timeout") from None
    except httpx.ConnectError as err:
        if _chain_has(err, (ssl.SSLError,)):
            raise fail("tls", _tls_detail(err)) from None
        raise fail("connect", type(err).__name__) from None
    except httpx.DecodingError as err:
        raise fail("decode", type(err).__name__) from None
    except httpx.TransportError as err:
        raise fail("cut", type(err).__name__) from None


def may_have_reached_server(error: UnpodError) -> bool:
    """Whether a failed create may still have created the run (so it must not be sent again)."""
    if isinstance(error, UnpodTransportError):
        return error.request_sent
    if isinstance(error, UnpodResponseTooLargeError):
        return True
    from unpod_provider.exceptions import UnpodProtocolError

    if isinstance(error, UnpodProtocolError):
        # A success status with an unreadable (empty, cut, odd) body: the run was probably created.
        return error.status_code is None or 200 <= error.status_code < 300
    return error.status_code is not None and error.status_code >= 500


__all__ = [
    "ACCEPT_ENCODING",
    "Answer",
    "BodyReader",
    "asend",
    "build_async_client",
    "build_session",
    "may_have_reached_server",
    "send",
    "tls_context",
    "transport_error",
]
