"""Typed errors raised by every part of the provider (hook, trigger, operators, sensor).

Pure module: no Airflow, no HTTP library. Messages never carry the API token; they name the
thing that was wrong (the space token, the run id, the connection field) instead.
"""

from __future__ import annotations

from typing import Any


class UnpodError(Exception):
    """Base class of every error this provider raises about the Unpod API.

    :param message: human readable explanation (never contains the API token).
    :param status_code: HTTP status of the response, when there was one.
    :param server_message: the ``message`` field of the server's body, when there was one.
    """

    #: Whether the shared retry policy may send the same request again.
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.server_message = server_message

    @property
    def message(self) -> str:
        """The server's message when it sent one, else our own explanation."""
        return self.server_message if self.server_message is not None else str(self)

    def __reduce__(self) -> tuple[Any, ...]:
        # Keep keyword-only attributes across pickling (e.g. multiprocessing, task runner).
        return (_rebuild, (type(self), str(self), self.__dict__.copy()))


def _rebuild(cls: type[UnpodError], message: str, state: dict[str, Any]) -> UnpodError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class UnpodConfigError(UnpodError, ValueError):
    """The Airflow connection (or a hook argument) is incomplete or invalid."""


class UnpodAuthError(UnpodError):
    """401 or 403: the token is wrong, expired, or has no access. Never retried."""


class UnpodAuthSchemeError(UnpodAuthError):
    """401 because this endpoint does not take the connection's Auth Scheme, not a wrong token.

    The real server takes only JWT/Bearer on ``organizations/`` and ``spaces/`` while runs, tasks
    and creating runs accept the ``Token`` scheme. ``auth_scheme`` is what was sent,
    ``challenge`` the scheme the server's ``WWW-Authenticate`` asks for.
    """

    def __init__(
        self,
        message: str,
        *,
        auth_scheme: str,
        challenge: str,
        status_code: int | None = 401,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.auth_scheme = auth_scheme
        self.challenge = challenge


class UnpodBadRequestError(UnpodError):
    """400: the request was refused as malformed (e.g. missing Org-Handle, a create the server
    refuses). ``errors`` holds the server's field errors when it sent some. Never retried."""

    def __init__(
        self,
        message: str,
        *,
        errors: Any = None,
        status_code: int | None = 400,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.errors = errors


class UnpodNotFoundError(UnpodError):
    """404 (or a run absent from its space's runs): names what was looked for."""

    def __init__(
        self,
        message: str,
        *,
        resource: str | None = None,
        identifier: str | None = None,
        status_code: int | None = 404,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.resource = resource
        self.identifier = identifier


class UnpodBusinessError(UnpodError):
    """206, or an envelope whose status is not success: the server refused the request.

    ``errors`` holds the server's field errors, e.g. ``{"context": ["This field is required."]}``.
    """

    def __init__(
        self,
        message: str,
        *,
        errors: Any = None,
        status_code: int | None = 206,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.errors = errors


class UnpodRateLimitError(UnpodError):
    """429: the server (or a proxy) asked us to slow down; raised once retries are spent."""

    retryable = True

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = 429,
        server_message: str | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.retry_after = retry_after


class UnpodServerError(UnpodError):
    """5xx (HTML bodies included); raised once retries are spent."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        server_message: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code, server_message=server_message)
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:  # type: ignore[override]
        return self.status_code in (500, 502, 503, 504)


class UnpodProtocolError(UnpodError):
    """The response is not the documented envelope (truncated JSON, wrong types, redirects)."""


class UnpodIncompleteResponseError(UnpodProtocolError):
    """A 200 whose body was empty (a proxy or a dropped stream): retried.

    A body shorter than its ``Content-Length`` is a transport error (cut off, retried); a whole
    body that is not valid JSON is a plain, non-retried ``UnpodProtocolError``.
    """

    retryable = True


class UnpodInconsistentListError(UnpodProtocolError):
    """A list answer disagrees with itself or with the answers before it.

    A short page inside the reported total, an empty first page with ``count`` > 0, a page that
    repeats items already read, a ``count`` that drops or vanishes: retried (a lagging replica
    or a stale cache may be transient), then raised, never turned into a shorter list.
    """

    retryable = True


class UnpodResponseTooLargeError(UnpodProtocolError):
    """The decoded response grew past the size cap (connection extra ``max_response_mb``).

    Refused while reading, so one answer cannot exhaust the worker's or triggerer's memory.
    Never retried: the same request would bring the same body.
    """


class UnpodTransportError(UnpodError):
    """The request did not get a complete answer: connection refused/reset, timeout, cut body.

    ``request_sent`` is False only when the request certainly never left (connection refused,
    connect timeout): the one case where even a create-run may be sent again.
    """

    retryable = True
    request_sent: bool = True

    def with_sent(self, sent: bool) -> UnpodTransportError:
        """Record whether the request may have reached the server; returns self for ``raise``."""
        self.request_sent = sent
        return self


class UnpodConnectionError(UnpodTransportError):
    """The connection could not be made, or broke before the whole response arrived."""


class UnpodTimeoutError(UnpodTransportError):
    """The server did not answer within the connect or read timeout, or the whole exchange
    took longer than its deadline."""


class UnpodTLSError(UnpodConnectionError):
    """The TLS handshake failed (certificate not trusted, wrong host name, expired, ...).

    Nothing was sent, so it is never "uncertain"; never retried: the same certificate comes back.
    """

    retryable = False
    request_sent = False


class UnpodRunNotFinishedError(UnpodError):
    """A wait ended (deadline reached) before the run reached a terminal status."""


class UnpodRunFailedError(UnpodError):
    """The run ended in a failed state (``failed``, ``cancelled``, or one not listed as success)."""

    def __init__(self, message: str, *, run_id: str, run_status: str, run: Any = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.run_status = run_status
        self.run = run


class UnpodResumeConflictError(UnpodError):
    """On a task retry, a run that may be an earlier try's could not be matched exactly.

    Raised instead of starting a second run: ``run_ids`` names the candidates to check.
    """

    def __init__(self, message: str, *, run_ids: list[str]) -> None:
        super().__init__(message)
        self.run_ids = list(run_ids)


class UnpodCreateRunUncertainError(UnpodError):
    """A create-run request may have reached the server but no answer came back.

    It is never retried (the API has no idempotency key): list the space's runs to find out.
    """


__all__ = [
    "UnpodAuthError",
    "UnpodAuthSchemeError",
    "UnpodBadRequestError",
    "UnpodBusinessError",
    "UnpodConfigError",
    "UnpodConnectionError",
    "UnpodCreateRunUncertainError",
    "UnpodError",
    "UnpodIncompleteResponseError",
    "UnpodInconsistentListError",
    "UnpodNotFoundError",
    "UnpodProtocolError",
    "UnpodRateLimitError",
    "UnpodResponseTooLargeError",
    "UnpodResumeConflictError",
    "UnpodRunFailedError",
    "UnpodRunNotFinishedError",
    "UnpodServerError",
    "UnpodTLSError",
    "UnpodTimeoutError",
    "UnpodTransportError",
]
