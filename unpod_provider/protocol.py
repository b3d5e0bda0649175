"""The Unpod platform API as pure Python: paths, headers, envelopes, errors, retries, pagination.

This module is the one truth about the protocol. The sync hook (requests), the async trigger
(httpx) and the local simulator (FastAPI) all use it, so a rule lives here once. It imports
nothing from Airflow and no HTTP library; it only turns values into values.

Contract: ``shared/unpod-api.md`` (what the docs say and what the real server does).
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import math
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from unpod_provider import __version__
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodAuthSchemeError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodConfigError,
    UnpodError,
    UnpodIncompleteResponseError,
    UnpodInconsistentListError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRateLimitError,
    UnpodServerError,
)

# --------------------------------------------------------------------------------------------
# Constants
# --------------------------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://unpod.ai"
API_PREFIX = "/api/v2/platform/"
USER_AGENT = f"airflow-provider-unpod/{__version__}"
AUTH_SCHEMES = ("Token", "Bearer", "JWT")
DEFAULT_AUTH_SCHEME = "Token"
DEFAULT_TIMEOUT_SECONDS = 30.0
DEFAULT_CONNECT_TIMEOUT_SECONDS = 10.0
#: A whole exchange (request sent to last byte of the answer) must end within this many read timeouts.
RESPONSE_DEADLINE_FACTOR = 4
#: Default cap on one decoded response body (connection extra ``max_response_mb``): far above
#: any real page (1,000 tasks with long transcripts is a few MB), far below what kills a worker.
DEFAULT_MAX_RESPONSE_MB = 64.0
MAX_RESPONSE_MB_LIMIT = 4096.0
#: What replaces a credential found in text that came from the server.
REDACTED = "***"

DEFAULT_PAGE_SIZE = 100
MIN_PAGE_SIZE = 1
MAX_PAGE_SIZE = 1000
#: What the real server uses when no page_size is sent (the docs say 20 for space tasks).
SERVER_DEFAULT_PAGE_SIZE = 50

MAX_IDENTIFIER_LENGTH = 128
#: Hard stop for a list whose server sends no ``count`` but only full pages.
MAX_PAGES_WITHOUT_COUNT = 100_000
_IDENTIFIER_RE = re.compile(r"[A-Za-z0-9_-]+")
#: What a template renders when its value is None: never an Unpod id (those are ``R``/``T`` +
#: 32 hex, or 24 letters and digits), so refused like an empty one.
RENDERED_NOTHING = frozenset({"None", "null"})

#: Run statuses. The server keeps one status enum for runs and tasks (pending, in_progress, hold,
#: completed, partially_completed, failed), its executor also sets scheduled and processing, and
#: the docs name queued, running and cancelled. Anything else means "not finished yet".
#: Not started yet, or paused: keep waiting.
RUN_STATUSES_NOT_STARTED = ("pending", "scheduled", "queued", "hold")
#: Calls are being made: keep waiting (the real server never sets the docs' ``running``).
RUN_STATUSES_IN_PROGRESS = ("in_progress", "processing", "running")
#: Final: the wait ends.
RUN_STATUSES_TERMINAL = ("completed", "partially_completed", "failed", "cancelled")
DEFAULT_SUCCESS_STATES = ("completed", "partially_completed")
DEFAULT_FAILED_STATES = ("failed", "cancelled")
KNOWN_RUN_STATUSES = RUN_STATUSES_NOT_STARTED + RUN_STATUSES_IN_PROGRESS + RUN_STATUSES_TERMINAL
#: What each known status means, for docs and log lines.
RUN_STATUS_MEANINGS: dict[str, str] = {
    "pending": "created, not started",
    "scheduled": "waiting for its scheduled time",
    "queued": "waiting for a free agent",
    "hold": "paused",
    "in_progress": "calls are being made",
    "processing": "calls are being made",
    "running": "calls are being made (the docs' word)",
    "completed": "final: every task completed",
    "partially_completed": "final: some tasks completed, some failed",
    "failed": "final: every task failed",
    "cancelled": "final: stopped before the end",
}

TASK_STATUSES = (
    "pending",
    "scheduled",
    "queued",
    "hold",
    "processing",
    "in_progress",
    "completed",
    "failed",
    "partially_completed",
    "cancelled",
)

#: Dotted paths of task fields that are credential-like or personal: kept out of XCom by default.
SENSITIVE_TASK_FIELDS = ("user_info.user_token", "user_info.location")


# --------------------------------------------------------------------------------------------
# Identifiers and paths
# --------------------------------------------------------------------------------------------


def validate_identifier(value: Any, name: str) -> str:
    """Return ``value`` if it is a safe path identifier, else raise ``ValueError`` naming ``name``.

    Space tokens, run ids and task ids are ASCII letters, digits, ``_`` and ``-``. Anything else
    (``/``, ``..``, ``%2F``, whitespace, CR/LF, non-ASCII, too long) is refused before a request.
    """
    if not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {type(value).__name__}")
    if not value:
        raise ValueError(f"{name} must not be empty")
    if value in RENDERED_NOTHING:
        raise ValueError(
            f"{name} is {value!r}: the template that gives it rendered None (e.g. an XCom or a param "
            "that is not set)"
        )
    if len(value) > MAX_IDENTIFIER_LENGTH:
        raise ValueError(
            f"{name} is {len(value)} characters long; at most {MAX_IDENTIFIER_LENGTH} are allowed"
        )
    if not value.isascii() or not _IDENTIFIER_RE.fullmatch(value):
        raise ValueError(
            f"{name} {_preview(value)} is not a valid identifier: "
            "only ASCII letters, digits, '_' and '-' are allowed"
        )
    return value


def validate_page_size(page_size: Any) -> int:
    """Return ``page_size`` if it is an int in 1..1000, else raise ``ValueError``."""
    if isinstance(page_size, bool) or not isinstance(page_size, int):
        raise ValueError(f"page_size must be an integer, got {type(page_size).__name__}")
    if not MIN_PAGE_SIZE <= page_size <= MAX_PAGE_SIZE:
        raise ValueError(f"page_size must be between {MIN_PAGE_SIZE} and {MAX_PAGE_SIZE}, got {page_size}")
    return page_size


def validate_header_value(value: str, name: str) -> str:
    """Refuse CR, LF, other control characters (header injection) and non-ASCII in a header value.

    HTTP clients cannot send non-ASCII header values (httpx: ``UnicodeEncodeError``), so they
    are a configuration error here, named by field and never echoed.
    """
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise UnpodConfigError(f"{name} contains a control character (CR/LF or similar)")
    if not value.isascii():
        raise UnpodConfigError(f"{name} contains a non-ASCII character (HTTP header values are ASCII)")
    return value


def _preview(value: str, limit: int = 40) -> str:
    """A short, printable rendering of an untrusted value for an error message."""
    text = value if len(value) <= limit else value[:limit] + "..."
    return repr(text)


def _segment(value: str, name: str) -> str:
    return quote(validate_identifier(value, name), safe="")


def organizations_path() -> str:
    return f"{API_PREFIX}organizations/"


def spaces_path() -> str:
    return f"{API_PREFIX}spaces/"


def space_path(space_token: str) -> str:
    return f"{API_PREFIX}spaces/{_segment(space_token, 'space_token')}/"


def space_tasks_path(space_token: str) -> str:
    return f"{space_path(space_token)}tasks/"


def space_runs_path(space_token: str) -> str:
    return f"{space_path(space_token)}runs/"


def run_tasks_path(space_token: str, run_id: str) -> str:
    return f"{space_path(space_token)}runs/{_segment(run_id, 'run_id')}/tasks/"


def create_run_paths(space_token: str) -> tuple[str, str]:
    """The documented create path first, then the server snapshot's, for a 404/405 fallback."""
    base = space_path(space_token)
    return (f"{base}tasks/create/", f"{base}tasks/")


def page_params(page: int, page_size: int) -> dict[str, int]:
    """Query parameters for one page. Never anything else: the server forwards every parameter."""
    if isinstance(page, bool) or not isinstance(page, int) or page < 1:
        raise ValueError(f"page must be a positive integer, got {page!r}")
    return {"page": page, "page_size": validate_page_size(page_size)}


# --------------------------------------------------------------------------------------------
# Client configuration (from an Airflow connection, but built from plain values)
# --------------------------------------------------------------------------------------------


def is_loopback_host(host: str | None) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _as_bool(value: Any, name: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "1", "yes", "on"):
        return True
    if isinstance(value, str) and value.strip().lower() in ("false", "0", "no", "off", ""):
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise UnpodConfigError(f"{name} must be true or false, got {value!r}")


@dataclass(frozen=True)
class ClientConfig:
    """Everything a client needs to talk to Unpod. ``repr`` never shows the token."""

    base_url: str
    token: str = field(repr=False)
    org_handle: str
    auth_scheme: str = DEFAULT_AUTH_SCHEME
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    verify: bool = True
    #: A PEM file of CAs to trust instead of the default bundle (extra ``ca_bundle``).
    ca_bundle: str | None = None
    allow_insecure_http: bool = False
    max_response_bytes: int = int(DEFAULT_MAX_RESPONSE_MB * 1024 * 1024)
    #: Overrides ``RESPONSE_DEADLINE_FACTOR`` read timeouts (the UI's Test button uses less).
    exchange_deadline: float | None = None
    conn_id: str | None = None

    @property
    def connect_timeout(self) -> float:
        return min(DEFAULT_CONNECT_TIMEOUT_SECONDS, self.timeout)

    @property
    def response_deadline(self) -> float:
        """The most one exchange may take in all, from sending the request to the last byte.

        The read timeout only bounds the silence between two bytes, so a server that trickles
        its status line, headers or body could hold a request for ever; this caps the whole
        exchange at ``RESPONSE_DEADLINE_FACTOR`` read timeouts (2 minutes by default).
        """
        if self.exchange_deadline is not None:
            return self.exchange_deadline
        return RESPONSE_DEADLINE_FACTOR * self.timeout

    @property
    def tls_verify(self) -> bool | str:
        """What the HTTP client verifies the server's certificate with: off, or a CA bundle."""
        if not self.verify:
            return False
        return self.ca_bundle or True

    def url(self, path: str) -> str:
        return self.base_url + path

    def headers(self) -> dict[str, str]:
        """The request headers; the only place the token is ever put."""
        return {
            "Authorization": f"{self.auth_scheme} {self.token}",
            "Org-Handle": self.org_handle,
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }

    @cached_property
    def _secrets(self) -> tuple[str, ...]:
        """The token as it may appear in text: raw, percent-encoded, JSON-escaped."""
        forms = {self.token, quote(self.token, safe=""), json.dumps(self.token)[1:-1]}
        return tuple(sorted((f for f in forms if f), key=len, reverse=True))

    def scrub(self, text: str) -> str:
        """``text`` from the server with every form of the token replaced by ``***``."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text

    def scrub_body(self, body: bytes) -> bytes:
        """A response body with every form of the token replaced (no copy when it has none)."""
        for secret in self._secrets:
            raw = secret.encode("utf-8")
            if raw in body:
                body = body.replace(raw, REDACTED.encode())
        return body

    def scrub_headers(self, headers: Mapping[str, str] | None) -> dict[str, str]:
        """Response headers with the token scrubbed from every value."""
        return {name: self.scrub(value) for name, value in (headers or {}).items()}

    @classmethod
    def from_connection_fields(
        cls,
        *,
        conn_id: str,
        host: str | None,
        password: str | None,
        extra: Mapping[str, Any] | None,
        port: int | None = None,
        schema: str | None = None,
        timeout: float | None = None,
    ) -> ClientConfig:
        """Validate an Airflow connection's fields and build a config.

        ``timeout`` (a hook argument) wins over the connection's ``timeout`` extra.
        Errors name the connection id and the field, never the token.
        """
        extra = dict(extra or {})
        token = (password or "").strip()
        if not token:
            raise UnpodConfigError(
                f"Connection '{conn_id}': API token missing (set the connection's password "
                "field, labelled 'API Token')"
            )
        validate_header_value(token, f"Connection '{conn_id}': API token")
        org_handle = _extra(extra, "org_handle")
        org_handle = str(org_handle).strip() if org_handle is not None else ""
        if not org_handle:
            raise UnpodConfigError(
                f"Connection '{conn_id}': org handle missing (set the extra field 'org_handle', "
                "labelled 'Org Handle')"
            )
        validate_header_value(org_handle, f"Connection '{conn_id}': org_handle")

        scheme_value = _extra(extra, "auth_scheme") or DEFAULT_AUTH_SCHEME
        auth_scheme = next((s for s in AUTH_SCHEMES if s.lower() == str(scheme_value).lower()), None)
        if auth_scheme is None:
            raise UnpodConfigError(
                f"Connection '{conn_id}': auth_scheme must be one of {', '.join(AUTH_SCHEMES)}, "
                f"got {str(scheme_value)[:20]!r}"
            )

        if timeout is None:
            raw_timeout = _extra(extra, "timeout")
            if raw_timeout not in (None, ""):
                try:
                    timeout = float(raw_timeout)  # type: ignore[arg-type]
                except (TypeError, ValueError):
                    raise UnpodConfigError(
                        f"Connection '{conn_id}': timeout must be a number of seconds, got {raw_timeout!r}"
                    ) from None
        timeout = DEFAULT_TIMEOUT_SECONDS if timeout is None else float(timeout)
        if not (0 < timeout <= 3600) or math.isnan(timeout):
            raise UnpodConfigError(
                f"Connection '{conn_id}': timeout must be between 0 and 3600 seconds, got {timeout}"
            )

        verify = _as_bool(_extra(extra, "verify", True), f"Connection '{conn_id}': verify")
        ca_bundle = _extra(extra, "ca_bundle")
        if ca_bundle in (None, ""):
            ca_bundle = None
        elif not isinstance(ca_bundle, str):
            raise UnpodConfigError(f"Connection '{conn_id}': ca_bundle must be the path of a PEM file")
        max_mb = positive_number(
            _extra(extra, "max_response_mb", DEFAULT_MAX_RESPONSE_MB),
            f"Connection '{conn_id}': max_response_mb",
            unit="megabytes",
            maximum=MAX_RESPONSE_MB_LIMIT,
            error=UnpodConfigError,
        )
        allow_insecure = _as_bool(
            _extra(extra, "allow_insecure_http", False), f"Connection '{conn_id}': allow_insecure_http"
        )
        base_url = normalize_base_url(host, conn_id=conn_id, port=port, schema=schema)
        parts = urlsplit(base_url)
        if parts.scheme == "http" and not is_loopback_host(parts.hostname) and not allow_insecure:
            raise UnpodConfigError(
                f"Connection '{conn_id}': refusing to send the API token over plain http:// to "
                f"{parts.hostname}; use https://, or set the extra allow_insecure_http: true"
            )
        return cls(
            base_url=base_url,
            token=token,
            org_handle=org_handle,
            auth_scheme=auth_scheme,
            timeout=timeout,
            verify=verify,
            ca_bundle=ca_bundle,
            allow_insecure_http=allow_insecure,
            max_response_bytes=int(max_mb * 1024 * 1024),
            conn_id=conn_id,
        )


def _extra(extra: Mapping[str, Any], name: str, default: Any = None) -> Any:
    """Read an extra by its bare name or the old ``extra__unpod__<name>`` form."""
    if name in extra:
        return extra[name]
    return extra.get(f"extra__unpod__{name}", default)


def normalize_base_url(
    host: str | None, *, conn_id: str = "unpod_default", port: int | None = None, schema: str | None = None
) -> str:
    """Turn the connection's Host into ``scheme://host[:port]`` (no trailing slash, no path).

    An empty host means the public service, ``https://unpod.ai``. A host without a scheme gets
    ``https://``. A path such as ``/api/v2/platform`` is tolerated and dropped.
    """
    raw = (host or "").strip()
    if not raw:
        return DEFAULT_BASE_URL
    if "://" not in raw:
        scheme = schema if schema in ("http", "https") else "https"
        raw = f"{scheme}://{raw}"
    try:
        parts = urlsplit(raw)
        parts.port  # noqa: B018 - a bad port raises here, not later
    except ValueError:
        raise UnpodConfigError(
            f"Connection '{conn_id}': host must be a base URL such as https://unpod.ai, "
            f"got {_without_userinfo(raw)[:60]!r}"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UnpodConfigError(
            f"Connection '{conn_id}': host must be a base URL such as https://unpod.ai, "
            f"got {_without_userinfo(raw)[:60]!r}"
        )
    if any(ch.isspace() or ord(ch) < 32 for ch in raw):
        raise UnpodConfigError(f"Connection '{conn_id}': host contains whitespace or control characters")
    netloc = parts.netloc.rsplit("@", 1)[-1]  # never keep credentials embedded in the URL
    if port and parts.port is None:
        netloc = f"{netloc}:{port}"
    return f"{parts.scheme}://{netloc}"


def _without_userinfo(url: str) -> str:
    """``url`` with any ``user:password@`` removed, for an error message."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    authority, slash, tail = rest.partition("/")
    authority = authority.rsplit("@", 1)[-1]
    return f"{scheme}{sep}{authority}{slash}{tail}"


def positive_number(
    value: Any,
    name: str,
    *,
    unit: str = "seconds",
    maximum: float | None = None,
    error: type[ValueError] = ValueError,
) -> float:
    """A finite number > 0 (and <= ``maximum``), else ``error`` naming ``name``.

    Numeric strings are accepted (connection extras are often strings); booleans are not.
    """
    number: Any = value
    if isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            number = None
    if (
        isinstance(number, bool)
        or not isinstance(number, (int, float))
        or not math.isfinite(number)
        or number <= 0
    ):
        raise error(f"{name} must be a positive number of {unit}, got {value!r}")
    if maximum is not None and number > maximum:
        raise error(f"{name} must be at most {maximum:g} {unit}, got {value!r}")
    return float(number)


def proxy_for(base_url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy the token's requests go through, or None for a direct connection.

    Only for ``https://`` (the proxy then sees a CONNECT to the host, never the token) and
    never for a loopback host; from ``https_proxy``/``HTTPS_PROXY`` (else ``all_proxy``),
    unless ``no_proxy``/``NO_PROXY`` names the host. Plain ``http://`` is never proxied: the
    token would cross the proxy in clear text.
    """
    parts = urlsplit(base_url)
    host = (parts.hostname or "").lower()
    if parts.scheme != "https" or is_loopback_host(host):
        return None
    proxy = next(
        (
            environ[name].strip()
            for name in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY")
            if environ.get(name, "").strip()
        ),
        None,
    )
    if proxy is None or _bypasses_proxy(host, parts.port or 443, environ):
        return None
    if "://" not in proxy:
        proxy = f"http://{proxy}"
    proxy_parts = urlsplit(proxy)
    if proxy_parts.scheme not in ("http", "https") or not proxy_parts.hostname:
        raise UnpodConfigError(
            f"the https proxy from the environment must be an http:// or https:// URL, got "
            f"{_without_userinfo(proxy)[:60]!r}"
        )
    return urlunsplit((proxy_parts.scheme, proxy_parts.netloc, "", "", ""))


def _bypasses_proxy(host: str, port: int, environ: Mapping[str, str]) -> bool:
    """Whether ``no_proxy`` names ``host`` (``*``, the host, a domain suffix, optional port)."""
    raw = environ.get("no_proxy") or environ.get("NO_PROXY") or ""
    for entry in (e.strip().lower() for e in raw.split(",")):
        if not entry:
            continue
        if entry == "*":
            return True
        name, _, entry_port = entry.partition(":") if entry.count(":") == 1 else (entry, "", "")
        if entry_port and entry_port != str(port):
            continue
        name = name.lstrip(".")
        if host == name or host.endswith("." + name):
            return True
    return False


# --------------------------------------------------------------------------------------------
# Responses: envelope parsing and error mapping
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Envelope:
    """A parsed success envelope: ``{"count", "status_code", "message", "data"}``."""

    data: Any
    count: int | None = None
    message: str | None = None
    status_code: int = 200


def _refuse_constant(name: str) -> Any:
    """``NaN``/``Infinity`` are not JSON (and would fail later, in XCom): refused here."""
    raise ValueError(f"{name} is not a JSON value")


def _decode_json(body: bytes | str, what: str) -> Any:
    """Decode a whole success body; anything but strict JSON is a protocol error, not retried.

    The body is complete here (a body shorter than announced fails in the transport, as cut off
    and retried), so bad UTF-8, trailing garbage or ``NaN`` will come back the same next time.
    """
    try:
        return json.loads(body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as err:
        reason = str(err) if "is not a JSON value" in str(err) else type(err).__name__
        raise UnpodProtocolError(
            f"the response body for {what} is not valid JSON ({reason}): {_body_preview(body)!r}",
            status_code=200,
        ) from None


def _server_message(payload: Any) -> str | None:
    if isinstance(payload, Mapping):
        msg = payload.get("message", payload.get("detail"))
        if isinstance(msg, str):
            return msg[:500]
    return None


def _server_errors(payload: Any) -> Any:
    if not isinstance(payload, Mapping):
        return None
    errors = payload.get("errors")
    if errors is None and isinstance(payload.get("data"), Mapping):
        errors = payload["data"].get("errors")
    return errors


def format_field_errors(errors: Any) -> str:
    """``{"context": ["This field is required."]}`` -> ``context: This field is required.``"""
    if errors in (None, {}, [], ""):
        return ""
    if isinstance(errors, Mapping):
        parts = []
        for key, value in errors.items():
            if isinstance(value, list):
                value = " ".join(str(v) for v in value)
            parts.append(f"{key}: {value}")
        return "; ".join(parts)[:1000]
    if isinstance(errors, list):
        return "; ".join(str(e) for e in errors)[:1000]
    return str(errors)[:1000]


def _body_preview(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = " ".join(text.split())
    return text[:120]


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
        if when is None:
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    if math.isnan(seconds) or math.isinf(seconds):
        return None
    return max(0.0, seconds)


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    if not headers:
        return None
    for key, value in headers.items():
        if key.lower() == name.lower():
            return value
    return None


def _scheme_family(scheme: str) -> str:
    """``Token`` is one family; ``JWT`` and ``Bearer`` (the same platform JWT) another."""
    scheme = scheme.strip().lower()
    return "jwt" if scheme in ("jwt", "bearer") else scheme


def _challenge_scheme(value: str | None) -> str | None:
    """The scheme a ``WWW-Authenticate`` header asks for (``JWT realm="api"`` -> ``JWT``)."""
    if not value or not value.strip():
        return None
    scheme = value.strip().split(None, 1)[0].split(",", 1)[0]
    return scheme[:20] if scheme.isascii() and scheme.replace("-", "").isalnum() else None


def raise_for_response(
    status_code: int,
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    *,
    what: str = "resource",
    resource: str | None = None,
    identifier: str | None = None,
    method: str = "GET",
    auth_scheme: str | None = None,
) -> Any:
    """Map a response to a typed error, or return its decoded JSON payload.

    ``what`` describes the request for messages (e.g. ``"space '8KZ...'"``); ``resource`` and
    ``identifier`` are attached to a not-found error; ``auth_scheme`` (what was sent) tells a
    401 for a scheme the endpoint does not take from a wrong token.
    """
    ok = status_code == 200 or (method.upper() == "POST" and status_code == 201)
    if ok:
        if isinstance(body, (bytes, str)) and not body:
            raise UnpodIncompleteResponseError(f"empty response body for {what}", status_code=status_code)
        return _decode_json(body, what)

    payload: Any = None
    if body:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError):
            payload = None
    server_message = _server_message(payload)
    suffix = f": {server_message}" if server_message else ""

    if status_code == 206:
        errors = _server_errors(payload)
        detail = format_field_errors(errors)
        text = f"Unpod refused {what}{suffix or ' (business error)'}"
        if detail:
            text += f" ({detail})"
        raise UnpodBusinessError(text, errors=errors, status_code=206, server_message=server_message)
    if 200 <= status_code < 300:
        raise UnpodProtocolError(
            f"unexpected HTTP {status_code} for {what} (only 200 is a success)",
            status_code=status_code,
            server_message=server_message,
        )
    if 300 <= status_code < 400:
        location = _header(headers, "location") or "?"
        raise UnpodProtocolError(
            f"HTTP {status_code} redirect for {what} to {location[:100]}: check the connection's "
            "base URL (redirects are not followed, so the token is never sent elsewhere)",
            status_code=status_code,
        )
    challenge = _challenge_scheme(_header(headers, "www-authenticate")) if status_code == 401 else None
    if challenge and auth_scheme and _scheme_family(challenge) != _scheme_family(auth_scheme):
        takes = "JWT or Bearer" if _scheme_family(challenge) == "jwt" else challenge
        raise UnpodAuthSchemeError(
            f"Unpod refused {what} (HTTP 401{suffix}): this server refuses the {auth_scheme} scheme "
            f"here and asks for {challenge}. The API token may well be right (the Token scheme works "
            f"on runs, tasks and creating runs on the Unpod server), but this endpoint takes only "
            f"{takes}: set the connection's Auth Scheme to {takes}, with a platform JWT as API Token",
            auth_scheme=auth_scheme,
            challenge=challenge,
            server_message=server_message,
        )
    if status_code in (401, 403):
        raise UnpodAuthError(
            f"Unpod rejected the credentials for {what} (HTTP {status_code}){suffix}",
            status_code=status_code,
            server_message=server_message,
        )
    if status_code == 404:
        raise UnpodNotFoundError(
            f"{what[:1].upper()}{what[1:]} not found (HTTP 404){suffix}",
            resource=resource,
            identifier=identifier,
            status_code=404,
            server_message=server_message,
        )
    if status_code in (400, 422):
        errors = _server_errors(payload)
        detail = format_field_errors(errors)
        raise UnpodBadRequestError(
            f"Unpod refused {what} as a bad request (HTTP {status_code}){suffix}"
            + (f" ({detail})" if detail else ""),
            errors=errors,
            status_code=status_code,
            server_message=server_message,
        )
    if status_code == 429:
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        raise UnpodRateLimitError(
            f"Unpod rate-limited {what} (HTTP 429)",
            retry_after=retry_after,
            status_code=429,
            server_message=server_message,
        )
    if status_code >= 500:
        detail = suffix or (f": {_body_preview(body)!r}" if body else ": empty body")
        raise UnpodServerError(
            f"Unpod server error for {what} (HTTP {status_code}){detail}",
            status_code=status_code,
            server_message=server_message,
            retry_after=parse_retry_after(_header(headers, "retry-after")),
        )
    raise UnpodError(
        f"unexpected HTTP {status_code} for {what}{suffix}",
        status_code=status_code,
        server_message=server_message,
    )


def parse_envelope(payload: Any, *, what: str = "response", expect_list: bool = False) -> Envelope:
    """Validate a decoded success body. Any shape other than the envelope is a protocol error."""
    if not isinstance(payload, Mapping):
        raise UnpodProtocolError(f"{what}: expected a JSON object envelope, got {type(payload).__name__}")
    status = payload.get("status_code", 200)
    if isinstance(status, bool) or not isinstance(status, int):
        raise UnpodProtocolError(f"{what}: envelope status_code is not an integer")
    message = payload.get("message")
    if message is not None and not isinstance(message, str):
        message = None
    if status != 200:
        errors = _server_errors(payload)
        detail = format_field_errors(errors)
        text = f"Unpod refused {what}" + (f": {message[:500]}" if message else f" (status {status})")
        if detail:
            text += f" ({detail})"
        raise UnpodBusinessError(text, errors=errors, status_code=status, server_message=message)
    if "data" not in payload:
        raise UnpodProtocolError(f"{what}: envelope has no 'data'")
    data = payload["data"]
    count = payload.get("count")
    if expect_list:
        if not isinstance(data, list):
            raise UnpodProtocolError(f"{what}: 'data' should be a list, got {type(data).__name__}")
        for item in data:
            if not isinstance(item, Mapping):
                raise UnpodProtocolError(f"{what}: list item is {type(item).__name__}, not an object")
        if count is not None and (
            isinstance(count, bool) or not isinstance(count, int) or count < 0 or count > 10**12
        ):
            raise UnpodProtocolError(f"{what}: 'count' is not a sensible non-negative integer")
    else:
        count = None
        if not isinstance(data, Mapping):
            raise UnpodProtocolError(f"{what}: 'data' should be an object, got {type(data).__name__}")
    return Envelope(data=data, count=count, message=message, status_code=status)


def parse_response(
    status_code: int,
    body: bytes | str,
    headers: Mapping[str, str] | None = None,
    *,
    what: str = "response",
    expect_list: bool = False,
    resource: str | None = None,
    identifier: str | None = None,
    method: str = "GET",
    auth_scheme: str | None = None,
) -> Envelope:
    """``raise_for_response`` then ``parse_envelope``: the full answer to one HTTP response."""
    payload = raise_for_response(
        status_code,
        body,
        headers,
        what=what,
        resource=resource,
        identifier=identifier,
        method=method,
        auth_scheme=auth_scheme,
    )
    return parse_envelope(payload, what=what, expect_list=expect_list)


def read_response(
    config: ClientConfig,
    status_code: int,
    body: bytes,
    headers: Mapping[str, str] | None = None,
    **kwargs: Any,
) -> Envelope:
    """The answer to one HTTP exchange, as both hooks read it: scrubbed, then parsed.

    Everything that came from the server (body, header values) loses every form of the token
    before it is parsed, so no error message, log line, event or XCom value can carry it.
    """
    return parse_response(
        status_code,
        config.scrub_body(body),
        config.scrub_headers(headers),
        auth_scheme=config.auth_scheme,
        **kwargs,
    )


# --------------------------------------------------------------------------------------------
# Retry policy (plain data, so it can cross into the triggerer)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """When and how long to wait before sending a request again.

    Retried: connection errors, timeouts, cut bodies, 429, 500/502/503/504. Never: 400, 401,
    403, 404, 206 business errors, protocol errors. Exponential backoff with full jitter,
    ``Retry-After`` honoured up to ``max_retry_after``; the whole retry sequence stops after
    ``max_attempts`` attempts or ``max_total_seconds`` of waiting, whichever comes first.
    """

    max_attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 60.0
    max_retry_after: float = 120.0
    max_total_seconds: float = 600.0

    def __post_init__(self) -> None:
        if (
            isinstance(self.max_attempts, bool)
            or not isinstance(self.max_attempts, int)
            or self.max_attempts < 1
        ):
            raise ValueError(f"retry_limit must be an integer >= 1, got {self.max_attempts!r}")
        for name in ("base_delay", "max_delay", "max_retry_after", "max_total_seconds"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
                or math.isnan(value)
            ):
                label = "retry_delay" if name == "base_delay" else name
                raise ValueError(f"{label} must be a number >= 0, got {value!r}")

    @staticmethod
    def is_retryable(error: BaseException) -> bool:
        return isinstance(error, UnpodError) and bool(error.retryable)

    def delay(
        self, attempt: int, error: BaseException | None = None, *, rng: random.Random | None = None
    ) -> float:
        """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, (int, float)) and retry_after >= 0:
            return float(min(retry_after, self.max_retry_after))
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        jitter = (rng or random).uniform(0.5, 1.0)
        return ceiling * jitter

    def to_dict(self) -> dict[str, float | int]:
        return {
            "max_attempts": self.max_attempts,
            "base_delay": self.base_delay,
            "max_delay": self.max_delay,
            "max_retry_after": self.max_retry_after,
            "max_total_seconds": self.max_total_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> RetryPolicy:
        return cls(**dict(data or {}))


# --------------------------------------------------------------------------------------------
# Pagination
# --------------------------------------------------------------------------------------------


@dataclass
class PageWalk:
    """The pagination rules of the contract as a state machine driven by a sync or async loop.

    Usage::

        walk = PageWalk(page_size=100, id_key="task_id")
        while (page := walk.next_page()) is not None:
            envelope = fetch(page)        # retried while walk.check(page, envelope) raises
            yield from walk.feed(page, envelope)

    Rules: always send an explicit page_size; the effective page size is the length of the first
    page actually received (a server may cap it silently, which a second identical answer
    confirms); stop once the pages cover ``count`` positions or a page comes back short or
    empty, never by asking for one more page; de-duplicate by id (newest-first pages shift while
    new items arrive at the head). Fail closed: an answer that disagrees with itself or with the
    answers before it (``check``) raises ``UnpodInconsistentListError``, which is retried like a
    transient failure and then raised; the walk never ends early with fewer items.
    """

    page_size: int
    id_key: str
    what: str = "items"
    page: int = 0
    count: int | None = None
    first_count: int | None = None
    effective_page_size: int | None = None
    held: int = 0
    done: bool = False
    duplicates: int = 0
    pages_fetched: int = 0
    notes: list[str] = field(default_factory=list)
    _seen: set[str] = field(default_factory=set, repr=False)
    #: Length of a short first page seen once: the same length again means a silent size cap.
    _short_first_page: int | None = field(default=None, repr=False)
    #: The last page's content, kept only for a list without a count.
    _last_page_key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        validate_page_size(self.page_size)

    def next_page(self) -> int | None:
        """The next page number to fetch, or None when the walk is over."""
        if self.done:
            return None
        return self.page + 1

    def max_pages(self) -> int | None:
        """Pages the walk may still need, given the latest count (an upper bound for planning)."""
        if self.count is None or not self.effective_page_size:
            return None
        return max(1, math.ceil(self.count / self.effective_page_size))

    def page_limit(self) -> int:
        """The most pages a walk may take: twice the first page's plan, so growth cannot chase forever."""
        if self.first_count is None or not self.effective_page_size:
            return MAX_PAGES_WITHOUT_COUNT
        return 2 * max(1, math.ceil(self.first_count / self.effective_page_size)) + 2

    def _disagree(self, page: int, why: str) -> UnpodInconsistentListError:
        return UnpodInconsistentListError(
            f"the server's answers for {self.what} disagree: page {page} {why}", status_code=200
        )

    def check(self, page: int, envelope: Envelope) -> None:
        """Raise ``UnpodInconsistentListError`` if the answer for ``page`` cannot be right.

        Checked against the answer's own ``count`` and what earlier pages said: a page shorter
        (or longer) than its place in the total, an empty first page with ``count`` > 0, a
        ``count`` that drops or vanishes, items already read beyond what the list's growth
        explains (a repeated or stale page). Safe to call again for a new answer.
        """
        items = envelope.data
        n = len(items)
        count = envelope.count
        if count is None and self.count is not None:
            raise self._disagree(page, f"has no count although earlier pages said {self.count}")
        if count is not None and self.count is not None and count < self.count:
            raise self._disagree(page, f"says the total is {count}, an earlier page said {self.count}")
        if count is not None and page == 1:
            if n > count:
                raise self._disagree(page, f"holds {n} items but says the total is {count}")
            if n == 0 and count > 0:
                raise self._disagree(page, f"is empty but says the total is {count}")
            if n < min(self.page_size, count) and self._short_first_page != n:
                # A silent page-size cap, or a replica that lags: asked again, a cap says the same.
                self._short_first_page = n
                raise self._disagree(
                    page, f"holds {n} of the {min(self.page_size, count)} items its total of {count} implies"
                )
        elif count is not None:
            size = self.effective_page_size or self.page_size
            expected = max(0, min(size, count - (page - 1) * size))
            if n != expected:
                raise self._disagree(
                    page,
                    f"holds {n} items, but with {count} in all and {size} per page it should hold {expected}",
                )
        if count is None and n and page > 1 and _page_key(items) == self._last_page_key:
            # Without a total or ids nothing else tells a server that ignores ``page``.
            raise self._disagree(page, "repeats the page before it exactly (does the server ignore 'page'?)")
        repeated = 0
        on_page: set[str] = set()
        for item in items:
            key = item.get(self.id_key)
            if key is None:
                continue
            key = str(key)
            if key in self._seen or key in on_page:
                repeated += 1
            on_page.add(key)
        growth = max(0, (count or 0) - (self.first_count if self.first_count is not None else (count or 0)))
        if repeated and self.duplicates + repeated > growth:
            raise self._disagree(
                page,
                f"repeats {repeated} items already read, more than the {growth} new ones at the head "
                "of the list explain (a stale or repeated page)",
            )

    def feed(self, page: int, envelope: Envelope) -> list[dict[str, Any]]:
        """Take the envelope of ``page`` (``check``-ed again); return the new items, in API order."""
        if page != self.page + 1:
            raise ValueError(f"pages must be fed in order: expected {self.page + 1}, got {page}")
        self.check(page, envelope)
        self.page = page
        self.pages_fetched += 1
        items: list[dict[str, Any]] = list(envelope.data)
        if envelope.count is not None:
            if self.first_count is None:
                self.first_count = envelope.count
            elif envelope.count != self.count:
                self.notes.append(
                    f"the total of {self.what} moved from {self.count} to {envelope.count} while reading "
                    f"(page {page}); items added at the head after page 1 was read are not in this list"
                )
            self.count = envelope.count
        if page == 1:
            self.effective_page_size = len(items) or self.page_size
            if 0 < len(items) < self.page_size and self.count is not None and self.count > len(items):
                self.notes.append(
                    f"the server returned {len(items)} {self.what} per page although {self.page_size} "
                    "were asked for (twice); paging with the smaller size"
                )

        self._last_page_key = _page_key(items) if envelope.count is None else None
        fresh: list[dict[str, Any]] = []
        for item in items:
            key = item.get(self.id_key)
            if key is None:
                # No id to de-duplicate on: keep it rather than silently dropping it.
                fresh.append(item)
                continue
            key = str(key)
            if key in self._seen:
                self.duplicates += 1
                continue
            self._seen.add(key)
            fresh.append(item)
        self.held += len(fresh)

        effective = self.effective_page_size or self.page_size
        covered = page * effective
        if not items or len(items) < effective or (self.count is not None and covered >= self.count):
            self.done = True
        if not self.done:
            limit = self.page_limit()
            if page >= limit:
                raise UnpodProtocolError(
                    f"pagination of {self.what} stopped at page {page}: the list kept growing while it "
                    f"was read (first {self.first_count} items, now {self.count}); read it again later"
                )
        return fresh

    def end_on_not_found(self, page: int) -> bool:
        """A 404 on a page past the first means "past the end" on stricter servers.

        Only past the end, though: a 404 for a page that should still hold items (by the total
        the server reported) is an error, not the end of the list, or the rest would be lost.
        """
        if page > 1 and self.count is not None and (page - 1) * (self.effective_page_size or 1) < self.count:
            return False
        if page > 1:
            self.page = page
            self.done = True
            return True
        return False


def _page_key(items: Sequence[Any]) -> str:
    """A page's content as one comparable string."""
    return json.dumps(items, sort_keys=True, default=str)


# --------------------------------------------------------------------------------------------
# Models: runs, tasks, timestamps, projection and redaction
# --------------------------------------------------------------------------------------------


_FRACTION_RE = re.compile(r"(?<=:\d\d)\.(\d+)")


def parse_timestamp(value: Any) -> datetime | None:
    """Parse the server's UTC timestamps (``2025-11-30T17:51:52``, with fractions, ``Z`` or offset).

    Naive values are UTC. Returns None for anything that is not a timestamp.
    """
    if not isinstance(value, str) or not value.strip():
        return None
    text = value.strip().replace(" ", "T", 1)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    # Python 3.10's fromisoformat takes only 3 or 6 fraction digits: always give it 6.
    text = _FRACTION_RE.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    return parsed


def run_status(run: Mapping[str, Any]) -> str:
    """A run's status, lower-cased; empty string when the server sent none."""
    status = run.get("status")
    return status.strip().lower() if isinstance(status, str) else ""


def is_terminal_run_status(status: str) -> bool:
    return status in RUN_STATUSES_TERMINAL


def status_list(statuses: str | Iterable[str], name: str = "status") -> tuple[str, ...]:
    """One status or several, stripped, lower-cased, de-duplicated in order.

    ``ValueError`` naming ``name`` for anything else, an empty string or an empty list.
    """
    if isinstance(statuses, str):
        values = [statuses]
    else:
        try:
            values = list(statuses)
        except TypeError:
            raise ValueError(f"{name} must be a string or a list of strings") from None
    result: list[str] = []
    for value in values:
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"{name} must contain non-empty strings, got {value!r}")
        cleaned = value.strip().lower()
        if cleaned not in result:
            result.append(cleaned)
    if not result:
        raise ValueError(f"{name} must name at least one status")
    return tuple(result)


def normalize_statuses(status: str | Iterable[str] | None, name: str = "status") -> frozenset[str] | None:
    """A status filter: one status or several (see ``status_list``); None means no filter."""
    return None if status is None else frozenset(status_list(status, name))


def status_matches(item: Mapping[str, Any], statuses: frozenset[str] | None) -> bool:
    if statuses is None:
        return True
    status = item.get("status")
    return isinstance(status, str) and status.strip().lower() in statuses


_MISSING = object()


def get_path(item: Any, dotted: str, default: Any = None) -> Any:
    """``get_path(task, "output.post_call_data.summary.status")``; default when absent."""
    current = item
    for part in dotted.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        else:
            return default
    return current


def project(item: Mapping[str, Any], fields: Sequence[str]) -> dict[str, Any]:
    """Keep only the dotted ``fields`` of ``item``, nested as in the original.

    A field the item does not have is left out (tasks of different kinds have different outputs).
    """
    result: dict[str, Any] = {}
    for dotted in fields:
        value = get_path(item, dotted, _MISSING)
        if value is _MISSING:
            continue
        parts = dotted.split(".")
        target = result
        for part in parts[:-1]:
            nxt = target.get(part)
            if not isinstance(nxt, dict):
                nxt = {}
                target[part] = nxt
            target = nxt
        target[parts[-1]] = value
    return result


def redact(
    item: Mapping[str, Any], paths: Sequence[str] = SENSITIVE_TASK_FIELDS, keep: Iterable[str] = ()
) -> dict[str, Any]:
    """A copy of ``item`` without the sensitive dotted ``paths`` (except those in ``keep``).

    Only the dicts on the way to a removed field are copied; the rest is shared.
    """
    keep_set = set(keep)
    result: dict[str, Any] = dict(item)
    for dotted in paths:
        if dotted in keep_set:
            continue
        parts = dotted.split(".")
        parent: Any = result
        chain = []
        for part in parts[:-1]:
            child = parent.get(part) if isinstance(parent, dict) else None
            if not isinstance(child, Mapping):
                parent = None
                break
            child = dict(child)
            parent[part] = child
            chain.append(child)
            parent = child
        if isinstance(parent, dict):
            parent.pop(parts[-1], None)
    return result


def validate_fields(fields: Any, name: str = "fields") -> list[str] | None:
    """Check a ``fields`` argument: a list of dotted paths such as ``output.duration``."""
    if fields is None:
        return None
    if isinstance(fields, str):
        fields = [f.strip() for f in fields.split(",")]
    if not isinstance(fields, (list, tuple)):
        raise ValueError(f"{name} must be a list of dotted field paths, got {type(fields).__name__}")
    cleaned = []
    for value in fields:
        if not isinstance(value, str) or not value.strip() or any(not p for p in value.strip().split(".")):
            raise ValueError(f"{name} contains an invalid field path: {value!r}")
        cleaned.append(value.strip())
    if not cleaned:
        raise ValueError(f"{name} must name at least one field")
    return cleaned


# --------------------------------------------------------------------------------------------
# Create a run
# --------------------------------------------------------------------------------------------

SCHEDULE_TYPES = ("now", "auto", "custom")


def validate_document(document: Any, index: int, *, where: str | None = None) -> dict[str, Any]:
    """One contact of a create-run batch: an object with a contact number or an email.

    ``where`` names the row in errors (default ``documents[<index>]``), e.g.
    ``documents row 17 (line 18 of leads.csv)`` for a contact read from a file.
    """
    label = where or f"documents[{index}]"
    if not isinstance(document, Mapping):
        raise ValueError(f"{label} must be an object, got {type(document).__name__}")
    number = document.get("contact_number")
    email_value = document.get("email")
    has_number = isinstance(number, (str, int)) and not isinstance(number, bool) and str(number).strip() != ""
    has_email = isinstance(email_value, str) and "@" in email_value
    if not (has_number or has_email):
        name = document.get("name") or document.get("document_id") or document.get("id")
        who = f" ({str(name)[:40]!r})" if name else ""
        raise ValueError(f"{label}{who} has neither a contact_number nor an email")
    doc = dict(document)
    if isinstance(number, int):
        doc["contact_number"] = str(number)
    for key in ("document_id", "id"):  # the server's ref_id is a string: it refuses 7 with a 422
        value = doc.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            doc[key] = str(value)
    return doc


def validate_schedule(schedule: Any, *, now: datetime | None = None) -> dict[str, Any]:
    """``None``/"now" -> ``{"type": "now"}``; "auto"; or a custom date and time in the future."""
    if schedule is None:
        return {"type": "now"}
    if isinstance(schedule, str):
        schedule = {"type": schedule}
    if not isinstance(schedule, Mapping):
        raise ValueError(
            f"schedule must be an object such as {{'type': 'now'}}, got {type(schedule).__name__}"
        )
    kind = schedule.get("type")
    if kind not in SCHEDULE_TYPES:
        raise ValueError(f"schedule type must be one of {', '.join(SCHEDULE_TYPES)}, got {kind!r}")
    result = dict(schedule)
    if kind == "custom":
        date_s, time_s = schedule.get("calling_date"), schedule.get("calling_time")
        if not isinstance(date_s, str) or not isinstance(time_s, str):
            raise ValueError("a custom schedule needs calling_date (YYYY-MM-DD) and calling_time (HH:MM)")
        try:
            when = datetime.fromisoformat(f"{date_s.strip()}T{time_s.strip()}")
        except ValueError:
            raise ValueError(
                f"custom schedule has an invalid calling_date/calling_time: {date_s!r} {time_s!r}"
            ) from None
        reference = now or datetime.now(timezone.utc)
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        if when <= reference:
            raise ValueError(f"custom schedule {date_s} {time_s} is not in the future")
    return result


def build_create_run_body(
    *,
    pilot: str,
    context: str,
    documents: Sequence[Any],
    schedule: Any = None,
    filters: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON body of the create-a-run request, validated."""
    if not isinstance(pilot, str) or not pilot.strip():
        raise ValueError("pilot (the agent handle) is required")
    if any(ord(ch) < 32 for ch in pilot):
        raise ValueError("pilot contains control characters")
    if not isinstance(context, str) or not context.strip():
        raise ValueError("context is required (the server refuses a run without it)")
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Sequence):
        raise ValueError("documents must be a list of contact objects")
    if not documents:
        raise ValueError("documents is empty: a run needs at least one contact")
    body: dict[str, Any] = {
        "pilot": pilot.strip(),
        "context": context,
        "documents": [validate_document(doc, i) for i, doc in enumerate(documents)],
        "schedule": validate_schedule(schedule),
    }
    if filters is not None:
        if not isinstance(filters, Mapping):
            raise ValueError("filters must be an object")
        body["filters"] = dict(filters)
    return body


def parse_create_run_data(data: Any) -> dict[str, Any]:
    """``{"run_id", "task_ids", "status"}`` from the create answer (status: map or string)."""
    if not isinstance(data, Mapping):
        raise UnpodProtocolError("create-run answer: 'data' is not an object")
    run_id = data.get("run_id")
    if not isinstance(run_id, str) or not run_id:
        raise UnpodProtocolError("create-run answer has no run_id")
    task_ids = data.get("task_ids", [])
    if not isinstance(task_ids, list) or not all(isinstance(t, str) for t in task_ids):
        raise UnpodProtocolError("create-run answer: 'task_ids' is not a list of strings")
    status = data.get("status")
    if not isinstance(status, (str, Mapping)) and status is not None:
        raise UnpodProtocolError("create-run answer: 'status' is neither a string nor a map")
    result = dict(data)
    result.update(
        {
            "run_id": run_id,
            "task_ids": list(task_ids),
            "status": dict(status) if isinstance(status, Mapping) else status,
        }
    )
    return result
