"""UnpodHook: the Unpod platform API from Airflow, over one reused ``requests`` session.

Credentials come from an Airflow connection of type ``unpod`` (Host = base URL, Password = API
token, extra ``org_handle``). Requests follow the shared protocol module: typed errors, retries
with backoff honouring ``Retry-After``, and pagination that neither loops, skips nor duplicates.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from unpod_provider import protocol
from unpod_provider._compat import BaseHook
from unpod_provider.connection_form import CONN_TYPE, HOOK_NAME, connection_form_widgets, ui_field_behaviour
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodAuthSchemeError,
    UnpodBusinessError,
    UnpodConfigError,
    UnpodCreateRunUncertainError,
    UnpodError,
    UnpodNotFoundError,
    UnpodRateLimitError,
    UnpodTransportError,
)
from unpod_provider.hooks import _transport
from unpod_provider.hooks._pages import DEFAULT_MAX_CONCURRENCY, Throttle, walk_pages
from unpod_provider.protocol import ClientConfig, Envelope, PageWalk, RetryPolicy

if TYPE_CHECKING:
    import requests


#: The UI's Test button: read timeout and deadline of each exchange, and the retry budget.
TEST_CONNECTION_TIMEOUT = 10.0
TEST_CONNECTION_RETRY_SECONDS = 5.0
#: A space token no space has: its runs list tells whether the server accepts the token.
TEST_CONNECTION_PROBE_SPACE = "AIRFLOWPROVIDERPROBE0000"


def config_from_connection(conn: Any, *, conn_id: str, timeout: float | None = None) -> ClientConfig:
    """Build the client config from an Airflow ``Connection`` (sync or async lookup alike)."""
    try:
        extra = conn.extra_dejson
    except Exception:  # noqa: BLE001 - a broken extra is a config error, not a crash
        raise UnpodConfigError(f"Connection '{conn_id}': extra is not valid JSON") from None
    config = ClientConfig.from_connection_fields(
        conn_id=conn_id,
        host=conn.host,
        password=conn.password,
        extra=extra,
        port=conn.port,
        schema=conn.schema,
        timeout=timeout,
    )
    _mask(config.token)
    return config


def _mask(token: str) -> None:
    """Register the token with Airflow's log masker (the worker does too; this covers the rest)."""
    try:
        from airflow.sdk.log import mask_secret
    except ImportError:  # pragma: no cover - older task SDKs
        return
    with contextlib.suppress(Exception):  # best effort outside a task runner
        mask_secret(token)


class UnpodHook(BaseHook):
    """Talks to the Unpod platform API.

    :param unpod_conn_id: Airflow connection of type ``unpod``.
    :param retry_limit: attempts per request (1 = no retry).
    :param retry_delay: base of the exponential backoff, in seconds.
    :param timeout: read timeout per request in seconds (default: the connection's, else 30).
    :param max_retry_seconds: cap on the total time one request may spend retrying.
    :param max_concurrency: pages of one list fetched at once once the total is known
        (default 10; 1 = strictly sequential).
    """

    conn_name_attr = "unpod_conn_id"
    default_conn_name = "unpod_default"
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(
        self,
        unpod_conn_id: str = default_conn_name,
        *,
        retry_limit: int = 5,
        retry_delay: float = 1.0,
        timeout: float | None = None,
        max_retry_seconds: float = 600.0,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        if not isinstance(unpod_conn_id, str) or not unpod_conn_id:
            raise ValueError("unpod_conn_id must be a non-empty string")
        if timeout is not None and (
            isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0
        ):
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        self.unpod_conn_id = unpod_conn_id
        self.timeout = timeout
        self.retry_policy = RetryPolicy(
            max_attempts=retry_limit, base_delay=retry_delay, max_total_seconds=max_retry_seconds
        )
        if isinstance(max_concurrency, bool) or not isinstance(max_concurrency, int) or max_concurrency < 1:
            raise ValueError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
        self.max_concurrency = max_concurrency
        self._throttle = Throttle()
        self._session: requests.Session | None = None
        #: Whether the documented create path answered 404/405 (then the server's path is used).
        self._documented_create_path_missing = False
        #: Seconds the calls of a ``within`` block may take in all (None: the policy's own).
        self._budget: float | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(unpod_conn_id={self.unpod_conn_id!r})"

    # ---- Airflow UI -------------------------------------------------------------------------

    @classmethod
    def get_ui_field_behaviour(cls) -> dict[str, Any]:
        """Connection form behaviour for Airflow 3.0/3.1 (3.2+ reads the provider-info dict)."""
        return ui_field_behaviour()

    @classmethod
    def get_connection_form_widgets(cls) -> dict[str, Any]:
        """Extra connection fields for Airflow 3.0/3.1 (3.2+ reads the provider-info dict)."""
        return connection_form_widgets()

    # ---- connection and session --------------------------------------------------------------

    @cached_property
    def config(self) -> ClientConfig:
        """Validated settings from the Airflow connection, read once, on first use."""
        conn = self.get_connection(self.unpod_conn_id)
        return config_from_connection(conn, conn_id=self.unpod_conn_id, timeout=self.timeout)

    def get_conn(self) -> requests.Session:
        """The hook's one ``requests.Session``, created on first use."""
        if self._session is None:
            self._session = _transport.build_session(self.config, pool_size=max(10, self.max_concurrency))
            if not self.config.verify:
                self.log.warning(
                    "TLS certificate verification is OFF for connection '%s' (extra verify: false)",
                    self.unpod_conn_id,
                )
        return self._session

    @contextlib.contextmanager
    def within(self, seconds: float) -> Iterator[None]:
        """Calls in this block end within about ``seconds``: retrying and every exchange are cut
        to it (a sensor's look never outlives what is left of the sensor's timeout)."""
        previous = self._budget
        seconds = max(float(seconds), 0.001)
        self._budget = seconds if previous is None else min(previous, seconds)
        try:
            yield
        finally:
            self._budget = previous

    def close(self) -> None:
        """Close the session (idempotent)."""
        if self._session is not None:
            self._session.close()
            self._session = None

    def __enter__(self) -> UnpodHook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- transport -----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        expect_list: bool = False,
        resource: str | None = None,
        identifier: str | None = None,
        retryable: Callable[[BaseException], bool] | None = None,
        check: Callable[[Envelope], None] | None = None,
        stopped: threading.Event | None = None,
    ) -> Envelope:
        """Send with the retry policy and parse the answer into an envelope.

        ``check`` may refuse a parsed answer (an inconsistent page): that is retried like a
        transient failure. Once ``stopped`` is set no further attempt is made.
        """
        import tenacity

        from unpod_provider._retry import tenacity_kwargs

        policy, config = self.retry_policy, self.config
        if self._budget is not None:
            policy = dataclasses.replace(
                policy, max_total_seconds=min(policy.max_total_seconds, self._budget)
            )
            config = dataclasses.replace(
                config, exchange_deadline=min(config.response_deadline, self._budget)
            )

        def attempt() -> Envelope:
            if stopped is not None and stopped.is_set():
                raise _FetchStopped
            self._throttle.wait(sleep=tenacity.nap.sleep)
            if stopped is not None and stopped.is_set():
                raise _FetchStopped
            session = self.get_conn()
            status, body, headers = _transport.send(
                session, config, method, path, params=params, json_body=json_body
            )
            try:
                envelope = protocol.read_response(
                    config,
                    status,
                    body,
                    headers,
                    what=what,
                    expect_list=expect_list,
                    resource=resource,
                    identifier=identifier,
                    method=method,
                )
            except UnpodRateLimitError as err:
                # One 429 pauses every request of this hook (concurrent pages included), never
                # for longer than one request may spend retrying.
                self._throttle.pause(min(policy.delay(1, err), policy.max_total_seconds))
                raise
            if check is not None:
                check(envelope)
            return envelope

        retrying = tenacity.Retrying(**tenacity_kwargs(policy, self.log, f"{method} {path}", retryable))
        return retrying(attempt)

    def _paginate(
        self,
        path: str,
        *,
        page_size: int,
        status: str | Iterable[str] | None,
        id_key: str,
        what: str,
        resource: str,
        identifier: str,
        max_concurrency: int | None,
    ) -> Iterator[dict[str, Any]]:
        """Every item of a paginated list once, in API order, optionally filtered on ``status``.

        Arguments are checked now, before any request; pages are read as the caller iterates.
        After the first page tells the total, up to ``max_concurrency`` pages are fetched at once
        (one request per page); items still come out in API order.
        """
        protocol.validate_page_size(page_size)
        statuses = protocol.normalize_statuses(status)
        concurrency = self.max_concurrency if max_concurrency is None else max_concurrency
        walk = PageWalk(page_size=page_size, id_key=id_key, what=what)
        #: Set when the fetch ends (an error, the caller stopped, Ctrl-C): pages still in flight
        #: in other threads make no further attempt.
        stopped = threading.Event()

        def fetch(page: int, checked: bool) -> Envelope:
            return self._call(
                "GET",
                path,
                what=f"{what} (page {page})",
                params=protocol.page_params(page, page_size),
                expect_list=True,
                resource=resource,
                identifier=identifier,
                check=functools.partial(walk.check, page) if checked else None,
                stopped=stopped,
            )

        def items() -> Iterator[dict[str, Any]]:
            try:
                for item in walk_pages(walk, fetch, max_concurrency=concurrency, on_stop=stopped.set):
                    if protocol.status_matches(item, statuses):
                        yield item
            finally:
                stopped.set()
            for note in walk.notes:
                self.log.warning("Unpod %s: %s", what, note)

        return items()

    # ---- endpoints -------------------------------------------------------------------------------

    def list_organizations(self) -> list[dict[str, Any]]:
        """Organizations the token's user belongs to."""
        envelope = self._call(
            "GET", protocol.organizations_path(), what="the organizations list", expect_list=True
        )
        return list(envelope.data)

    def list_spaces(self) -> list[dict[str, Any]]:
        """Spaces of the connection's organization (the endpoint is not paginated)."""
        envelope = self._call(
            "GET",
            protocol.spaces_path(),
            what=f"the spaces of org '{self.config.org_handle}'",
            expect_list=True,
            resource="organization",
            identifier=self.config.org_handle,
        )
        return list(envelope.data)

    def get_space(self, space_token: str) -> dict[str, Any]:
        """One space, with its agents."""
        path = protocol.space_path(space_token)
        envelope = self._call(
            "GET", path, what=f"space '{space_token}'", resource="space", identifier=space_token
        )
        return dict(envelope.data)

    def iter_space_tasks(
        self,
        space_token: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
        max_concurrency: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every task of a space, lazily, page by page (newest first)."""
        return self._paginate(
            protocol.space_tasks_path(space_token),
            page_size=page_size,
            status=status,
            id_key="task_id",
            what=f"tasks of space '{space_token}'",
            resource="space",
            identifier=space_token,
            max_concurrency=max_concurrency,
        )

    def list_space_tasks(
        self,
        space_token: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every task of a space; ``status`` filters on the task's own status, on the client."""
        return list(self.iter_space_tasks(space_token, page_size=page_size, status=status))

    def iter_space_runs(
        self,
        space_token: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
        max_concurrency: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every run of a space, lazily (newest first)."""
        return self._paginate(
            protocol.space_runs_path(space_token),
            page_size=page_size,
            status=status,
            id_key="run_id",
            what=f"runs of space '{space_token}'",
            resource="space",
            identifier=space_token,
            max_concurrency=max_concurrency,
        )

    def list_space_runs(
        self,
        space_token: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every run of a space; ``status`` filters on the run's own status, on the client."""
        return list(self.iter_space_runs(space_token, page_size=page_size, status=status))

    def find_run(
        self, space_token: str, run_id: str, *, page_size: int = protocol.DEFAULT_PAGE_SIZE
    ) -> dict[str, Any] | None:
        """The run with ``run_id``, paging through the space's runs until found; None if absent."""
        protocol.validate_identifier(run_id, "run_id")
        # Sequential: runs are newest first, so the run is usually on page 1; stop as soon as found.
        for run in self.iter_space_runs(space_token, page_size=page_size, max_concurrency=1):
            if run.get("run_id") == run_id:
                return run
        return None

    def get_run(
        self, space_token: str, run_id: str, *, page_size: int = protocol.DEFAULT_PAGE_SIZE
    ) -> dict[str, Any]:
        """The run with ``run_id``; ``UnpodNotFoundError`` when the space has no such run."""
        run = self.find_run(space_token, run_id, page_size=page_size)
        if run is None:
            raise UnpodNotFoundError(
                f"Run '{run_id}' not found in the runs of space '{space_token}'",
                resource="run",
                identifier=run_id,
                status_code=None,
            )
        return run

    def iter_run_tasks(
        self,
        space_token: str,
        run_id: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
        max_concurrency: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Every task of a run, full detail, lazily. An unknown run id yields nothing."""
        return self._paginate(
            protocol.run_tasks_path(space_token, run_id),
            page_size=page_size,
            status=status,
            id_key="task_id",
            what=f"tasks of run '{run_id}' in space '{space_token}'",
            resource="run",
            identifier=run_id,
            max_concurrency=max_concurrency,
        )

    def list_run_tasks(
        self,
        space_token: str,
        run_id: str,
        *,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        status: str | Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Every task of a run; ``status`` filters on the task's own status, on the client."""
        return list(self.iter_run_tasks(space_token, run_id, page_size=page_size, status=status))

    def create_run(
        self,
        space_token: str,
        *,
        pilot: str,
        context: str,
        documents: Sequence[Mapping[str, Any]],
        schedule: Any = None,
        filters: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Start a run: one task per document. Returns ``{"run_id", "task_ids", "status", ...}``.

        Posts to the documented path, and to the server's path only if that answers 404/405 (so
        nothing was created); the hook remembers that, so its later creates are one request.
        Never retried once the request may have reached the server.
        """
        documented, server_path = protocol.create_run_paths(space_token)
        body = protocol.build_create_run_body(
            pilot=pilot, context=context, documents=documents, schedule=schedule, filters=filters
        )
        last_error: UnpodError | None = None
        paths = (server_path,) if self._documented_create_path_missing else (documented, server_path)
        for path in paths:
            try:
                envelope = self._call(
                    "POST",
                    path,
                    what=f"creating a run in space '{space_token}'",
                    json_body=body,
                    resource="space",
                    identifier=space_token,
                    retryable=_safe_to_retry_create,
                )
                result = protocol.parse_create_run_data(envelope.data)
            except UnpodError as err:
                if err.status_code in (404, 405) and path == documented:
                    self.log.info(
                        "Create path %s answered %s; trying %s (and using it from now on)",
                        documented,
                        err.status_code,
                        server_path,
                    )
                    self._documented_create_path_missing = True
                    last_error = err
                    continue
                if _transport.may_have_reached_server(err):
                    raise UnpodCreateRunUncertainError(
                        f"Creating a run in space '{space_token}' failed after the request may have reached "
                        f"the server ({err}); the run may or may not exist. Check the space's runs "
                        "(ListSpaceRunsOperator or UnpodHook.list_space_runs) before starting it again.",
                        status_code=err.status_code,
                        server_message=err.server_message,
                    ) from None
                raise
            self.log.info(
                "Created run %s in space %s with %d tasks",
                result["run_id"],
                space_token,
                len(result["task_ids"]),
            )
            return result
        assert last_error is not None
        raise last_error

    # ---- Test button -------------------------------------------------------------------------

    def _scheme_refused_message(self, refused: UnpodAuthSchemeError) -> str:
        """What the Test says when organizations/spaces refuse the scheme: does the token work?

        A runs list of a space that does not exist answers 206 to a token the server accepts
        and 401 to one it does not, so one request tells a scheme problem from a wrong token.
        """
        try:
            self._call(
                "GET",
                protocol.space_runs_path(TEST_CONNECTION_PROBE_SPACE),
                what="the runs of a probe space",
                params=protocol.page_params(1, 1),
                expect_list=True,
            )
        except UnpodBusinessError:
            pass  # "Invalid Space Token": the token got through
        except UnpodAuthError as err:
            said = f": {err.server_message}" if err.server_message else ""
            return f"Unpod rejected the credentials (HTTP {err.status_code}{said}): check the API Token"
        except UnpodError as err:
            return f"{refused}. Checking the token on the runs endpoint failed too: {err}"
        scheme, challenge = refused.auth_scheme, refused.challenge
        takes = "JWT or Bearer" if challenge.lower() in ("jwt", "bearer") else challenge
        return (
            f"The API token works on runs and tasks, but this server refuses the {scheme} scheme on "
            f"organizations and spaces (it asks for {challenge}): set Auth Scheme to {takes}, "
            "with a platform JWT as API Token, to list spaces and to test the org handle"
        )

    def test_connection(self) -> tuple[bool, str]:
        """The UI's Test button: is the token valid and the org handle one of its orgs?"""
        try:
            config = self.config
        except UnpodConfigError as err:
            return False, str(err)
        except Exception as err:  # noqa: BLE001 - the UI wants a message, not a traceback
            return False, f"Could not read connection '{self.unpod_conn_id}': {type(err).__name__}"
        # The Test button runs inside the API server: every exchange and the whole test bounded.
        timeout = min(config.timeout, TEST_CONNECTION_TIMEOUT)
        quick = UnpodHook(
            self.unpod_conn_id,
            retry_limit=2,
            retry_delay=0.5,
            timeout=timeout,
            max_retry_seconds=TEST_CONNECTION_RETRY_SECONDS,
        )
        # Reuse what was just read (no second lookup), with the Test's own short deadlines.
        quick.config = dataclasses.replace(config, timeout=timeout, exchange_deadline=timeout)
        try:
            try:
                orgs = quick.list_organizations()
            except UnpodAuthSchemeError as err:
                return False, quick._scheme_refused_message(err)
            handles = [str(o.get("domain_handle")) for o in orgs if isinstance(o, Mapping)]
            if config.org_handle not in handles:
                known = ", ".join(repr(h) for h in handles[:10]) or "none"
                return False, (
                    f"The API token works, but org handle '{config.org_handle}' is not one of its "
                    f"organizations ({known})"
                )
            spaces = quick.list_spaces()
        except UnpodError as err:
            return False, str(err)
        finally:
            quick.close()
        return True, f"Connected to org '{config.org_handle}' ({len(spaces)} spaces)"


class _FetchStopped(Exception):
    """The fetch this page belonged to has ended: the page is not asked for again."""


def _safe_to_retry_create(error: BaseException) -> bool:
    """A create may be retried only if the server certainly did not process it."""
    if isinstance(error, UnpodRateLimitError):
        return True
    return isinstance(error, UnpodTransportError) and error.retryable and not error.request_sent


class UnpodAsyncHook(BaseHook):
    """The async twin used by triggers: ``httpx.AsyncClient``, async connection lookup.

    It never blocks the event loop: the connection is read with ``aget_connection`` and every
    request and retry sleep is awaited. Same protocol module, retry policy and errors as
    ``UnpodHook``. Use it as ``async with UnpodAsyncHook(...) as hook:`` so the client is closed.
    """

    conn_name_attr = "unpod_conn_id"
    default_conn_name = "unpod_default"
    conn_type = CONN_TYPE
    hook_name = HOOK_NAME

    def __init__(
        self,
        unpod_conn_id: str = default_conn_name,
        *,
        retry_policy: RetryPolicy | None = None,
        timeout: float | None = None,
        logger_name: str | None = None,
    ) -> None:
        super().__init__(logger_name=logger_name)
        self.unpod_conn_id = unpod_conn_id
        self.retry_policy = retry_policy or RetryPolicy()
        self.timeout = timeout
        self._config: ClientConfig | None = None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(unpod_conn_id={self.unpod_conn_id!r})"

    async def aconfig(self) -> ClientConfig:
        """Read and validate the connection without blocking the loop (once)."""
        if self._config is None:
            getter = getattr(BaseHook, "aget_connection", None)
            if getter is not None:
                conn = await getter(self.unpod_conn_id)
            else:  # pragma: no cover - task SDKs without the async lookup
                from asgiref.sync import sync_to_async

                conn = await sync_to_async(BaseHook.get_connection)(self.unpod_conn_id)
            self._config = config_from_connection(conn, conn_id=self.unpod_conn_id, timeout=self.timeout)
        return self._config

    async def _aclient(self) -> Any:
        if self._client is None:
            config = await self.aconfig()
            # Building a TLS context reads the CA bundle (tens of ms): once, and not on the loop.
            context = await asyncio.to_thread(_transport.tls_context, config.tls_verify)
            if self._client is None:  # another coroutine of this hook may have built it meanwhile
                self._client = _transport.build_async_client(config, context)
                if not config.verify:
                    self.log.warning(
                        "TLS certificate verification is OFF for connection '%s' (extra verify: false)",
                        self.unpod_conn_id,
                    )
        return self._client

    async def aclose(self) -> None:
        """Close the HTTP client (idempotent)."""
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def __aenter__(self) -> UnpodAsyncHook:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _acall(
        self,
        method: str,
        path: str,
        *,
        what: str,
        params: Mapping[str, Any] | None = None,
        expect_list: bool = False,
        resource: str | None = None,
        identifier: str | None = None,
        check: Callable[[Envelope], None] | None = None,
    ) -> Envelope:
        import tenacity

        from unpod_provider._retry import tenacity_kwargs

        retrying = tenacity.AsyncRetrying(**tenacity_kwargs(self.retry_policy, self.log, f"{method} {path}"))
        async for attempt in retrying:
            with attempt:
                client = await self._aclient()
                config = await self.aconfig()
                status, body, headers = await _transport.asend(client, config, method, path, params=params)
                envelope = protocol.read_response(
                    config,
                    status,
                    body,
                    headers,
                    what=what,
                    expect_list=expect_list,
                    resource=resource,
                    identifier=identifier,
                    method=method,
                )
                if check is not None:
                    check(envelope)
                return envelope
        raise AssertionError("unreachable: tenacity re-raises the last error")  # pragma: no cover

    async def aiter_space_runs(self, space_token: str, *, page_size: int = protocol.DEFAULT_PAGE_SIZE) -> Any:
        """Async iterator over a space's runs, page by page (newest first)."""
        path = protocol.space_runs_path(space_token)
        what = f"runs of space '{space_token}'"
        walk = PageWalk(page_size=page_size, id_key="run_id", what=what)
        while (page := walk.next_page()) is not None:
            try:
                envelope = await self._acall(
                    "GET",
                    path,
                    what=f"{what} (page {page})",
                    params=protocol.page_params(page, page_size),
                    expect_list=True,
                    resource="space",
                    identifier=space_token,
                    check=functools.partial(walk.check, page),
                )
            except UnpodNotFoundError:
                if walk.end_on_not_found(page):
                    break
                raise
            for run in walk.feed(page, envelope):
                yield run
        for note in walk.notes:
            self.log.warning("Unpod %s: %s", what, note)

    async def afind_run(
        self, space_token: str, run_id: str, *, page_size: int = protocol.DEFAULT_PAGE_SIZE
    ) -> dict[str, Any] | None:
        """The run with ``run_id`` or None, paging until found."""
        protocol.validate_identifier(run_id, "run_id")
        async for run in self.aiter_space_runs(space_token, page_size=page_size):
            if run.get("run_id") == run_id:
                return dict(run)
        return None
