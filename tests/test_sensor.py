"""RunCompletedSensor in poke, reschedule and deferrable mode.

Unit tests mock the hook's ``find_run`` (the sensor's one I/O call); the simulator tests further
down run every behaviour over real HTTP, the deferrable path through the real trigger.
Delays are tiny; no assertion depends on how long something took.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from fakes import FakeTI

from unpod_provider._compat import (
    AirflowFailException,
    AirflowRescheduleException,
    AirflowSensorTimeout,
    AirflowSkipException,
    BaseHook,
    TaskDeferred,
)
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRunFailedError,
    UnpodRunNotFinishedError,
    UnpodServerError,
)
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.sensors.unpod import XCOM_RUN_KEY, RunCompletedSensor, UnpodSensorTimeout
from unpod_provider.triggers.unpod import RunCompletedTrigger

SPACE = "SPACE0TOKEN0ABC123XYZ789"
RUN_ID = "R40fe5eface1511f082ac156368e7acc4"


def run_obj(status: str, run_id: str = RUN_ID) -> dict[str, Any]:
    return {
        "space_id": "346",
        "run_id": run_id,
        "run_mode": "dev",
        "status": status,
        "batch_count": 1,
        "created": "2025-11-30T17:51:52",
        "modified": "2025-11-30T17:51:52",
    }


def make_context(ti: FakeTI | None = None, **extra: Any) -> dict[str, Any]:
    return {"ti": ti or FakeTI(), "params": {}, **extra}


def make_sensor(**overrides: Any) -> RunCompletedSensor:
    kwargs: dict[str, Any] = {
        "task_id": "wait_for_run",
        "space_token": SPACE,
        "run_id": RUN_ID,
        "poke_interval": 0.01,
        "timeout": 60,
        "unpod_retry_limit": 3,
        "unpod_retry_delay": 0.01,
        "deferrable": False,
    }
    kwargs.update(overrides)
    return RunCompletedSensor(**kwargs)


def log_lines(log: Any) -> list[tuple[str, str]]:
    """(level, rendered message) of every call made on a mocked logger."""
    lines = []
    for call in log.method_calls:
        args = call.args
        if args and isinstance(args[0], str):
            lines.append((call[0], args[0] % tuple(args[1:]) if len(args) > 1 else args[0]))
    # Airflow's own "execute cannot be called outside of the Task Runner!" is not ours.
    return [line for line in lines if "Task Runner" not in line[1]]


@pytest.fixture
def sensor_log(mocker: Any) -> Any:
    """The sensor's logger, mocked (Airflow logs through structlog, not caplog)."""
    return mocker.patch.object(RunCompletedSensor, "log", new_callable=mocker.PropertyMock).return_value


def run_reschedule_unit(sensor_factory: Any, ti: FakeTI, max_looks: int = 200, clock: Any = time.time) -> Any:
    """Drive reschedule mode like Airflow: a fresh operator per look, the first start recorded.

    Airflow's first TaskReschedule row holds the start of the look that was rescheduled first;
    the next look runs once the reschedule date has come.
    """
    for count in range(max_looks):
        context = make_context(ti, task_reschedule_count=count)
        started = clock()
        try:
            return sensor_factory().execute(context)
        except AirflowRescheduleException as reschedule:
            if ti.first_reschedule is None:
                ti.first_reschedule = datetime.fromtimestamp(started, timezone.utc)
            time.sleep(max(0.0, (reschedule.reschedule_date - datetime.now(timezone.utc)).total_seconds()))
    raise AssertionError("sensor never finished")


def run_deferrable_unit(sensor: RunCompletedSensor, context: dict[str, Any], event: dict[str, Any]) -> Any:
    with pytest.raises(TaskDeferred) as deferred:
        sensor.execute(context)
    assert isinstance(deferred.value.trigger, RunCompletedTrigger)
    return sensor.execute_complete(context, event)


# --------------------------------------------------------------------------------------------
# construction
# --------------------------------------------------------------------------------------------


def test_no_io_and_no_connection_lookup_in_init(mocker: Any) -> None:
    get_conn = mocker.patch.object(BaseHook, "get_connection", side_effect=AssertionError("lookup"))
    sensor = make_sensor(run_id="{{ ti.xcom_pull('start')['run_id'] }}")
    assert "hook" not in sensor.__dict__
    get_conn.assert_not_called()
    assert sensor.template_fields == ("space_token", "run_id", "unpod_conn_id")


def test_hook_is_cached_and_gets_the_retry_settings() -> None:
    sensor = make_sensor(unpod_conn_id="other", unpod_retry_limit=7, unpod_retry_delay=0.5)
    hook = sensor.hook
    assert hook is sensor.hook
    assert isinstance(hook, UnpodHook)
    assert hook.unpod_conn_id == "other"
    assert (hook.retry_policy.max_attempts, hook.retry_policy.base_delay) == (7, 0.5)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"success_states": ["completed"], "failed_states": ["completed"]}, "both contain completed"),
        ({"failed_states": []}, "failed_states"),
        ({"not_found_grace_period": -1}, "not_found_grace_period"),
        ({"unpod_retry_limit": 0}, "retry_limit"),
        ({"deferrable": True, "poke_interval": 0}, "poke_interval"),
    ],
)
def test_bad_arguments_refused_at_parse_time(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_sensor(**overrides)


def test_deferrable_default_comes_from_config() -> None:
    import inspect

    default = inspect.signature(RunCompletedSensor.__init__).parameters["deferrable"].default
    from airflow.configuration import conf

    assert default is conf.getboolean("operators", "default_deferrable", fallback=False)


# --------------------------------------------------------------------------------------------
# poke mode (unit)
# --------------------------------------------------------------------------------------------


def test_poke_waits_through_pending_and_running_then_returns_the_run(mocker: Any, sensor_log: Any) -> None:
    find = mocker.patch.object(
        UnpodHook, "find_run", side_effect=[run_obj("pending"), run_obj("running"), run_obj("completed")]
    )
    ti = FakeTI()
    result = make_sensor().execute(make_context(ti))
    assert result == run_obj("completed")
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": SPACE, "run_id": RUN_ID}
    assert find.call_count == 3
    find.assert_called_with(SPACE, RUN_ID)
    waiting = [line for line in log_lines(sensor_log) if "waiting" in line[1]]
    assert [w[1].split("is ")[-1] for w in waiting] == ["'pending'; waiting", "'running'; waiting"]


def test_poke_returns_poke_return_value() -> None:
    sensor = make_sensor()
    sensor.hook.find_run = lambda space, run: run_obj("completed")  # type: ignore[method-assign]
    value = sensor.poke(make_context())
    assert value.is_done and value.xcom_value == run_obj("completed")
    sensor.hook.find_run = lambda space, run: run_obj("queued")  # type: ignore[method-assign]
    value = sensor.poke(make_context())
    assert not value.is_done and value.xcom_value is None


@pytest.mark.parametrize("status", ["failed", "cancelled"])
def test_failed_run_fails_fast_without_task_retry(mocker: Any, status: str) -> None:
    find = mocker.patch.object(UnpodHook, "find_run", side_effect=[run_obj("running"), run_obj(status)])
    ti = FakeTI()
    with pytest.raises(UnpodRunFailedError) as info:
        make_sensor(retries=3).execute(make_context(ti))
    assert isinstance(info.value, AirflowFailException)  # Airflow does not retry the task
    assert RUN_ID in str(info.value) and status in str(info.value)
    assert (info.value.run_id, info.value.run_status) == (RUN_ID, status)
    assert info.value.run == run_obj(status)
    assert find.call_count == 2
    assert ti.pushed[XCOM_RUN_KEY]["run_id"] == RUN_ID  # pushed although the task failed


def test_failed_run_with_soft_fail_skips(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("failed"))
    with pytest.raises(AirflowSkipException):
        make_sensor(soft_fail=True).execute(make_context())


def test_partially_completed_succeeds_with_a_warning(mocker: Any, sensor_log: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("partially_completed"))
    assert make_sensor().execute(make_context()) == run_obj("partially_completed")
    warnings = [line for line in log_lines(sensor_log) if line[0] == "warning"]
    assert len(warnings) == 1
    assert RUN_ID in warnings[0][1] and "partially_completed" in warnings[0][1]


def test_custom_states(mocker: Any) -> None:
    # "running" is enough for this user; "partially_completed" is a failure for them.
    mocker.patch.object(UnpodHook, "find_run", side_effect=[run_obj("queued"), run_obj("running")])
    sensor = make_sensor(success_states=["running", "completed"], failed_states=["failed"])
    assert sensor.execute(make_context())["status"] == "running"

    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("partially_completed"))
    with pytest.raises(UnpodRunFailedError, match="not one of the success states"):
        make_sensor(success_states=["completed"], failed_states=["failed"]).execute(make_context())

    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("Paused"))
    with pytest.raises(UnpodRunFailedError, match="'paused'"):
        make_sensor(failed_states=["PAUSED"]).execute(make_context())


def test_unknown_status_keeps_waiting_and_is_logged_once(mocker: Any, sensor_log: Any) -> None:
    mocker.patch.object(
        UnpodHook,
        "find_run",
        side_effect=[run_obj("on_hold"), run_obj("on_hold"), run_obj("on_hold"), run_obj("completed")],
    )
    assert make_sensor().execute(make_context())["status"] == "completed"
    lines = log_lines(sensor_log)
    unknown = [line for line in lines if "does not know" in line[1]]
    assert len(unknown) == 1 and unknown[0][0] == "warning" and "'on_hold'" in unknown[0][1]
    assert sum("waiting" in line[1] for line in lines) == 3  # one line per look


def test_not_found_within_grace_keeps_waiting(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", side_effect=[None, None, run_obj("completed")])
    assert make_sensor(not_found_grace_period=300).execute(make_context())["status"] == "completed"


def test_not_found_after_grace_fails(mocker: Any) -> None:
    find = mocker.patch.object(UnpodHook, "find_run", return_value=None)
    with pytest.raises(UnpodNotFoundError) as info:
        make_sensor(not_found_grace_period=0.05).execute(make_context())
    assert isinstance(info.value, AirflowFailException)
    assert RUN_ID in str(info.value) and SPACE in str(info.value)
    assert (info.value.resource, info.value.identifier) == ("run", RUN_ID)
    assert find.call_count >= 2


def test_grace_zero_fails_at_the_first_look(mocker: Any) -> None:
    find = mocker.patch.object(UnpodHook, "find_run", return_value=None)
    with pytest.raises(UnpodNotFoundError):
        make_sensor(not_found_grace_period=timedelta(0)).execute(make_context())
    assert find.call_count == 1


def test_poke_timeout_names_the_last_status(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("running"))
    with pytest.raises(UnpodRunNotFinishedError) as info:
        make_sensor(timeout=0.05).execute(make_context())
    assert isinstance(info.value, AirflowSensorTimeout)
    assert "running" in str(info.value) and RUN_ID in str(info.value)


def test_persistent_api_error_fails_the_task_retryably(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", side_effect=UnpodServerError("HTTP 503", status_code=503))
    with pytest.raises(UnpodServerError) as info:
        make_sensor().execute(make_context())
    assert not isinstance(info.value, AirflowFailException)


# --------------------------------------------------------------------------------------------
# identifiers and templates
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("run_id", "../R1"),
        ("run_id", "R1/tasks"),
        ("space_token", "A B"),
        ("space_token", "X\r\nY"),
        ("run_id", ""),
    ],
)
@pytest.mark.parametrize("deferrable", [False, True])
def test_invalid_identifier_refused_before_any_request(
    mocker: Any, field: str, value: str, deferrable: bool
) -> None:
    find = mocker.patch.object(UnpodHook, "find_run")
    get_conn = mocker.patch.object(BaseHook, "get_connection")
    ti = FakeTI()
    with pytest.raises(ValueError, match=field):
        make_sensor(deferrable=deferrable, **{field: value}).execute(make_context(ti))
    find.assert_not_called()
    get_conn.assert_not_called()
    assert ti.pushed == {}


def test_templates_are_rendered_before_use(mocker: Any) -> None:
    find = mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("completed", "R" + "a" * 32))
    ti = FakeTI({("start", "return_value"): {"run_id": "R" + "a" * 32, "space_token": "SP1"}})
    sensor = make_sensor(
        space_token="{{ ti.xcom_pull('start')['space_token'] }}",
        run_id="{{ ti.xcom_pull('start')['run_id'] }}",
        unpod_conn_id="{{ params.conn }}",
    )
    context = make_context(ti, params={"conn": "unpod_other"})
    sensor.render_template_fields(context)
    assert (sensor.space_token, sensor.run_id, sensor.unpod_conn_id) == ("SP1", "R" + "a" * 32, "unpod_other")
    assert sensor.execute(context)["run_id"] == "R" + "a" * 32
    find.assert_called_with("SP1", "R" + "a" * 32)
    assert sensor.hook.unpod_conn_id == "unpod_other"


def test_xcom_arg_is_resolved(mocker: Any) -> None:
    import datetime as dt

    from airflow.sdk import DAG, task

    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("completed"))
    with DAG("d", schedule=None, start_date=dt.datetime(2025, 1, 1)):

        @task
        def start() -> str:
            return RUN_ID

        sensor = make_sensor(run_id=start())
    assert sensor.upstream_task_ids == {"start"}
    ti = FakeTI({("start", "return_value"): RUN_ID})
    context = make_context(ti)
    sensor.render_template_fields(context)
    assert sensor.run_id == RUN_ID


def test_rendered_bad_value_is_refused(mocker: Any) -> None:
    find = mocker.patch.object(UnpodHook, "find_run")
    ti = FakeTI({("start", "return_value"): {"run_id": "R1/../../x"}})
    sensor = make_sensor(run_id="{{ ti.xcom_pull('start')['run_id'] }}")
    context = make_context(ti)
    sensor.render_template_fields(context)
    with pytest.raises(ValueError, match="run_id"):
        sensor.execute(context)
    find.assert_not_called()


def test_a_template_that_renders_none_is_refused_not_sent(mocker: Any) -> None:
    """``{{ ti.xcom_pull(...) }}`` of nothing renders "None": refused like an empty id, never sent."""
    find = mocker.patch.object(UnpodHook, "find_run")
    sensor = make_sensor(run_id="{{ ti.xcom_pull('start') }}")
    context = make_context(FakeTI())
    sensor.render_template_fields(context)
    assert sensor.run_id == "None"
    with pytest.raises(ValueError, match="run_id is 'None': the template that gives it rendered None"):
        sensor.execute(context)
    find.assert_not_called()


# --------------------------------------------------------------------------------------------
# reschedule mode (unit)
# --------------------------------------------------------------------------------------------


def test_reschedule_raises_reschedule_while_waiting_then_returns_the_run(mocker: Any) -> None:
    find = mocker.patch.object(
        UnpodHook, "find_run", side_effect=[run_obj("pending"), run_obj("running"), run_obj("completed")]
    )
    ti = FakeTI()
    with pytest.raises(AirflowRescheduleException):
        make_sensor(mode="reschedule").execute(make_context(ti))
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": SPACE, "run_id": RUN_ID}
    result = run_reschedule_unit(lambda: make_sensor(mode="reschedule"), ti)
    assert result == run_obj("completed")
    assert find.call_count == 3


def test_reschedule_failed_run_fails_fast(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", side_effect=[run_obj("running"), run_obj("failed")])
    with pytest.raises(UnpodRunFailedError):
        run_reschedule_unit(lambda: make_sensor(mode="reschedule"), FakeTI())


def test_reschedule_grace_starts_at_the_first_reschedule(mocker: Any) -> None:
    """A fresh operator per look still knows when the first look was (Airflow's record)."""
    mocker.patch.object(UnpodHook, "find_run", return_value=None)
    ti = FakeTI()
    ti.first_reschedule = datetime.now(timezone.utc) - timedelta(seconds=100)
    with pytest.raises(AirflowRescheduleException):  # 100 s into a 300 s grace: wait
        make_sensor(mode="reschedule", not_found_grace_period=300, timeout=3600).execute(
            make_context(ti, task_reschedule_count=3)
        )
    ti.first_reschedule = datetime.now(timezone.utc) - timedelta(seconds=301)
    with pytest.raises(UnpodNotFoundError):  # past the grace period: fail, no new grace
        make_sensor(mode="reschedule", not_found_grace_period=300, timeout=3600).execute(
            make_context(ti, task_reschedule_count=4)
        )


def iso_ago(seconds: float) -> str:
    """A first reschedule date as Airflow 3.0's ``dags test`` hands it over: an unparsed ISO string."""
    moment = datetime.now(timezone.utc) - timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def test_reschedule_accepts_the_first_reschedule_date_as_a_string(mocker: Any) -> None:
    """Airflow 3.0's in-process runner passes the date unparsed; its own sensor base class then
    failed with a TypeError at the third look. Grace period and timeout must both still count."""
    mocker.patch.object(UnpodHook, "find_run", return_value=None)
    ti = FakeTI()
    ti.first_reschedule = iso_ago(100)
    with pytest.raises(AirflowRescheduleException):  # 100 s into a 300 s grace: wait
        make_sensor(mode="reschedule", not_found_grace_period=300, timeout=3600).execute(
            make_context(ti, task_reschedule_count=3)
        )
    ti.first_reschedule = iso_ago(301)
    with pytest.raises(UnpodNotFoundError):
        make_sensor(mode="reschedule", not_found_grace_period=300, timeout=3600).execute(
            make_context(ti, task_reschedule_count=4)
        )
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("running"))
    ti.first_reschedule = iso_ago(3601)
    with pytest.raises(UnpodSensorTimeout, match=RUN_ID):  # the sensor timeout counts from it too
        make_sensor(mode="reschedule", timeout=3600).execute(make_context(ti, task_reschedule_count=5))


def test_reschedule_rejects_a_first_reschedule_date_of_another_type(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=None)
    ti = FakeTI()
    ti.first_reschedule = 1234.5  # type: ignore[assignment]
    with pytest.raises(TypeError, match="first reschedule date of type float"):
        make_sensor(mode="reschedule").execute(make_context(ti, task_reschedule_count=1))


def test_poke_mode_does_not_use_the_reschedule_record(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", side_effect=[None, run_obj("completed")])
    ti = FakeTI()
    ti.first_reschedule = datetime.now(timezone.utc) - timedelta(days=1)
    assert make_sensor(not_found_grace_period=300).execute(make_context(ti))["status"] == "completed"


# --------------------------------------------------------------------------------------------
# deferrable mode (unit)
# --------------------------------------------------------------------------------------------


def test_finished_run_never_defers(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("completed"))
    ti = FakeTI()
    assert make_sensor(deferrable=True).execute(make_context(ti)) == run_obj("completed")
    assert ti.pushed[XCOM_RUN_KEY]["run_id"] == RUN_ID


def test_failed_run_fails_before_deferring(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("cancelled"))
    with pytest.raises(UnpodRunFailedError):
        make_sensor(deferrable=True).execute(make_context())


def test_defers_with_plain_trigger_kwargs_and_no_framework_timeout(mocker: Any) -> None:
    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("running"))
    ti = FakeTI()
    sensor = make_sensor(
        deferrable=True,
        poke_interval=7,
        timeout=600,
        not_found_grace_period=120,
        success_states=["completed"],
        unpod_conn_id="unpod_x",
        unpod_retry_limit=4,
        unpod_retry_delay=0.25,
    )
    before = time.time()
    with pytest.raises(TaskDeferred) as info:
        sensor.execute(make_context(ti))
    after = time.time()
    deferred = info.value
    assert deferred.method_name == "execute_complete"
    assert deferred.timeout is None
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": SPACE, "run_id": RUN_ID}
    _, kwargs = deferred.trigger.serialize()
    assert json.loads(json.dumps(kwargs)) == kwargs
    assert kwargs["poll_interval"] == 7
    assert kwargs["unpod_conn_id"] == "unpod_x"
    assert kwargs["success_states"] == ["completed"]
    assert kwargs["last_status"] == "running"
    assert kwargs["retry"]["max_attempts"] == 4 and kwargs["retry"]["base_delay"] == 0.25
    assert before + 600 <= kwargs["end_time"] <= after + 600
    assert before + 120 <= kwargs["not_found_deadline"] <= after + 120


def test_execute_complete_success_returns_the_run(sensor_log: Any) -> None:
    sensor = make_sensor(deferrable=True)
    event = {
        "status": "success",
        "run": run_obj("partially_completed"),
        "run_id": RUN_ID,
        "space_token": SPACE,
        "run_status": "partially_completed",
        "message": "ok",
        "error_type": None,
    }
    assert sensor.execute_complete(make_context(), event) == run_obj("partially_completed")
    warnings = [line for line in log_lines(sensor_log) if line[0] == "warning"]
    assert len(warnings) == 1 and RUN_ID in warnings[0][1]


@pytest.mark.parametrize(
    ("event", "error", "airflow_type"),
    [
        (
            {
                "status": "failed",
                "run_status": "failed",
                "message": f"Unpod run {RUN_ID} ended with status 'failed'",
            },
            UnpodRunFailedError,
            AirflowFailException,
        ),
        (
            {"status": "not_found", "message": f"Run '{RUN_ID}' not found"},
            UnpodNotFoundError,
            AirflowFailException,
        ),
        (
            {
                "status": "timeout",
                "run_status": "running",
                "message": f"run {RUN_ID} last seen status 'running'",
            },
            UnpodRunNotFinishedError,
            AirflowSensorTimeout,
        ),
        (
            {"status": "error", "error_type": "UnpodAuthError", "status_code": 401, "message": "HTTP 401"},
            UnpodAuthError,
            None,
        ),
        (
            {"status": "error", "error_type": "KeyError", "message": "Unexpected error: KeyError"},
            UnpodError,
            None,
        ),
        ({"status": "weird"}, UnpodProtocolError, None),
    ],
)
def test_execute_complete_raises_the_typed_error(
    event: dict[str, Any], error: type[Exception], airflow_type: type[Exception] | None
) -> None:
    payload = {"run": None, "run_id": RUN_ID, "space_token": SPACE, "error_type": None, **event}
    with pytest.raises(error) as info:
        make_sensor(deferrable=True).execute_complete(make_context(), payload)
    if airflow_type is not None:
        assert isinstance(info.value, airflow_type)
    else:
        assert not isinstance(info.value, (AirflowFailException, AirflowSensorTimeout))
    if event["status"] != "weird":
        assert event["message"] in str(info.value)
    if event.get("status_code"):
        assert info.value.status_code == event["status_code"]  # type: ignore[attr-defined]
    if event["status"] == "failed":
        assert info.value.run_status == "failed"  # type: ignore[attr-defined]


def test_execute_complete_without_event_is_a_clear_error() -> None:
    with pytest.raises(UnpodProtocolError, match=RUN_ID):
        make_sensor(deferrable=True).execute_complete(make_context(), None)


def test_typed_errors_survive_airflow_serialization(mocker: Any) -> None:
    """Airflow serializes AirflowExceptions as (class path, args, kwargs); ours rebuild from that."""
    import importlib

    mocker.patch.object(UnpodHook, "find_run", return_value=run_obj("failed"))
    with pytest.raises(UnpodRunFailedError) as info:
        make_sensor().execute(make_context())
    path, args, kwargs = info.value.serialize()  # type: ignore[attr-defined]
    module, _, name = path.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(*args, **kwargs)
    assert (type(rebuilt), str(rebuilt), rebuilt.run_status) == (type(info.value), str(info.value), "failed")


# ============================================================================================
# Over real HTTP against the Unpod simulator, in poke, reschedule and deferrable mode
# ============================================================================================

MODES = ("poke", "reschedule", "deferrable")
#: Simulated seconds the simulator's clock moves after each look at the run.
STEP = 10.0
#: pending, then running after one look, then completed after two.
TIMELINE = [("pending", 0), ("running", STEP), ("completed", 2 * STEP)]


@pytest.fixture
def sim(unpod_simulator_shared: Any, clock_moves_per_look: Any) -> Any:
    """The simulator, its clock moving ``STEP`` seconds after every look (sync or async)."""
    return clock_moves_per_look(unpod_simulator_shared, STEP)


def space() -> str:
    from unpod_provider.testing import DEMO_SPACE_TOKEN

    return DEMO_SPACE_TOKEN


def run_trigger(trigger: RunCompletedTrigger) -> dict[str, Any]:
    """Run the trigger as the triggerer does: rebuilt from serialize(), in an event loop."""
    import asyncio
    import importlib

    classpath, kwargs = trigger.serialize()
    module, _, name = classpath.rpartition(".")
    rebuilt = getattr(importlib.import_module(module), name)(**json.loads(json.dumps(kwargs)))

    async def collect() -> list[dict[str, Any]]:
        return [event.payload async for event in rebuilt.run()]

    events = asyncio.run(collect())
    assert len(events) == 1, events
    return events[0]


def wait(
    mode: str,
    ti: FakeTI | None = None,
    *,
    render: dict[str, Any] | None = None,
    clock: Any = time.time,
    **kwargs: Any,
) -> Any:
    """Run a RunCompletedSensor to its end in ``mode``, the way Airflow would.

    poke: one ``execute``. reschedule: a fresh operator per look (as after a real reschedule),
    the first reschedule date recorded like Airflow does. deferrable: ``execute`` until it
    defers, the real trigger until its event, then ``execute_complete`` on a fresh operator
    (only the event crosses over, as under ``dag.test()``).
    """
    ti = ti or FakeTI()
    options = {"poke_interval": 0.02, "unpod_retry_delay": 0.01, **kwargs}
    if mode == "deferrable":
        options["deferrable"] = True
    else:
        options["mode"] = mode

    def fresh() -> RunCompletedSensor:
        sensor = make_sensor(**options)
        if render is not None:
            sensor.render_template_fields(make_context(ti, **render))
        return sensor

    if mode == "poke":
        return fresh().execute(make_context(ti))
    if mode == "reschedule":
        return run_reschedule_unit(fresh, ti, clock=clock)
    try:
        return fresh().execute(make_context(ti))
    except TaskDeferred as deferred:
        assert deferred.timeout is None
        assert deferred.method_name == "execute_complete"
        event = run_trigger(deferred.trigger)
    json.dumps(event)
    return fresh().execute_complete(make_context(ti), event)


@pytest.mark.parametrize("mode", MODES)
def test_sim_pending_running_completed_returns_the_run(sim: Any, mode: str) -> None:
    run_id = sim.add_run(space(), n_tasks=3, timeline=TIMELINE)
    ti = FakeTI()
    result = wait(mode, ti, space_token=space(), run_id=run_id)
    listed = {r["run_id"]: r for r in sim.space_runs(space())}[run_id]
    assert result == listed  # the run exactly as the API lists it: the task's XCom return value
    assert result["status"] == "completed"
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": space(), "run_id": run_id}
    looks = [r for r in sim.requests if r["path"].endswith(f"/spaces/{space()}/runs/")]
    assert len(looks) == 3  # saw pending, running, completed: one request per look
    assert all(r["status"] == 200 for r in sim.requests)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_sim_failed_run_fails_fast(sim: Any, mode: str, final: str) -> None:
    run_id = sim.add_run(space(), n_tasks=2, timeline=[("running", 0), (final, STEP)])
    ti = FakeTI()
    with pytest.raises(UnpodRunFailedError) as info:
        wait(mode, ti, space_token=space(), run_id=run_id, timeout=3600)
    assert isinstance(info.value, AirflowFailException)
    assert run_id in str(info.value) and final in str(info.value)
    assert info.value.run_status == final
    assert len(sim.requests) == 2  # no waiting after the failure was seen
    assert ti.pushed[XCOM_RUN_KEY]["run_id"] == run_id


@pytest.fixture
def sim_clock(sim: Any, mocker: Any) -> Any:
    """The sensor's and trigger's wall clock read from the simulator (``STEP`` s per look)."""

    class Clock:
        @staticmethod
        def time() -> float:
            return float(sim.now())

    mocker.patch("unpod_provider.sensors.unpod.time", Clock)
    mocker.patch("unpod_provider.triggers.unpod.time", Clock)
    return Clock.time


@pytest.mark.parametrize("mode", MODES)
def test_sim_missing_run_fails_after_the_grace_period(sim: Any, sim_clock: Any, mode: str) -> None:
    missing = "R" + "f" * 32
    with pytest.raises(UnpodNotFoundError) as info:
        wait(mode, clock=sim_clock, space_token=space(), run_id=missing, not_found_grace_period=2.5 * STEP)
    assert isinstance(info.value, AirflowFailException)
    assert missing in str(info.value) and space() in str(info.value)
    # Looks at +0 s and +10 s wait; the look that ends past +25 s fails (grace from the first look).
    assert len(sim.requests) == 3


@pytest.mark.parametrize("mode", MODES)
def test_sim_run_appearing_within_the_grace_period_is_followed(
    sim: Any, sim_clock: Any, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run exists but is not listed at the first look (e.g. the server lists it late).
    run_id = sim.add_run(space(), n_tasks=1, final_status="completed")
    runs = sim.state.space(space()).runs
    hidden = runs.pop()
    advance = sim.advance

    def advance_and_list(seconds: float) -> float:
        if hidden not in runs:
            runs.append(hidden)
        return advance(seconds)

    monkeypatch.setattr(sim, "advance", advance_and_list)
    result = wait(
        mode, clock=sim_clock, space_token=space(), run_id=run_id, not_found_grace_period=2.5 * STEP
    )
    assert result["status"] == "completed"
    assert len(sim.requests) == 2  # not listed, then listed and completed


@pytest.mark.parametrize("mode", MODES)
def test_sim_unknown_status_keeps_waiting_and_is_logged_once(sim: Any, mode: str, mocker: Any) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=[("paused", 0), ("completed", 3 * STEP)])
    sensor_log = mocker.patch.object(RunCompletedSensor, "log", new_callable=mocker.PropertyMock).return_value
    trigger_log = mocker.patch.object(
        RunCompletedTrigger, "log", new_callable=mocker.PropertyMock
    ).return_value
    result = wait(mode, space_token=space(), run_id=run_id)
    assert result["status"] == "completed"
    assert len(sim.requests) == 4  # three looks at "paused", one at "completed"
    sensor_lines, trigger_lines = log_lines(sensor_log), log_lines(trigger_log)
    unknown = [line for line in sensor_lines + trigger_lines if "does not know" in line[1]]
    if mode == "poke":
        assert len(unknown) == 1
    elif mode == "deferrable":
        # One process each: the worker's first look, then the triggerer's wait.
        assert sum("does not know" in line[1] for line in sensor_lines) == 1
        assert sum("does not know" in line[1] for line in trigger_lines) == 1
    else:
        # Each reschedule is a new process: one line per look, never more.
        assert len(unknown) == 3
    assert all(line[0] == "warning" and "'paused'" in line[1] for line in unknown)
    waiting_lines = [
        line for line in sensor_lines + trigger_lines if run_id in line[1] and "finished with" not in line[1]
    ]
    assert len(waiting_lines) == 3  # at most one line per look


@pytest.mark.parametrize("mode", MODES)
def test_sim_partially_completed_succeeds_with_a_warning(sim: Any, mode: str, mocker: Any) -> None:
    run_id = sim.add_run(space(), n_tasks=2, timeline=[("running", 0), ("partially_completed", STEP)])
    sensor_log = mocker.patch.object(RunCompletedSensor, "log", new_callable=mocker.PropertyMock).return_value
    result = wait(mode, space_token=space(), run_id=run_id)
    assert result["status"] == "partially_completed"
    warnings = [line for line in log_lines(sensor_log) if line[0] == "warning"]
    assert len(warnings) == 1
    assert run_id in warnings[0][1] and "partially_completed" in warnings[0][1]


@pytest.mark.parametrize("mode", MODES)
def test_sim_custom_success_and_failed_states(sim: Any, mode: str) -> None:
    # Success as soon as the calls are running (e.g. to start a downstream monitor).
    run_id = sim.add_run(
        space(), n_tasks=2, timeline=[("queued", 0), ("running", STEP), ("completed", 5 * STEP)]
    )
    result = wait(
        mode, space_token=space(), run_id=run_id, success_states=["running"], failed_states=["failed"]
    )
    assert result["status"] == "running"

    # partially_completed is a failure for this user; cancelled is in neither list and fails too.
    for final in ("partially_completed", "cancelled"):
        run_id = sim.add_run(space(), n_tasks=2, timeline=[("running", 0), (final, STEP)])
        with pytest.raises(UnpodRunFailedError, match=final):
            wait(
                mode,
                space_token=space(),
                run_id=run_id,
                success_states=["completed"],
                failed_states=["partially_completed"],
            )


@pytest.mark.parametrize("mode", MODES)
def test_sim_templated_ids_are_rendered(sim: Any, mode: str) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=TIMELINE)
    ti = FakeTI({("start", "return_value"): {"run_id": run_id, "space_token": space()}})
    result = wait(
        mode,
        ti,
        render={},
        space_token="{{ ti.xcom_pull('start')['space_token'] }}",
        run_id="{{ ti.xcom_pull('start')['run_id'] }}",
        unpod_conn_id="{{ 'unpod_' ~ 'default' }}",
    )
    assert result["run_id"] == run_id
    assert ti.pushed[XCOM_RUN_KEY] == {"space_token": space(), "run_id": run_id}
    assert {r["path"] for r in sim.requests} == {f"/api/v2/platform/spaces/{space()}/runs/"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("field", "value"), [("run_id", "R1/../../tasks"), ("space_token", "DEMO%2F..")])
def test_sim_invalid_identifier_refused_before_any_request(
    sim: Any, mode: str, field: str, value: str
) -> None:
    ti = FakeTI({("start", "return_value"): value})
    ids = {"space_token": space(), "run_id": "R" + "a" * 32, field: "{{ ti.xcom_pull('start') }}"}
    with pytest.raises(ValueError, match=field):
        wait(mode, ti, render={}, **ids)
    assert sim.requests == []
    assert ti.pushed == {}


@pytest.mark.parametrize("mode", MODES)
def test_sim_transient_errors_are_retried_in_the_hook(sim: Any, mode: str) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=TIMELINE)
    runs_path = f"/spaces/{space()}/runs/"
    # A 503, a 429 and a dropped connection on the 2nd look (in the triggerer when deferrable).
    sim.inject("server_error", path=runs_path, status=503, body="html", skip=1, times=1)
    sim.inject("rate_limit", path=runs_path, retry_after=0, skip=1, times=1)
    sim.inject("disconnect", path=runs_path, skip=1, times=1)
    result = wait(mode, space_token=space(), run_id=run_id, unpod_retry_limit=5)
    assert result["status"] == "completed"
    statuses = [r["status"] for r in sim.requests]
    assert statuses.count(200) == 3
    assert 503 in statuses and 429 in statuses


@pytest.mark.parametrize("mode", MODES)
def test_sim_persistent_error_fails_with_a_typed_error(sim: Any, mode: str) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=TIMELINE)
    sim.inject("server_error", path=f"/spaces/{space()}/runs/", status=502, skip=1, times=None)
    with pytest.raises(UnpodServerError) as info:
        wait(mode, space_token=space(), run_id=run_id, unpod_retry_limit=3)
    assert not isinstance(info.value, AirflowFailException)  # Airflow's task retries may help
    assert info.value.status_code == 502
    assert len(sim.requests) == 1 + 3  # one good look, then three attempts


@pytest.mark.parametrize("mode", MODES)
def test_sim_timeout_names_the_last_status(sim: Any, mode: str) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=[("running", 0)])
    with pytest.raises(UnpodRunNotFinishedError) as info:
        wait(mode, space_token=space(), run_id=run_id, timeout=0.2)
    assert isinstance(info.value, AirflowSensorTimeout)
    assert "running" in str(info.value) and run_id in str(info.value)


def test_sim_unknown_space_is_a_typed_business_error(sim: Any) -> None:
    from unpod_provider.exceptions import UnpodBusinessError

    with pytest.raises(UnpodBusinessError, match="Invalid Space Token"):
        wait("poke", space_token="NO0SUCH0SPACE", run_id="R" + "a" * 32)
    assert len(sim.requests) == 1  # a 206 is never retried


@pytest.mark.parametrize("mode", MODES)
def test_sim_api_token_is_never_exposed(sim: Any, mode: str, mocker: Any, capsys: Any) -> None:
    run_id = sim.add_run(space(), n_tasks=1, timeline=[("running", 0), ("failed", STEP)])
    ti = FakeTI()
    with pytest.raises(UnpodRunFailedError) as info:
        wait(mode, ti, space_token=space(), run_id=run_id)
    token = sim.token
    assert token not in str(info.value) and token not in repr(info.value.run)
    assert token not in json.dumps(ti.pushed)
    out = capsys.readouterr()
    assert token not in out.out and token not in out.err
    assert sim.requests and all(r["status"] == 200 for r in sim.requests)  # the token was used


# ============================================================================================
# End to end: real Airflow task runner (``airflow dags test``), all three modes
# ============================================================================================

E2E_DAG = """
import datetime

from airflow.sdk import DAG, task

from unpod_provider.sensors.unpod import RunCompletedSensor

MODES = ("poke", "reschedule", "deferrable")

with DAG("unpod_sensor_modes", schedule=None, start_date=datetime.datetime(2025, 1, 1), catchup=False):
    waits = {}
    for name in MODES:
        waits[name] = RunCompletedSensor(
            task_id=f"wait_{name}",
            space_token="{{ dag_run.conf['%s']['space'] }}" % name,
            run_id="{{ dag_run.conf['%s']['run_id'] }}" % name,
            mode="reschedule" if name == "reschedule" else "poke",
            deferrable=name == "deferrable",
            poke_interval=1,
            timeout=120,
            unpod_retry_delay=0.1,
        )

    @task
    def check(poke, reschedule, deferrable, dag_run=None, ti=None):
        for name, value in (("poke", poke), ("reschedule", reschedule), ("deferrable", deferrable)):
            expected = dag_run.conf[name]
            assert value["run_id"] == expected["run_id"] and value["status"] == "completed", value
            ref = ti.xcom_pull(task_ids=f"wait_{name}", key="unpod_run")
            assert ref == {"space_token": expected["space"], "run_id": expected["run_id"]}, ref
        print("UNPOD SENSOR MODES OK")

    check(waits["poke"].output, waits["reschedule"].output, waits["deferrable"].output)

    # A failed run must fail its task at once, without using the two Airflow retries.
    RunCompletedSensor(
        task_id="wait_failed",
        space_token="{{ dag_run.conf['failed']['space'] }}",
        run_id="{{ dag_run.conf['failed']['run_id'] }}",
        mode="reschedule",
        poke_interval=1,
        timeout=120,
        retries=2,
        retry_delay=datetime.timedelta(seconds=0),
    )
"""


@pytest.mark.slow
def test_e2e_all_modes_under_the_task_runner(unpod_simulator_shared: Any, tmp_path: Any) -> None:
    import re
    import sqlite3
    from contextlib import ExitStack

    from unpod_provider.testing.dag_runner import DagTestRunner, timeline_on_first_look

    sim = unpod_simulator_shared
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "unpod_sensor_modes.py").write_text(E2E_DAG)
    conf: dict[str, Any] = {}
    with ExitStack() as stack, DagTestRunner(dags) as runner:
        started = []
        for name in ("poke", "reschedule", "deferrable"):
            space_token = sim.add_space(name=f"e2e {name}")  # own space: the first look starts its run
            run_id = sim.add_run(space_token, n_tasks=2, timeline=[("pending", 0)])
            conf[name] = {"space": space_token, "run_id": run_id}
            # Reschedule mode must look at least three times: each look after the first asks
            # Airflow for the first reschedule date (Airflow 3.0's `dags test` hands it over as a
            # string, which its own sensor base class cannot subtract).
            done_at = 5.0 if name == "reschedule" else 3.0
            timeline = [("pending", 0), ("running", 1.5), ("completed", done_at)]
            started.append(stack.enter_context(timeline_on_first_look(sim, run_id, timeline)))
        space_token = sim.add_space(name="e2e failed")
        failed_run = sim.add_run(space_token, n_tasks=1, timeline=[("running", 0), ("failed", 2)])
        conf["failed"] = {"space": space_token, "run_id": failed_run}
        result = runner.run("unpod_sensor_modes", conf, env=sim.connection_env(), timeout=240)
        assert all(event.is_set() for event in started)
        assert result.task_states == {
            "wait_poke": "success",
            "wait_reschedule": "success",
            "wait_deferrable": "success",
            "check": "success",
            "wait_failed": "failed",
        }, result.tail()
        assert "UNPOD SENSOR MODES OK" in result.output
        for name in ("poke", "reschedule", "deferrable"):
            run_id = conf[name]["run_id"]
            seen = re.findall(rf"Unpod run {run_id} \(space \w+\) is '(\w+)'", result.output)
            assert seen and seen[0] == "pending", (name, seen)  # it really waited
        assert "Rescheduling task, marking task as UP_FOR_RESCHEDULE" in result.output
        assert "running trigger in line" in result.output
        assert "UnpodRunFailedException" in result.output and f"Unpod run {failed_run}" in result.output
        with sqlite3.connect(runner.database_path) as db:
            (tries,) = db.execute(
                "SELECT try_number FROM task_instance WHERE task_id = 'wait_failed'"
            ).fetchone()
        assert tries == 1
        # Airflow 3.0's own `dags test` debug-logs the values it registers with its masker
        # ("MaskSecret(value=...)"); that line is Airflow's, every other line must be clean.
        ours = "\n".join(line for line in result.output.splitlines() if "MaskSecret(" not in line)
        assert sim.token not in ours
