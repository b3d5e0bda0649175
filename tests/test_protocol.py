"""The protocol layer on its own: envelopes, error mapping, retries, pagination, models, create body.

No HTTP and no Airflow here; the bodies come from ``tests/data`` (copies of the server samples).
"""

from __future__ import annotations

import email.utils
import json
import random
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from unpod_provider import __version__, protocol
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodConfigError,
    UnpodConnectionError,
    UnpodCreateRunUncertainError,
    UnpodError,
    UnpodIncompleteResponseError,
    UnpodInconsistentListError,
    UnpodNotFoundError,
    UnpodProtocolError,
    UnpodRateLimitError,
    UnpodServerError,
    UnpodTimeoutError,
)
from unpod_provider.protocol import Envelope, PageWalk, RetryPolicy

DATA = Path(__file__).parent / "data"
NOW = datetime(2026, 2, 1, 12, 0, 0, tzinfo=timezone.utc)


def sample(name: str) -> bytes:
    return (DATA / f"{name}.json").read_bytes()


def chain(error: BaseException) -> list[BaseException]:
    """The exceptions a traceback would show for ``error``."""
    seen = []
    current: BaseException | None = error
    while current is not None and current not in seen:
        seen.append(current)
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return seen


# --------------------------------------------------------------------------------------------
# Envelopes of the sample bodies
# --------------------------------------------------------------------------------------------


def test_spaces_list_sample_parses_into_an_envelope() -> None:
    env = protocol.parse_response(200, sample("spaces_list"), what="spaces", expect_list=True)
    assert env.count == 1
    assert env.message == "Spaces fetched successfully"
    assert env.data[0]["token"] == "8KZAMRAHSXXXXXXMAYNASMJC"
    assert env.data[0]["organization"] == {"name": "Unpod TV", "domain_handle": "recalll.co"}


def test_runs_list_sample_keeps_every_field() -> None:
    env = protocol.parse_response(200, sample("runs_list"), what="runs", expect_list=True)
    assert env.count == 1716
    run = env.data[0]
    assert set(run) == {
        "space_id",
        "user",
        "thread_id",
        "run_id",
        "collection_ref",
        "run_mode",
        "status",
        "batch_count",
        "created",
        "modified",
    }
    assert run["thread_id"] is None
    assert protocol.run_status(run) == "completed"
    assert protocol.is_terminal_run_status(protocol.run_status(run))
    assert protocol.parse_timestamp(run["created"]) == datetime(2025, 11, 30, 17, 51, 52, tzinfo=timezone.utc)


def test_run_tasks_sample_keeps_outputs_and_unknown_fields() -> None:
    env = protocol.parse_response(200, sample("run_tasks_completed_call"), what="tasks", expect_list=True)
    assert env.count == 2
    done, failed = env.data
    assert done["output"]["duration"] == pytest.approx(76.769)
    assert protocol.get_path(done, "output.post_call_data.summary.status") == "Call Back"
    assert done["output"]["post_call_data"]["webhook_data"] is None
    assert failed["status"] == "failed"
    assert failed["output"] == {"error": "Task exceeded maximum retries (3)"}


def test_create_run_sample_parses_with_a_status_map() -> None:
    env = protocol.parse_response(200, sample("create_run_response"), what="create", method="POST")
    result = protocol.parse_create_run_data(env.data)
    assert result["run_id"] == "R8ff2ccdefe9a11f0878d43cd8a99e069"
    assert result["task_ids"] == ["T8ff2ccdffe9a11f0878d43cd8a99e069"]
    assert result["status"] == {"T8ff2ccdffe9a11f0878d43cd8a99e069": "pending"}


def test_create_run_data_accepts_the_documented_string_status_and_keeps_extras() -> None:
    result = protocol.parse_create_run_data(
        {"run_id": "R1", "task_ids": ["T1", "T2"], "status": "pending", "x": 1}
    )
    assert result == {"run_id": "R1", "task_ids": ["T1", "T2"], "status": "pending", "x": 1}


@pytest.mark.parametrize(
    "data",
    [[], {"task_ids": []}, {"run_id": ""}, {"run_id": "R1", "task_ids": "T1"}, {"run_id": "R1", "status": 3}],
)
def test_create_run_data_rejects_shapes_without_a_usable_run(data: Any) -> None:
    with pytest.raises(UnpodProtocolError):
        protocol.parse_create_run_data(data)


def test_201_is_a_success_for_a_post_only() -> None:
    body = sample("create_run_response")
    assert protocol.parse_response(201, body, method="POST").data["run_id"].startswith("R")
    with pytest.raises(UnpodProtocolError, match="HTTP 201"):
        protocol.parse_response(201, body, method="GET")


# --------------------------------------------------------------------------------------------
# Error bodies
# --------------------------------------------------------------------------------------------


def test_206_invalid_space_is_a_business_error() -> None:
    with pytest.raises(UnpodBusinessError) as info:
        protocol.parse_response(206, sample("error_206_invalid_space"), what="runs of space 'S1'")
    err = info.value
    assert err.status_code == 206
    assert err.server_message == "Invalid Space Token"
    assert err.message == "Invalid Space Token"
    assert "runs of space 'S1'" in str(err)
    assert not err.retryable
    assert not RetryPolicy.is_retryable(err)


def test_206_validation_error_names_the_field() -> None:
    with pytest.raises(UnpodBusinessError) as info:
        protocol.parse_response(206, sample("error_206_validation"), method="POST")
    assert info.value.errors == {"context": ["This field is required."]}
    assert "context: This field is required." in str(info.value)


def test_206_fetch_failed_keeps_the_upstream_errors() -> None:
    with pytest.raises(UnpodBusinessError, match="Runs Fetch Failed") as info:
        protocol.parse_response(206, sample("error_206_fetch_failed"))
    assert info.value.errors == "upstream error text"
    assert "upstream error text" in str(info.value)


def test_206_with_an_unreadable_body_is_still_a_business_error() -> None:
    with pytest.raises(UnpodBusinessError, match="business error"):
        protocol.parse_response(206, b"<html>")


def test_envelope_with_a_non_200_status_code_inside_a_200_is_a_business_error() -> None:
    body = json.dumps({"status_code": 206, "message": "Invalid Space Token", "data": {}})
    with pytest.raises(UnpodBusinessError, match="Invalid Space Token") as info:
        protocol.parse_response(200, body)
    assert info.value.status_code == 206


def test_400_missing_org_is_a_bad_request() -> None:
    with pytest.raises(UnpodBadRequestError, match="Organization handle is required") as info:
        protocol.parse_response(400, sample("error_400_missing_org"))
    assert info.value.status_code == 400
    assert not RetryPolicy.is_retryable(info.value)


@pytest.mark.parametrize("status", [401, 403])
def test_401_and_403_are_auth_errors(status: int) -> None:
    with pytest.raises(UnpodAuthError, match=f"HTTP {status}") as info:
        protocol.parse_response(status, sample("error_401_invalid_token"))
    assert info.value.server_message == "Invalid token."
    assert not RetryPolicy.is_retryable(info.value)


def test_404_names_what_was_looked_for() -> None:
    with pytest.raises(UnpodNotFoundError) as info:
        protocol.parse_response(
            404, sample("error_404_space"), what="space 'ABC'", resource="space", identifier="ABC"
        )
    err = info.value
    assert str(err).startswith("Space 'ABC' not found (HTTP 404): Space not found")
    assert (err.resource, err.identifier, err.status_code) == ("space", "ABC", 404)
    assert not RetryPolicy.is_retryable(err)


def test_429_is_retryable_and_carries_retry_after() -> None:
    with pytest.raises(UnpodRateLimitError) as info:
        protocol.parse_response(429, b"slow down", {"Retry-After": "7"})
    assert info.value.retry_after == 7.0
    assert RetryPolicy.is_retryable(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_html_5xx_is_a_retryable_server_error_not_a_json_error(status: int) -> None:
    html = b"<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head><body>nginx</body></html>"
    with pytest.raises(UnpodServerError) as info:
        protocol.parse_response(status, html)
    err = info.value
    assert err.status_code == status
    assert "Bad Gateway" in str(err)
    assert RetryPolicy.is_retryable(err)
    assert not any(isinstance(e, json.JSONDecodeError) for e in chain(err))


def test_5xx_with_empty_or_json_body() -> None:
    with pytest.raises(UnpodServerError, match="empty body"):
        protocol.parse_response(503, b"")
    with pytest.raises(UnpodServerError, match="boom") as info:
        protocol.parse_response(500, b'{"message": "boom"}')
    assert info.value.server_message == "boom"


def test_other_5xx_is_not_retried() -> None:
    with pytest.raises(UnpodServerError) as info:
        protocol.parse_response(501, b"")
    assert not RetryPolicy.is_retryable(info.value)


@pytest.mark.parametrize(
    ("body", "match", "retryable"),
    [
        (b"", "empty response body", True),
        (b'{"count": 3, "status_code": 200, "data": [{"task_id": "T1"}, {"ta', "is not valid JSON", False),
        (b"<html>ok</html>", "is not valid JSON", False),
        (b'{"count": 1, "data": []} trailing', "is not valid JSON", False),
        (b'{"count": 1, "data": [{"task_id": "\xff"}]}', "is not valid JSON", False),
        (b'{"count": 1, "data": [{"cost": Infinity}]}', "Infinity is not a JSON value", False),
        (b'{"count": 1, "data": [{"cost": NaN}]}', "NaN is not a JSON value", False),
    ],
)
def test_200_with_an_empty_or_malformed_body_is_a_protocol_error(
    body: bytes, match: str, retryable: bool
) -> None:
    """An empty body is transient (retried); a whole body that is not strict JSON is not."""
    with pytest.raises(UnpodProtocolError, match=match) as info:
        protocol.parse_response(200, body, expect_list=True, what="tasks of space 'S1'")
    assert not any(isinstance(e, json.JSONDecodeError) for e in chain(info.value))
    assert RetryPolicy.is_retryable(info.value) is retryable
    assert isinstance(info.value, UnpodIncompleteResponseError) is retryable
    if body:
        assert "tasks of space 'S1'" in str(info.value)


@pytest.mark.parametrize("status", [301, 302, 307, 308])
def test_redirect_is_a_protocol_error_naming_the_target(status: int) -> None:
    with pytest.raises(UnpodProtocolError, match="redirect") as info:
        protocol.parse_response(status, b"", {"Location": "https://elsewhere.example/x"})
    assert "https://elsewhere.example/x" in str(info.value)


@pytest.mark.parametrize("status", [202, 204, 299])
def test_other_2xx_on_a_read_is_an_error(status: int) -> None:
    with pytest.raises(UnpodProtocolError, match="only 200"):
        protocol.parse_response(status, b'{"data": []}')


def test_unexpected_4xx_is_a_plain_unpod_error() -> None:
    with pytest.raises(UnpodError, match="HTTP 418") as info:
        protocol.parse_response(418, b'{"detail": "teapot"}')
    assert type(info.value) is UnpodError
    assert info.value.server_message == "teapot"


@pytest.mark.parametrize(
    ("payload", "expect_list", "match"),
    [
        ([], True, "JSON object envelope"),
        ({"status_code": 200}, True, "no 'data'"),
        ({"data": {}}, True, "should be a list"),
        ({"data": []}, False, "should be an object"),
        ({"data": [1]}, True, "not an object"),
        ({"count": -1, "data": []}, True, "count"),
        ({"count": True, "data": []}, True, "count"),
        ({"count": "3", "data": []}, True, "count"),
        ({"status_code": "200", "data": []}, True, "status_code"),
    ],
)
def test_envelope_shape_errors(payload: Any, expect_list: bool, match: str) -> None:
    with pytest.raises(UnpodProtocolError, match=match):
        protocol.parse_envelope(payload, expect_list=expect_list)


def test_envelope_without_count_or_status_code_is_accepted() -> None:
    env = protocol.parse_envelope({"data": [{"a": 1}]}, expect_list=True)
    assert env == Envelope(data=[{"a": 1}], count=None, message=None, status_code=200)


@pytest.mark.parametrize(
    ("errors", "text"),
    [
        ({"context": ["This field is required."]}, "context: This field is required."),
        ({"a": ["x", "y"], "b": "z"}, "a: x y; b: z"),
        (["one", "two"], "one; two"),
        ("plain", "plain"),
        (None, ""),
        ({}, ""),
    ],
)
def test_format_field_errors(errors: Any, text: str) -> None:
    assert protocol.format_field_errors(errors) == text


def test_typed_errors_survive_pickling() -> None:
    import pickle

    err = UnpodNotFoundError("Space 'X' not found", resource="space", identifier="X", server_message="nf")
    clone = pickle.loads(pickle.dumps(err))
    assert (type(clone), str(clone), clone.identifier, clone.server_message) == (
        UnpodNotFoundError,
        "Space 'X' not found",
        "X",
        "nf",
    )
    conn = UnpodConnectionError("reset").with_sent(False)
    assert pickle.loads(pickle.dumps(conn)).request_sent is False


def test_error_hierarchy() -> None:
    assert issubclass(UnpodConfigError, ValueError)
    assert UnpodTimeoutError("t").retryable and UnpodConnectionError("c").retryable
    assert not UnpodCreateRunUncertainError("u").retryable


# --------------------------------------------------------------------------------------------
# Retry-After and the retry policy
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("5", 5.0), (" 7 ", 7.0), ("1.5", 1.5), ("0", 0.0), ("-3", 0.0), (None, None), ("", None)],
)
def test_parse_retry_after_seconds(value: str | None, seconds: float | None) -> None:
    assert protocol.parse_retry_after(value) == seconds


def test_parse_retry_after_http_date() -> None:
    header = email.utils.format_datetime(NOW + timedelta(seconds=45), usegmt=True)
    assert header.endswith("GMT")
    assert protocol.parse_retry_after(header, now=NOW) == 45.0


def test_parse_retry_after_date_in_the_past_means_now() -> None:
    header = email.utils.format_datetime(NOW - timedelta(minutes=5), usegmt=True)
    assert protocol.parse_retry_after(header, now=NOW) == 0.0


@pytest.mark.parametrize("value", ["soon", "nan", "inf", "-inf", "Mon, 99 Foo 2026 99:99:99 GMT", "1e999"])
def test_parse_retry_after_garbage_is_ignored(value: str) -> None:
    assert protocol.parse_retry_after(value, now=NOW) is None


class MaxJitter(random.Random):
    """``uniform(a, b)`` at its upper end, so delays are the policy's ceiling."""

    def uniform(self, a: float, b: float) -> float:
        return b


class MinJitter(random.Random):
    def uniform(self, a: float, b: float) -> float:
        return a


def test_backoff_doubles_up_to_the_cap() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=10.0)
    assert [policy.delay(n, rng=MaxJitter()) for n in range(1, 7)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert [policy.delay(n, rng=MinJitter()) for n in range(1, 5)] == [0.5, 1.0, 2.0, 4.0]


def test_backoff_jitter_stays_within_half_and_full_ceiling() -> None:
    policy = RetryPolicy(base_delay=2.0, max_delay=60.0)
    rng = random.Random(1234)
    delays = [policy.delay(3, rng=rng) for _ in range(200)]
    assert all(4.0 <= d <= 8.0 for d in delays)
    assert len(set(delays)) > 1


def test_retry_after_wins_over_backoff_and_is_capped() -> None:
    policy = RetryPolicy(base_delay=0.01, max_retry_after=30.0)
    assert policy.delay(1, UnpodRateLimitError("x", retry_after=12.0), rng=MaxJitter()) == 12.0
    assert policy.delay(1, UnpodRateLimitError("x", retry_after=0.0), rng=MaxJitter()) == 0.0
    assert policy.delay(4, UnpodRateLimitError("x", retry_after=3600.0), rng=MaxJitter()) == 30.0
    assert policy.delay(1, UnpodServerError("x", status_code=503, retry_after=5), rng=MaxJitter()) == 5.0
    # Without a Retry-After the exponential backoff applies.
    assert policy.delay(3, UnpodRateLimitError("x"), rng=MaxJitter()) == pytest.approx(0.04)


def test_is_retryable_per_error_class() -> None:
    retryable = [
        UnpodRateLimitError("x"),
        UnpodServerError("x", status_code=502),
        UnpodConnectionError("x"),
        UnpodTimeoutError("x"),
    ]
    final = [
        UnpodAuthError("x", status_code=401),
        UnpodBadRequestError("x"),
        UnpodNotFoundError("x"),
        UnpodBusinessError("x"),
        UnpodProtocolError("x"),
        UnpodConfigError("x"),
        ValueError("x"),
    ]
    assert all(RetryPolicy.is_retryable(e) for e in retryable)
    assert not any(RetryPolicy.is_retryable(e) for e in final)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"max_attempts": True},
        {"max_attempts": 1.5},
        {"base_delay": -1},
        {"max_delay": float("nan")},
        {"max_total_seconds": "10"},
    ],
)
def test_retry_policy_refuses_bad_settings(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        RetryPolicy(**kwargs)


def test_retry_policy_round_trips_through_a_dict() -> None:
    policy = RetryPolicy(
        max_attempts=3, base_delay=0.5, max_delay=9.0, max_retry_after=20.0, max_total_seconds=99
    )
    assert RetryPolicy.from_dict(policy.to_dict()) == policy
    assert RetryPolicy.from_dict(None) == RetryPolicy()


# --------------------------------------------------------------------------------------------
# Pagination rules
# --------------------------------------------------------------------------------------------


def tasks(start: int, stop: int) -> list[dict[str, Any]]:
    """Tasks numbered ``start`` down to ``stop + 1`` (newest first)."""
    return [{"task_id": f"T{n:04d}"} for n in range(start, stop, -1)]


def run_walk(walk: PageWalk, pages: dict[int, Envelope]) -> tuple[list[int], list[dict[str, Any]]]:
    asked, got = [], []
    while (page := walk.next_page()) is not None:
        asked.append(page)
        got.extend(walk.feed(page, pages[page]))
    return asked, got


def test_walk_reads_exactly_the_pages_that_hold_count_items() -> None:
    items = tasks(140, 0)
    pages = {p: Envelope(items[(p - 1) * 20 : p * 20], count=140) for p in range(1, 10)}
    walk = PageWalk(page_size=20, id_key="task_id")
    asked, got = run_walk(walk, pages)
    assert asked == [1, 2, 3, 4, 5, 6, 7]
    assert got == items
    assert walk.done and walk.notes == [] and walk.duplicates == 0


def test_walk_stops_on_a_short_page_without_count() -> None:
    items = tasks(45, 0)
    pages = {p: Envelope(items[(p - 1) * 20 : p * 20]) for p in range(1, 5)}
    asked, got = run_walk(PageWalk(page_size=20, id_key="task_id"), pages)
    assert asked == [1, 2, 3]
    assert got == items


def test_walk_stops_on_an_empty_page() -> None:
    walk = PageWalk(page_size=20, id_key="task_id")
    assert walk.feed(1, Envelope([], count=0)) == []
    assert walk.next_page() is None


def test_walk_without_count_asks_once_more_after_a_full_page_and_stops_on_empty() -> None:
    items = tasks(40, 0)
    pages = {1: Envelope(items[:20]), 2: Envelope(items[20:]), 3: Envelope([])}
    asked, got = run_walk(PageWalk(page_size=20, id_key="task_id"), pages)
    assert asked == [1, 2, 3]
    assert got == items


def test_walk_follows_a_silently_capped_page_size() -> None:
    items = tasks(140, 0)
    pages = {1: Envelope(items[:100], count=140), 2: Envelope(items[100:], count=140)}
    walk = PageWalk(page_size=500, id_key="task_id", what="tasks")
    # A short first page may be a lagging replica: refused once, taken as a cap when it repeats.
    with pytest.raises(UnpodInconsistentListError, match="page 1 holds 100 of the 140 items"):
        walk.check(1, pages[1])
    asked, got = run_walk(walk, pages)
    assert asked == [1, 2]
    assert got == items
    assert walk.effective_page_size == 100
    assert any("100 tasks per page although 500" in note for note in walk.notes)


def test_walk_deduplicates_items_that_shift_when_new_ones_arrive() -> None:
    original = tasks(140, 0)
    grown = tasks(145, 0)  # five new tasks arrive after page 1 was read
    pages = {1: Envelope(original[:20], count=140)}
    pages.update({p: Envelope(grown[(p - 1) * 20 : p * 20], count=145) for p in range(2, 10)})
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    asked, got = run_walk(walk, pages)
    ids = [t["task_id"] for t in got]
    assert len(ids) == len(set(ids))
    assert set(ids) >= {t["task_id"] for t in original}
    assert walk.duplicates == 5
    assert asked == [1, 2, 3, 4, 5, 6, 7, 8]
    assert any("moved from 140 to 145" in note for note in walk.notes)


def test_walk_refuses_a_short_page_inside_the_total() -> None:
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    walk.feed(1, Envelope(tasks(30, 10), count=30))
    short = Envelope(tasks(5, 0), count=30)
    with pytest.raises(
        UnpodInconsistentListError,
        match="page 2 holds 5 items, but with 30 in all and 20 per page it should hold 10",
    ) as info:
        walk.feed(2, short)
    assert info.value.retryable is True
    # Refused without a trace: the right answer is still taken afterwards.
    assert not walk.done and walk.page == 1 and walk.held == 20
    assert len(walk.feed(2, Envelope(tasks(10, 0), count=30))) == 10 and walk.done


@pytest.mark.parametrize(
    ("first", "second", "match"),
    [
        (Envelope([], count=5), None, "page 1 is empty but says the total is 5"),
        (Envelope(tasks(6, 0), count=5), None, "page 1 holds 6 items but says the total is 5"),
        (Envelope(tasks(40, 20), count=40), Envelope(tasks(20, 0), count=30), "the total is 30, an earlier"),
        (Envelope(tasks(40, 20), count=40), Envelope(tasks(20, 0)), "has no count although earlier pages"),
        (Envelope(tasks(50, 30), count=50), Envelope(tasks(30, 0), count=50), "holds 30 items"),
        (Envelope(tasks(40, 20), count=40), Envelope(tasks(40, 20), count=40), "page 2 repeats 20 items"),
    ],
    ids=[
        "empty-first-page",
        "first-page-beyond-total",
        "count-drops",
        "count-vanishes",
        "long-page",
        "repeat",
    ],
)
def test_walk_refuses_answers_that_disagree(first: Envelope, second: Envelope | None, match: str) -> None:
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    with pytest.raises(UnpodInconsistentListError, match=match):
        walk.feed(1, first)
        assert second is not None
        walk.feed(2, second)


def test_walk_allows_as_many_repeats_as_the_list_grew() -> None:
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    walk.feed(1, Envelope(tasks(40, 20), count=40))
    # Two new tasks at the head push two seen ones onto page 2: allowed; a third repeat is not.
    walk.check(2, Envelope(tasks(22, 2), count=42))
    with pytest.raises(UnpodInconsistentListError, match="repeats 3 items"):
        walk.check(2, Envelope(tasks(23, 3), count=42))


def test_walk_keeps_items_without_an_id() -> None:
    walk = PageWalk(page_size=5, id_key="run_id")
    assert walk.feed(1, Envelope([{"x": 1}, {"x": 1}], count=2)) == [{"x": 1}, {"x": 1}]


def test_walk_refuses_pages_out_of_order() -> None:
    walk = PageWalk(page_size=20, id_key="task_id")
    with pytest.raises(ValueError, match="in order"):
        walk.feed(2, Envelope(tasks(20, 0), count=100))


def test_walk_detects_a_server_that_ignores_page() -> None:
    same = Envelope(tasks(20, 0), count=100)
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    walk.feed(1, same)
    with pytest.raises(UnpodInconsistentListError, match="page 2 repeats 20 items already read"):
        walk.feed(2, same)


def test_walk_detects_a_server_that_ignores_page_without_ids_or_count() -> None:
    same = Envelope([{"name": f"call {n}"} for n in range(20)])
    walk = PageWalk(page_size=20, id_key="task_id", what="tasks")
    walk.feed(1, same)
    with pytest.raises(UnpodInconsistentListError, match="page 2 repeats the page before it exactly"):
        walk.feed(2, same)
    # Different content is read on: only an exact repeat is refused.
    assert len(walk.feed(2, Envelope([{"name": f"call {n}"} for n in range(20, 25)]))) == 5 and walk.done


def test_walk_404_past_the_first_page_ends_the_list() -> None:
    walk = PageWalk(page_size=20, id_key="task_id")
    assert walk.end_on_not_found(1) is False
    assert not walk.done
    walk.feed(1, Envelope(tasks(20, 0), count=None))
    assert walk.end_on_not_found(2) is True
    assert walk.next_page() is None


@pytest.mark.parametrize("size", [0, -1, 1001, True, 20.0, "20", None])
def test_page_size_outside_1_to_1000_is_refused(size: Any) -> None:
    with pytest.raises(ValueError, match="page_size"):
        PageWalk(page_size=size, id_key="task_id")
    with pytest.raises(ValueError, match="page_size"):
        protocol.validate_page_size(size)


def test_page_params_are_only_page_and_page_size() -> None:
    assert protocol.page_params(3, 1000) == {"page": 3, "page_size": 1000}
    assert protocol.page_params(1, 1) == {"page": 1, "page_size": 1}
    for bad in (0, -1, True, "1"):
        with pytest.raises(ValueError):
            protocol.page_params(bad, 20)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Identifiers and paths
# --------------------------------------------------------------------------------------------

BAD_IDENTIFIERS = [
    "../admin",
    "..",
    "a/b",
    "/",
    "%2F",
    "a%2Fb",
    "a b",
    " a",
    "a\t",
    "a\r\nX-Injected: 1",
    "a\n",
    "caf\u00e9",
    "\uff21BC",
    "a" * 129,
    "",
    "a.b",
    "a?b=1",
    "a#b",
    None,
    42,
    "None",  # a template whose value was None
    "null",
]


@pytest.mark.parametrize("value", BAD_IDENTIFIERS)
def test_bad_identifiers_are_refused(value: Any) -> None:
    with pytest.raises(ValueError, match="space_token"):
        protocol.validate_identifier(value, "space_token")


@pytest.mark.parametrize(
    "value", ["8KZAMRAHSXXXXXXMAYNASMJC", "R40fe5eface1511f082ac156368e7acc4", "a_b-C9", "a" * 128]
)
def test_good_identifiers_pass(value: str) -> None:
    assert protocol.validate_identifier(value, "run_id") == value


def test_paths_end_with_a_slash_under_the_api_prefix() -> None:
    assert protocol.organizations_path() == "/api/v2/platform/organizations/"
    assert protocol.spaces_path() == "/api/v2/platform/spaces/"
    assert protocol.space_path("S1") == "/api/v2/platform/spaces/S1/"
    assert protocol.space_tasks_path("S1") == "/api/v2/platform/spaces/S1/tasks/"
    assert protocol.space_runs_path("S1") == "/api/v2/platform/spaces/S1/runs/"
    assert protocol.run_tasks_path("S1", "R1") == "/api/v2/platform/spaces/S1/runs/R1/tasks/"
    assert protocol.create_run_paths("S1") == (
        "/api/v2/platform/spaces/S1/tasks/create/",
        "/api/v2/platform/spaces/S1/tasks/",
    )


def test_run_tasks_path_validates_the_run_id_too() -> None:
    with pytest.raises(ValueError, match="run_id"):
        protocol.run_tasks_path("S1", "../R1")


# --------------------------------------------------------------------------------------------
# Timestamps, statuses, projection, redaction
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-11-30T17:51:52", datetime(2025, 11, 30, 17, 51, 52, tzinfo=timezone.utc)),
        ("2025-01-15T14:30:00.000000", datetime(2025, 1, 15, 14, 30, tzinfo=timezone.utc)),
        ("2025-01-15T14:30:00.123", datetime(2025, 1, 15, 14, 30, 0, 123000, tzinfo=timezone.utc)),
        ("2025-11-30T17:51:52Z", datetime(2025, 11, 30, 17, 51, 52, tzinfo=timezone.utc)),
        ("2025-11-30T17:51:52.5z", datetime(2025, 11, 30, 17, 51, 52, 500000, tzinfo=timezone.utc)),
        ("2025-11-30T19:51:52+02:00", datetime(2025, 11, 30, 17, 51, 52, tzinfo=timezone.utc)),
        ("2025-11-30T12:51:52-05:00", datetime(2025, 11, 30, 17, 51, 52, tzinfo=timezone.utc)),
        ("2025-11-21 13:45:20", datetime(2025, 11, 21, 13, 45, 20, tzinfo=timezone.utc)),
    ],
)
def test_parse_timestamp(text: str, expected: datetime) -> None:
    parsed = protocol.parse_timestamp(text)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is not None


@pytest.mark.parametrize("value", [None, "", "   ", "yesterday", "2025-13-40T00:00:00", 1732989112, "N/A"])
def test_parse_timestamp_returns_none_for_non_timestamps(value: Any) -> None:
    assert protocol.parse_timestamp(value) is None


def test_run_status_and_terminal_states() -> None:
    assert protocol.run_status({"status": " Completed "}) == "completed"
    assert protocol.run_status({"status": None}) == ""
    assert protocol.run_status({}) == ""
    for status in ("completed", "partially_completed", "failed", "cancelled"):
        assert protocol.is_terminal_run_status(status)
    for status in ("pending", "scheduled", "queued", "running", "brand_new_state", ""):
        assert not protocol.is_terminal_run_status(status)


def test_status_filters_accept_one_value_or_several() -> None:
    items = [{"status": "completed"}, {"status": "FAILED"}, {"status": "pending"}, {}]
    one = protocol.normalize_statuses("completed")
    several = protocol.normalize_statuses(["Completed", "failed"])
    assert [i for i in items if protocol.status_matches(i, one)] == [{"status": "completed"}]
    assert [i for i in items if protocol.status_matches(i, several)] == items[:2]
    assert all(protocol.status_matches(i, protocol.normalize_statuses(None)) for i in items)
    for bad in ([], [""], ["ok", 3], 5):
        with pytest.raises(ValueError):
            protocol.normalize_statuses(bad)  # type: ignore[arg-type]


def test_status_list_keeps_order_and_drops_repeats() -> None:
    """Sensor and trigger states: their order is kept (it is what the user wrote)."""
    assert protocol.status_list([" Completed", "partially_completed", "completed"]) == (
        "completed",
        "partially_completed",
    )
    assert protocol.status_list("FAILED", "failed_states") == ("failed",)
    for bad, message in (([], "at least one"), ([" "], "non-empty"), (7, "a string or a list")):
        with pytest.raises(ValueError, match=f"failed_states.*{message}"):
            protocol.status_list(bad, "failed_states")  # type: ignore[arg-type]


def test_project_keeps_dotted_fields_nested() -> None:
    task = json.loads(sample("run_tasks_completed_call"))["data"][0]
    projected = protocol.project(
        task, ["task_id", "output.duration", "output.post_call_data.summary.status", "output.absent", "nope"]
    )
    assert projected == {
        "task_id": "TASK_SPACE_456789",
        "output": {"duration": 76.769, "post_call_data": {"summary": {"status": "Call Back"}}},
    }


def test_redact_removes_user_token_and_location_without_touching_the_original() -> None:
    task = json.loads(sample("run_tasks_completed_call"))["data"][0]
    task["user_info"]["location"] = {"city": "Pune", "lat": 18.5}
    redacted = protocol.redact(task)
    assert "user_token" not in redacted["user_info"]
    assert "location" not in redacted["user_info"]
    assert redacted["user_info"]["email"] == "sales.manager@company.com"
    assert redacted["output"] is task["output"]
    assert task["user_info"]["user_token"] == "SPACE_TOKEN_ABC123"
    assert "location" in task["user_info"]
    assert "SPACE_TOKEN_ABC123" not in json.dumps(redacted)


def test_redact_keep_and_missing_parents() -> None:
    task = {"user_info": {"user_token": "t", "location": {"c": 1}}, "x": 1}
    assert protocol.redact(task, keep=["user_info.location"]) == {"user_info": {"location": {"c": 1}}, "x": 1}
    assert protocol.redact({"x": 1}) == {"x": 1}
    assert protocol.redact({"user_info": None}) == {"user_info": None}


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (None, None),
        ("task_id, output.duration", ["task_id", "output.duration"]),
        (["status"], ["status"]),
    ],
)
def test_validate_fields(fields: Any, expected: Any) -> None:
    assert protocol.validate_fields(fields) == expected


@pytest.mark.parametrize("fields", [[], ["a..b"], [""], [3], 5, "a,"])
def test_validate_fields_refuses_bad_paths(fields: Any) -> None:
    with pytest.raises(ValueError):
        protocol.validate_fields(fields)


# --------------------------------------------------------------------------------------------
# Create-a-run body
# --------------------------------------------------------------------------------------------

CONTACT = {"name": "Rajesh", "contact_number": "+919988776655", "document_id": "lead-1"}


def test_create_run_body_defaults_to_schedule_now() -> None:
    body = protocol.build_create_run_body(pilot=" sales-bot ", context="Follow up", documents=[CONTACT])
    assert body == {
        "pilot": "sales-bot",
        "context": "Follow up",
        "documents": [CONTACT],
        "schedule": {"type": "now"},
    }
    json.dumps(body)


def test_create_run_body_keeps_filters_and_normalises_numbers() -> None:
    body = protocol.build_create_run_body(
        pilot="bot",
        context="c",
        documents=[{"contact_number": 919988776655}, {"email": "a@b.c"}],
        schedule="auto",
        filters={"labels": ["x"]},
    )
    assert body["documents"] == [{"contact_number": "919988776655"}, {"email": "a@b.c"}]
    assert body["schedule"] == {"type": "auto"}
    assert body["filters"] == {"labels": ["x"]}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"pilot": ""}, "pilot"),
        ({"pilot": "bot\n"}, "pilot"),
        ({"context": ""}, "context"),
        ({"context": "  "}, "context"),
        ({"documents": []}, "empty"),
        ({"documents": "contacts.csv"}, "list"),
        ({"documents": [{"name": "Nobody"}]}, r"documents\[0\] \('Nobody'\) has neither"),
        ({"documents": [CONTACT, "x"]}, r"documents\[1\] must be an object"),
        ({"documents": [{"contact_number": True}]}, "neither"),
        ({"documents": [{"email": "not-an-email"}]}, "neither"),
        ({"schedule": "later"}, "schedule type"),
        ({"schedule": 5}, "schedule must be an object"),
        ({"schedule": {"type": "custom"}}, "calling_date"),
        ({"schedule": {"type": "custom", "calling_date": "2020-01-01", "calling_time": "10:00"}}, "future"),
        ({"schedule": {"type": "custom", "calling_date": "tomorrow", "calling_time": "10:00"}}, "invalid"),
        ({"filters": ["x"]}, "filters"),
    ],
)
def test_create_run_body_validation(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"pilot": "bot", "context": "c", "documents": [CONTACT], **kwargs}
    with pytest.raises(ValueError, match=match):
        protocol.build_create_run_body(**args)


def test_custom_schedule_in_the_future_is_kept() -> None:
    schedule = {"type": "custom", "calling_date": "2026-02-02", "calling_time": "09:30"}
    assert protocol.validate_schedule(schedule, now=NOW) == schedule
    with pytest.raises(ValueError, match="future"):
        protocol.validate_schedule(
            {**schedule, "calling_date": "2026-02-01", "calling_time": "11:59"}, now=NOW
        )


def test_user_agent_names_the_package_and_version() -> None:
    assert f"airflow-provider-unpod/{__version__}" == protocol.USER_AGENT


def test_page_walk_stops_a_list_that_keeps_growing() -> None:
    """Each page full of new items and a higher count: the walk gives up at twice its first plan."""
    walk = PageWalk(page_size=10, id_key="task_id")
    page, total, raised = 0, 30, None
    try:
        while (page := walk.next_page()) is not None:
            total += 10
            items = [{"task_id": f"T{page}-{i}"} for i in range(10)]
            walk.feed(page, Envelope(data=items, count=total))
    except UnpodProtocolError as err:
        raised = err
    assert raised is not None and "kept growing" in str(raised)
    assert page == walk.page_limit() == 2 * 4 + 2
