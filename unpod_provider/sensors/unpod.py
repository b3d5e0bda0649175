"""RunCompletedSensor: wait until an Unpod run reaches a terminal status, and hand the run on.

Works in the three Airflow waiting styles:

- ``mode="poke"``: one worker slot, a look every ``poke_interval`` seconds;
- ``mode="reschedule"``: the slot is freed between looks;
- ``deferrable=True``: one look on the worker, then ``RunCompletedTrigger`` waits in the triggerer.

The run has no endpoint of its own: the hook pages through the space's runs to find it. The
waiting itself (looks, verdict, deferral, resume) is ``RunWaitMixin``, which
``CreateRunOperator(wait_for_completion=True)`` shares, so both wait exactly the same way.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.configuration import conf
from airflow.sdk import BaseSensorOperator, PokeReturnValue

from unpod_provider import exceptions as unpod_exceptions
from unpod_provider import protocol
from unpod_provider._compat import (
    AirflowFailException,
    AirflowSensorTimeout,
    RescheduleDateParsingTI,
    first_reschedule_date,
)
from unpod_provider.exceptions import (
    UnpodError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRunFailedError,
    UnpodRunNotFinishedError,
)
from unpod_provider.protocol import RetryPolicy
from unpod_provider.triggers.unpod import (
    EVENT_STATUSES,
    RunCheck,
    RunCompletedTrigger,
    check_run,
    unknown_status_message,
    validate_states,
)

if TYPE_CHECKING:
    from airflow.sdk import Context

    from unpod_provider.hooks.unpod import UnpodHook

#: XCom key of ``{"space_token", "run_id"}``, pushed before the sensor waits (also on failure).
XCOM_RUN_KEY = "unpod_run"

DEFAULT_NOT_FOUND_GRACE_PERIOD = 300.0


# --------------------------------------------------------------------------------------------
# Typed errors that also tell Airflow "do not retry this task"
# --------------------------------------------------------------------------------------------


class UnpodRunFailedException(UnpodRunFailedError, AirflowFailException):  # type: ignore[misc]
    """The run ended failed/cancelled (or in a terminal state not listed as success).

    An ``UnpodRunFailedError`` (catch that) that is also an ``AirflowFailException``, so the task
    fails at once without Airflow task retries: a retry would only see the same finished run.
    """

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        cls = type(self)
        return (
            f"{cls.__module__}.{cls.__name__}",
            (str(self),),
            {"run_id": self.run_id, "run_status": self.run_status, "run": self.run},
        )


class UnpodRunNotFoundException(UnpodNotFoundError, AirflowFailException):  # type: ignore[misc]
    """The run was still not in its space's runs when the grace period ended (no task retry)."""

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        cls = type(self)
        return (
            f"{cls.__module__}.{cls.__name__}",
            (str(self),),
            {"resource": self.resource, "identifier": self.identifier, "status_code": self.status_code},
        )


class UnpodSensorTimeout(UnpodRunNotFinishedError, AirflowSensorTimeout):  # type: ignore[misc]
    """The sensor's ``timeout`` passed before the run finished; names the last seen status.

    Also an ``AirflowSensorTimeout``, so ``soft_fail`` skips instead and no task retry happens,
    exactly as for Airflow's own sensor timeout.
    """

    def __init__(self, message: str, *, run_id: str, run_status: str | None = None) -> None:
        super().__init__(message)
        self.run_id = run_id
        self.run_status = run_status

    def serialize(self) -> tuple[str, tuple[Any, ...], dict[str, Any]]:
        cls = type(self)
        return (
            f"{cls.__module__}.{cls.__name__}",
            (str(self),),
            {"run_id": self.run_id, "run_status": self.run_status},
        )


def _api_error(event: dict[str, Any]) -> UnpodError:
    """Rebuild the typed API error a trigger reported by class name (``UnpodError`` if unknown)."""
    message = str(event.get("message") or "Unpod API error while waiting for the run")
    name = event.get("error_type")
    cls = getattr(unpod_exceptions, name, None) if isinstance(name, str) else None
    status_code = event.get("status_code")
    if isinstance(cls, type) and issubclass(cls, UnpodError) and name in unpod_exceptions.__all__:
        try:
            error = cls(message)
        except TypeError:  # an error type with required keyword arguments
            error = UnpodError(message)
    else:
        error = UnpodError(message)
    if isinstance(status_code, int) and not isinstance(status_code, bool):
        error.status_code = status_code
    return error


# --------------------------------------------------------------------------------------------
# Waiting for a run: shared by the sensor and CreateRunOperator(wait_for_completion=True)
# --------------------------------------------------------------------------------------------


#: However little of a wait's timeout is left, one look may take this long.
MIN_LOOK_SECONDS = 1.0


class RunWaitMixin:
    """Wait for one Unpod run to reach a terminal status: the looks, the verdict, the deferral.

    Used by ``RunCompletedSensor`` and ``CreateRunOperator(wait_for_completion=True)`` so both
    wait the same way. The host operator sets ``space_token``, ``run_id``, ``poke_interval``
    (seconds), ``timeout`` (seconds), ``deferrable``, a ``hook`` (``UnpodHook``) and calls
    ``_init_wait`` in ``__init__``. In deferrable mode it looks once on the worker, then
    ``RunCompletedTrigger`` waits in the triggerer and ``execute_complete`` turns its event into
    the run (success) or a typed exception.
    """

    space_token: str
    run_id: str
    unpod_conn_id: str
    poke_interval: float
    timeout: float
    deferrable: bool

    if TYPE_CHECKING:
        log: Any

        @property
        def hook(self) -> UnpodHook: ...

    def _init_wait(
        self,
        success_states: Iterable[str],
        failed_states: Iterable[str],
        not_found_grace_period: float | timedelta,
    ) -> None:
        """Validate (``ValueError`` naming the parameter) and store the waiting arguments; no I/O."""
        self.success_states, self.failed_states = validate_states(success_states, failed_states)
        if isinstance(not_found_grace_period, timedelta):
            not_found_grace_period = not_found_grace_period.total_seconds()
        if (
            isinstance(not_found_grace_period, bool)
            or not isinstance(not_found_grace_period, (int, float))
            or not not_found_grace_period >= 0
        ):
            raise ValueError(
                f"not_found_grace_period must be a number of seconds >= 0, got {not_found_grace_period!r}"
            )
        self.not_found_grace_period = float(not_found_grace_period)
        self._grace_started_at: float | None = None
        self._warned_unknown: set[str] = set()
        self._last_run: dict[str, Any] | None = None
        self._last_status: str | None = None

    def _first_look_epoch(self, context: Context) -> float | None:
        """When an earlier process already looked at the run (None: this is the first look)."""
        return None

    def _grace_start(self, context: Context) -> float:
        """Wall-clock epoch seconds of the first look at the run, for the not-found grace period."""
        if self._grace_started_at is None:
            started = self._first_look_epoch(context)
            self._grace_started_at = started if started is not None else time.time()
        return self._grace_started_at

    def _check(self, context: Context) -> RunCheck:
        """Look at the run once (transient errors are retried in the hook) and decide.

        The look, retries included, never outlives what is left of ``timeout`` (counted from
        the first look) by more than ``MIN_LOOK_SECONDS``.
        """
        grace_start = self._grace_start(context)
        left = self.timeout - (time.time() - grace_start)
        with self.hook.within(max(left, MIN_LOOK_SECONDS)):
            run = self.hook.find_run(self.space_token, self.run_id)
        if run is not None:
            self._last_run = run
            self._last_status = protocol.run_status(run)
        grace_over = time.time() - grace_start >= self.not_found_grace_period
        return check_run(
            run,
            run_id=self.run_id,
            space_token=self.space_token,
            success_states=self.success_states,
            failed_states=self.failed_states,
            grace_over=grace_over,
        )

    def _finish(self, check: RunCheck, run: dict[str, Any] | None) -> dict[str, Any]:
        """Turn a final verdict into the return value (success) or the typed exception."""
        if check.outcome == "success":
            if check.status == "partially_completed":
                self.log.warning(
                    "Unpod run %s finished as 'partially_completed': some of its tasks failed", self.run_id
                )
            else:
                self.log.info("Unpod run %s finished with status '%s'", self.run_id, check.status)
            return dict(run or {})
        if check.outcome == "failed":
            raise UnpodRunFailedException(
                check.message, run_id=self.run_id, run_status=check.status or "", run=run
            )
        if check.outcome == "not_found":
            raise UnpodRunNotFoundException(
                f"{check.message} of {self.not_found_grace_period:g}s",
                resource="run",
                identifier=self.run_id,
                status_code=None,
            )
        raise UnpodProtocolError(f"unexpected outcome {check.outcome!r} for run {self.run_id}")

    def _log_waiting(self, check: RunCheck) -> None:
        """One line per look: the status, or the once-only warning about an unknown status."""
        key = check.status or ""
        if check.unknown and key not in self._warned_unknown:
            self._warned_unknown.add(key)
            self.log.warning("%s", unknown_status_message(self.run_id, check.status))
        else:
            self.log.info("%s; waiting", check.message)

    def _timeout_error(self, prefix: str) -> UnpodSensorTimeout:
        """The timeout error, naming the run and its last seen status."""
        return UnpodSensorTimeout(
            f"{prefix} Unpod run {self.run_id} (space {self.space_token}) last status: "
            f"{self._last_status or 'never seen'}",
            run_id=self.run_id,
            run_status=self._last_status,
        )

    def _wait_polling(self, context: Context) -> dict[str, Any]:
        """Poke mode for operators that are not sensors: look every ``poke_interval`` until done."""
        started = time.time()
        while True:
            check = self._check(context)
            if check.outcome != "waiting":
                return self._finish(check, self._last_run)
            self._log_waiting(check)
            if time.time() - started + self.poke_interval > self.timeout:
                raise self._timeout_error(
                    f"Waited {time.time() - started:.0f}s of timeout={self.timeout:g}s."
                )
            time.sleep(self.poke_interval)

    def _wait_deferrable(self, context: Context) -> dict[str, Any]:
        """Look once (a finished run never defers), then hand the wait to the trigger."""
        check = self._check(context)
        if check.outcome != "waiting":
            return self._finish(check, self._last_run)
        self._log_waiting(check)
        grace_start = self._grace_start(context)
        trigger = RunCompletedTrigger(
            space_token=self.space_token,
            run_id=self.run_id,
            unpod_conn_id=self.unpod_conn_id,
            poll_interval=self.poke_interval,
            success_states=self.success_states,
            failed_states=self.failed_states,
            end_time=time.time() + self.timeout,
            not_found_deadline=grace_start + self.not_found_grace_period,
            retry=self.hook.retry_policy.to_dict(),
            last_status=self._last_status,
        )
        # timeout=None: the trigger sends a "timeout" event at its wall-clock deadline, so
        # execute_complete reports the last status instead of Airflow's bare deferral timeout.
        host: Any = self  # the host is a BaseOperator: defer() raises TaskDeferred
        host.defer(trigger=trigger, method_name="execute_complete", timeout=None)
        raise AssertionError("unreachable: defer() raises TaskDeferred")  # pragma: no cover

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """Resume after the trigger: the run on success, otherwise the matching typed error.

        Everything needed is in ``event`` (``dag.test()`` drops ``defer()`` kwargs).
        """
        if not isinstance(event, dict) or event.get("status") not in EVENT_STATUSES:
            raise UnpodProtocolError(
                f"{type(self).__name__} resumed with an unexpected trigger event for run {self.run_id}"
            )
        status = event["status"]
        run = event.get("run") if isinstance(event.get("run"), dict) else None
        run_id = str(event.get("run_id") or self.run_id)
        run_status = event.get("run_status") if isinstance(event.get("run_status"), str) else None
        message = str(event.get("message") or f"Unpod run {run_id}: {status}")
        if status == "success":
            if run_status == "partially_completed":
                self.log.warning(
                    "Unpod run %s finished as 'partially_completed': some of its tasks failed", run_id
                )
            else:
                self.log.info("Unpod run %s finished with status '%s'", run_id, run_status)
            return dict(run or {})
        if status == "failed":
            raise UnpodRunFailedException(message, run_id=run_id, run_status=run_status or "", run=run)
        if status == "not_found":
            raise UnpodRunNotFoundException(
                f"{message} of {self.not_found_grace_period:g}s",
                resource="run",
                identifier=run_id,
                status_code=None,
            )
        if status == "timeout":
            raise UnpodSensorTimeout(message, run_id=run_id, run_status=run_status)
        raise _api_error(event)


# --------------------------------------------------------------------------------------------
# The sensor
# --------------------------------------------------------------------------------------------


class RunCompletedSensor(RunWaitMixin, BaseSensorOperator):
    """Wait for an Unpod run to finish; return the run object (a JSON dict) as XCom.

    Fails at once, without Airflow task retries, when the run ends in a failed state
    (``UnpodRunFailedError``) or is not in the space's runs when ``not_found_grace_period``
    seconds have passed since the first look (``UnpodNotFoundError``). Statuses the API may add
    later count as "not finished yet". Transient API errors are retried inside the hook.

    :param space_token: the space that holds the run (templated).
    :param run_id: the run to wait for (templated), e.g. ``"{{ ti.xcom_pull('start')['run_id'] }}"``.
    :param unpod_conn_id: Airflow connection of type ``unpod`` (templated).
    :param success_states: run statuses that end the wait successfully. ``partially_completed``
        (some calls failed) is one by default and logs a warning.
    :param failed_states: run statuses that fail the task. Any other terminal status fails too.
    :param not_found_grace_period: seconds a run may be missing from the runs list (measured on
        the wall clock from the first look) before the task fails.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param unpod_retry_limit: attempts per API request (1 = no retry): the hook's retry policy.
    :param unpod_retry_delay: base of the exponential backoff between those attempts, in seconds
        (``retry_delay`` stays BaseOperator's delay between Airflow task retries).
    """

    template_fields: Sequence[str] = ("space_token", "run_id", "unpod_conn_id")
    ui_color = "#d9f2e6"

    def __init__(
        self,
        *,
        space_token: str,
        run_id: str,
        unpod_conn_id: str = "unpod_default",
        success_states: Iterable[str] = protocol.DEFAULT_SUCCESS_STATES,
        failed_states: Iterable[str] = protocol.DEFAULT_FAILED_STATES,
        not_found_grace_period: float | timedelta = DEFAULT_NOT_FOUND_GRACE_PERIOD,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        unpod_retry_limit: int = 5,
        unpod_retry_delay: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.space_token = space_token
        self.run_id = run_id
        self.unpod_conn_id = unpod_conn_id
        self._init_wait(success_states, failed_states, not_found_grace_period)
        self.deferrable = bool(deferrable)
        # Validated now (a clear error at parse time); no I/O. Not named retry_delay: that is
        # BaseOperator's delay between Airflow task retries.
        RetryPolicy(max_attempts=unpod_retry_limit, base_delay=unpod_retry_delay)
        self.unpod_retry_limit = unpod_retry_limit
        self.unpod_retry_delay = unpod_retry_delay
        if self.deferrable and self.poke_interval <= 0:
            raise ValueError(
                "poke_interval must be > 0 when deferrable=True (it is the trigger's poll interval)"
            )

    @cached_property
    def hook(self) -> UnpodHook:
        """The sync hook, built on first use (after template rendering), never in ``__init__``."""
        from unpod_provider.hooks.unpod import UnpodHook

        return UnpodHook(
            self.unpod_conn_id, retry_limit=self.unpod_retry_limit, retry_delay=self.unpod_retry_delay
        )

    # ---- helpers -------------------------------------------------------------------------------

    def _validate_rendered(self) -> None:
        """Refuse bad identifiers after rendering, before any request, naming the parameter."""
        protocol.validate_identifier(self.space_token, "space_token")
        protocol.validate_identifier(self.run_id, "run_id")
        if not isinstance(self.unpod_conn_id, str) or not self.unpod_conn_id.strip():
            raise ValueError("unpod_conn_id must be a non-empty string")

    def _first_look_epoch(self, context: Context) -> float | None:
        """In reschedule mode every look is a new process (and Airflow 3 clears the task's XComs
        each time), so the first look is Airflow's own record: the start of this try's first
        reschedule. Poke and deferrable mode keep it on the instance.
        """
        if self.reschedule and not self.deferrable:
            return _first_reschedule_epoch(context)
        return None

    # ---- poke / reschedule ---------------------------------------------------------------------

    def poke(self, context: Context) -> PokeReturnValue:
        """One look; done with the run as XCom, or raise the typed failure."""
        check = self._check(context)
        if check.outcome == "waiting":
            self._log_waiting(check)
            return PokeReturnValue(is_done=False)
        return PokeReturnValue(is_done=True, xcom_value=self._finish(check, self._last_run))

    def execute(self, context: Context) -> Any:
        """Validate, push the run reference, then wait in the chosen mode."""
        self._validate_rendered()
        push_run_ref(context, self.space_token, self.run_id)
        try:
            if self.deferrable:
                return self._wait_deferrable(context)
            if self.reschedule and "ti" in context:
                context = {**context, "ti": RescheduleDateParsingTI(context["ti"])}  # type: ignore[typeddict-item]
            try:
                return super().execute(context)
            except AirflowSensorTimeout as err:
                if isinstance(err, UnpodError):
                    raise
                raise self._timeout_error(str(err)) from err
        finally:
            if "hook" in self.__dict__:
                self.hook.close()


def push_run_ref(context: Context, space_token: str, run_id: str) -> None:
    """Push ``{"space_token", "run_id"}`` under ``XCOM_RUN_KEY`` before any waiting, so downstream
    tasks have the run even when the wait fails."""
    context["ti"].xcom_push(key=XCOM_RUN_KEY, value={"space_token": space_token, "run_id": run_id})


def _first_reschedule_epoch(context: Context) -> float | None:
    """Epoch seconds of this try's first reschedule (its first look), or None on the first look."""
    first = first_reschedule_date(context.get("ti"), context)
    return first.timestamp() if first is not None else None


__all__ = [
    "XCOM_RUN_KEY",
    "RunCompletedSensor",
    "RunWaitMixin",
    "UnpodRunFailedException",
    "UnpodRunNotFoundException",
    "UnpodSensorTimeout",
    "push_run_ref",
]
