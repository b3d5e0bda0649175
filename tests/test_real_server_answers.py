"""What the real Unpod server does (``tests/real_server`` proves it there), met by the provider
and taught to the simulator: the Token scheme refused on organizations and spaces, the status
vocabulary of its executor, the documented create path that is a 404, and 400 field errors.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
import requests

from unpod_provider import protocol
from unpod_provider.exceptions import UnpodAuthError, UnpodAuthSchemeError, UnpodBadRequestError
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.sensors.unpod import RunCompletedSensor
from unpod_provider.testing import DEMO_AGENT_HANDLE, DEMO_SPACE_TOKEN, SIM_ORG_HANDLE, UnpodSimulator
from unpod_provider.triggers.unpod import check_run

CONTACTS = [{"name": "Rajesh Kumar", "contact_number": "+919988776655"}]
PREFIX = protocol.API_PREFIX.rstrip("/")


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    return unpod_simulator_shared


def use(monkeypatch: pytest.MonkeyPatch, sim: UnpodSimulator, token: str | None = None, **extra: Any) -> None:
    conn = sim.connection_dict(**extra)
    if token is not None:
        conn["password"] = token
    monkeypatch.setenv("AIRFLOW_CONN_UNPOD_DEFAULT", json.dumps(conn))


# --------------------------------------------------------------------------------------------
# The Token scheme refused on organizations and spaces
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call", ["list_organizations", "list_spaces", "get_space"])
def test_a_refused_scheme_is_told_apart_from_a_wrong_token(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch, call: str
) -> None:
    sim.spaces_need_jwt = True
    use(monkeypatch, sim)
    args = (DEMO_SPACE_TOKEN,) if call == "get_space" else ()
    with UnpodHook() as hook, pytest.raises(UnpodAuthSchemeError) as info:
        getattr(hook, call)(*args)
    message = str(info.value)
    assert "refuses the Token scheme" in message and "JWT or Bearer" in message
    assert info.value.auth_scheme == "Token" and info.value.challenge == "JWT"
    with UnpodHook() as hook:  # the same token works on runs and tasks
        assert hook.list_space_runs(DEMO_SPACE_TOKEN)
    for scheme in ("JWT", "Bearer"):
        use(monkeypatch, sim, auth_scheme=scheme)
        with UnpodHook() as hook:
            assert getattr(hook, call)(*args)


def test_a_wrong_token_is_still_a_plain_auth_error(
    sim: UnpodSimulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim.spaces_need_jwt = True
    use(monkeypatch, sim, token="0" * 40)
    with (
        UnpodHook(retry_limit=1) as hook,
        pytest.raises(UnpodAuthError, match="rejected the credentials") as info,
    ):
        hook.list_space_runs(DEMO_SPACE_TOKEN)
    assert not isinstance(info.value, UnpodAuthSchemeError)


@pytest.mark.parametrize(
    ("token", "scheme", "ok", "says"),
    [
        (None, "Token", False, ["works on runs and tasks", "refuses the Token scheme", "JWT or Bearer"]),
        (None, "JWT", True, [f"Connected to org '{SIM_ORG_HANDLE}'"]),
        ("0" * 40, "Token", False, ["rejected the credentials"]),
    ],
    ids=["token-scheme-refused", "jwt", "wrong-token"],
)
def test_the_test_button_says_which_it_is(
    sim: UnpodSimulator,
    monkeypatch: pytest.MonkeyPatch,
    token: str | None,
    scheme: str,
    ok: bool,
    says: list[str],
) -> None:
    sim.spaces_need_jwt = True
    use(monkeypatch, sim, token=token, auth_scheme=scheme)
    result, message = UnpodHook().test_connection()
    assert result is ok and all(text in message for text in says), message
    if token is not None:
        assert "works on runs" not in message


# --------------------------------------------------------------------------------------------
# The status vocabulary of the real server's executor
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "status", ["pending", "scheduled", "queued", "hold", "in_progress", "processing", "running"]
)
def test_every_status_the_server_sets_while_a_run_goes_on_means_waiting(status: str) -> None:
    check = check_run(
        {"run_id": "R1", "status": status},
        run_id="R1",
        space_token=DEMO_SPACE_TOKEN,
        success_states=protocol.DEFAULT_SUCCESS_STATES,
        failed_states=protocol.DEFAULT_FAILED_STATES,
        grace_over=True,
    )
    assert check.outcome == "waiting" and not check.unknown
    assert status in protocol.RUN_STATUS_MEANINGS


def test_a_sensor_waits_through_the_executors_statuses_without_calling_them_unknown(
    sim: UnpodSimulator,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    clock_moves_per_look: Any,
) -> None:
    from fakes import FakeTI

    timeline = [("scheduled", 0), ("processing", 1), ("in_progress", 2), ("hold", 3), ("completed", 4)]
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=2, timeline=timeline)
    clock_moves_per_look(sim, 1.0)
    sensor = RunCompletedSensor(
        task_id="wait",
        space_token=DEMO_SPACE_TOKEN,
        run_id=run_id,
        poke_interval=0.01,
        timeout=60,
        mode="poke",
    )
    with caplog.at_level(logging.INFO):
        run = sensor.execute({"ti": FakeTI()})  # type: ignore[arg-type]
    out, err = capfd.readouterr()
    assert run["status"] == "completed"
    assert "does not know" not in caplog.text + out + err


def test_the_simulators_runs_go_through_in_progress_not_running(sim: UnpodSimulator) -> None:
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1)
    seen = set()
    for _ in range(8):
        seen.add(sim.run_status(run_id))
        sim.advance(1)
    assert {"pending", "in_progress", "completed"} <= seen and "running" not in seen


# --------------------------------------------------------------------------------------------
# The create path that works is remembered; 400 field errors are named
# --------------------------------------------------------------------------------------------


def posts(sim: UnpodSimulator) -> list[tuple[str, int]]:
    return [(r["path"][len(PREFIX) :], r["status"]) for r in sim.requests if r["method"] == "POST"]


def test_the_create_path_that_worked_is_remembered(sim: UnpodSimulator) -> None:
    docs_path, server_path = (p[len(PREFIX) :] for p in protocol.create_run_paths(DEMO_SPACE_TOKEN))
    with UnpodHook() as hook:
        for _ in range(3):
            hook.create_run(
                DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="Follow up", documents=CONTACTS
            )
    assert posts(sim) == [(docs_path, 404), (server_path, 200), (server_path, 200), (server_path, 200)]
    assert sim.create_count == 3


def test_a_400_with_field_errors_names_them(sim: UnpodSimulator) -> None:
    errors = {"detail": "Scheduled time must be in the future."}  # the real server's shape
    body = {
        "status_code": 400,
        "message": "Task Creation Failed",
        "data": {"errors": errors},
        "errors": errors,
    }
    sim.inject("http", path="/tasks/", method="POST", status=400, body=body)
    with UnpodHook() as hook, pytest.raises(UnpodBadRequestError) as info:
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="Follow up", documents=CONTACTS)
    assert "Task Creation Failed (detail: Scheduled time must be in the future.)" in str(info.value)
    assert info.value.errors == errors
    assert sim.create_count == 0


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"documents": []}, "No tasks provided and filters missing in data"),
        (
            {"schedule": {"type": "custom", "calling_date": "2020-01-01", "calling_time": "10:00"}},
            "in the future",
        ),
    ],
)
def test_the_simulator_refuses_what_the_server_refuses_with_400(
    sim: UnpodSimulator, change: dict[str, Any], says: str
) -> None:
    body = {"pilot": DEMO_AGENT_HANDLE, "context": "Follow up", "documents": CONTACTS, **change}
    answer = requests.post(
        sim.base_url + protocol.create_run_paths(DEMO_SPACE_TOKEN)[1],
        json=body,
        headers={"Authorization": f"Token {sim.token}", "Org-Handle": SIM_ORG_HANDLE},
        timeout=10,
    )
    assert answer.status_code == 400
    assert answer.json()["message"] == "Task Creation Failed" and says in answer.json()["errors"]["detail"]
    assert sim.create_count == 0


def test_a_numeric_document_id_is_sent_as_the_string_the_server_wants(sim: UnpodSimulator) -> None:
    """The server stores it as the task's ref_id, a string: 7 would be a 422 there."""
    documents = [{"name": "Numeric", "contact_number": "+15550000600", "document_id": 7}]
    with UnpodHook() as hook:
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="Follow up", documents=documents)
    (sent,) = [r for r in sim.requests if r["method"] == "POST" and r["status"] == 200]
    assert sent["body"]["documents"][0]["document_id"] == "7"


def test_a_422_names_what_the_server_refused(sim: UnpodSimulator) -> None:
    detail = [
        {
            "type": "string_type",
            "loc": ["body", "tasks", 0, "ref_id"],
            "msg": "Input should be a valid string",
        }
    ]
    body = {"message": "Task Creation Failed", "errors": {"detail": detail}}
    sim.inject("http", path="/tasks/", method="POST", status=422, body=body)
    with UnpodHook() as hook, pytest.raises(UnpodBadRequestError, match="HTTP 422") as info:
        hook.create_run(DEMO_SPACE_TOKEN, pilot=DEMO_AGENT_HANDLE, context="Follow up", documents=CONTACTS)
    assert "Input should be a valid string" in str(info.value) and info.value.errors == {"detail": detail}


def test_the_simulator_answers_page_zero_like_the_server(sim: UnpodSimulator) -> None:
    answer = requests.get(
        sim.base_url + protocol.space_tasks_path(DEMO_SPACE_TOKEN),
        params={"page": 0, "page_size": 10},
        headers={"Authorization": f"Token {sim.token}", "Org-Handle": SIM_ORG_HANDLE},
        timeout=10,
    )
    assert answer.status_code == 206
    assert answer.json()["message"] == "Tasks Fetch Failed"
    assert answer.json()["errors"] == {"detail": "skip must be >= 0"}
