"""Tests of the local Unpod simulator, over real HTTP (``requests`` and ``httpx``).

What a client actually observes is checked: status codes, bodies, headers, and the exceptions the
two HTTP libraries raise for the injected faults (cut bodies, dropped connections, slow answers).
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from unpod_provider import protocol
from unpod_provider.testing import (
    DEMO_AGENT_HANDLE,
    DEMO_SPACE_RUNS,
    DEMO_SPACE_TASKS,
    DEMO_SPACE_TOKEN,
    FAULT_KINDS,
    SIM_ORG_HANDLE,
    SIM_OTHER_ORG_HANDLE,
    SIM_TOKEN,
    SimulatorClient,
    SimulatorControlError,
    UnpodSimulator,
)

SAMPLES = Path("/work/shared/samples")
TASK_ID_RE = re.compile(r"^T[0-9a-f]{32}$")
RUN_ID_RE = re.compile(r"^R[0-9a-f]{32}$")
SPACE_TOKEN_RE = re.compile(r"^[A-Z0-9]{24}$")
INVALID_SPACE = {"status_code": 206, "message": "Invalid Space Token", "data": {}}
INVALID_TOKEN = {"message": "Invalid token.", "status_code": 401}
MISSING_ORG = {
    "status_code": 400,
    "message": "Organization handle is required in Org-Handle header",
    "data": {},
}


def sample(name: str) -> Any:
    """A contract sample when the shared folder is there, else None (tests then use literals)."""
    path = SAMPLES / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


class Api:
    """URLs and headers for one simulator."""

    def __init__(self, sim: UnpodSimulator, scheme: str = "Token") -> None:
        self.sim = sim
        self.headers = {
            "Authorization": f"{scheme} {SIM_TOKEN}",
            "Org-Handle": SIM_ORG_HANDLE,
            "Accept": "application/json",
        }

    def url(self, path: str) -> str:
        return self.sim.base_url + path

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", self.headers)
        kwargs.setdefault("timeout", 10)
        return requests.get(self.url(path), headers=headers, allow_redirects=False, **kwargs)

    def post(self, path: str, body: Any, **kwargs: Any) -> requests.Response:
        headers = kwargs.pop("headers", self.headers)
        kwargs.setdefault("timeout", 10)
        return requests.post(self.url(path), json=body, headers=headers, allow_redirects=False, **kwargs)


@pytest.fixture
def sim(unpod_simulator_shared: UnpodSimulator) -> UnpodSimulator:
    """The session simulator, reset to its seeded state (fixture from the pytest plugin)."""
    return unpod_simulator_shared


@pytest.fixture
def api(sim: UnpodSimulator) -> Api:
    return Api(sim)


def demo_tasks_path() -> str:
    return protocol.space_tasks_path(DEMO_SPACE_TOKEN)


def demo_runs_path() -> str:
    return protocol.space_runs_path(DEMO_SPACE_TOKEN)


def documents(n: int) -> list[dict[str, Any]]:
    return [
        {"name": f"Contact {i}", "contact_number": f"+91990011{i:04d}", "document_id": f"doc-{i}"}
        for i in range(n)
    ]


# ============================================================================================
# Endpoints, envelopes, error bodies
# ============================================================================================


def test_organizations_envelope(api: Api) -> None:
    response = api.get(protocol.organizations_path())
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["count", "status_code", "message", "data"]
    assert body["count"] == 2 and body["status_code"] == 200
    assert {org["domain_handle"] for org in body["data"]} == {SIM_ORG_HANDLE, SIM_OTHER_ORG_HANDLE}
    assert set(body["data"][0]) == {"name", "token", "domain", "domain_handle", "is_private_domain", "role"}


def test_spaces_list_per_org(api: Api) -> None:
    body = api.get(protocol.spaces_path()).json()
    assert body["status_code"] == 200 and body["message"] == "Spaces fetched successfully"
    tokens = [space["token"] for space in body["data"]]
    assert body["count"] == len(tokens) == 4
    assert DEMO_SPACE_TOKEN in tokens
    assert all(SPACE_TOKEN_RE.match(token) for token in tokens)
    shape = sample("spaces_list.json")
    expected_keys = set(shape["data"][0]) if shape else set(body["data"][0])
    assert all(set(space) == expected_keys for space in body["data"])
    assert all(space["organization"]["domain_handle"] == SIM_ORG_HANDLE for space in body["data"])

    other = api.get(
        protocol.spaces_path(), headers={**api.headers, "Org-Handle": SIM_OTHER_ORG_HANDLE}
    ).json()
    assert other["count"] == 1 and other["data"][0]["organization"]["domain_handle"] == SIM_OTHER_ORG_HANDLE

    unknown = api.get(protocol.spaces_path(), headers={**api.headers, "Org-Handle": "nope"})
    assert unknown.status_code == 404


@pytest.mark.parametrize("path", [protocol.spaces_path(), protocol.space_path(DEMO_SPACE_TOKEN)])
def test_missing_org_handle_is_400(api: Api, path: str) -> None:
    headers = {k: v for k, v in api.headers.items() if k != "Org-Handle"}
    response = api.get(path, headers=headers)
    assert response.status_code == 400
    assert response.json() == (sample("error_400_missing_org.json") or MISSING_ORG)


def test_org_handle_not_needed_on_runs_and_tasks(api: Api) -> None:
    headers = {k: v for k, v in api.headers.items() if k != "Org-Handle"}
    assert api.get(demo_runs_path(), headers=headers).status_code == 200
    assert api.get(demo_tasks_path(), headers=headers).status_code == 200


def test_get_space_detail_and_404(api: Api) -> None:
    body = api.get(protocol.space_path(DEMO_SPACE_TOKEN)).json()
    assert body["status_code"] == 200 and "count" not in body
    data = body["data"]
    assert data["token"] == DEMO_SPACE_TOKEN
    assert DEMO_AGENT_HANDLE in [agent["handle"] for agent in data["agents"]]
    assert set(data["agents"][0]) == {"name", "handle", "type"}
    assert protocol.parse_timestamp(data["created"]) and protocol.parse_timestamp(data["modified"])

    missing = api.get(protocol.space_path("NOSUCHSPACE0000000000000"))
    assert missing.status_code == 404
    assert missing.json() == (sample("error_404_space.json") or {"message": "Space not found"})

    globex = api.sim.space_tokens(SIM_OTHER_ORG_HANDLE)[0]
    assert api.get(protocol.space_path(globex)).status_code == 404  # another org's space


@pytest.mark.parametrize(
    "path",
    [
        protocol.space_tasks_path("NOSUCHSPACE0000000000000"),
        protocol.space_runs_path("NOSUCHSPACE0000000000000"),
        protocol.run_tasks_path("NOSUCHSPACE0000000000000", "R" + "0" * 32),
    ],
)
def test_unknown_space_is_206(api: Api, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 206
    assert response.json() == (sample("error_206_invalid_space.json") or INVALID_SPACE)


def test_unknown_run_is_empty_200(api: Api) -> None:
    body = api.get(protocol.run_tasks_path(DEMO_SPACE_TOKEN, "R" + "0" * 32)).json()
    assert body == {"count": 0, "status_code": 200, "message": "Tasks Fetched Successfully", "data": []}


@pytest.mark.parametrize("authorization", [None, "Token wrong", f"Basic {SIM_TOKEN}", SIM_TOKEN, "Token"])
def test_bad_or_missing_token_is_401(api: Api, authorization: str | None) -> None:
    headers = {k: v for k, v in api.headers.items() if k != "Authorization"}
    if authorization is not None:
        headers["Authorization"] = authorization
    for path in (protocol.organizations_path(), demo_runs_path(), protocol.space_path(DEMO_SPACE_TOKEN)):
        response = api.get(path, headers=headers)
        assert response.status_code == 401
        assert response.json() == (sample("error_401_invalid_token.json") or INVALID_TOKEN)


@pytest.mark.parametrize("scheme", ["Token", "Bearer", "JWT", "token"])
def test_auth_schemes(sim: UnpodSimulator, scheme: str) -> None:
    assert Api(sim, scheme).get(demo_runs_path()).status_code == 200


def test_slashless_paths_redirect_301(api: Api) -> None:
    response = api.get(demo_tasks_path().rstrip("/"), params={"page": 2, "page_size": 5})
    assert response.status_code == 301
    assert response.headers["location"] == demo_tasks_path() + "?page=2&page_size=5"
    post = api.post(protocol.create_run_paths(DEMO_SPACE_TOKEN)[0].rstrip("/"), {})
    assert post.status_code == 301
    assert api.sim.create_count == 0
    followed = requests.get(
        api.url(protocol.organizations_path().rstrip("/")), headers=api.headers, timeout=5
    )
    assert followed.status_code == 200 and followed.json()["count"] == 2


def test_unknown_path_is_html_404(api: Api) -> None:
    response = api.get(protocol.API_PREFIX + "nothing/here/")
    assert response.status_code == 404 and "text/html" in response.headers["content-type"]


# ============================================================================================
# Pagination
# ============================================================================================


def test_pagination_defaults_and_past_the_end(api: Api) -> None:
    first = api.get(demo_tasks_path()).json()
    assert first["count"] == DEMO_SPACE_TASKS and len(first["data"]) == protocol.SERVER_DEFAULT_PAGE_SIZE
    pages = [api.get(demo_tasks_path(), params={"page": p, "page_size": 50}).json() for p in (1, 2, 3, 4)]
    assert [len(p["data"]) for p in pages] == [50, 50, 40, 0]
    assert all(p["count"] == DEMO_SPACE_TASKS and p["status_code"] == 200 for p in pages)
    ids = [task["task_id"] for p in pages for task in p["data"]]
    assert len(ids) == len(set(ids)) == DEMO_SPACE_TASKS
    assert ids == [task["task_id"] for task in api.sim.space_tasks(DEMO_SPACE_TOKEN)]
    assert first["data"] == pages[0]["data"]

    created = [t["created"] for p in pages for t in p["data"]]
    assert created == sorted(created, reverse=True)  # newest first (same format: text order = time order)

    everything = api.get(demo_tasks_path(), params={"page_size": 0}).json()
    assert len(everything["data"]) == DEMO_SPACE_TASKS

    for bad in ({"page": "x", "page_size": "y"}, {"page": "1.5", "page_size": ""}):
        body = api.get(demo_tasks_path(), params=bad).json()
        assert body["data"] == first["data"]

    runs = api.get(demo_runs_path(), params={"page": 1, "page_size": 10}).json()
    assert runs["count"] == DEMO_SPACE_RUNS and len(runs["data"]) == 10
    assert api.get(demo_runs_path(), params={"page": 9, "page_size": 10}).json()["data"] == []


def test_runs_list_shape(api: Api) -> None:
    body = api.get(demo_runs_path()).json()
    assert body["message"] == "Runs Fetched Successfully"
    shape = sample("runs_list.json")
    keys = set(shape["data"][0]) if shape else set(body["data"][0])
    statuses = set()
    for run in body["data"]:
        assert set(run) == keys
        assert RUN_ID_RE.match(run["run_id"])
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", run["created"])
        statuses.add(run["status"])
    assert statuses == set(protocol.RUN_STATUSES_TERMINAL)
    created = [run["created"] for run in body["data"]]
    assert created == sorted(created, reverse=True)


def test_page_size_cap(api: Api) -> None:
    api.sim.page_size_cap = 100
    body = api.get(demo_tasks_path(), params={"page_size": 500}).json()
    assert len(body["data"]) == 100 and body["count"] == DEMO_SPACE_TASKS
    second = api.get(demo_tasks_path(), params={"page": 2, "page_size": 500}).json()
    assert len(second["data"]) == 40
    assert len(api.get(demo_tasks_path(), params={"page_size": 0}).json()["data"]) == 100


def test_not_found_past_end(api: Api) -> None:
    api.sim.not_found_past_end = True
    assert api.get(demo_tasks_path(), params={"page": 3, "page_size": 50}).status_code == 200
    past = api.get(demo_tasks_path(), params={"page": 4, "page_size": 50})
    assert past.status_code == 404
    empty = api.sim.add_space(0, name="nothing here")
    assert api.get(protocol.space_tasks_path(empty), params={"page": 1}).json()["data"] == []


def test_summary_status_filter(api: Api) -> None:
    body = api.get(demo_tasks_path(), params={"status": "Call Back", "page_size": 0}).json()
    assert body["count"] == len(body["data"]) > 0
    assert {t["output"]["post_call_data"]["summary"]["status"] for t in body["data"]} == {"Call Back"}


# ============================================================================================
# Data: shape, realism, determinism, lazy big spaces
# ============================================================================================


def test_task_shape_and_content(sim: UnpodSimulator) -> None:
    tasks = sim.space_tasks(DEMO_SPACE_TOKEN)
    run_ids = {run["run_id"] for run in sim.space_runs(DEMO_SPACE_TOKEN)}
    shape = sample("run_tasks_completed_call.json")
    keys = set(shape["data"][0]) | {"run_mode"} if shape else None
    texts = []
    statuses = set()
    for task in tasks:
        if keys:
            assert set(task) == keys
        assert TASK_ID_RE.match(task["task_id"]) and task["run_id"] in run_ids
        assert task["user_info"]["user_token"] and task["user_info"]["location"]["country"]
        assert task["assignee"] == DEMO_AGENT_HANDLE and task["execution_type"] == "call"
        statuses.add(task["status"])
        output = task["output"]
        if task["status"] == "completed":
            assert isinstance(output["duration"], float) and isinstance(output["cost"], float)
            assert output["post_call_data"]["summary"]["status"]
            assert output["post_call_data"]["classification"]["labels"]
            texts += [turn["content"] for turn in output["transcript"]]
        elif task["status"] == "failed":
            assert list(output) == ["error"]
        else:
            assert output == {}
    assert {"completed", "failed"} <= statuses
    joined = " ".join(texts)
    assert re.search("[\u0900-\u097f]", joined)  # Hindi
    assert re.search("[\U0001f300-\U0001faff]", joined)  # emoji
    assert re.search("[éèçüöñ]", joined)  # accents


def test_unicode_is_sent_as_utf8(api: Api) -> None:
    raw = api.get(demo_tasks_path(), params={"page_size": 0}).content
    assert "नमस्ते".encode() in raw or "हाँ".encode() in raw


def test_same_seed_same_data_other_seed_other_data() -> None:
    with UnpodSimulator(seed=7) as one, UnpodSimulator(seed=7) as two, UnpodSimulator(seed=8) as three:
        assert one.space_tasks(DEMO_SPACE_TOKEN) == two.space_tasks(DEMO_SPACE_TOKEN)
        assert one.space_tokens() == two.space_tokens()
        assert one.space_tasks(DEMO_SPACE_TOKEN) != three.space_tasks(DEMO_SPACE_TOKEN)
        assert DEMO_SPACE_TOKEN in three.space_tokens()


def test_lazy_big_space_builds_only_the_page_it_serves(api: Api) -> None:
    token = api.sim.add_space(n_tasks=100_000, name="Big campaign", statuses=["completed"])
    runs = [run for run in api.sim.state.runs.values() if run.space.token == token]

    def built() -> int:
        return sum(len(run._rendered) for run in runs)

    assert runs and built() == 0  # nothing generated up front
    body = api.get(protocol.space_tasks_path(token), params={"page": 1000, "page_size": 100}).json()
    assert built() == 100  # page 1000 alone, not the 99,900 tasks before it
    assert body["count"] == 100_000 and len(body["data"]) == 100
    assert all(TASK_ID_RE.match(t["task_id"]) for t in body["data"])
    assert all(t["output"]["transcript"] and t["status"] == "completed" for t in body["data"])
    again = api.get(protocol.space_tasks_path(token), params={"page": 1000, "page_size": 100}).json()
    assert again["data"] == body["data"]  # generated from the index: stable
    assert (
        api.get(protocol.space_tasks_path(token), params={"page": 1001, "page_size": 100}).json()["data"]
        == []
    )

    head = api.get(protocol.space_tasks_path(token), params={"page_size": 3}).json()["data"]
    api.sim.append_items(token, 5)
    moved = api.get(protocol.space_tasks_path(token), params={"page_size": 8}).json()
    assert moved["count"] == 100_005
    assert [t["task_id"] for t in moved["data"][5:]] == [t["task_id"] for t in head]


def test_append_runs_and_run_tasks(sim: UnpodSimulator) -> None:
    before = sim.space_runs(DEMO_SPACE_TOKEN)
    new = sim.append_items(DEMO_SPACE_TOKEN, 2, items="runs")
    after = sim.space_runs(DEMO_SPACE_TOKEN)
    assert [run["run_id"] for run in after[:2]] == new[::-1]
    assert after[2:] == before
    run_id = before[0]["run_id"]
    count = len(sim.run_tasks(run_id))
    sim.append_run_tasks(run_id, 3)
    assert len(sim.run_tasks(run_id)) == count + 3
    with pytest.raises(ValueError, match="items must be 'tasks' or 'runs'"):
        sim.append_items(DEMO_SPACE_TOKEN, 1, items="calls")


def test_append_over_the_control_api(sim: UnpodSimulator) -> None:
    url = f"{sim.base_url}/_sim/spaces/{DEMO_SPACE_TOKEN}/append"
    before = len(sim.space_runs(DEMO_SPACE_TOKEN))
    made = requests.post(url, json={"n": 2, "items": "runs"}, timeout=5)
    assert made.status_code == 200 and len(made.json()["runs"]) == 2
    assert len(sim.space_runs(DEMO_SPACE_TOKEN)) == before + 2
    bad = requests.post(url, json={"n": 1, "items": "calls"}, timeout=5)
    assert bad.status_code == 400 and "items" in bad.json()["error"]
    assert len(sim.space_runs(DEMO_SPACE_TOKEN)) == before + 2


# ============================================================================================
# Runs that move
# ============================================================================================


def run_in_list(api: Api, space: str, run_id: str) -> dict[str, Any]:
    runs = api.get(protocol.space_runs_path(space), params={"page_size": 0}).json()["data"]
    return next(run for run in runs if run["run_id"] == run_id)


def test_run_timeline_follows_the_clock(api: Api) -> None:
    sim = api.sim
    run_id = sim.add_run(
        DEMO_SPACE_TOKEN, n_tasks=4, timeline=[("pending", 0), ("running", 2), ("completed", 6)]
    )
    assert RUN_ID_RE.match(run_id)
    tasks_path = protocol.run_tasks_path(DEMO_SPACE_TOKEN, run_id)
    assert run_in_list(api, DEMO_SPACE_TOKEN, run_id)["status"] == "pending"
    assert api.get(demo_runs_path()).json()["data"][0]["run_id"] == run_id  # newest first
    tasks = api.get(tasks_path).json()
    assert tasks["count"] == 4 and {t["status"] for t in tasks["data"]} == {"pending"}
    assert all(t["output"] == {} for t in tasks["data"])

    sim.advance(2.5)
    assert run_in_list(api, DEMO_SPACE_TOKEN, run_id)["status"] == "running"
    assert {t["status"] for t in api.get(tasks_path).json()["data"]} == {"in_progress"}

    sim.advance(4)
    run = run_in_list(api, DEMO_SPACE_TOKEN, run_id)
    assert run["status"] == "completed" and run["modified"] > run["created"]
    done = api.get(tasks_path).json()["data"]
    assert {t["status"] for t in done} == {"completed"}
    assert all(t["output"]["transcript"] for t in done)


def test_run_moved_on_demand(api: Api) -> None:
    sim = api.sim
    run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=6)
    assert sim.run_status(run_id) == "pending"
    sim.set_run_status(run_id, "failed")
    assert run_in_list(api, DEMO_SPACE_TOKEN, run_id)["status"] == "failed"
    tasks = sim.run_tasks(run_id)
    assert {t["status"] for t in tasks} == {"failed"} and all(list(t["output"]) == ["error"] for t in tasks)
    sim.advance(60)  # the dropped timeline steps never come back
    assert sim.run_status(run_id) == "failed"

    sim.set_run_status(run_id, "partially_completed")
    mix = {t["status"] for t in sim.run_tasks(run_id)}
    assert mix == {"completed", "failed"}

    sim.set_run_status(run_id, "paused")  # unknown statuses are possible (sensor tests)
    assert run_in_list(api, DEMO_SPACE_TOKEN, run_id)["status"] == "paused"
    assert {t["status"] for t in sim.run_tasks(run_id)} == {"hold"}

    other = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=2, final_status="cancelled")
    assert sim.run_status(other) == "cancelled"


def test_injectable_clock() -> None:
    now = [1_790_000_000.0]
    with UnpodSimulator(clock=lambda: now[0]) as sim:
        run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=1)
        assert sim.run_status(run_id) == "pending"
        now[0] += 3
        assert sim.run_status(run_id) == "in_progress"
        now[0] += 10
        assert sim.run_status(run_id) == "completed"
        assert sim.get_run(run_id)["created"] == "2026-09-21T14:13:20"


# ============================================================================================
# Create a run
# ============================================================================================


@pytest.mark.parametrize("which", [0, 1], ids=["docs-path", "server-path"])
def test_create_run(api: Api, which: int) -> None:
    api.sim.create_paths = "both"  # the real server has only tasks/ (see the create-path tests)
    path = protocol.create_run_paths(DEMO_SPACE_TOKEN)[which]
    body = protocol.build_create_run_body(
        pilot=DEMO_AGENT_HANDLE, context="Demo follow-up", documents=documents(3)
    )
    body["documents"][2] = {"name": "Zoë", "contact_number": "+4915100000000", "id": "crm-77"}
    response = api.post(path, body)
    assert response.status_code == 200
    payload = response.json()
    assert payload["status_code"] == 200 and payload["message"] == "Task Created Successfully"
    data = protocol.parse_create_run_data(payload["data"])
    assert RUN_ID_RE.match(data["run_id"]) and len(data["task_ids"]) == 3
    assert data["status"] == {task_id: "pending" for task_id in data["task_ids"]}
    assert api.sim.create_count == 1

    assert api.get(demo_runs_path()).json()["data"][0]["run_id"] == data["run_id"]
    tasks = api.get(protocol.run_tasks_path(DEMO_SPACE_TOKEN, data["run_id"])).json()["data"]
    assert {t["task_id"] for t in tasks} == set(data["task_ids"])
    assert {t["ref_id"] for t in tasks} == {"doc-0", "doc-1", "crm-77"}
    assert {t["assignee"] for t in tasks} == {DEMO_AGENT_HANDLE}
    assert all(t["task"]["objective"] == "Demo follow-up" for t in tasks)
    logged = [r for r in api.sim.requests if r["method"] == "POST"]
    assert logged[-1]["body"]["pilot"] == DEMO_AGENT_HANDLE


def test_create_run_validation_206(api: Api) -> None:
    path = protocol.create_run_paths(DEMO_SPACE_TOKEN)[1]
    missing_context = api.post(path, {"pilot": DEMO_AGENT_HANDLE, "documents": documents(1)})
    assert missing_context.status_code == 206
    assert missing_context.json() == (
        sample("error_206_validation.json")
        or {
            "status_code": 206,
            "message": "There is some Validation error",
            "data": {"errors": {"context": ["This field is required."]}},
            "errors": {"context": ["This field is required."]},
        }
    )
    blank = api.post(path, {"pilot": "", "context": "x", "documents": documents(1)}).json()
    assert blank["errors"] == {"pilot": ["This field may not be blank."]}
    empty_docs = api.post(path, {"pilot": DEMO_AGENT_HANDLE, "context": "x", "documents": []})
    assert empty_docs.status_code == 400 and empty_docs.json()["message"] == "Task Creation Failed"
    bad_doc = api.post(path, {"pilot": DEMO_AGENT_HANDLE, "context": "x", "documents": [{"name": "x"}]})
    assert bad_doc.status_code == 206 and "documents" in bad_doc.json()["errors"]
    past = {"type": "custom", "calling_date": "2001-01-01", "calling_time": "10:00"}
    bad_schedule = api.post(
        path, {"pilot": DEMO_AGENT_HANDLE, "context": "x", "documents": documents(1), "schedule": past}
    )
    assert bad_schedule.status_code == 400  # as the real server: "Scheduled time must be in the future."
    assert "in the future" in bad_schedule.json()["errors"]["detail"]
    unknown_pilot = api.post(path, {"pilot": "nobody", "context": "x", "documents": documents(1)})
    assert unknown_pilot.status_code == 206 and unknown_pilot.json()["status_code"] == 206
    assert "pilot" in unknown_pilot.json()["errors"]
    unknown_space = api.post(
        protocol.create_run_paths("NOSUCHSPACE0000000000000")[1],
        {"pilot": DEMO_AGENT_HANDLE, "context": "x", "documents": documents(1)},
    )
    assert unknown_space.status_code == 206 and unknown_space.json() == INVALID_SPACE
    not_json = requests.post(api.url(path), data=b"{nope", headers=api.headers, timeout=5)
    assert not_json.status_code == 400
    unauthorized = api.post(path, {}, headers={"Org-Handle": SIM_ORG_HANDLE})
    assert unauthorized.status_code == 401
    assert api.sim.create_count == 0


def test_create_run_scheduled_and_path_modes(api: Api) -> None:
    sim = api.sim
    docs_path, server_path = protocol.create_run_paths(DEMO_SPACE_TOKEN)
    body: dict[str, Any] = {"pilot": DEMO_AGENT_HANDLE, "context": "later", "documents": documents(1)}
    future = time.gmtime(sim.now() + 3 * 86400)
    body["schedule"] = {
        "type": "custom",
        "calling_date": time.strftime("%Y-%m-%d", future),
        "calling_time": time.strftime("%H:%M", future),
    }
    run_id = api.post(server_path, body).json()["data"]["run_id"]
    assert sim.run_status(run_id) == "scheduled"

    sim.create_paths = "server"
    assert api.post(docs_path, body).status_code == 404
    sim.create_paths = "docs"
    assert api.post(server_path, body).status_code == 405
    assert api.post(docs_path, body).status_code == 200

    sim.create_paths = "both"
    sim.docs_mode = True
    docs_answer = api.post(docs_path, {**body, "schedule": None}).json()["data"]
    assert docs_answer["status"] == "pending"
    assert len(api.get(demo_tasks_path()).json()["data"]) == 20
    space = api.get(protocol.space_path(DEMO_SPACE_TOKEN)).json()["data"]
    assert space["agent_handle"] == DEMO_AGENT_HANDLE and {"id", "created_at"} <= set(space)
    assert sim.create_count == 3


# ============================================================================================
# Faults: what a client observes
# ============================================================================================


def test_fault_validation(sim: UnpodSimulator) -> None:
    assert {"latency", "drop_connection", "truncated_json", "rate_limit", "append"} <= set(FAULT_KINDS)
    with pytest.raises(ValueError, match="unknown fault kind"):
        sim.inject("explode")
    with pytest.raises(ValueError, match="no parameter"):
        sim.inject("latency", seconds=1, colour="red")
    with pytest.raises(ValueError, match="needs seconds"):
        sim.inject("slow")
    with pytest.raises(ValueError):
        sim.inject("server_error", status=418)
    with pytest.raises(ValueError):
        sim.inject("empty_body", times=0)


def test_latency_fault_and_global_latency(api: Api) -> None:
    api.sim.inject("latency", path="/runs/", seconds=0.3)
    started = time.perf_counter()
    assert api.get(demo_runs_path()).status_code == 200
    assert time.perf_counter() - started >= 0.3
    assert api.sim.faults == []  # consumed: the next request is served without delay
    api.get(demo_runs_path())
    assert [r["faults"] for r in api.sim.requests[-2:]] == [["latency"], []]

    api.sim.latency = 0.2
    started = time.perf_counter()
    api.get(protocol.organizations_path())
    assert time.perf_counter() - started >= 0.2


def test_rate_limit_with_and_without_retry_after(api: Api) -> None:
    sim = api.sim
    sim.inject("rate_limit", retry_after=7)
    response = api.get(demo_runs_path())
    assert response.status_code == 429 and response.headers["retry-after"] == "7"
    assert protocol.parse_retry_after(response.headers["retry-after"]) == 7

    sim.inject("rate_limit", retry_after_date=30, body="html")
    response = api.get(demo_runs_path())
    when = email.utils.parsedate_to_datetime(response.headers["retry-after"])
    assert when.tzinfo is not None
    assert 20 <= (protocol.parse_retry_after(response.headers["retry-after"]) or 0) <= 31
    assert "text/html" in response.headers["content-type"]

    sim.inject("rate_limit", body="empty")
    response = api.get(demo_runs_path())
    assert response.status_code == 429 and "retry-after" not in response.headers and response.content == b""
    assert api.get(demo_runs_path()).status_code == 200


@pytest.mark.parametrize(
    ("status", "body", "marker"),
    [
        (500, "html", b"Server Error (500)"),
        (502, "html", b"nginx"),
        (503, "json", b'"status_code":503'),
        (504, "empty", b""),
    ],
)
def test_server_errors(api: Api, status: int, body: str, marker: bytes) -> None:
    api.sim.inject("server_error", path="/tasks/", status=status, body=body)
    response = api.get(demo_tasks_path())
    assert response.status_code == status
    assert marker in response.content
    if body == "json":
        assert response.json()["status_code"] == status
    if body == "empty":
        assert response.content == b""
    with httpx.Client() as client:
        api.sim.inject("server_error", path="/tasks/", status=status, body=body)
        assert client.get(api.url(demo_tasks_path()), headers=api.headers).status_code == status


def test_empty_body(api: Api) -> None:
    api.sim.inject("empty_body", path="/runs/")
    response = api.get(demo_runs_path())
    assert response.status_code == 200 and response.content == b""
    with pytest.raises(ValueError):
        response.json()
    with pytest.raises(Exception, match="empty response body"):
        protocol.parse_response(response.status_code, response.content, response.headers)


def test_truncated_json(api: Api) -> None:
    full = api.get(demo_runs_path()).content
    api.sim.inject("truncated_json", path="/runs/", fraction=0.5)
    response = api.get(demo_runs_path())
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content) == len(full) // 2
    assert full.startswith(response.content)
    with pytest.raises(ValueError):
        json.loads(response.content)
    api.sim.inject("truncated_json", path="/runs/", bytes=10)
    with httpx.Client() as client:
        cut = client.get(api.url(demo_runs_path()), headers=api.headers)
    assert cut.status_code == 200 and cut.content == full[:10]


def test_drop_connection_mid_body(api: Api) -> None:
    api.sim.inject("drop_connection", path="/tasks/", times=3)
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        api.get(demo_tasks_path())
    with requests.Session() as session, pytest.raises(requests.exceptions.ChunkedEncodingError):
        session.get(api.url(demo_tasks_path()), headers=api.headers, timeout=5)
    with httpx.Client() as client, pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.get(api.url(demo_tasks_path()), headers=api.headers)
    assert api.get(demo_tasks_path()).status_code == 200
    logged = [r for r in api.sim.requests if "drop_connection" in r["faults"]]
    assert len(logged) == 3 and {r["status"] for r in logged} == {200}


async def test_drop_connection_async_httpx(api: Api) -> None:
    api.sim.inject("drop_connection", path="/runs/", bytes=0)
    async with httpx.AsyncClient() as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            await client.get(api.url(demo_runs_path()), headers=api.headers)
        assert (await client.get(api.url(demo_runs_path()), headers=api.headers)).status_code == 200


def test_disconnect_before_response(api: Api) -> None:
    api.sim.inject("disconnect", method="POST", times=2)
    body = {"pilot": DEMO_AGENT_HANDLE, "context": "x", "documents": documents(1)}
    path = protocol.create_run_paths(DEMO_SPACE_TOKEN)[1]
    with pytest.raises(requests.exceptions.ConnectionError):
        api.post(path, body)
    with httpx.Client() as client, pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
        client.post(api.url(path), json=body, headers=api.headers)
    assert api.sim.create_count == 2  # the requests reached the server; only the answers were lost


@pytest.mark.parametrize("stage", ["headers", "body"])
def test_slow_response_triggers_read_timeouts(api: Api, stage: str) -> None:
    api.sim.inject("slow", path="/runs/", seconds=1.0, stage=stage, times=2)
    with pytest.raises((requests.exceptions.ReadTimeout, requests.exceptions.ConnectionError)):
        requests.get(api.url(demo_runs_path()), headers=api.headers, timeout=(2, 0.3))
    with pytest.raises(httpx.ReadTimeout):
        httpx.get(api.url(demo_runs_path()), headers=api.headers, timeout=httpx.Timeout(2, read=0.3))
    assert api.get(demo_runs_path()).status_code == 200


def test_slow_response_within_timeout_completes(api: Api) -> None:
    api.sim.inject("slow", path="/runs/", seconds=0.2, stage="body")
    response = api.get(demo_runs_path())
    assert response.status_code == 200 and response.json()["count"] == DEMO_SPACE_RUNS


def test_trickle_sends_the_whole_answer_slowly_within_each_read_timeout(api: Api) -> None:
    full = api.get(demo_runs_path()).content
    api.sim.inject("trickle", path="/runs/", interval=0.05, chunk_bytes=len(full) // 4 + 1)
    started = time.perf_counter()
    response = requests.get(api.url(demo_runs_path()), headers=api.headers, timeout=(2, 0.5))
    assert response.content == full  # every gap (0.05 s) is within the 0.5 s read timeout
    assert time.perf_counter() - started >= 3 * 0.05  # four chunks, three gaps
    with pytest.raises(ValueError, match="chunk_bytes"):
        api.sim.inject("trickle", interval=0.1, chunk_bytes=0)
    with pytest.raises(ValueError, match="needs interval"):
        api.sim.inject("trickle")


def test_trickle_stops_when_the_client_hangs_up(api: Api) -> None:
    api.sim.inject("trickle", path="/runs/", interval=0.2, chunk_bytes=16)
    with requests.get(
        api.url(demo_runs_path()), headers=api.headers, timeout=(2, 1), stream=True
    ) as response:
        assert len(next(response.iter_content(16))) == 16
    full_body_seconds = len(api.get(demo_runs_path()).content) / 16 * 0.2
    assert full_body_seconds > 30

    def trickled() -> dict[str, Any]:
        (logged,) = [r for r in api.sim.requests if "trickle" in r["faults"]]
        return logged

    deadline = time.monotonic() + 15
    while trickled()["duration"] is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the simulator notices the closed connection at its next gap
    # Done long before the whole body could have been sent.
    duration = trickled()["duration"]
    assert duration is not None and duration < full_body_seconds / 2


def test_business_error_and_generic_http(api: Api) -> None:
    sim = api.sim
    sim.inject("business_error", path="/runs/", message="Runs Fetch Failed", errors="upstream error text")
    response = api.get(demo_runs_path())
    assert response.status_code == 206
    assert response.json() == (
        sample("error_206_fetch_failed.json")
        or {
            "status_code": 206,
            "message": "Runs Fetch Failed",
            "data": {"errors": "upstream error text"},
            "errors": "upstream error text",
        }
    )
    sim.inject("business_error", path="/tasks/")
    assert api.get(demo_tasks_path()).json() == INVALID_SPACE
    sim.inject("http", status=403, body={"detail": "forbidden"}, headers={"X-Why": "test"})
    forbidden = api.get(demo_runs_path())
    assert forbidden.status_code == 403 and forbidden.json() == {"detail": "forbidden"}
    assert forbidden.headers["x-why"] == "test"
    sim.inject("http", status=302, body="", headers={"Location": "https://elsewhere.example/"})
    assert api.get(demo_runs_path()).headers["location"] == "https://elsewhere.example/"


def test_append_between_page_reads(api: Api) -> None:
    sim = api.sim
    first = api.get(demo_tasks_path(), params={"page": 1, "page_size": 50}).json()
    sim.inject("append", path="/tasks/", query={"page": "2"}, n=5)
    second = api.get(demo_tasks_path(), params={"page": 2, "page_size": 50}).json()
    assert first["count"] == DEMO_SPACE_TASKS and second["count"] == DEMO_SPACE_TASKS + 5
    overlap = {t["task_id"] for t in first["data"]} & {t["task_id"] for t in second["data"]}
    assert len(overlap) == 5  # newest-first offsets shifted by the new items

    runs_before = api.get(demo_runs_path()).json()["count"]
    sim.inject("append", path="/runs/", n=2)
    assert api.get(demo_runs_path()).json()["count"] == runs_before + 2

    run_id = sim.space_runs(DEMO_SPACE_TOKEN)[0]["run_id"]
    path = protocol.run_tasks_path(DEMO_SPACE_TOKEN, run_id)
    before = api.get(path).json()["count"]
    sim.inject("append", path=path, n=4)
    assert api.get(path).json()["count"] == before + 4


def test_fault_matching_times_skip_forever(api: Api) -> None:
    sim = api.sim
    sim.inject("server_error", path_regex=r"/runs/$", method="GET", status=503, times=2, skip=1)
    codes = [api.get(demo_runs_path()).status_code for _ in range(4)]
    assert codes == [200, 503, 503, 200]
    assert api.get(demo_tasks_path()).status_code == 200
    assert sim.faults == []

    fault = sim.inject("empty_body", path="/organizations/", times=None)
    for _ in range(3):
        assert api.get(protocol.organizations_path()).content == b""
    assert fault.hits == 3 and sim.faults[0]["remaining"] is None
    sim.clear_faults()
    assert api.get(protocol.organizations_path()).json()["count"] == 2

    sim.inject("server_error", method="POST")
    assert api.get(demo_runs_path()).status_code == 200
    assert len(sim.faults) == 1


# ============================================================================================
# Faults that rewrite list answers, echo the token, pace the head, or send huge bodies
# ============================================================================================


def raw_request(sim: UnpodSimulator, path: str, headers: dict[str, str] | None = None) -> socket.socket:
    """A connected socket that has sent ``GET path`` (HTTP/1.1, Connection: close)."""
    sock = socket.create_connection((sim.host, sim.port), timeout=10)
    lines = [f"GET {path} HTTP/1.1", f"Host: {sim.host}:{sim.port}", "Connection: close"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    return sock


def wait_until(condition: Callable[[], bool], timeout: float = 20.0) -> bool:
    """Poll ``condition`` (server-side work finishing) until true or ``timeout``; its last value."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)
    return condition()


def logged_with(sim: UnpodSimulator, kind: str) -> list[dict[str, Any]]:
    """Logged requests a fault of ``kind`` answered."""
    return [r for r in sim.requests if kind in r["faults"]]


class _Records(logging.Handler):
    """Keeps the records it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def uvicorn_errors() -> Iterator[list[logging.LogRecord]]:
    """Warnings and errors uvicorn or asyncio log during the test (the simulator's faults make none)."""
    handler = _Records()
    loggers = [logging.getLogger(name) for name in ("uvicorn", "asyncio")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        yield handler.records
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
    assert [f"{r.name}: {r.getMessage()}" for r in handler.records] == []


def test_new_fault_kinds_validation(sim: UnpodSimulator) -> None:
    new = {"short_page", "repeat_page", "drop_count", "echo_token", "header_trickle", "gzip_bomb"}
    assert new | {"big_body", "extra_headers"} <= set(FAULT_KINDS)
    bad: list[tuple[str, dict[str, Any], str]] = [
        ("short_page", {"keep": -1}, "keep"),
        ("short_page", {"fraction": 1.5}, "fraction"),
        ("repeat_page", {"page": 2}, "no parameter"),
        ("drop_count", {"by": 1, "to": 2}, "not both"),
        ("drop_count", {"to": "3"}, "to"),
        ("echo_token", {"body": "xml"}, "body"),
        ("echo_token", {"status": 204}, "status"),
        ("header_trickle", {}, "needs interval"),
        ("header_trickle", {"interval": 0.1, "chunk_bytes": 0}, "chunk_bytes"),
        ("gzip_bomb", {"inflated_bytes": -1}, "inflated_bytes"),
        ("big_body", {}, "needs bytes"),
        ("big_body", {"bytes": 10, "chunked": "yes"}, "chunked"),
        ("extra_headers", {}, "needs headers"),
        ("extra_headers", {"headers": {"Bad Name": "x"}}, "header name"),
        ("extra_headers", {"headers": {"X-Split": "a\r\nInjected: b"}}, "one-line"),
    ]
    for kind, params, match in bad:
        with pytest.raises(ValueError, match=match):
            sim.inject(kind, **params)
    assert sim.faults == []
    assert sim.inject("echo_token", body="location").params["status"] == 302  # a redirect by default
    assert sim.inject("echo_token", body="location", status=401).params["status"] == 401
    assert sim.inject("echo_token").params == {"status": 500, "body": "json"}


def test_short_page_keeps_the_count(api: Api) -> None:
    full = api.get(demo_tasks_path(), params={"page_size": 10}).json()
    api.sim.inject("short_page", path="/tasks/", keep=3)
    response = api.get(demo_tasks_path(), params={"page_size": 10})
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    body = response.json()
    assert body["count"] == full["count"] == DEMO_SPACE_TASKS
    assert body["data"] == full["data"][:3]
    assert list(body) == ["count", "status_code", "message", "data"]

    api.sim.inject("short_page", path="/runs/")  # fraction 0.5 by default
    runs = api.get(demo_runs_path(), params={"page_size": 9}).json()
    assert runs["count"] == DEMO_SPACE_RUNS and len(runs["data"]) == 4

    detail = api.get(protocol.space_path(DEMO_SPACE_TOKEN)).content
    api.sim.inject("short_page", path="/spaces/", keep=0)
    assert api.get(protocol.space_path(DEMO_SPACE_TOKEN)).content == detail  # not a list: unchanged
    missing = protocol.API_PREFIX + "nothing/here/"
    api.sim.inject("short_page", path="/nothing/", keep=0)
    html = api.get(missing)
    assert html.status_code == 404 and "text/html" in html.headers["content-type"]  # not JSON: unchanged


def test_repeat_page_serves_the_previous_page(api: Api) -> None:
    pages = [api.get(demo_tasks_path(), params={"page": p, "page_size": 10}).json() for p in (1, 2, 3)]
    api.sim.inject("repeat_page", path="/tasks/", times=3)
    again = [api.get(demo_tasks_path(), params={"page": p, "page_size": 10}).json() for p in (1, 2, 3)]
    assert again == [pages[0], pages[0], pages[1]]  # page 1 unchanged, page N is page N-1
    assert logged_with(api.sim, "repeat_page")[-1]["query"] == {"page": "3", "page_size": "10"}
    assert api.sim.faults == []
    assert api.get(demo_tasks_path(), params={"page": 2, "page_size": 10}).json() == pages[1]

    api.sim.inject("repeat_page", path="/runs/")
    runs_path = demo_runs_path() + "?page_size=4&page=2&x=%C3%A9"
    assert api.get(runs_path).json() == api.get(demo_runs_path(), params={"page_size": 4}).json()


def test_drop_count_lowers_the_count_only(api: Api) -> None:
    full = api.get(demo_tasks_path(), params={"page_size": 5}).json()

    def dropped(**params: Any) -> dict[str, Any]:
        api.sim.inject("drop_count", path="/tasks/", **params)
        response = api.get(demo_tasks_path(), params={"page_size": 5})
        assert int(response.headers["content-length"]) == len(response.content)
        body: dict[str, Any] = response.json()
        assert body["data"] == full["data"] and body["message"] == full["message"]
        return body

    assert dropped()["count"] == DEMO_SPACE_TASKS // 2
    assert dropped(by=7)["count"] == DEMO_SPACE_TASKS - 7
    assert dropped(to=3)["count"] == 3
    assert dropped(by=DEMO_SPACE_TASKS + 10)["count"] == 0  # never below 0
    api.sim.inject("drop_count", path="/spaces/", to=0)
    assert "count" not in api.get(protocol.space_path(DEMO_SPACE_TOKEN)).json()  # not a list


@pytest.mark.parametrize("body", ["json", "html", "text", "location"])
def test_echo_token_reflects_the_authorization_value(api: Api, body: str) -> None:
    authorization = api.headers["Authorization"]
    assert authorization == f"Token {SIM_TOKEN}"
    api.sim.inject("echo_token", path="/runs/", body=body)
    response = api.get(demo_runs_path())
    assert authorization in response.text
    assert int(response.headers["content-length"]) == len(response.content)
    if body == "json":
        assert response.status_code == 500 and response.headers["content-type"] == "application/json"
        assert response.json() == {
            "message": f"bad auth header: {authorization}",
            "detail": authorization,
            "status_code": 500,
            "errors": {"token": [SIM_TOKEN]},
        }
    elif body == "html":
        assert response.status_code == 500 and "text/html" in response.headers["content-type"]
        assert "<title>Internal Server Error (500)</title>" in response.text
    elif body == "text":
        assert response.status_code == 500 and "text/plain" in response.headers["content-type"]
    else:
        assert response.status_code == 302
        assert response.headers["location"] == f"https://elsewhere.example/login?auth={SIM_TOKEN}"
    assert SIM_TOKEN not in json.dumps(api.sim.requests)  # the log still never holds it


def test_echo_token_other_statuses_and_schemes(api: Api) -> None:
    bearer = Api(api.sim, "Bearer")
    api.sim.inject("echo_token", path="/runs/", body="location", status=401)
    moved = bearer.get(demo_runs_path())
    assert moved.status_code == 401 and moved.headers["location"].endswith(f"?auth={SIM_TOKEN}")
    assert f"Bearer {SIM_TOKEN}" in moved.text

    real = api.get(demo_runs_path()).json()
    api.sim.inject("echo_token", path="/runs/", status=200)
    echoed = bearer.get(demo_runs_path())
    assert echoed.status_code == 200
    assert echoed.json() == {**real, "message": f"echo: Bearer {SIM_TOKEN}"}

    api.sim.inject("echo_token", path="/nothing/", status=200)
    html = api.get(protocol.API_PREFIX + "nothing/here/")  # not JSON: sent unchanged
    assert html.status_code == 404 and SIM_TOKEN not in html.text

    api.sim.inject("echo_token", path="/runs/", status=403, body="text")
    odd = api.get(demo_runs_path(), headers={"Authorization": "sk-live-123"})
    assert odd.status_code == 403 and "bad auth header: sk-live-123" in odd.text


def test_header_trickle_sends_the_head_in_pieces(api: Api, uvicorn_errors: list[logging.LogRecord]) -> None:
    sim = api.sim
    expected = api.get(demo_runs_path(), params={"page_size": 2}).content
    sim.inject("header_trickle", path="/runs/", interval=0.005, chunk_bytes=2)
    pieces: list[bytes] = []
    with raw_request(sim, demo_runs_path() + "?page_size=2", api.headers) as sock:
        while b"\r\n\r\n" not in b"".join(pieces):
            piece = sock.recv(65536)
            assert piece, "the connection closed before the headers were complete"
            pieces.append(piece)
        while piece := sock.recv(65536):
            pieces.append(piece)  # the body, then the server closes the connection
    raw = b"".join(pieces)
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line = b"HTTP/1.1 200 OK\r\n"
    assert raw.startswith(status_line)
    reads_for_status_line = next(i for i in range(1, len(pieces) + 1) if len(b"".join(pieces[:i])) >= 17)
    assert reads_for_status_line > 1  # the status line itself arrived in pieces
    assert len(pieces) > 4
    headers = dict(line.split(": ", 1) for line in head.decode("latin-1").split("\r\n")[1:])
    assert headers["content-length"] == str(len(body)) and headers["connection"] == "close"
    assert body == expected
    assert logged_with(sim, "header_trickle")[0]["status"] == 200

    sim.inject("header_trickle", path="/runs/", interval=0.002, chunk_bytes=8)
    response = requests.get(api.url(demo_runs_path()), headers=api.headers, timeout=(5, 2))
    assert response.status_code == 200 and response.json()["count"] == DEMO_SPACE_RUNS
    sim.inject("header_trickle", path="/runs/", interval=0.002, chunk_bytes=8)
    with httpx.Client() as client:
        answered = client.get(api.url(demo_runs_path()), headers=api.headers)
    assert answered.status_code == 200 and answered.json()["count"] == DEMO_SPACE_RUNS
    assert api.get(demo_runs_path()).status_code == 200


def test_header_trickle_stops_when_the_client_hangs_up(
    api: Api, uvicorn_errors: list[logging.LogRecord]
) -> None:
    sim = api.sim
    # One byte every 0.5 s: the whole head (~130 bytes) would take over a minute.
    sim.inject("header_trickle", path="/runs/", interval=0.5, chunk_bytes=1)
    with raw_request(sim, demo_runs_path(), api.headers) as sock:
        assert sock.recv(1) == b"H"
    assert wait_until(lambda: logged_with(sim, "header_trickle")[0]["duration"] is not None)
    assert api.get(demo_runs_path()).json()["count"] == DEMO_SPACE_RUNS  # the server is healthy
    with requests.get(api.url(demo_runs_path()), headers=api.headers, timeout=5) as again:
        assert again.status_code == 200


def test_gzip_bomb_inflates_to_a_huge_envelope(api: Api) -> None:
    size = 8 << 20
    api.sim.inject("gzip_bomb", path="/tasks/", inflated_bytes=size)
    with httpx.Client() as client, client.stream("GET", api.url(demo_tasks_path()), headers=api.headers) as r:
        raw = b"".join(r.iter_raw())
        assert r.status_code == 200
        assert r.headers["content-encoding"] == "gzip" and r.headers["content-type"] == "application/json"
        assert int(r.headers["content-length"]) == len(raw)
    assert len(raw) < size // 100  # small on the wire
    inflated = zlib.decompressobj(31).decompress(raw)
    assert len(inflated) == size
    envelope = json.loads(inflated)
    assert envelope["count"] == 0 and envelope["status_code"] == 200 and envelope["data"] == []
    assert set(envelope["message"]) == {"a"}
    assert list(envelope) == ["count", "status_code", "message", "data"]

    from unpod_provider.testing import _app

    cached = _app._GZIP_BOMBS[size]
    assert _app.gzip_bomb_body(size) is cached  # built once per process

    api.sim.inject("gzip_bomb", path="/runs/", inflated_bytes=4096, status=503)
    response = api.get(demo_runs_path())  # requests inflates it transparently
    assert response.status_code == 503 and len(response.content) == 4096


def test_gzip_bomb_client_hanging_up_early(api: Api, uvicorn_errors: list[logging.LogRecord]) -> None:
    api.sim.inject("gzip_bomb", path="/tasks/", inflated_bytes=256 << 20)
    with httpx.Client() as client, client.stream("GET", api.url(demo_tasks_path()), headers=api.headers) as r:
        assert int(r.headers["content-length"]) > 3 * 64 * 1024  # several 64 KiB chunks
        first = next(r.iter_raw(1024))
    assert first.startswith(b"\x1f\x8b")  # gzip magic
    assert wait_until(lambda: logged_with(api.sim, "gzip_bomb")[0]["duration"] is not None)
    assert api.get(demo_tasks_path()).status_code == 200


@pytest.mark.parametrize("chunked", [False, True])
def test_big_body_streams_a_valid_envelope(api: Api, chunked: bool) -> None:
    size = (3 << 20) + 12345
    api.sim.inject("big_body", path="/runs/", bytes=size, chunked=chunked)
    response = api.get(demo_runs_path())
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert "content-encoding" not in response.headers
    if chunked:
        assert response.headers["transfer-encoding"] == "chunked"
        assert "content-length" not in response.headers
    else:
        assert int(response.headers["content-length"]) == size
    assert len(response.content) == size
    body = response.json()
    assert body["count"] == 0 and body["data"] == [] and set(body["message"]) == {"a"}
    api.sim.inject("big_body", path="/runs/", bytes=1)
    assert api.get(demo_runs_path()).json()["message"] == ""  # never less than an envelope


def test_big_body_client_hanging_up_early(api: Api, uvicorn_errors: list[logging.LogRecord]) -> None:
    api.sim.inject("big_body", path="/runs/", bytes=1 << 30)
    with requests.get(api.url(demo_runs_path()), headers=api.headers, stream=True, timeout=10) as response:
        assert int(response.headers["content-length"]) == 1 << 30
        assert next(response.iter_content(4096)).startswith(b'{"count":0')
    assert wait_until(lambda: logged_with(api.sim, "big_body")[0]["duration"] is not None)
    assert api.get(demo_runs_path()).status_code == 200


def test_extra_headers_and_the_logged_cookie(api: Api) -> None:
    sim = api.sim
    real = api.get(demo_runs_path()).content
    cookie = "sessionid=abc123; Path=/; HttpOnly"
    sim.inject("extra_headers", path="/runs/", headers={"Set-Cookie": cookie, "X-Extra": "1"})
    response = api.get(demo_runs_path())
    assert response.headers["set-cookie"] == cookie and response.headers["x-extra"] == "1"
    assert response.content == real and response.headers["content-type"] == "application/json"

    sim.reset_requests()
    with requests.Session() as session:
        sim.inject("extra_headers", path="/runs/", headers={"Set-Cookie": cookie})
        session.get(api.url(demo_runs_path()), headers=api.headers, timeout=5)
        session.get(api.url(demo_runs_path()), headers=api.headers, timeout=5)  # replays the cookie
    api.get(demo_runs_path(), headers={**api.headers, "Cookie": f"leak={SIM_TOKEN}"})
    cookies = [r["headers"].get("cookie") for r in sim.requests]
    assert cookies == [None, "sessionid=abc123", "leak=***"]


def test_new_faults_over_the_control_api(api: Api) -> None:
    client = SimulatorClient(api.sim.base_url)
    fault = client.inject("short_page", path="/runs/", keep=1)
    assert fault["params"] == {"keep": 1, "fraction": 0.5}
    assert len(api.get(demo_runs_path()).json()["data"]) == 1
    client.inject("extra_headers", path="/runs/", params={"headers": {"Set-Cookie": "a=b"}})
    assert api.get(demo_runs_path()).headers["set-cookie"] == "a=b"
    with pytest.raises(SimulatorControlError, match="400"):
        client.inject("big_body", bytes=-5)


# ============================================================================================
# Request log
# ============================================================================================


def test_request_log_never_holds_the_token(api: Api) -> None:
    sim = api.sim
    sim.reset_requests()
    api.get(demo_tasks_path(), params={"page": 2, "page_size": 5})
    Api(sim, "Bearer").get(demo_runs_path())
    api.get(demo_runs_path(), headers={"Authorization": f"Token {SIM_TOKEN}x", "X-Leak": SIM_TOKEN})
    api.get(demo_runs_path(), params={"token": SIM_TOKEN})
    api.post(
        protocol.create_run_paths(DEMO_SPACE_TOKEN)[1],
        {"pilot": DEMO_AGENT_HANDLE, "context": SIM_TOKEN, "documents": documents(1)},
    )
    log = sim.requests
    assert len(log) == 5
    assert SIM_TOKEN not in json.dumps(log)
    first = log[0]
    assert first["method"] == "GET" and first["path"] == demo_tasks_path()
    assert first["query"] == {"page": "2", "page_size": "5"} and first["status"] == 200
    assert first["headers"]["authorization"] == "Token ***"
    assert first["headers"]["org-handle"] == SIM_ORG_HANDLE
    assert log[1]["headers"]["authorization"] == "Bearer ***"
    assert log[2]["status"] == 401
    assert [r["status"] for r in log] == [200, 200, 401, 200, 200]
    sim.reset_requests()
    assert sim.requests == []


def test_control_requests_are_not_logged(sim: UnpodSimulator) -> None:
    client = SimulatorClient(sim.base_url)
    sim.reset_requests()
    client.state()
    assert sim.requests == []


# ============================================================================================
# Control API (out-of-process use)
# ============================================================================================


def test_control_api_over_http(api: Api) -> None:
    sim = api.sim
    client = SimulatorClient(sim.base_url)
    client.wait_ready()
    token = client.add_space(n_tasks=30, n_runs=3, name="Remote")
    assert SPACE_TOKEN_RE.match(token) and len(client.space_tasks(token)) == 30
    run_id = client.add_run(token, n_tasks=2, timeline=[("pending", 0), ("running", 1), ("completed", 2)])
    assert client.get_run(run_id)["status"] == "pending"
    client.advance(1.5)
    assert client.get_run(run_id)["status"] == "running"
    assert client.set_run_status(run_id, "failed")["status"] == "failed"
    assert run_in_list(api, token, run_id)["status"] == "failed"

    fault = client.inject("server_error", path="/runs/", status=502, times=1)
    assert fault["kind"] == "server_error" and client.faults()[0]["id"] == fault["id"]
    assert api.get(protocol.space_runs_path(token)).status_code == 502
    client.inject("latency", seconds=0.01, times=None)
    client.clear_faults()
    assert client.faults() == []

    assert client.settings(page_size_cap=10)["page_size_cap"] == 10
    assert len(api.get(protocol.space_tasks_path(token), params={"page_size": 50}).json()["data"]) == 10
    assert sim.page_size_cap == 10

    assert client.requests()[-1]["path"] == protocol.space_tasks_path(token)
    client.reset_requests()
    assert client.requests() == []

    with pytest.raises(SimulatorControlError, match="400"):
        client.inject("explode")
    with pytest.raises(SimulatorControlError, match="404"):
        client.set_run_status("R" + "f" * 32, "completed")
    with pytest.raises(SimulatorControlError, match="400"):
        client.add_space(n_tasks=-1)
    bad = requests.post(sim.base_url + "/_sim/faults", data=b"[1]", timeout=5)
    assert bad.status_code == 400

    client.reset()
    assert token not in sim.space_tokens() and sim.page_size_cap is None


# ============================================================================================
# Python API, lifecycle, plugin, connection
# ============================================================================================


def test_connection_json_is_a_valid_airflow_connection(sim: UnpodSimulator) -> None:
    conn = json.loads(sim.connection_json())
    assert conn == {
        "conn_type": "unpod",
        "host": sim.base_url,
        "password": SIM_TOKEN,
        "extra": {"org_handle": SIM_ORG_HANDLE},
    }
    assert sim.connection_env() == {"AIRFLOW_CONN_UNPOD_DEFAULT": sim.connection_json()}
    assert list(sim.connection_env("unpod_other")) == ["AIRFLOW_CONN_UNPOD_OTHER"]
    config = protocol.ClientConfig.from_connection_fields(
        conn_id="unpod_default", host=conn["host"], password=conn["password"], extra=conn["extra"]
    )
    assert config.base_url == sim.base_url
    response = requests.get(config.url(protocol.organizations_path()), headers=config.headers(), timeout=5)
    assert response.status_code == 200


def test_function_fixture_sets_the_connection(unpod_simulator: UnpodSimulator) -> None:
    assert os.environ["AIRFLOW_CONN_UNPOD_DEFAULT"] == unpod_simulator.connection_json()
    assert unpod_simulator.running


def test_context_manager_stops_on_exception() -> None:
    holder: list[UnpodSimulator] = []
    with pytest.raises(RuntimeError, match="boom"), UnpodSimulator() as sim:
        holder.append(sim)
        assert requests.get(sim.base_url + "/_sim/health", timeout=5).ok
        raise RuntimeError("boom")
    sim = holder[0]
    assert not sim.running
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(sim.base_url + "/_sim/health", timeout=2)


def test_refuses_non_loopback_host() -> None:
    with pytest.raises(ValueError, match="loopback"):
        UnpodSimulator(host="0.0.0.0")


def test_package_import_is_light() -> None:
    code = (
        "import sys, unpod_provider.testing, unpod_provider.testing.pytest_plugin;"
        "heavy = [m for m in ('fastapi', 'uvicorn', 'starlette') if m in sys.modules];"
        "sys.exit(1 if heavy else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


# ============================================================================================
# TLS
# ============================================================================================


@pytest.fixture(scope="module")
def tls_sim() -> Iterator[UnpodSimulator]:
    """A simulator serving HTTPS with its own self-signed certificate."""
    with UnpodSimulator(tls=True) as sim:
        yield sim


def test_tls_serves_https_trusted_with_its_ca_file(tls_sim: UnpodSimulator) -> None:
    sim = tls_sim
    assert sim.base_url == f"https://127.0.0.1:{sim.port}"
    assert sim.ca_file is not None and Path(sim.ca_file).read_text().startswith("-----BEGIN CERTIFICATE")
    assert oct(Path(sim.ca_file).parent.stat().st_mode & 0o777) == "0o700"
    api = Api(sim)
    response = requests.get(api.url(demo_runs_path()), headers=api.headers, verify=sim.ca_file, timeout=10)
    assert response.status_code == 200 and response.json()["count"] == DEMO_SPACE_RUNS
    with httpx.Client(verify=ssl.create_default_context(cafile=sim.ca_file)) as client:
        assert client.get(api.url(protocol.organizations_path()), headers=api.headers).json()["count"] == 2
        localhost = f"https://localhost:{sim.port}/_sim/health"
        assert client.get(localhost).json() == {"ok": True}  # DNS name in the certificate too
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(api.url(demo_runs_path()), headers=api.headers, verify=True, timeout=10)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(api.url(demo_runs_path()), headers=api.headers)
    conn = sim.connection_dict()
    assert conn["host"] == sim.base_url and conn["password"] == SIM_TOKEN
    assert json.loads(sim.connection_json())["host"].startswith("https://")
    assert SimulatorClient(sim.base_url, ca_file=sim.ca_file).state()["seed"] == 0


def test_tls_faults_over_https(tls_sim: UnpodSimulator) -> None:
    sim, api = tls_sim, Api(tls_sim)
    sim.reset()
    sim.inject("header_trickle", path="/runs/", interval=0.002, chunk_bytes=16)
    trickled = requests.get(api.url(demo_runs_path()), headers=api.headers, verify=sim.ca_file, timeout=10)
    assert trickled.status_code == 200 and trickled.json()["count"] == DEMO_SPACE_RUNS
    sim.inject("drop_connection", path="/runs/")
    with pytest.raises((requests.exceptions.ChunkedEncodingError, requests.exceptions.ConnectionError)):
        requests.get(api.url(demo_runs_path()), headers=api.headers, verify=sim.ca_file, timeout=10)
    sim.inject("short_page", path="/runs/", keep=2)
    short = requests.get(api.url(demo_runs_path()), headers=api.headers, verify=sim.ca_file, timeout=10)
    assert len(short.json()["data"]) == 2
    assert requests.get(api.url(demo_runs_path()), headers=api.headers, verify=sim.ca_file, timeout=10).ok


def test_tls_files_are_removed_at_stop_and_http_is_the_default() -> None:
    with UnpodSimulator(tls=True) as sim:
        ca_file = sim.ca_file
        assert ca_file is not None and Path(ca_file).exists()
        assert requests.get(sim.base_url + "/_sim/health", verify=ca_file, timeout=10).ok
    assert not Path(ca_file).parent.exists() and sim.ca_file is None
    with UnpodSimulator() as plain:
        assert plain.base_url.startswith("http://") and plain.ca_file is None
        assert requests.get(plain.base_url + "/_sim/health", timeout=10).ok


# ============================================================================================
# CLI
# ============================================================================================


@pytest.fixture
def cli(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "unpod_provider.testing",
            "--port",
            "0",
            "--ready-file",
            str(ready),
            "--seed",
            "3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        yield proc, ready
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_cli_starts_serves_and_stops(cli: tuple[subprocess.Popen[str], Path]) -> None:
    proc, ready = cli
    deadline = time.monotonic() + 30
    while not ready.exists():
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline, "the simulator did not write its ready file"
        time.sleep(0.05)
    port = int(ready.read_text().strip())
    base_url = f"http://127.0.0.1:{port}"
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert base_url in line
    conn = json.loads(line.split("AIRFLOW_CONN_UNPOD_DEFAULT=", 1)[1].strip().strip("'"))
    assert conn["host"] == base_url and conn["password"] == SIM_TOKEN

    response = requests.get(
        base_url + protocol.space_runs_path(DEMO_SPACE_TOKEN),
        headers={"Authorization": f"Token {SIM_TOKEN}"},
        timeout=5,
    )
    assert response.status_code == 200 and response.json()["count"] == DEMO_SPACE_RUNS
    assert SimulatorClient(base_url).state()["seed"] == 3

    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    assert not ready.exists()
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(base_url + "/_sim/health", timeout=2)


def test_cli_stops_on_sigint(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unpod_provider.testing", "--ready-file", str(ready), "--latency", "0.01"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_refuses_non_loopback_host() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "unpod_provider.testing", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2 and "loopback" in result.stderr


def test_cli_tls(tmp_path: Path) -> None:
    ready = tmp_path / "port"
    proc = subprocess.Popen(
        [sys.executable, "-m", "unpod_provider.testing", "--tls", "--ready-file", str(ready)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)
        assert ready.exists(), proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        assert proc.stdout is not None
        line = proc.stdout.readline()
        port = int(ready.read_text().strip())
        ca_file = re.search(r"\(CA file: (\S+)\)", line)
        assert f"https://127.0.0.1:{port}" in line and ca_file is not None
        assert requests.get(f"https://127.0.0.1:{port}/_sim/health", verify=ca_file[1], timeout=5).ok
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not Path(ca_file[1]).exists()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)


def test_the_simulator_takes_no_path_builder_or_validator_from_the_client() -> None:
    """It is the oracle the client is tested against: a wrong client path or rule must fail."""
    import ast

    allowed = {"is_loopback_host"}  # where the simulator may listen, not a rule of the API
    testing = Path(__file__).resolve().parent.parent / "unpod_provider" / "testing"
    for module in ("_app.py", "_state.py", "_model.py", "_faults.py", "_server.py", "__main__.py"):
        tree = ast.parse((testing / module).read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "unpod_provider.protocol":
                assert {alias.name for alias in node.names} <= allowed, (module, ast.dump(node))
            if isinstance(node, ast.ImportFrom) and node.module == "unpod_provider":
                assert "protocol" not in {alias.name for alias in node.names}, module
