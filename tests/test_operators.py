"""The list/get operators: rendering, validation, projection, redaction, JSONL output, logging.

Every operator runs over real HTTP against the simulator (``unpod_simulator_shared``: one server
per session, reset before each test) and its result is compared with the simulator's own lists.
pytest-mock is used only where a transport-level detail is checked.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from airflow.sdk import DAG, BaseOperator
from fakes import FakeTI

from unpod_provider import protocol
from unpod_provider.exceptions import UnpodBusinessError, UnpodServerError
from unpod_provider.hooks.unpod import UnpodHook
from unpod_provider.operators.unpod import (
    DEFAULT_XCOM_WARN_BYTES,
    GetSpaceOperator,
    ListRunTasksOperator,
    ListSpaceRunsOperator,
    ListSpacesOperator,
    ListSpaceTasksOperator,
    _human_bytes,
    _status_summary,
)
from unpod_provider.testing import DEMO_SPACE_TOKEN, SIM_ORG_HANDLE, UnpodSimulator

SENSITIVE = protocol.SENSITIVE_TASK_FIELDS


def context(xcoms: dict[tuple[str, str], Any] | None = None, **params: Any) -> Any:
    """A minimal task context (typed Any: it stands in for airflow.sdk.Context)."""
    return {"ti": FakeTI(xcoms), "params": params}


def redacted(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [protocol.redact(item) for item in items]


def assert_plain_json(value: Any) -> None:
    """Only dict/list/str/int/float/bool/None, and a JSON round trip gives the same value."""

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            assert all(isinstance(k, str) for k in v)
            for item in v.values():
                walk(item)
        elif isinstance(v, list):
            for item in v:
                walk(item)
        else:
            assert v is None or isinstance(v, (str, int, float, bool)), type(v)

    walk(value)
    assert json.loads(json.dumps(value)) == value


def has_path(item: dict[str, Any], dotted: str) -> bool:
    sentinel = object()
    return protocol.get_path(item, dotted, sentinel) is not sentinel


def a_run(sim: UnpodSimulator, status: str = "completed") -> str:
    """The run id of a seeded demo-space run in ``status`` with at least 2 tasks."""
    for run in sim.space_runs(DEMO_SPACE_TOKEN):
        if run["status"] == status and len(sim.run_tasks(run["run_id"])) >= 2:
            return str(run["run_id"])
    raise AssertionError(f"no seeded {status} run")


# --------------------------------------------------------------------------------------------
# Construction: no I/O, template fields, early validation
# --------------------------------------------------------------------------------------------


def test_no_io_or_connection_lookup_in_init(mocker: Any) -> None:
    get_connection = mocker.patch.object(UnpodHook, "get_connection")
    ops = [
        ListSpacesOperator(task_id="a", unpod_conn_id="does_not_exist"),
        GetSpaceOperator(task_id="b", space_token="{{ params.s }}"),
        ListSpaceTasksOperator(task_id="c", space_token="X"),
        ListSpaceRunsOperator(task_id="d", space_token="X", status="completed"),
        ListRunTasksOperator(task_id="e", space_token="X", run_id="{{ ti.xcom_pull('wait')['run_id'] }}"),
    ]
    get_connection.assert_not_called()
    assert all("hook" not in op.__dict__ for op in ops)


def test_template_fields_and_renderers() -> None:
    assert set(ListRunTasksOperator.template_fields) == {
        "space_token",
        "run_id",
        "status",
        "fields",
        "output_path",
        "unpod_conn_id",
    }
    for cls in (ListSpaceTasksOperator, ListSpaceRunsOperator):
        assert set(cls.template_fields) == {"space_token", "status", "fields", "output_path", "unpod_conn_id"}
        assert cls.template_fields_renderers == {"fields": "json", "status": "json"}
    assert set(GetSpaceOperator.template_fields) == {"space_token", "unpod_conn_id"}
    assert set(ListSpacesOperator.template_fields) == {"unpod_conn_id"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"page_size": 0}, "page_size"),
        ({"page_size": 5000}, "page_size"),
        ({"fields": ["output..duration"]}, "fields"),
        ({"fields": []}, "fields"),
        ({"status": []}, "status"),
        ({"xcom_warn_bytes": -1}, "xcom_warn_bytes"),
        ({"unpod_retry_limit": 0}, "retry_limit"),
        ({"unpod_timeout": 0}, "unpod_timeout"),
        ({"unpod_max_concurrency": 0}, "unpod_max_concurrency"),
        ({"unpod_max_concurrency": True}, "unpod_max_concurrency"),
        ({"unpod_max_concurrency": "8"}, "unpod_max_concurrency"),
    ],
)
def test_bad_static_arguments_fail_at_parse_time(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ListSpaceTasksOperator(task_id="t", space_token="X", **kwargs)


def test_hook_gets_the_operator_settings() -> None:
    op = ListSpaceRunsOperator(
        task_id="t", space_token="X", unpod_conn_id="other", unpod_retry_limit=2, unpod_retry_delay=0.5
    )
    op.unpod_timeout = 7.0
    hook = op.hook
    assert hook.unpod_conn_id == "other"
    assert hook.retry_policy.max_attempts == 2
    assert hook.retry_policy.base_delay == 0.5
    assert hook.timeout == 7.0
    assert hook.max_concurrency == 10  # the hook's default unless the operator says otherwise
    sequential = ListSpaceRunsOperator(task_id="t", space_token="X", unpod_max_concurrency=1)
    assert sequential.hook.max_concurrency == 1


# --------------------------------------------------------------------------------------------
# Rendering and validation after rendering
# --------------------------------------------------------------------------------------------


def test_identifiers_render_from_params_and_xcom_pull(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    run_id = a_run(sim)
    op = ListRunTasksOperator(
        task_id="fetch",
        space_token="{{ params.space }}",
        run_id="{{ ti.xcom_pull('wait')['run_id'] }}",
        status="{{ params.status }}",
        fields=["task_id", "{{ params.field }}"],
    )
    xcoms = {("wait", "return_value"): {"run_id": run_id}}
    ctx = context(xcoms, space=DEMO_SPACE_TOKEN, status="completed", field="status")
    op.render_template_fields(ctx)
    assert (op.space_token, op.run_id, op.status, op.fields) == (
        DEMO_SPACE_TOKEN,
        run_id,
        "completed",
        ["task_id", "status"],
    )
    result = op.execute(ctx)
    expected = [
        {"task_id": t["task_id"], "status": t["status"]}
        for t in sim.run_tasks(run_id)
        if t["status"] == "completed"
    ]
    assert result == expected
    # Nothing in the rendered fields carries the API token.
    assert all(sim.token not in json.dumps(getattr(op, f), default=str) for f in op.template_fields)


def test_run_id_from_an_xcomarg(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    run_id = a_run(sim)
    with DAG("xcomarg_render", schedule=None):
        upstream = BaseOperator(task_id="find_run")
        op = ListRunTasksOperator(
            task_id="fetch",
            space_token=DEMO_SPACE_TOKEN,
            run_id=upstream.output,  # type: ignore[arg-type]  # an XComArg, resolved when rendering
        )
    assert upstream in op.upstream_list
    ctx = context({("find_run", "return_value"): run_id})
    op.render_template_fields(ctx)
    assert op.run_id == run_id
    assert [t["task_id"] for t in op.execute(ctx)] == [t["task_id"] for t in sim.run_tasks(run_id)]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("space_token", "../spaces"),
        ("space_token", "DEMO0SPACE0TOKEN00000001/runs"),
        ("space_token", ""),
        ("run_id", "R123\r\nX-Injected: 1"),
        ("run_id", "R1 2"),
        ("run_id", "%2e%2e"),
        ("run_id", "Rü"),
    ],
)
def test_invalid_identifier_refused_before_any_request(
    unpod_simulator_shared: UnpodSimulator, field: str, value: str
) -> None:
    sim = unpod_simulator_shared
    kwargs = {"space_token": DEMO_SPACE_TOKEN, "run_id": "R0", field: "{{ params.value }}"}
    op = ListRunTasksOperator(task_id="t", **kwargs)
    ctx = context(value=value)
    op.render_template_fields(ctx)
    sim.reset_requests()
    with pytest.raises(ValueError, match=field):
        op.execute(ctx)
    assert sim.requests == []
    assert "hook" not in op.__dict__


def test_invalid_rendered_fields_and_status_refused(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    sim.reset_requests()
    for kwargs, name in (
        ({"fields": ["{{ params.bad }}"]}, "fields"),
        ({"status": "{{ params.empty }}"}, "status"),
    ):
        op = ListSpaceTasksOperator(task_id="t", space_token=DEMO_SPACE_TOKEN, **kwargs)
        ctx = context(bad="a..b", empty="")
        op.render_template_fields(ctx)
        with pytest.raises(ValueError, match=name):
            op.execute(ctx)
    assert sim.requests == []


# --------------------------------------------------------------------------------------------
# Every operator over HTTP, compared with the simulator's own data
# --------------------------------------------------------------------------------------------


def test_list_spaces(unpod_simulator_shared: UnpodSimulator, capsys: pytest.CaptureFixture[str]) -> None:
    sim = unpod_simulator_shared
    result = ListSpacesOperator(task_id="spaces").execute(context())
    assert result == sim.state.org_spaces(SIM_ORG_HANDLE)
    assert DEMO_SPACE_TOKEN in [s["token"] for s in result]
    assert_plain_json(result)
    assert f"Fetched {len(result)} spaces of org {SIM_ORG_HANDLE}" in capsys.readouterr().out


def test_get_space(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    result = GetSpaceOperator(task_id="space", space_token=DEMO_SPACE_TOKEN).execute(context())
    assert result == sim.state.space(DEMO_SPACE_TOKEN).detail()  # type: ignore[union-attr]
    assert result["agents"]
    assert_plain_json(result)


def test_get_unknown_space_is_a_typed_error(unpod_simulator_shared: UnpodSimulator) -> None:
    with pytest.raises(Exception, match="NOSUCHSPACE0000000000000") as info:
        GetSpaceOperator(task_id="space", space_token="NOSUCHSPACE0000000000000").execute(context())
    assert type(info.value).__name__.startswith("Unpod")


def test_list_space_tasks_redacted_by_default(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    result = ListSpaceTasksOperator(task_id="t", space_token=DEMO_SPACE_TOKEN, page_size=30).execute(
        context()
    )
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    assert len(result) == len(api) > 100
    assert result == redacted(api)
    for item in result:
        assert not any(has_path(item, path) for path in SENSITIVE)
        assert item["user_info"]["email"]  # the rest of user_info stays
    dumped = json.dumps(result)
    assert all(t["user_info"]["user_token"] not in dumped for t in api)
    assert_plain_json(result)


@pytest.mark.parametrize("max_concurrency", [1, 4])
def test_list_space_tasks_same_list_at_any_concurrency(
    unpod_simulator_shared: UnpodSimulator, max_concurrency: int
) -> None:
    """``unpod_max_concurrency`` changes how many pages are in flight, never the result."""
    sim = unpod_simulator_shared
    sim.reset_requests()
    result = ListSpaceTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, page_size=20, unpod_max_concurrency=max_concurrency
    ).execute(context())
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    assert result == redacted(api)
    pages = sorted(
        int(r["query"]["page"])
        for r in sim.requests
        if str(r["path"]).endswith(f"/spaces/{DEMO_SPACE_TOKEN}/tasks/")
    )
    assert pages == list(range(1, -(-len(api) // 20) + 1))  # one request per page


def test_redaction_opt_out_and_by_naming_the_field(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    full = ListSpaceTasksOperator(task_id="t", space_token=DEMO_SPACE_TOKEN, redact=False).execute(context())
    assert full == api
    named = ListSpaceTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, fields=["task_id", "user_info.user_token"]
    ).execute(context())
    assert named == [
        {"task_id": t["task_id"], "user_info": {"user_token": t["user_info"]["user_token"]}} for t in api
    ]
    inside = ListSpaceTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, fields=["user_info.location.city"]
    ).execute(context())
    assert inside == [{"user_info": {"location": {"city": t["user_info"]["location"]["city"]}}} for t in api]
    # Asking for the parent object does not bring the sensitive children back.
    parent = ListSpaceTasksOperator(task_id="t", space_token=DEMO_SPACE_TOKEN, fields=["user_info"]).execute(
        context()
    )
    assert parent == [{"user_info": protocol.redact(t)["user_info"]} for t in api]


def test_fields_projection_on_run_tasks(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    run_id = a_run(sim, "partially_completed")
    fields = ["task_id", "status", "output.duration", "output.post_call_data.summary.status", "output.error"]
    result = ListRunTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, run_id=run_id, fields=fields
    ).execute(context())
    api = sim.run_tasks(run_id)
    assert result == [protocol.project(t, fields) for t in api]
    statuses = {item["status"] for item in result}
    assert statuses == {"completed", "failed"}
    for item, task in zip(result, api, strict=True):
        assert set(item) <= {"task_id", "status", "output"}
        if task["status"] == "completed":
            assert item["output"]["duration"] == task["output"]["duration"]
            assert item["output"]["post_call_data"] == {
                "summary": {"status": task["output"]["post_call_data"]["summary"]["status"]}
            }
        else:
            assert item["output"] == {"error": task["output"]["error"]}
    assert_plain_json(result)


@pytest.mark.parametrize("status", ["completed", ["failed", "cancelled"], "failed, cancelled", "COMPLETED"])
def test_status_filter_on_runs(unpod_simulator_shared: UnpodSimulator, status: Any) -> None:
    sim = unpod_simulator_shared
    wanted = protocol.normalize_statuses(
        [s.strip() for s in status.split(",")] if isinstance(status, str) else status
    )
    result = ListSpaceRunsOperator(task_id="r", space_token=DEMO_SPACE_TOKEN, status=status).execute(
        context()
    )
    expected = [r for r in sim.space_runs(DEMO_SPACE_TOKEN) if r["status"] in wanted]  # type: ignore[operator]
    assert result == expected
    assert result


def test_status_filter_on_space_tasks(unpod_simulator_shared: UnpodSimulator) -> None:
    sim = unpod_simulator_shared
    result = ListSpaceTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, status="failed", fields=["task_id", "status"]
    ).execute(context())
    expected = [
        {"task_id": t["task_id"], "status": "failed"}
        for t in sim.space_tasks(DEMO_SPACE_TOKEN)
        if t["status"] == "failed"
    ]
    assert result == expected and expected


def test_unknown_run_gives_an_empty_list(
    unpod_simulator_shared: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    result = ListRunTasksOperator(
        task_id="t", space_token=DEMO_SPACE_TOKEN, run_id="R00000000000000000000000000000000"
    ).execute(context())
    assert result == []
    assert "Fetched 0 tasks of run R00000000000000000000000000000000" in capsys.readouterr().out


def test_unknown_space_on_a_list_is_a_business_error(unpod_simulator_shared: UnpodSimulator) -> None:
    with pytest.raises(UnpodBusinessError):
        ListSpaceTasksOperator(task_id="t", space_token="NOSUCHSPACE0000000000000").execute(context())


# --------------------------------------------------------------------------------------------
# JSON Lines output
# --------------------------------------------------------------------------------------------


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


def test_output_path_jsonl_equals_the_api(
    unpod_simulator_shared: UnpodSimulator, tmp_path: Path, mocker: Any
) -> None:
    sim = unpod_simulator_shared
    target = tmp_path / "nested" / "dir" / "tasks.jsonl"
    list_all = mocker.spy(UnpodHook, "list_space_tasks")
    op = ListSpaceTasksOperator(
        task_id="export",
        space_token="{{ params.space }}",
        output_path="file://{{ params.dir }}/nested/dir/tasks.jsonl",
        page_size=25,
    )
    ctx = context(space=DEMO_SPACE_TOKEN, dir=str(tmp_path))
    op.render_template_fields(ctx)
    sim.reset_requests()
    result = op.execute(ctx)
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    assert result == {"path": f"file://{target}", "count": len(api)}
    assert_plain_json(result)
    assert read_jsonl(target) == redacted(api)
    # Page by page through the lazy iterator, never the list-everything method.
    list_all.assert_not_called()
    pages = [r for r in sim.requests if r["path"].endswith(f"/spaces/{DEMO_SPACE_TOKEN}/tasks/")]
    assert len(pages) == -(-len(api) // 25)
    assert sim.token not in target.read_text(encoding="utf-8")


def test_output_path_streams_while_fetching(
    unpod_simulator_shared: UnpodSimulator, tmp_path: Path, mocker: Any
) -> None:
    """Each item is written before the next is pulled from the hook's lazy iterator."""
    sim = unpod_simulator_shared
    target = tmp_path / "space.jsonl"
    op = ListSpaceTasksOperator(
        task_id="export",
        space_token=DEMO_SPACE_TOKEN,
        output_path=str(target),
        fields=["task_id"],
        page_size=10,
    )
    shaped: list[str] = []
    lags: list[int] = []
    real_shape, real_iter = op.shape, op.hook.iter_space_tasks

    def shape(item: dict[str, Any]) -> dict[str, Any]:
        shaped.append(item["task_id"])
        return real_shape(item)

    def lazy(*args: Any, **kwargs: Any) -> Any:
        for index, item in enumerate(real_iter(*args, **kwargs)):
            lags.append(index - len(shaped))
            yield item

    mocker.patch.object(op, "shape", side_effect=shape)
    mocker.patch.object(op.hook, "iter_space_tasks", side_effect=lazy)
    result = op.execute(context())
    api = sim.space_tasks(DEMO_SPACE_TOKEN)
    assert result["count"] == len(shaped) == len(api) == len(lags)
    assert set(lags) == {0}
    assert read_jsonl(target) == [{"task_id": t["task_id"]} for t in api]


def test_output_path_fields_and_redaction_opt_out(
    unpod_simulator_shared: UnpodSimulator, tmp_path: Path
) -> None:
    sim = unpod_simulator_shared
    run_id = a_run(sim)
    target = tmp_path / "full.jsonl"
    ListRunTasksOperator(
        task_id="export",
        space_token=DEMO_SPACE_TOKEN,
        run_id=run_id,
        output_path=f"file://{target}",
        redact=False,
    ).execute(context())
    assert read_jsonl(target) == sim.run_tasks(run_id)


def test_partial_output_removed_when_a_page_fails(
    unpod_simulator_shared: UnpodSimulator, tmp_path: Path
) -> None:
    sim = unpod_simulator_shared
    target = tmp_path / "tasks.jsonl"
    sim.inject(
        "server_error", path=f"/spaces/{DEMO_SPACE_TOKEN}/tasks/", query={"page": "3"}, status=503, times=None
    )
    op = ListSpaceTasksOperator(
        task_id="export",
        space_token=DEMO_SPACE_TOKEN,
        output_path=f"file://{target}",
        page_size=20,
        unpod_retry_limit=1,
    )
    with pytest.raises(UnpodServerError):
        op.execute(context())
    assert not target.exists()


def test_unusable_output_path_is_a_value_error(unpod_simulator_shared: UnpodSimulator) -> None:
    op = ListSpaceRunsOperator(
        task_id="r", space_token=DEMO_SPACE_TOKEN, output_path="nosuchscheme://x/y.jsonl"
    )
    with pytest.raises(ValueError, match="output_path"):
        op.execute(context())


# --------------------------------------------------------------------------------------------
# Logging: size warning, summary line, no secrets
# --------------------------------------------------------------------------------------------


def test_size_warning_suggests_fields_or_output_path(
    unpod_simulator_shared: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    assert DEFAULT_XCOM_WARN_BYTES == 1_000_000
    ListSpaceTasksOperator(task_id="big", space_token=DEMO_SPACE_TOKEN, xcom_warn_bytes=10_000).execute(
        context()
    )
    out = capsys.readouterr().out
    assert "above xcom_warn_bytes=10,000" in out
    assert "fields=[...]" in out and "output_path=" in out
    # Small results (the default threshold, or a projection) do not warn.
    ListSpaceTasksOperator(task_id="small", space_token=DEMO_SPACE_TOKEN).execute(context())
    ListSpaceTasksOperator(
        task_id="small2", space_token=DEMO_SPACE_TOKEN, fields=["task_id"], xcom_warn_bytes=10_000
    ).execute(context())
    assert "xcom_warn_bytes" not in capsys.readouterr().out


def test_size_warning_can_be_disabled(
    unpod_simulator_shared: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    ListSpaceTasksOperator(task_id="big", space_token=DEMO_SPACE_TOKEN, xcom_warn_bytes=None).execute(
        context()
    )
    assert "xcom_warn_bytes" not in capsys.readouterr().out


def test_summary_line_and_no_secrets_in_logs(
    unpod_simulator_shared: UnpodSimulator, capsys: pytest.CaptureFixture[str]
) -> None:
    sim = unpod_simulator_shared
    run_id = a_run(sim, "partially_completed")
    ListRunTasksOperator(task_id="t", space_token=DEMO_SPACE_TOKEN, run_id=run_id).execute(context())
    counts = Counter(t["status"] for t in sim.run_tasks(run_id))
    out = capsys.readouterr()
    logs = out.out + out.err
    summary = ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
    total = sum(counts.values())
    assert f"Fetched {total:,} tasks of run {run_id} in space {DEMO_SPACE_TOKEN}: {summary}" in logs
    assert sim.token not in logs
    for task in sim.run_tasks(run_id):
        assert task["user_info"]["user_token"] not in logs
        assert task["output"].get("call_id", "no-call-id") not in logs  # no payload dumps


def test_summary_helpers() -> None:
    assert _status_summary({"failed": 60, "completed": 1180}) == "1,180 completed, 60 failed"
    assert _human_bytes(999) == "999 bytes"
    assert _human_bytes(2_400_000) == "2.4 MB"


def test_operators_map_over_run_ids() -> None:
    with DAG("mapped_operators", schedule=None):
        mapped = ListRunTasksOperator.partial(task_id="fetch", space_token=DEMO_SPACE_TOKEN).expand(
            run_id=["R1", "R2"]
        )
    assert mapped.task_id == "fetch"


def test_hook_closed_after_execute(unpod_simulator_shared: UnpodSimulator, mocker: Any) -> None:
    close = mocker.spy(UnpodHook, "close")
    ListSpaceRunsOperator(task_id="r", space_token=DEMO_SPACE_TOKEN).execute(context())
    assert close.call_count == 1
    with pytest.raises(UnpodBusinessError):
        ListSpaceRunsOperator(task_id="r", space_token="NOSUCHSPACE0000000000000").execute(context())
    assert close.call_count == 2
