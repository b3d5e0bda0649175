"""Fault injection rules: what can go wrong, where, and how often.

A :class:`Fault` matches requests by path (substring or regex), method and query parameters,
lets the first ``skip`` matches through, then fires ``times`` times (``None`` = forever).
*Pre* faults (``latency``, ``append``) act and let the request go on; every other kind answers
the request itself (the first matching one wins). Pure Python: the ASGI side lives in ``_app``.
Kinds that rewrite a list answer (``short_page``, ``drop_count``...) send any non-JSON or
non-list answer unchanged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

#: kind -> {parameter: default}. ``...`` marks a required parameter.
FAULT_KINDS: dict[str, dict[str, Any]] = {
    # added delay, then the normal answer
    "latency": {"seconds": ...},
    # a response slower than ``seconds``: before the headers (stage="headers") or after the
    # headers and the first half of the body (stage="body"), to trigger client read timeouts
    "slow": {"seconds": ..., "stage": "headers"},
    # the real answer sent ``chunk_bytes`` at a time, ``interval`` seconds apart: each gap within
    # a read timeout, the whole far beyond it (a server that trickles its body)
    "trickle": {"interval": ..., "chunk_bytes": 64},
    # 429, with Retry-After as seconds (number) / raw text (str) / an HTTP date N seconds ahead
    "rate_limit": {"retry_after": None, "retry_after_date": None, "body": "json"},
    # 500/502/503/504 with a JSON, HTML (Django/nginx style) or empty body
    "server_error": {"status": 500, "body": "html", "retry_after": None},
    # any status with any body (str, or an object sent as JSON) and headers
    "http": {"status": ..., "body": "", "headers": None, "content_type": "application/json"},
    # 206 business error, e.g. Invalid Space Token or a validation error with ``errors``
    "business_error": {"message": "Invalid Space Token", "errors": None},
    # a 200 (or ``status``) with an empty body
    "empty_body": {"status": 200},
    # the real answer cut short, with a Content-Length that matches the cut body
    "truncated_json": {"fraction": 0.5, "bytes": None},
    # headers with the full Content-Length, part of the body, then the connection is closed
    "drop_connection": {"fraction": 0.5, "bytes": None},
    # the connection is closed before any byte of the response is sent
    "disconnect": {},
    # add ``n`` items to the request's space (tasks or runs, by path) before answering
    "append": {"n": 1, "items": None, "status": "completed", "tasks_per_run": 1},
    # the real list answer with ``data`` cut to its first ``keep`` items (or ``fraction`` of
    # them), ``count`` unchanged: a page shorter than it should be
    "short_page": {"keep": None, "fraction": 0.5},
    # page N answered with the real page N-1 (same page_size; page 1 unchanged)
    "repeat_page": {},
    # the real list answer with ``count`` set ``to`` a value or lowered ``by`` some (default
    # halved; never below 0), data unchanged
    "drop_count": {"by": None, "to": None},
    # the request's own Authorization value echoed back in a JSON/HTML/text error body, or in
    # a redirect's Location (``body="location"``; status 302 unless given). With status 200
    # and body "json": the real answer with its ``message`` set to "echo: <value>"
    "echo_token": {"status": 500, "body": "json"},
    # the real answer as raw HTTP/1.1 whose status line and headers arrive ``chunk_bytes`` at
    # a time, ``interval`` seconds apart; then the body at once and the connection closed
    "header_trickle": {"interval": ..., "chunk_bytes": 1},
    # a small gzip body (Content-Encoding: gzip) that inflates to ~``inflated_bytes`` of JSON
    # (built once per size and process, off the event loop: the first 1 GiB one takes ~3 s)
    "gzip_bomb": {"inflated_bytes": 1 << 30, "status": 200},
    # a valid JSON envelope of ~``bytes`` bytes, streamed (Content-Length unless ``chunked``)
    "big_body": {"bytes": ..., "chunked": False},
    # the real answer plus these response headers (e.g. Set-Cookie)
    "extra_headers": {"headers": ...},
}

ECHO_BODIES = ("json", "html", "text", "location")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")

PRE_KINDS = frozenset({"latency", "append"})

_ids = itertools.count(1)


def _check_number(name: str, value: Any, *, minimum: float = 0.0, maximum: float | None = None) -> float:
    """A number >= minimum (and <= maximum), or ValueError naming it."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
        raise ValueError(f"{name} must be a number >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return float(value)


def _check_int(name: str, value: Any, *, minimum: int = 0, optional: bool = False) -> int | None:
    """An integer >= minimum (None allowed when ``optional``), or ValueError naming it."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def _check_status(name: str, value: Any, *, with_body: bool = False) -> int:
    """An HTTP status code (200-599 without 204/304 when the answer has a body)."""
    low = 200 if with_body else 100
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not low <= value <= 599
        or (with_body and value in (204, 304))
    ):
        raise ValueError(f"{name} must be an HTTP status code that allows a body, got {value!r}")
    return value


def _check_headers(value: Any) -> dict[str, str]:
    """Response headers as ``{name: value}``: token names, latin-1 values without CR/LF/NUL."""
    if not isinstance(value, Mapping):
        raise ValueError(f"headers must be a mapping of header names to values, got {value!r}")
    checked: dict[str, str] = {}
    for name, text in value.items():
        if not isinstance(name, str) or not _HEADER_NAME.match(name):
            raise ValueError(f"not a valid header name: {name!r}")
        if not isinstance(text, str) or any(c in text for c in "\r\n\0"):
            raise ValueError(f"header {name} needs a one-line string value, got {text!r}")
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            raise ValueError(f"header {name} value must be latin-1 text") from None
        checked[name] = text
    return checked


def validate_params(kind: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Fill defaults, refuse unknown kinds/parameters and nonsensical values."""
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; known: {', '.join(sorted(FAULT_KINDS))}")
    spec = FAULT_KINDS[kind]
    unknown = set(params) - set(spec)
    if unknown:
        raise ValueError(f"fault {kind!r} has no parameter(s) {sorted(unknown)}; it takes {sorted(spec)}")
    result = {key: params.get(key, default) for key, default in spec.items()}
    missing = [key for key, value in result.items() if value is ...]
    if missing:
        raise ValueError(f"fault {kind!r} needs {', '.join(missing)}")
    if kind in ("latency", "slow"):
        _check_number("seconds", result["seconds"])
    if kind == "trickle":
        _check_number("interval", result["interval"])
        chunk = result["chunk_bytes"]
        if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"trickle chunk_bytes must be an integer >= 1, got {chunk!r}")
    if kind == "slow" and result["stage"] not in ("headers", "body"):
        raise ValueError("slow fault stage must be 'headers' or 'body'")
    if kind == "server_error" and result["status"] not in (500, 502, 503, 504):
        raise ValueError(f"server_error status must be 500, 502, 503 or 504, got {result['status']!r}")
    if kind in ("rate_limit", "server_error") and result.get("body") not in ("json", "html", "empty", "text"):
        raise ValueError("body must be 'json', 'html', 'empty' or 'text'")
    if kind == "rate_limit" and result["retry_after_date"] is not None:
        _check_number("retry_after_date", result["retry_after_date"], minimum=-86400.0)
    if kind in ("http", "empty_body"):
        status = result["status"]
        if isinstance(status, bool) or not isinstance(status, int) or not 100 <= status <= 599:
            raise ValueError(f"status must be an HTTP status code, got {status!r}")
    if kind in ("truncated_json", "drop_connection"):
        _check_number("fraction", result["fraction"], maximum=1.0)
        if result["bytes"] is not None:
            _check_number("bytes", result["bytes"])
            result["bytes"] = int(result["bytes"])
    if kind == "append":
        if isinstance(result["n"], bool) or not isinstance(result["n"], int) or result["n"] < 1:
            raise ValueError(f"append n must be an integer >= 1, got {result['n']!r}")
        if result["items"] not in (None, "tasks", "runs"):
            raise ValueError("append items must be 'tasks', 'runs' or None (from the path)")
    _validate_new_kinds(kind, params, result)
    return result


def _validate_new_kinds(kind: str, params: Mapping[str, Any], result: dict[str, Any]) -> None:
    """Checks of the list-rewriting, echo, raw-transport and big-body kinds (fills ``result``)."""
    if kind == "short_page":
        _check_int("short_page keep", result["keep"], optional=True)
        _check_number("fraction", result["fraction"], maximum=1.0)
    if kind == "drop_count":
        _check_int("drop_count by", result["by"], optional=True)
        _check_int("drop_count to", result["to"], optional=True)
        if result["by"] is not None and result["to"] is not None:
            raise ValueError("drop_count takes 'by' or 'to', not both")
    if kind == "echo_token":
        if result["body"] not in ECHO_BODIES:
            raise ValueError(f"echo_token body must be one of {', '.join(ECHO_BODIES)}")
        if result["body"] == "location" and "status" not in params:
            result["status"] = 302  # a redirect is the natural answer carrying a Location
        _check_status("echo_token status", result["status"], with_body=True)
    if kind == "header_trickle":
        _check_number("interval", result["interval"])
        _check_int("header_trickle chunk_bytes", result["chunk_bytes"], minimum=1)
    if kind == "gzip_bomb":
        _check_int("gzip_bomb inflated_bytes", result["inflated_bytes"])
        _check_status("gzip_bomb status", result["status"], with_body=True)
    if kind == "big_body":
        _check_int("big_body bytes", result["bytes"])
        if not isinstance(result["chunked"], bool):
            raise ValueError(f"big_body chunked must be true or false, got {result['chunked']!r}")
    if kind == "extra_headers":
        result["headers"] = _check_headers(result["headers"])


@dataclass
class Fault:
    """One injected fault. ``remaining`` None = forever; ``hits`` counts the times it fired."""

    kind: str
    params: dict[str, Any]
    path: str | None = None
    path_regex: str | None = None
    method: str | None = None
    query: dict[str, str] | None = None
    remaining: int | None = 1
    skip: int = 0
    hits: int = 0
    id: str = field(default_factory=lambda: f"f{next(_ids)}")
    _regex: re.Pattern[str] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(
        cls,
        kind: str,
        *,
        path: str | None = None,
        path_regex: str | None = None,
        method: str | None = None,
        query: Mapping[str, Any] | None = None,
        times: int | None = 1,
        skip: int = 0,
        **params: Any,
    ) -> Fault:
        """Validate and build a fault (raises ``ValueError`` on a bad kind or parameter)."""
        if times is not None and (isinstance(times, bool) or not isinstance(times, int) or times < 1):
            raise ValueError(f"times must be an integer >= 1 or None (forever), got {times!r}")
        if isinstance(skip, bool) or not isinstance(skip, int) or skip < 0:
            raise ValueError(f"skip must be an integer >= 0, got {skip!r}")
        regex = re.compile(path_regex) if path_regex else None
        return cls(
            kind=kind,
            params=validate_params(kind, params),
            path=path or None,
            path_regex=path_regex or None,
            method=method.upper() if method else None,
            query={str(k): str(v) for k, v in query.items()} if query else None,
            remaining=times,
            skip=skip,
            _regex=regex,
        )

    def matches(self, method: str, path: str, query: Mapping[str, str]) -> bool:
        """Whether this fault applies to the request (ignores the skip/remaining counters)."""
        if self.remaining is not None and self.remaining <= 0:
            return False
        if self.method and self.method != method.upper():
            return False
        if self.path and self.path not in path:
            return False
        if self._regex is not None and not self._regex.search(path):
            return False
        return not (self.query and any(query.get(k) != v for k, v in self.query.items()))

    def consume(self) -> bool:
        """Count one matching request; True if the fault fires for it."""
        if self.skip > 0:
            self.skip -= 1
            return False
        if self.remaining is not None:
            self.remaining -= 1
        self.hits += 1
        return True

    @property
    def exhausted(self) -> bool:
        """Whether the fault has fired its ``times``."""
        return self.remaining is not None and self.remaining <= 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description (for ``GET /_sim/faults``)."""
        return {
            "id": self.id,
            "kind": self.kind,
            "params": dict(self.params),
            "path": self.path,
            "path_regex": self.path_regex,
            "method": self.method,
            "query": self.query,
            "remaining": self.remaining,
            "skip": self.skip,
            "hits": self.hits,
        }
