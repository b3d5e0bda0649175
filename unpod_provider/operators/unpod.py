"""Operators that read Unpod spaces, runs and tasks and hand them on as plain JSON.

Each operator returns JSON (dicts, lists, strings, numbers) as its XCom, so a TaskFlow task or
``.expand()`` can take it directly. The task and run lists can keep only some fields
(``fields``), filter on status (``status``) and, for large results, stream the items to object
storage as JSON Lines (``output_path``) instead of XCom. ``user_info.user_token`` and
``user_info.location`` are removed unless asked for. Nothing is fetched and no connection is
read in ``__init__``: DAG parsing stays free of I/O.

``CreateRunOperator`` starts a run (one call per contact) and can wait for it to finish, with
the very waiting code of ``RunCompletedSensor`` (poke or deferrable).
"""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime, timedelta, timezone
from functools import cached_property
from typing import IO, TYPE_CHECKING, Any, ClassVar

from airflow.configuration import conf
from airflow.sdk import BaseOperator

from unpod_provider import protocol
from unpod_provider._compat import AirflowFailException
from unpod_provider.exceptions import UnpodResumeConflictError
from unpod_provider.protocol import RetryPolicy
from unpod_provider.sensors.unpod import DEFAULT_NOT_FOUND_GRACE_PERIOD, RunWaitMixin, push_run_ref

if TYPE_CHECKING:
    from airflow.sdk import Context, ObjectStoragePath

    from unpod_provider.hooks.unpod import UnpodHook

#: Above this many bytes of JSON the operators warn that the XCom is large (None: never warn).
DEFAULT_XCOM_WARN_BYTES = 1_000_000

_TEMPLATE_MARK = "{{"


def _is_templated(value: Any) -> bool:
    """True for values that are only known after rendering (Jinja strings, XComArgs, ...)."""
    if isinstance(value, str):
        return _TEMPLATE_MARK in value or "{%" in value
    return not isinstance(value, (list, tuple, type(None)))


def _split_statuses(status: Any) -> Any:
    """``"completed, failed"`` (e.g. a rendered template) -> ``["completed", "failed"]``."""
    if isinstance(status, str) and "," in status:
        return [part.strip() for part in status.split(",") if part.strip()]
    return status


def _json_size(value: Any) -> int:
    """Bytes of ``value`` as compact UTF-8 JSON; ``TypeError`` if it is not plain JSON."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def _human_bytes(size: int) -> str:
    """``999 bytes``, ``2.4 MB`` (decimal units)."""
    if size < 1000:
        return f"{size:,} bytes"
    value = size / 1000
    for unit in ("KB", "MB"):
        if value < 1000:
            return f"{value:,.1f} {unit}"
        value /= 1000
    return f"{value:,.1f} GB"


def _plural(n: int, noun: str) -> str:
    """``"1 task"``, ``"1,240 tasks"``."""
    return f"{n:,} {noun}" if n == 1 else f"{n:,} {noun}s"


def _status_summary(counts: Mapping[str, int]) -> str:
    """``"1,180 completed, 60 failed"`` (largest first, then by name)."""
    ordered = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{n:,} {status}" for status, n in ordered)


class _UnpodOperatorBase(BaseOperator):
    """What every Unpod operator shares: the hook, validation after rendering, the size check.

    :param unpod_conn_id: Airflow connection of type ``unpod`` (templated).
    :param unpod_retry_limit: attempts per API request (1 = no retry).
    :param unpod_retry_delay: base of the exponential backoff between attempts, in seconds.
        (``retry_delay`` stays BaseOperator's delay between Airflow task retries.)
    :param unpod_timeout: read timeout per request in seconds (default: the connection's, else 30).
    :param unpod_max_concurrency: pages of one list requested at once once the first page gave
        the total (default: the hook's, 10; 1 reads page after page).
    :param xcom_warn_bytes: warn when the returned JSON is larger than this (None: never).
    """

    template_fields: Sequence[str] = ("unpod_conn_id",)
    template_fields_renderers: ClassVar[dict[str, str]] = {}
    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        unpod_conn_id: str = "unpod_default",
        unpod_retry_limit: int = 5,
        unpod_retry_delay: float = 1.0,
        unpod_timeout: float | None = None,
        unpod_max_concurrency: int | None = None,
        xcom_warn_bytes: int | None = DEFAULT_XCOM_WARN_BYTES,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.unpod_conn_id = unpod_conn_id
        # Checked now for a clear error at parse time; no I/O.
        RetryPolicy(max_attempts=unpod_retry_limit, base_delay=unpod_retry_delay)
        if unpod_timeout is not None and (
            isinstance(unpod_timeout, bool)
            or not isinstance(unpod_timeout, (int, float))
            or unpod_timeout <= 0
        ):
            raise ValueError(f"unpod_timeout must be a positive number of seconds, got {unpod_timeout!r}")
        if unpod_max_concurrency is not None and (
            isinstance(unpod_max_concurrency, bool)
            or not isinstance(unpod_max_concurrency, int)
            or unpod_max_concurrency < 1
        ):
            raise ValueError(
                f"unpod_max_concurrency must be an integer >= 1 or None, got {unpod_max_concurrency!r}"
            )
        if xcom_warn_bytes is not None and (
            isinstance(xcom_warn_bytes, bool) or not isinstance(xcom_warn_bytes, int) or xcom_warn_bytes < 0
        ):
            raise ValueError(f"xcom_warn_bytes must be an integer >= 0 or None, got {xcom_warn_bytes!r}")
        self.unpod_retry_limit = unpod_retry_limit
        self.unpod_retry_delay = unpod_retry_delay
        self.unpod_timeout = unpod_timeout
        self.unpod_max_concurrency = unpod_max_concurrency
        self.xcom_warn_bytes = xcom_warn_bytes

    @cached_property
    def hook(self) -> UnpodHook:
        """The hook, built on first use (after template rendering), never in ``__init__``."""
        from unpod_provider.hooks.unpod import UnpodHook

        extra: dict[str, Any] = {}
        if self.unpod_max_concurrency is not None:
            extra["max_concurrency"] = self.unpod_max_concurrency
        return UnpodHook(
            self.unpod_conn_id,
            retry_limit=self.unpod_retry_limit,
            retry_delay=self.unpod_retry_delay,
            timeout=self.unpod_timeout,
            **extra,
        )

    def validate_rendered(self) -> None:
        """Check the rendered arguments; raise ``ValueError`` naming the parameter. No I/O."""
        if not isinstance(self.unpod_conn_id, str) or not self.unpod_conn_id.strip():
            raise ValueError("unpod_conn_id must be a non-empty string")

    def fetch(self, context: Context) -> Any:
        """Do the work and return the XCom value (plain JSON)."""
        raise NotImplementedError

    def execute(self, context: Context) -> Any:
        """Validate the rendered arguments (before any request), fetch, close the hook."""
        self.validate_rendered()
        try:
            return self.fetch(context)
        finally:
            if "hook" in self.__dict__:
                self.hook.close()

    def warn_if_large(self, size: int, hint: str) -> None:
        """Log a warning when ``size`` bytes of JSON exceed ``xcom_warn_bytes``."""
        if self.xcom_warn_bytes is None or size <= self.xcom_warn_bytes:
            return
        self.log.warning(
            "The result of %s is %s of JSON, above xcom_warn_bytes=%s. XCom lives in Airflow's "
            "metadata database by default; %s",
            self.task_id,
            _human_bytes(size),
            f"{self.xcom_warn_bytes:,}",
            hint,
        )


class ListSpacesOperator(_UnpodOperatorBase):
    """Return the spaces of the connection's organization: a list of space dicts.

    :param unpod_conn_id: Airflow connection of type ``unpod`` (templated).
    """

    def fetch(self, context: Context) -> list[dict[str, Any]]:
        spaces = self.hook.list_spaces()
        self.warn_if_large(
            _json_size(spaces), "consider reading only the spaces you need with GetSpaceOperator."
        )
        self.log.info("Fetched %s of org %s", _plural(len(spaces), "space"), self.hook.config.org_handle)
        return spaces


class GetSpaceOperator(_UnpodOperatorBase):
    """Return one space (with its ``agents``) as a dict.

    :param space_token: the space's public token (templated).
    :param unpod_conn_id: Airflow connection of type ``unpod`` (templated).
    """

    template_fields: Sequence[str] = ("space_token", "unpod_conn_id")

    def __init__(self, *, space_token: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.space_token = space_token

    def validate_rendered(self) -> None:
        super().validate_rendered()
        protocol.validate_identifier(self.space_token, "space_token")

    def fetch(self, context: Context) -> dict[str, Any]:
        space = self.hook.get_space(self.space_token)
        self.warn_if_large(_json_size(space), "the space object is unusually large.")
        agents = space.get("agents")
        self.log.info(
            "Fetched space %s (%s, %s)",
            self.space_token,
            space.get("name", "unnamed"),
            _plural(len(agents) if isinstance(agents, list) else 0, "agent"),
        )
        return space


class _UnpodListOperator(_UnpodOperatorBase):
    """A task or run list: status filter, field projection, redaction, XCom or JSON Lines output.

    :param status: keep only items with this status, or one of these (templated; a string, a
        comma-separated string or a list). Filtered on the client: the API has no such filter.
    :param fields: keep only these dotted fields of each item, e.g. ``["task_id", "status",
        "output.duration", "output.post_call_data.summary.status"]`` (templated).
    :param output_path: stream the items to this ``ObjectStoragePath`` URI as JSON Lines
        (``file:///...``, ``s3://...``, ``gs://...``; templated) and return
        ``{"path": ..., "count": ...}`` instead of the items.
    :param output_conn_id: Airflow connection for the object storage of ``output_path``.
    :param redact: remove ``user_info.user_token`` and ``user_info.location`` (default True;
        naming one of them in ``fields`` keeps it).
    :param page_size: items per API request (1..1000).
    """

    template_fields: Sequence[str] = ("space_token", "status", "fields", "output_path", "unpod_conn_id")
    template_fields_renderers: ClassVar[dict[str, str]] = {"fields": "json", "status": "json"}
    #: "task" or "run", for the log lines.
    noun = "item"

    def __init__(
        self,
        *,
        space_token: str,
        status: str | Sequence[str] | None = None,
        fields: Sequence[str] | None = None,
        output_path: str | None = None,
        output_conn_id: str | None = None,
        redact: bool = True,
        page_size: int = protocol.DEFAULT_PAGE_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.space_token = space_token
        self.status = status
        self.fields = list(fields) if isinstance(fields, tuple) else fields
        self.output_path = output_path
        self.output_conn_id = output_conn_id
        self.redact = bool(redact)
        protocol.validate_page_size(page_size)
        self.page_size = page_size
        self._fields: list[str] | None = None
        self._statuses: frozenset[str] | None = None
        # Catch obvious mistakes at parse time when the values are not templates.
        if (
            self.fields is not None
            and not _is_templated(self.fields)
            and not any(_is_templated(f) for f in self.fields)
        ):
            protocol.validate_fields(self.fields)
        if self.status is not None and not _is_templated(self.status):
            protocol.normalize_statuses(_split_statuses(self.status))

    # ---- hooks for subclasses ------------------------------------------------------------------

    def iter_items(self, statuses: frozenset[str] | None) -> Iterator[dict[str, Any]]:
        """The API's items, lazily, page by page, filtered on ``statuses``."""
        raise NotImplementedError

    def describe(self) -> str:
        """``"of run R.. in space 8KZ.."`` for the log lines."""
        raise NotImplementedError

    # ---- shared logic --------------------------------------------------------------------------

    def validate_rendered(self) -> None:
        super().validate_rendered()
        protocol.validate_identifier(self.space_token, "space_token")
        self._fields = protocol.validate_fields(self.fields)
        self._statuses = protocol.normalize_statuses(_split_statuses(self.status))
        if self.output_path is not None and (
            not isinstance(self.output_path, str) or not self.output_path.strip()
        ):
            raise ValueError("output_path must be a non-empty string such as 'file:///tmp/tasks.jsonl'")

    def shape(self, item: Mapping[str, Any]) -> dict[str, Any]:
        """Project to ``fields`` and drop the sensitive fields (unless named or ``redact=False``)."""
        fields = self._fields
        shaped = protocol.project(item, fields) if fields else dict(item)
        if self.redact:
            # Naming a sensitive field (or a field inside it) in ``fields`` asks for it.
            keep = [
                s
                for s in protocol.SENSITIVE_TASK_FIELDS
                if any(f == s or f.startswith(s + ".") for f in fields or ())
            ]
            shaped = protocol.redact(shaped, keep=keep)
        return shaped

    def fetch(self, context: Context) -> Any:
        counts: Counter[str] = Counter()
        items = self._counted(self.iter_items(self._statuses), counts)
        if self.output_path is not None:
            path, written = self._write_jsonl(items)
            self.log.info(
                "Wrote %s %s to %s%s",
                self._counted_noun(written),
                self.describe(),
                path,
                self._summary_suffix(counts),
            )
            return {"path": str(path), "count": written}
        result: list[dict[str, Any]] = []
        size = 2  # the brackets
        for item in items:
            shaped = self.shape(item)
            size += _json_size(shaped) + (1 if result else 0)
            result.append(shaped)
        self.warn_if_large(
            size,
            "pass fields=[...] to keep only what you need, or output_path='s3://bucket/key.jsonl' "
            "(any ObjectStoragePath URI) to stream the items to object storage instead.",
        )
        self.log.info(
            "Fetched %s %s%s", self._counted_noun(len(result)), self.describe(), self._summary_suffix(counts)
        )
        return result

    @staticmethod
    def _counted(items: Iterable[dict[str, Any]], counts: Counter[str]) -> Iterator[dict[str, Any]]:
        for item in items:
            status = item.get("status")
            counts[status if isinstance(status, str) and status else "unknown"] += 1
            yield item

    def _counted_noun(self, n: int) -> str:
        """``"1 task"``, ``"1,240 tasks"``, ``"3 runs with status completed"`` when filtered."""
        text = _plural(n, self.noun)
        if self._statuses:
            text += f" with status {'/'.join(sorted(self._statuses))}"
        return text

    @staticmethod
    def _summary_suffix(counts: Mapping[str, int]) -> str:
        return f": {_status_summary(counts)}" if counts else ""

    def _open_output(self) -> ObjectStoragePath:
        from airflow.sdk import ObjectStoragePath

        assert self.output_path is not None
        try:
            path = ObjectStoragePath(self.output_path.strip(), conn_id=self.output_conn_id)
            path.fs  # noqa: B018 - resolve the filesystem now, so a bad scheme fails here on every version
        except Exception as err:  # noqa: BLE001 - unknown scheme, missing fsspec backend, ...
            raise ValueError(
                f"output_path {self.output_path.strip()[:200]!r} is not a usable ObjectStoragePath URI: "
                f"{type(err).__name__}: {err}"
            ) from None
        if path.protocol in ("", "file", "local"):
            path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _write_jsonl(self, items: Iterable[dict[str, Any]]) -> tuple[ObjectStoragePath, int]:
        """Stream ``items`` to ``output_path`` one JSON line each; never all in memory."""
        path = self._open_output()
        written = 0
        try:
            with path.open("w", encoding="utf-8") as handle:
                for item in items:
                    handle.write(json.dumps(self.shape(item), ensure_ascii=False, separators=(",", ":")))
                    handle.write("\n")
                    written += 1
        except BaseException:
            # A partial file would look like a complete answer downstream.
            try:
                path.unlink(missing_ok=True)
            except Exception:  # noqa: BLE001 - best effort, the original error matters
                self.log.warning("Could not remove the partial output %s", path)
            raise
        return path, written


class ListSpaceTasksOperator(_UnpodListOperator):
    """Return every task of a space (newest first) as a list of dicts, or write them as JSON Lines.

    :param space_token: the space's public token (templated).
    :param status: keep only tasks with this task status (e.g. ``"completed"``), on the client.
    """

    noun = "task"

    def iter_items(self, statuses: frozenset[str] | None) -> Iterator[dict[str, Any]]:
        return self.hook.iter_space_tasks(self.space_token, page_size=self.page_size, status=statuses)

    def describe(self) -> str:
        return f"of space {self.space_token}"


class ListSpaceRunsOperator(_UnpodListOperator):
    """Return every run of a space (newest first) as a list of dicts, or write them as JSON Lines.

    :param space_token: the space's public token (templated).
    :param status: keep only runs with this status (e.g. ``["completed", "partially_completed"]``).
    """

    noun = "run"

    def iter_items(self, statuses: frozenset[str] | None) -> Iterator[dict[str, Any]]:
        return self.hook.iter_space_runs(self.space_token, page_size=self.page_size, status=statuses)

    def describe(self) -> str:
        return f"of space {self.space_token}"


class ListRunTasksOperator(_UnpodListOperator):
    """Return every task of a run (full detail) as a list of dicts, or write them as JSON Lines.

    An unknown run id gives an empty list (the API answers it so).

    :param space_token: the space that holds the run (templated).
    :param run_id: the run (templated), e.g. ``"{{ ti.xcom_pull('wait')['run_id'] }}"`` or an XComArg.
    :param status: keep only tasks with this task status, on the client.
    """

    template_fields: Sequence[str] = (
        "space_token",
        "run_id",
        "status",
        "fields",
        "output_path",
        "unpod_conn_id",
    )

    noun = "task"

    def __init__(self, *, space_token: str, run_id: str, **kwargs: Any) -> None:
        super().__init__(space_token=space_token, **kwargs)
        self.run_id = run_id

    def validate_rendered(self) -> None:
        super().validate_rendered()
        protocol.validate_identifier(self.run_id, "run_id")

    def iter_items(self, statuses: frozenset[str] | None) -> Iterator[dict[str, Any]]:
        return self.hook.iter_run_tasks(
            self.space_token, self.run_id, page_size=self.page_size, status=statuses
        )

    def describe(self) -> str:
        return f"of run {self.run_id} in space {self.space_token}"


# --------------------------------------------------------------------------------------------
# Create a run
# --------------------------------------------------------------------------------------------

#: File suffixes ``documents`` may name, and how each file is read.
DOCUMENT_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json"}
#: What a task retry does about the run an earlier try may have started (see CreateRunOperator).
ON_RETRY_MODES = ("resume", "create", "fail")
#: On a retry, runs created up to this long before the DAG run started are still checked
#: (the Unpod server's clock and Airflow's may disagree a little).
RETRY_CLOCK_SKEW = timedelta(minutes=10)
#: On a retry, at most this many of the space's newest runs are compared with the contacts.
RETRY_MAX_CANDIDATES = 50
#: Tasks per request when a retry compares a candidate run's tasks with the contacts.
RETRY_PAGE_SIZE = 1000
DEFAULT_POKE_INTERVAL = 60.0
DEFAULT_WAIT_TIMEOUT = 7 * 24 * 3600.0


def read_documents(documents: Any, *, conn_id: str | None = None) -> list[dict[str, Any]]:
    """The contacts of a create-run batch, each checked (a contact number or an email); no request.

    ``documents`` is a list of objects, a JSON array as text, or the path or URI of a ``.csv``,
    ``.jsonl``/``.ndjson`` or ``.json`` file (any ``ObjectStoragePath``: ``file:///...``,
    ``s3://...``; ``conn_id`` is its storage connection). CSV: a header row names the fields;
    empty cells are left out. Errors name the row (1-based) and, for a file, the line.
    """
    if isinstance(documents, str):
        text = documents.strip()
        if not text:
            raise ValueError(
                "documents is an empty string: give a list of contacts or the path of a .csv, .jsonl "
                "or .json file"
            )
        if text.startswith("["):
            try:
                documents = json.loads(text)
            except ValueError as err:
                raise ValueError(
                    f"documents looks like a JSON array but is not valid JSON ({err}); pass a list, an "
                    "XComArg (task.output) or a file path"
                ) from None
        else:
            return _read_documents_file(text, conn_id)
    if isinstance(documents, Mapping):
        raise ValueError("documents must be a list of contact objects, got a single object")
    if isinstance(documents, (bytes, bytearray)) or not isinstance(documents, Iterable):
        raise ValueError(
            f"documents must be a list of contact objects or a file path, got {type(documents).__name__}"
        )
    return [
        protocol.validate_document(doc, i, where=f"documents row {i + 1}") for i, doc in enumerate(documents)
    ]


def _read_documents_file(uri: str, conn_id: str | None) -> list[dict[str, Any]]:
    """Read and check every contact of a CSV/JSONL/JSON file (local path or object storage URI)."""
    from airflow.sdk import ObjectStoragePath

    try:
        path = ObjectStoragePath(uri, conn_id=conn_id)
    except Exception as err:  # noqa: BLE001 - unknown scheme, missing fsspec backend, ...
        raise ValueError(
            f"documents {uri[:200]!r} is not a list and not a usable file path or URI: "
            f"{type(err).__name__}: {err}"
        ) from None
    name = path.name or uri[:200]
    kind = DOCUMENT_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"documents file {name!r}: cannot tell its format from the suffix {path.suffix!r}; "
            f"use one of {', '.join(DOCUMENT_FORMATS)}"
        )
    reader = {"csv": _csv_documents, "jsonl": _jsonl_documents, "json": _json_documents}[kind]
    try:
        with path.open("r", encoding="utf-8-sig", newline="") as handle:
            rows = list(reader(handle, name))
    except FileNotFoundError:
        raise ValueError(f"documents file {uri[:200]} does not exist") from None
    except UnicodeDecodeError as err:
        raise ValueError(
            f"documents file {name} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from None
    except OSError as err:
        raise ValueError(f"documents file {uri[:200]} cannot be read: {type(err).__name__}: {err}") from None
    if not rows:
        raise ValueError(f"documents file {name} holds no contacts")
    return rows


def _csv_documents(handle: IO[str], name: str) -> Iterator[dict[str, Any]]:
    reader = csv.DictReader(handle)
    if not reader.fieldnames:
        return
    reader.fieldnames = [field.strip() for field in reader.fieldnames]
    if not {"contact_number", "email"} & set(reader.fieldnames):
        raise ValueError(
            f"documents file {name}: the header row has neither a contact_number nor an email column "
            f"(columns: {', '.join(reader.fieldnames)[:200]})"
        )
    for row_number, row in enumerate(reader, 1):
        where = f"documents row {row_number} (line {reader.line_num} of {name})"
        if None in row:
            raise ValueError(f"{where} has more cells than the header row")
        document = {key: value.strip() for key, value in row.items() if key and value and value.strip()}
        yield protocol.validate_document(document, row_number - 1, where=where)


def _jsonl_documents(handle: IO[str], name: str) -> Iterator[dict[str, Any]]:
    row_number = 0
    for line_number, line in enumerate(handle, 1):
        if not line.strip():
            continue
        row_number += 1
        where = f"documents row {row_number} (line {line_number} of {name})"
        try:
            document = json.loads(line)
        except ValueError as err:
            raise ValueError(f"{where} is not valid JSON: {err}") from None
        yield protocol.validate_document(document, row_number - 1, where=where)


def _json_documents(handle: IO[str], name: str) -> Iterator[dict[str, Any]]:
    try:
        data = json.load(handle)
    except ValueError as err:
        raise ValueError(f"documents file {name} is not valid JSON: {err}") from None
    if not isinstance(data, list):
        raise ValueError(
            f"documents file {name} must hold a JSON array of contacts, got {type(data).__name__}"
        )
    for index, document in enumerate(data):
        yield protocol.validate_document(document, index, where=f"documents row {index + 1} (in {name})")


def _contact_key(document: Any) -> tuple[str, str]:
    """What identifies a contact when a retry compares a run's tasks with the batch."""
    if not isinstance(document, Mapping):
        return ("", "")
    number, email = document.get("contact_number"), document.get("email")
    return (
        str(number).strip() if isinstance(number, (str, int)) and not isinstance(number, bool) else "",
        email.strip().lower() if isinstance(email, str) else "",
    )


def _seconds(value: Any, name: str) -> float:
    """A positive number of seconds (or a timedelta), else ``ValueError`` naming ``name``."""
    if isinstance(value, timedelta):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


class CreateRunOperator(RunWaitMixin, _UnpodOperatorBase):
    """Start an Unpod run (one call per contact) and, with ``wait_for_completion``, wait for it.

    Returns ``{"run_id", "task_ids", "status"}`` (``status``: the server's map task_id -> status,
    or the documentation's single string), or, when waiting, the finished run as the runs list
    shows it (exactly what ``RunCompletedSensor`` returns). ``{"space_token", "run_id"}`` is
    pushed to XCom under ``unpod_run`` as soon as the run exists, before any waiting, so a
    downstream task can find the run even if the wait fails.

    Every contact is checked before anything is sent; an error names the row (and the file line).
    The create request is sent once: it is retried only when it certainly did not reach the
    server (connection refused, 429). After a timeout, a dropped connection or a 5xx the task
    fails with ``UnpodCreateRunUncertainError``: the run may or may not exist (list the space's
    runs to find out).

    Task retries (``ti.try_number > 1``): Airflow 3 clears a task's XComs when a new try starts,
    so an earlier try's run id is not there to read. With ``on_retry="resume"`` (default) the
    operator looks for the run among the space's runs created since the DAG run started (at
    most ``RETRY_MAX_CANDIDATES``) and takes the newest whose tasks hold exactly this batch's
    contacts (by ``contact_number``/``email``); found, it resumes (waits for it if asked) instead
    of starting a second run. It starts one only when no such run shares a single contact with
    the batch: a run that shares some but not exactly these (its tasks not all listed yet, another
    batch), more candidates than can be checked, or an error while reading them fail the try with
    ``UnpodResumeConflictError`` (naming the runs) or the error, never a second campaign.
    ``on_retry="create"`` always starts a new run; ``on_retry="fail"`` fails a retry without
    starting one. Each case is logged.

    :param space_token: the space to run in (templated).
    :param pilot: the handle of the agent that makes the calls (templated).
    :param context: what the agent should do; required by the server (templated).
    :param documents: the contacts (templated): a list of objects (``name``, ``contact_number``,
        ``email``, ``context``, ``labels``, ``document_id``, ...), an XComArg resolving to one, or
        the path/URI of a ``.csv``, ``.jsonl`` or ``.json`` file (``ObjectStoragePath``, e.g.
        ``file:///data/leads.csv`` or ``s3://bucket/leads.jsonl``) for large batches.
    :param schedule: ``None``/``"now"``, ``"auto"``, or ``{"type": "custom", "calling_date":
        "YYYY-MM-DD", "calling_time": "HH:MM"}`` in the future (templated).
    :param filters: optional ``filters`` object of the create request (templated).
    :param wait_for_completion: wait until the run reaches a terminal status.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param poke_interval: seconds between two looks at the run while waiting.
    :param timeout: seconds to wait before failing with ``UnpodSensorTimeout`` (an
        ``AirflowSensorTimeout``, so no task retry, exactly as for the sensor).
    :param success_states: run statuses that end the wait successfully.
    :param failed_states: run statuses that fail the task (any other terminal status fails too).
    :param not_found_grace_period: seconds the new run may be missing from the runs list.
    :param on_retry: ``"resume"``, ``"create"`` or ``"fail"`` (see above).
    :param documents_conn_id: Airflow connection for the object storage of a ``documents`` URI.
    :param unpod_conn_id: Airflow connection of type ``unpod`` (templated).
    """

    template_fields: Sequence[str] = (
        "space_token",
        "pilot",
        "context",
        "documents",
        "schedule",
        "filters",
        "unpod_conn_id",
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        "documents": "json",
        "schedule": "json",
        "filters": "json",
    }
    ui_color = "#fde9d9"

    def __init__(
        self,
        *,
        space_token: str,
        pilot: str,
        context: str,
        documents: Any,
        schedule: Any = None,
        filters: Mapping[str, Any] | None = None,
        wait_for_completion: bool = False,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poke_interval: float | timedelta = DEFAULT_POKE_INTERVAL,
        timeout: float | timedelta = DEFAULT_WAIT_TIMEOUT,
        success_states: Iterable[str] = protocol.DEFAULT_SUCCESS_STATES,
        failed_states: Iterable[str] = protocol.DEFAULT_FAILED_STATES,
        not_found_grace_period: float | timedelta = DEFAULT_NOT_FOUND_GRACE_PERIOD,
        on_retry: str = "resume",
        documents_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.space_token = space_token
        self.pilot = pilot
        self.context = context
        self.documents = documents
        self.schedule = schedule
        self.filters = filters
        self.wait_for_completion = bool(wait_for_completion)
        self.deferrable = bool(deferrable)
        self.poke_interval = _seconds(poke_interval, "poke_interval")
        self.timeout = _seconds(timeout, "timeout")
        self._init_wait(success_states, failed_states, not_found_grace_period)
        if on_retry not in ON_RETRY_MODES:
            raise ValueError(f"on_retry must be one of {', '.join(ON_RETRY_MODES)}, got {on_retry!r}")
        self.on_retry = on_retry
        self.documents_conn_id = documents_conn_id
        #: Known once the run exists (the run being waited for).
        self.run_id = ""
        if schedule is not None and not _is_templated(schedule):
            # The type only: whether a custom time is in the future is decided when the task runs.
            protocol.validate_schedule(schedule, now=datetime(1970, 1, 1, tzinfo=timezone.utc))

    def validate_rendered(self) -> None:
        super().validate_rendered()
        protocol.validate_identifier(self.space_token, "space_token")

    def execute(self, context: Context) -> Any:
        """Check everything, start the run (or resume an earlier try's), push its id, maybe wait."""
        self.validate_rendered()
        documents = read_documents(self.documents, conn_id=self.documents_conn_id)
        # pilot, context, schedule and filters: checked now, before any request.
        body = protocol.build_create_run_body(
            pilot=self.pilot,
            context=self.context,
            documents=documents,
            schedule=self.schedule,
            filters=self.filters,
        )
        try:
            created = self._earlier_run(context, documents)
            if created is None:
                self.log.info(
                    "Starting an Unpod run in space %s: %s, pilot %s, schedule %s",
                    self.space_token,
                    _plural(len(documents), "contact"),
                    body["pilot"],
                    body["schedule"]["type"],
                )
                created = self.hook.create_run(
                    self.space_token,
                    pilot=body["pilot"],
                    context=body["context"],
                    documents=body["documents"],
                    schedule=body["schedule"],
                    filters=body.get("filters"),
                )
            self.run_id = created["run_id"]
            push_run_ref(context, self.space_token, self.run_id)
            if not self.wait_for_completion:
                self.warn_if_large(_json_size(created), "task_ids and status list every call of the run.")
                return created
            self.log.info("Waiting for Unpod run %s in space %s to finish", self.run_id, self.space_token)
            if self.deferrable:
                return self._wait_deferrable(context)
            return self._wait_polling(context)
        finally:
            if "hook" in self.__dict__:
                self.hook.close()

    # ---- task retries --------------------------------------------------------------------------

    def _earlier_run(self, context: Context, documents: list[dict[str, Any]]) -> dict[str, Any] | None:
        """On a task retry, the run an earlier try started (``on_retry="resume"``), else None."""
        ti = context["ti"]
        try_number = getattr(ti, "try_number", None)
        if not isinstance(try_number, int) or try_number <= 1:
            return None
        if self.on_retry == "create":
            self.log.warning(
                "Try %d of %s: starting a new Unpod run (on_retry='create'); an earlier try may already "
                "have started one in space %s",
                try_number,
                self.task_id,
                self.space_token,
            )
            return None
        if self.on_retry == "fail":
            raise AirflowFailException(
                f"Try {try_number} of {self.task_id}: not starting another Unpod run (on_retry='fail'). "
                f"An earlier try may have started one: check the runs of space {self.space_token} "
                "(ListSpaceRunsOperator or UnpodHook.list_space_runs); set on_retry='resume' or "
                "'create' to go on."
            )
        since = _retry_window_start(context)
        self.log.info(
            "Try %d of %s: looking for a run an earlier try started (runs of space %s created since %s "
            "whose tasks are these %s) before starting one",
            try_number,
            self.task_id,
            self.space_token,
            since.isoformat() if since else "ever (newest first)",
            _plural(len(documents), "contact"),
        )
        found = self._find_run_of(documents, since)
        if found is None:
            self.log.info("No run from an earlier try in space %s; starting a new one", self.space_token)
            return None
        self.log.warning(
            "Try %d of %s: run %s (created %s) already holds these %s; resuming it instead of starting a "
            "second run",
            try_number,
            self.task_id,
            found["run_id"],
            found.get("created", "?"),
            _plural(len(documents), "contact"),
        )
        return found

    def _find_run_of(self, documents: list[dict[str, Any]], since: datetime | None) -> dict[str, Any] | None:
        """The newest run created since ``since`` whose tasks are exactly ``documents``, or None.

        Fails closed: a run that shares contacts with this batch but does not match it exactly
        (its tasks not all listed yet, another batch) raises ``UnpodResumeConflictError``
        naming it, and so do more candidates than can be checked; an error while reading a
        run's tasks propagates. None only when no run since ``since`` shares a contact.
        """
        wanted = Counter(_contact_key(doc) for doc in documents)
        conflicts: list[tuple[str, str]] = []
        runs = self.hook.iter_space_runs(self.space_token, max_concurrency=1)
        for checked, run in enumerate(runs):
            created = protocol.parse_timestamp(run.get("created"))
            if since and created and created < since:
                break  # newest first: every further run is older
            if checked >= RETRY_MAX_CANDIDATES:
                if since is None:
                    break  # no window to bound the search: the newest runs only (documented)
                raise UnpodResumeConflictError(
                    f"{self._not_starting()}: more than {RETRY_MAX_CANDIDATES} runs were created in space "
                    f"{self.space_token} since {since.isoformat()}, so whether an earlier try started one "
                    "cannot be checked. Check the space's runs (ListSpaceRunsOperator); if none is this "
                    "task's, clear it with on_retry='create'.",
                    run_ids=[run_id for run_id, _ in conflicts],
                )
            run_id = run.get("run_id")
            if not isinstance(run_id, str) or not run_id:
                raise UnpodResumeConflictError(
                    f"{self._not_starting()}: a run of space {self.space_token} created "
                    f"{run.get('created', '?')} has no run_id, so it cannot be compared with this try's "
                    "contacts",
                    run_ids=[],
                )
            tasks, shared, others = self._compare_contacts(run_id, wanted)
            if tasks is not None:
                for other_id, why in conflicts:
                    self.log.warning(
                        "Run %s also shares contacts with this try (%s); not resumed", other_id, why
                    )
                return {
                    "run_id": run_id,
                    "task_ids": [str(t.get("task_id")) for t in tasks],
                    "status": {str(t.get("task_id")): t.get("status") for t in tasks},
                    "created": run.get("created"),
                }
            if shared:
                total = sum(wanted.values())
                conflicts.append(
                    (
                        run_id,
                        f"created {run.get('created', '?')}: {shared} of the {total} contacts of this try"
                        + (f" and {_plural(others, 'other task')}" if others else ""),
                    )
                )
        if conflicts:
            listed = "; ".join(f"{run_id} ({why})" for run_id, why in conflicts)
            raise UnpodResumeConflictError(
                f"{self._not_starting()}: run(s) {listed} in space {self.space_token} share contacts with "
                "this try but do not hold exactly its contacts (an earlier try's run whose tasks are not "
                "all listed yet, or another batch). Check them (ListRunTasksOperator); retry the task "
                "later if one is still filling up, or clear it with on_retry='create' if none is this "
                "task's.",
                run_ids=[run_id for run_id, _ in conflicts],
            )
        return None

    def _not_starting(self) -> str:
        return f"{self.task_id}: not starting a second Unpod run"

    def _compare_contacts(
        self, run_id: str, wanted: Counter[tuple[str, str]]
    ) -> tuple[list[dict[str, Any]] | None, int, int]:
        """``(tasks, shared, others)``: the run's tasks if their inputs are exactly the ``wanted``
        contacts (else None), how many of its tasks are contacts of ``wanted`` and how many not."""
        left = Counter(wanted)
        tasks = []
        shared = others = 0
        for task in self.hook.iter_run_tasks(self.space_token, run_id, page_size=RETRY_PAGE_SIZE):
            key = _contact_key(task.get("input"))
            if left[key] > 0:
                left[key] -= 1
                shared += 1
            else:
                others += 1
            tasks.append({"task_id": task.get("task_id"), "status": task.get("status")})
        exact = others == 0 and not +left
        return (tasks if exact else None), shared, others


def _retry_window_start(context: Context) -> datetime | None:
    """Runs created before this cannot be an earlier try's: the DAG run's start, less some skew."""
    dag_run = context.get("dag_run")
    started = getattr(dag_run, "start_date", None)
    if not isinstance(started, datetime):
        return None
    if started.tzinfo is None:
        started = started.replace(tzinfo=timezone.utc)
    return started - RETRY_CLOCK_SKEW


__all__ = [
    "DEFAULT_XCOM_WARN_BYTES",
    "CreateRunOperator",
    "GetSpaceOperator",
    "ListRunTasksOperator",
    "ListSpaceRunsOperator",
    "ListSpaceTasksOperator",
    "ListSpacesOperator",
    "read_documents",
]
