"""Operators that read Unpod spaces, runs and tasks and hand them on as plain JSON.

Each operator returns JSON (dicts, lists, strings, numbers) as its XCom, so a TaskFlow task or
``.expand()`` can take it directly. The task and run lists can keep only some fields
(``fields``), filter on status (``status``) and, for large results, stream the items to object
storage as JSON Lines (``output_path``) instead of XCom. ``user_info.user_token`` and
``user_info.location`` are removed unless asked for. Nothing is fetched and no connection is
read in ``__init__``: DAG parsing stays free of I/O.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.sdk import BaseOperator

from unpod_provider import protocol
from unpod_provider.protocol import RetryPolicy

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
        if xcom_warn_bytes is not None and (
            isinstance(xcom_warn_bytes, bool) or not isinstance(xcom_warn_bytes, int) or xcom_warn_bytes < 0
        ):
            raise ValueError(f"xcom_warn_bytes must be an integer >= 0 or None, got {xcom_warn_bytes!r}")
        self.unpod_retry_limit = unpod_retry_limit
        self.unpod_retry_delay = unpod_retry_delay
        self.unpod_timeout = unpod_timeout
        self.xcom_warn_bytes = xcom_warn_bytes

    @cached_property
    def hook(self) -> UnpodHook:
        """The hook, built on first use (after template rendering), never in ``__init__``."""
        from unpod_provider.hooks.unpod import UnpodHook

        return UnpodHook(
            self.unpod_conn_id,
            retry_limit=self.unpod_retry_limit,
            retry_delay=self.unpod_retry_delay,
            timeout=self.unpod_timeout,
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


__all__ = [
    "DEFAULT_XCOM_WARN_BYTES",
    "GetSpaceOperator",
    "ListRunTasksOperator",
    "ListSpaceRunsOperator",
    "ListSpaceTasksOperator",
    "ListSpacesOperator",
]
