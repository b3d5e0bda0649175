"""The provider's hooks against the REAL Unpod server (the unpod-server kit), checked against Mongo.

Both hooks (``UnpodHook``, ``UnpodAsyncHook``) and every auth scheme the provider offers (Token,
JWT, Bearer), on every endpoint. Every list is compared with the raw Mongo documents the harness
route returns (oldest first, reversed to the API's newest first): nothing lost, nothing
duplicated, the same order, at several page sizes, sequential and concurrent. Then the business
errors (206), the 401s, unknown runs, creating a run (checked in Mongo, and the requests it
cost), 400 answers, and a poke-mode sensor through every status the server may show.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from realkit import (
    BAD_JWT_CONN,
    BAD_TOKEN_CONN,
    BEARER_CONN,
    JWT_CONN,
    OUTSIDER_CONN,
    TOKEN_CONN,
    UNKNOWN_ORG_CONN,
    UNKNOWN_RUN,
    UNKNOWN_SPACE,
    VIEWER_CONN,
    Kit,
    Tally,
    item_differences,
)

from unpod_provider import exceptions, protocol
from unpod_provider.exceptions import (
    UnpodAuthError,
    UnpodBadRequestError,
    UnpodBusinessError,
    UnpodCreateRunUncertainError,
    UnpodError,
    UnpodNotFoundError,
)
from unpod_provider.hooks import _transport
from unpod_provider.hooks.unpod import UnpodAsyncHook, UnpodHook

PAGE_SIZES = (1, 7, 13, 50, 100, 1000)
#: max_concurrency per mode: strictly sequential, the hook's default (10 pages at once), 4.
MODES: dict[str, int | None] = {"seq": 1, "default": None, "conc4": 4}
INVALID_SPACE = "Invalid Space Token"
NO_ACCESS = "You Don't have Access to this Space"
NO_OPERATION = "You Don't have Access to do operation to this Space"


def contacts(prefix: str, n: int, start: int = 0) -> list[dict[str, Any]]:
    return [
        {"name": f"{prefix} {i}", "contact_number": f"+1555{start + i:07d}", "document_id": f"{prefix}-{i}"}
        for i in range(n)
    ]


def expect_error(
    tally: Tally,
    what: str,
    call: Callable[[], Any],
    cls: type[BaseException],
    *contains: str,
    not_cls: type[BaseException] | None = None,
) -> BaseException:
    """``call()`` must raise ``cls`` (not ``not_cls``) whose message holds every ``contains``."""
    try:
        value = call()
    except Exception as err:  # noqa: BLE001 - judged below
        ok = (
            isinstance(err, cls)
            and (not_cls is None or not isinstance(err, not_cls))
            and all(text in str(err) for text in contains)
        )
        wanted = cls.__name__ + (f" (not {not_cls.__name__})" if not_cls else "")
        tally.check(
            ok,
            f"{what}: expected {wanted} mentioning {list(contains)}, "
            f"got {type(err).__name__}: {str(err)[:400]}",
        )
        return err
    shown = f"a list of {len(value)}" if isinstance(value, list) else repr(value)[:200]
    tally.check(False, f"{what}: expected {cls.__name__}, got {shown}")
    raise AssertionError("unreachable")


def auth_scheme_error() -> type[UnpodAuthError] | None:
    """``UnpodAuthSchemeError`` once the provider has it (expected behaviour 1)."""
    cls = getattr(exceptions, "UnpodAuthSchemeError", None)
    return cls if isinstance(cls, type) and issubclass(cls, UnpodAuthError) else None


def read_list(
    hook: UnpodHook, kind: str, space: str, page_size: int, mode: str, run_id: str = ""
) -> list[Any]:
    kwargs: dict[str, Any] = {"page_size": page_size, "max_concurrency": MODES[mode]}
    if kind == "space_tasks":
        return list(hook.iter_space_tasks(space, **kwargs))
    if kind == "space_runs":
        return list(hook.iter_space_runs(space, **kwargs))
    if kind == "run_tasks":
        return list(hook.iter_run_tasks(space, run_id, **kwargs))
    raise ValueError(kind)


def ids(items: list[dict[str, Any]], key: str) -> list[str]:
    return [str(item.get(key)) for item in items]


@pytest.fixture
def hook() -> Iterator[UnpodHook]:
    with UnpodHook(TOKEN_CONN) as h:
        yield h


# ============================================================================================
# Auth: JWT and Bearer everywhere; Token refused on organizations/spaces; wrong credentials
# ============================================================================================


@pytest.mark.parametrize("conn_id", [JWT_CONN, BEARER_CONN], ids=["JWT", "Bearer"])
def test_jwt_and_bearer_read_organizations_spaces_and_space_detail(
    conn_id: str, kit: Kit, tally: Tally
) -> None:
    with UnpodHook(conn_id) as h:
        orgs = h.list_organizations()
        tally.check(
            [o.get("domain_handle") for o in orgs] == [kit.org_handle],
            f"{conn_id}: organizations {orgs!r}",
        )
        spaces = h.list_spaces()
        tally.check(
            [s.get("token") for s in spaces] == [kit.space("empty"), kit.space("small"), kit.space("big")],
            f"{conn_id}: spaces (newest first, archived left out) {[s.get('token') for s in spaces]}",
        )
        space = h.get_space(kit.space("big"))
        tally.check(
            space.get("token") == kit.space("big"), f"{conn_id}: get_space(big) token {space.get('token')}"
        )
        agents = [a.get("handle") for a in space.get("agents") or []]
        tally.check(kit.pilot in agents, f"{conn_id}: get_space(big) agents {agents}")
        tally.check(h.get_space(kit.space("small")).get("token") == kit.space("small"), "get_space(small)")
        ok, message = h.test_connection()
        tally.check(ok is True, f"{conn_id}: test_connection() = {(ok, message)}")
        # The Token-only routes work with the JWT too.
        tally.compare_ids(
            f"{conn_id}: tasks of big",
            ids(h.list_space_tasks(kit.space("big"), page_size=1000), "task_id"),
            kit.mongo_ids("tasks", space_id=kit.space_id("big")),
        )


@pytest.mark.parametrize("space_key", ["archived", "unknown"])
def test_jwt_space_detail_of_archived_or_unknown_space_is_not_found(
    space_key: str, kit: Kit, tally: Tally
) -> None:
    token = UNKNOWN_SPACE if space_key == "unknown" else kit.space(space_key)
    with UnpodHook(JWT_CONN) as h:
        err = expect_error(tally, f"get_space({space_key})", lambda: h.get_space(token), UnpodNotFoundError)
    tally.check(getattr(err, "status_code", None) == 404, f"status {getattr(err, 'status_code', None)}")
    tally.check("Space not found" in str(err), f"message {err}")


@pytest.mark.parametrize("endpoint", ["list_organizations", "list_spaces", "get_space"])
def test_token_scheme_is_refused_on_organizations_and_spaces_with_a_scheme_error(
    endpoint: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    """Real answer: 401 'Authentication credentials were not provided.', WWW-Authenticate: JWT realm="api"."""
    calls: dict[str, Callable[[], Any]] = {
        "list_organizations": hook.list_organizations,
        "list_spaces": hook.list_spaces,
        "get_space": lambda: hook.get_space(kit.space("big")),
    }
    cls = auth_scheme_error()
    tally.check(cls is not None, "unpod_provider.exceptions has no UnpodAuthSchemeError(UnpodAuthError)")
    assert cls is not None
    err = expect_error(
        tally, f"Token: {endpoint}", calls[endpoint], cls, "refuses the Token scheme", "JWT or Bearer"
    )
    tally.check(getattr(err, "status_code", None) == 401, f"status {getattr(err, 'status_code', None)}")


def test_token_test_connection_says_the_token_works_on_runs_and_tasks_only(
    tally: Tally, hook: UnpodHook
) -> None:
    ok, message = hook.test_connection()
    tally.check(ok is False, f"Token: test_connection() = {(ok, message)}")
    for text in ("works on runs and tasks", "refuses the Token scheme"):
        tally.check(text in message, f"Token: test_connection message lacks {text!r}: {message}")


def test_bad_token_is_rejected_as_credentials_not_as_a_scheme(kit: Kit, tally: Tally) -> None:
    """Real answer on the task routes: 401 'Invalid token.', WWW-Authenticate: Token."""
    scheme_error = auth_scheme_error() or type("NoSchemeErrorYet", (Exception,), {})
    big = kit.space("big")
    with UnpodHook(BAD_TOKEN_CONN) as h:
        calls: dict[str, Callable[[], Any]] = {
            "list_space_tasks": lambda: h.list_space_tasks(big),
            "list_space_runs": lambda: h.list_space_runs(big),
            "list_run_tasks": lambda: h.list_run_tasks(big, kit.seeded_run_ids("big")[0]),
            "find_run": lambda: h.find_run(big, kit.seeded_run_ids("big")[0]),
            "create_run": lambda: h.create_run(
                kit.space("small"), pilot=kit.pilot, context="never created", documents=contacts("Bad", 1)
            ),
        }
        before = kit.mongo_ids("runs", space_id=kit.space_id("small"))
        for name, call in calls.items():
            err = expect_error(
                tally,
                f"bad token: {name}",
                call,
                UnpodAuthError,
                "rejected the credentials",
                not_cls=scheme_error,
            )
            tally.check(
                getattr(err, "status_code", None) == 401,
                f"{name}: status {getattr(err, 'status_code', None)}",
            )
            tally.check(not isinstance(err, UnpodCreateRunUncertainError), f"{name}: {type(err).__name__}")
        tally.check(
            kit.mongo_ids("runs", space_id=kit.space_id("small")) == before, "bad token created a run"
        )
        # organizations/ answers a bad Token exactly like a good one (401 'not provided', JWT realm).
        expect_error(tally, "bad token: list_organizations", h.list_organizations, UnpodAuthError)


def test_bad_token_test_connection_says_rejected(tally: Tally) -> None:
    with UnpodHook(BAD_TOKEN_CONN) as h:
        ok, message = h.test_connection()
    tally.check(ok is False and "rejected" in message, f"bad token: test_connection() = {(ok, message)}")
    tally.check("refuses the Token scheme" not in message, f"bad token blamed on the scheme: {message}")


def test_bad_jwt_is_rejected(tally: Tally) -> None:
    """Real answer: 401 'Invalid or expired token.', WWW-Authenticate: JWT realm="api"."""
    scheme_error = auth_scheme_error() or type("NoSchemeErrorYet", (Exception,), {})
    with UnpodHook(BAD_JWT_CONN) as h:
        expect_error(
            tally,
            "bad JWT: list_organizations",
            h.list_organizations,
            UnpodAuthError,
            "rejected the credentials",
            not_cls=scheme_error,
        )
        expect_error(tally, "bad JWT: list_spaces", h.list_spaces, UnpodAuthError, not_cls=scheme_error)
        ok, message = h.test_connection()
    tally.check(ok is False and "rejected" in message, f"bad JWT: test_connection() = {(ok, message)}")


def test_unknown_org_handle(tally: Tally) -> None:
    """Real answer: spaces/ with an unknown Org-Handle is 404 {"message": "Organization not found"}."""
    with UnpodHook(UNKNOWN_ORG_CONN) as h:
        expect_error(
            tally, "unknown org: list_spaces", h.list_spaces, UnpodNotFoundError, "Organization not found"
        )
        ok, message = h.test_connection()
    tally.check(ok is False and "no-such-org" in message, f"unknown org: test_connection() = {(ok, message)}")


# ============================================================================================
# Lists against Mongo: page sizes x sequential/concurrent
# ============================================================================================


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("page_size", PAGE_SIZES)
@pytest.mark.parametrize("kind", ["space_tasks", "space_runs"])
def test_big_space_lists_match_mongo(
    kind: str, page_size: int, mode: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    collection, key = ("tasks", "task_id") if kind == "space_tasks" else ("runs", "run_id")
    expected = kit.mongo_ids(collection, space_id=kit.space_id("big"))
    got = read_list(hook, kind, kit.space("big"), page_size, mode)
    tally.compare_ids(f"{kind}(big, page_size={page_size}, {mode})", ids(got, key), expected)
    if kind == "space_tasks":
        tally.check(len(expected) >= 260, f"big has {len(expected)} tasks in Mongo")


@pytest.mark.parametrize("mode", ["seq", "default"])
@pytest.mark.parametrize("page_size", [1, 100])
@pytest.mark.parametrize("space_key", ["small", "empty", "archived"])
@pytest.mark.parametrize("kind", ["space_tasks", "space_runs"])
def test_small_empty_and_archived_space_lists_match_mongo(
    kind: str, space_key: str, page_size: int, mode: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    collection, key = ("tasks", "task_id") if kind == "space_tasks" else ("runs", "run_id")
    expected = kit.mongo_ids(collection, space_id=kit.space_id(space_key))
    got = read_list(hook, kind, kit.space(space_key), page_size, mode)
    tally.compare_ids(f"{kind}({space_key}, page_size={page_size}, {mode})", ids(got, key), expected)
    if space_key in ("empty", "archived"):
        tally.check(got == [], f"{kind}({space_key}) is not empty: {len(got)}")


def seeded_runs() -> list[str]:
    """The manifest's runs, by position (the ids are read from the kit at run time)."""
    return ["big-newest-pending", "big-partially_completed", "big-oldest-completed", "small-scheduled"]


def seeded_run(kit: Kit, label: str) -> tuple[str, str]:
    """(space key, run id) of a seeded run named as in ``seeded_runs``."""
    space_key = label.split("-", 1)[0]
    position = {"big-newest-pending": 0, "big-partially_completed": 1, "big-oldest-completed": 2}.get(
        label, 0
    )
    return space_key, kit.seeded_run_ids(space_key)[position]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("page_size", [7, 13, 100, 1000])
@pytest.mark.parametrize("run_label", seeded_runs())
def test_tasks_of_every_seeded_run_match_mongo(
    run_label: str, page_size: int, mode: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    space_key, run_id = seeded_run(kit, run_label)
    manifest = kit.seeded_runs()[run_id]
    expected = kit.mongo_ids("tasks", run_id=run_id)
    tally.check(
        expected == manifest["task_ids_newest_first"], f"{run_label}: Mongo differs from the seed manifest"
    )
    got = read_list(hook, "run_tasks", kit.space(space_key), page_size, mode, run_id)
    tally.compare_ids(f"run_tasks({run_label}, page_size={page_size}, {mode})", ids(got, "task_id"), expected)


def test_small_run_tasks_one_per_page(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    run_id = kit.seeded_run_ids("small")[0]
    for mode in MODES:
        got = read_list(hook, "run_tasks", kit.space("small"), 1, mode, run_id)
        tally.compare_ids(
            f"run_tasks(small, page_size=1, {mode})",
            ids(got, "task_id"),
            kit.mongo_ids("tasks", run_id=run_id),
        )


def test_items_equal_their_mongo_documents(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    """Field by field (the API adds run_mode "dev" to tasks; runs expose a subset)."""
    big = kit.space("big")
    docs = {d["task_id"]: d for d in kit.mongo("tasks", space_id=kit.space_id("big"))}
    for item in hook.list_space_tasks(big):
        diffs = item_differences("tasks", item, docs.get(item["task_id"], {}))
        tally.check(not diffs, f"task {item['task_id']}: {diffs[:5]}")
    runs = {d["run_id"]: d for d in kit.mongo("runs", space_id=kit.space_id("big"))}
    for run in hook.list_space_runs(big):
        diffs = item_differences("runs", run, runs.get(run["run_id"], {}))
        tally.check(not diffs, f"run {run['run_id']}: {diffs[:5]}")
        tally.check(
            set(run)
            <= {
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
            },
            f"run fields {sorted(run)}",
        )
    run_id = kit.seeded_run_ids("big")[1]
    docs = {d["task_id"]: d for d in kit.mongo("tasks", run_id=run_id)}
    for item in hook.list_run_tasks(big, run_id, page_size=13):
        diffs = item_differences("tasks", item, docs.get(item["task_id"], {}))
        tally.check(not diffs, f"run task {item['task_id']}: {diffs[:5]}")


@pytest.mark.parametrize("status", ["completed", "failed", "pending", ("failed", "pending")], ids=str)
def test_status_filter_is_the_tasks_own_status_on_the_client(
    status: str | tuple[str, ...], kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    wanted = {status} if isinstance(status, str) else set(status)
    expected = [
        d["task_id"]
        for d in kit.mongo_newest_first("tasks", space_id=kit.space_id("big"))
        if d["status"] in wanted
    ]
    got = hook.list_space_tasks(kit.space("big"), status=status, page_size=50)
    tally.compare_ids(f"space_tasks(big, status={status})", ids(got, "task_id"), expected)
    tally.check(bool(expected), f"no {status} task in big")


@pytest.mark.parametrize("page_size", [1, 13, 1000])
@pytest.mark.parametrize("conn_id", [JWT_CONN, BEARER_CONN], ids=["JWT", "Bearer"])
def test_lists_with_jwt_and_bearer_match_mongo(conn_id: str, page_size: int, kit: Kit, tally: Tally) -> None:
    big = kit.space("big")
    with UnpodHook(conn_id) as h:
        if page_size > 1:
            got = read_list(h, "space_tasks", big, page_size, "default")
            tally.compare_ids(
                f"{conn_id}: space_tasks(big, {page_size})",
                ids(got, "task_id"),
                kit.mongo_ids("tasks", space_id=kit.space_id("big")),
            )
        got = read_list(h, "space_runs", big, page_size, "seq")
        tally.compare_ids(
            f"{conn_id}: space_runs(big, {page_size})",
            ids(got, "run_id"),
            kit.mongo_ids("runs", space_id=kit.space_id("big")),
        )
        run_id = kit.seeded_run_ids("big")[2]
        got = read_list(h, "run_tasks", big, max(page_size, 7), "conc4", run_id)
        tally.compare_ids(
            f"{conn_id}: run_tasks(big oldest, {page_size})",
            ids(got, "task_id"),
            kit.mongo_ids("tasks", run_id=run_id),
        )


@pytest.mark.parametrize("mode", ["seq", "default"])
def test_a_list_that_grows_while_read_loses_nothing(
    mode: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    big = kit.space("big")
    original = kit.mongo_ids("tasks", space_id=kit.space_id("big"))
    got: list[str] = []
    with UnpodHook(TOKEN_CONN) as writer:
        for i, item in enumerate(hook.iter_space_tasks(big, page_size=20, max_concurrency=MODES[mode])):
            got.append(item["task_id"])
            if i == 5:  # in the middle of page 1: three tasks land at the head of the list
                writer.create_run(
                    big,
                    pilot=kit.pilot,
                    context="arrives mid-read",
                    documents=contacts(f"Late{mode}", 3, 900),
                )
    tally.check(len(got) == len(set(got)), f"grown list ({mode}): {len(got) - len(set(got))} duplicated")
    tally.check(
        set(original) <= set(got),
        f"grown list ({mode}): {len(set(original) - set(got))} of the original lost",
    )
    tally.check(
        [t for t in got if t in set(original)] == original,
        f"grown list ({mode}): the original items out of order",
    )


# ============================================================================================
# Runs: find_run / get_run, the async hook
# ============================================================================================


def test_find_and_get_every_seeded_run(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    for label in seeded_runs():
        space_key, run_id = seeded_run(kit, label)
        doc = kit.mongo("runs", run_id=run_id)[0]
        found = hook.find_run(kit.space(space_key), run_id, page_size=1)
        tally.check(found is not None and found["status"] == doc["status"], f"find_run({label}) = {found}")
        got = hook.get_run(kit.space(space_key), run_id)
        tally.check(
            not item_differences("runs", got, doc), f"get_run({label}): {item_differences('runs', got, doc)}"
        )
        tally.check(got["status"] == kit.seeded_runs()[run_id]["status"], f"{label} status {got['status']}")


def test_unknown_run(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    """Real answer: runs/<unknown>/tasks/ is 200 {"count": 0, "data": []}; the runs list lacks it."""
    big = kit.space("big")
    tally.check(hook.find_run(big, UNKNOWN_RUN) is None, "find_run(unknown) is not None")
    err = expect_error(tally, "get_run(unknown)", lambda: hook.get_run(big, UNKNOWN_RUN), UnpodNotFoundError)
    tally.check(
        getattr(err, "identifier", None) == UNKNOWN_RUN, f"identifier {getattr(err, 'identifier', None)}"
    )
    tally.check(hook.list_run_tasks(big, UNKNOWN_RUN) == [], "tasks of an unknown run")
    foreign_run = kit.seeded_run_ids("foreign")[0]  # another space's run, asked for in big
    tally.check(hook.list_run_tasks(big, foreign_run) == [], "tasks of another space's run, asked in big")
    tally.check(hook.find_run(big, foreign_run) is None, "another space's run found in big")


@pytest.mark.parametrize("conn_id", [TOKEN_CONN, JWT_CONN], ids=["Token", "JWT"])
async def test_async_hook_lists_runs_like_mongo_and_finds_runs(conn_id: str, kit: Kit, tally: Tally) -> None:
    async with UnpodAsyncHook(conn_id) as ah:
        for space_key in ("big", "small", "empty"):
            expected = kit.mongo_ids("runs", space_id=kit.space_id(space_key))
            for page_size in (1, 2, 50, 1000):
                got = [r async for r in ah.aiter_space_runs(kit.space(space_key), page_size=page_size)]
                tally.compare_ids(
                    f"{conn_id} async: runs({space_key}, {page_size})", ids(got, "run_id"), expected
                )
        for label in seeded_runs():
            space_key, run_id = seeded_run(kit, label)
            found = await ah.afind_run(kit.space(space_key), run_id, page_size=1)
            doc = kit.mongo("runs", run_id=run_id)[0]
            tally.check(
                found is not None and not item_differences("runs", found, doc),
                f"afind_run({label}) = {found}",
            )
        tally.check(
            await ah.afind_run(kit.space("big"), UNKNOWN_RUN) is None, "afind_run(unknown) is not None"
        )


async def test_async_hook_errors(kit: Kit, tally: Tally) -> None:
    async def first(conn_id: str, space: str) -> Any:
        async with UnpodAsyncHook(conn_id) as ah:
            return [r async for r in ah.aiter_space_runs(space)]

    for what, conn_id, space, cls, text in (
        ("bad token", BAD_TOKEN_CONN, kit.space("big"), UnpodAuthError, "rejected the credentials"),
        ("unknown space", TOKEN_CONN, UNKNOWN_SPACE, UnpodBusinessError, INVALID_SPACE),
        ("foreign space", TOKEN_CONN, kit.space("foreign"), UnpodBusinessError, NO_ACCESS),
        ("viewer on big", VIEWER_CONN, kit.space("big"), UnpodBusinessError, NO_OPERATION),
    ):
        try:
            await first(conn_id, space)
        except Exception as err:  # noqa: BLE001 - judged below
            tally.check(
                isinstance(err, cls) and text in str(err), f"async {what}: {type(err).__name__}: {err}"
            )
        else:
            tally.check(False, f"async {what}: no error")


# ============================================================================================
# Business errors (206)
# ============================================================================================


def _space_calls(h: UnpodHook, space: str, run_id: str, pilot: str) -> dict[str, Callable[[], Any]]:
    return {
        "list_space_tasks": lambda: h.list_space_tasks(space),
        "list_space_runs": lambda: h.list_space_runs(space),
        "list_run_tasks": lambda: h.list_run_tasks(space, run_id),
        "find_run": lambda: h.find_run(space, run_id),
        "create_run": lambda: h.create_run(
            space, pilot=pilot, context="refused", documents=contacts("Refused", 1)
        ),
    }


@pytest.mark.parametrize(
    ("case", "conn_id", "space_key", "text"),
    [
        ("unknown space", TOKEN_CONN, "unknown", INVALID_SPACE),
        ("foreign space", TOKEN_CONN, "foreign", NO_ACCESS),
        ("viewer on big", VIEWER_CONN, "big", NO_OPERATION),
        ("outsider on big", OUTSIDER_CONN, "big", NO_ACCESS),
        ("unknown space (JWT)", JWT_CONN, "unknown", INVALID_SPACE),
    ],
)
def test_business_errors_are_typed_and_name_the_reason(
    case: str, conn_id: str, space_key: str, text: str, kit: Kit, tally: Tally
) -> None:
    """Real answer: 206 {"status_code": 206, "message": <text>, "data": {}}."""
    space = UNKNOWN_SPACE if space_key == "unknown" else kit.space(space_key)
    run_id = kit.seeded_run_ids("foreign" if space_key == "foreign" else "big")[0]
    runs_before = len(kit.mongo("runs"))
    with UnpodHook(conn_id) as h:
        for name, call in _space_calls(h, space, run_id, kit.pilot).items():
            if space_key == "big" and name == "create_run" and conn_id == VIEWER_CONN:
                continue  # a viewer's create is checked below, in small (where it has no role at all)
            err = expect_error(tally, f"{case}: {name}", call, UnpodBusinessError, text)
            tally.check(
                getattr(err, "status_code", None) == 206,
                f"{case}: {name}: status {getattr(err, 'status_code', None)}",
            )
            tally.check(not isinstance(err, UnpodCreateRunUncertainError), f"{case}: {name} is uncertain")
    tally.check(len(kit.mongo("runs")) == runs_before, f"{case}: a refused request created a run")


# ============================================================================================
# Creating a run
# ============================================================================================


def test_create_run_in_small_lands_in_mongo(kit: Kit, tally: Tally) -> None:
    small, small_id = kit.space("small"), kit.space_id("small")
    before = set(kit.mongo_ids("runs", space_id=small_id))
    docs = contacts("Contract", 3, 100)
    with UnpodHook(TOKEN_CONN) as h:
        result = h.create_run(
            small, pilot=kit.pilot, context="Contract suite: call these contacts", documents=docs
        )
        run_id = result["run_id"]
        new_runs = [r for r in kit.mongo("runs", space_id=small_id) if r["run_id"] not in before]
        tally.check(
            [r["run_id"] for r in new_runs] == [run_id],
            f"new runs in Mongo {[r['run_id'] for r in new_runs]}",
        )
        run_doc = new_runs[0]
        tally.check(run_doc["status"] == "pending", f"new run status {run_doc['status']}")
        tally.check(run_doc.get("batch_count") == 3, f"batch_count {run_doc.get('batch_count')}")
        tasks = kit.mongo("tasks", run_id=run_id)
        tally.check(
            sorted(result["task_ids"]) == sorted(t["task_id"] for t in tasks),
            f"task_ids {result['task_ids']} != Mongo {[t['task_id'] for t in tasks]}",
        )
        tally.check(
            result.get("status") == {t: "pending" for t in result["task_ids"]},
            f"create status {result.get('status')}",
        )
        by_ref = {t["ref_id"]: t for t in tasks}
        for doc in docs:
            task = by_ref.get(doc["document_id"])
            tally.check(task is not None, f"no task with ref_id {doc['document_id']}")
            assert task is not None
            tally.check(
                task["input"].get("contact_number") == doc["contact_number"]
                and task["input"].get("name") == doc["name"]
                and task["assignee"] == kit.pilot
                and task["status"] == "pending",
                f"task {task['task_id']}: {task['input']} {task['assignee']} {task['status']}",
            )
        listed = h.list_run_tasks(small, run_id)
        tally.compare_ids(
            "tasks of the created run", ids(listed, "task_id"), kit.mongo_ids("tasks", run_id=run_id)
        )
        run = h.get_run(small, run_id)
        tally.check(run["status"] == "pending" and run.get("batch_count") == 3, f"get_run(created) = {run}")
        tally.compare_ids(
            "runs of small after the create",
            ids(h.list_space_runs(small), "run_id"),
            kit.mongo_ids("runs", space_id=small_id),
        )


def test_create_run_paths_and_request_count(kit: Kit, tally: Tally, mocker: Any) -> None:
    """A fresh hook pays one 404 (tasks/create/, HTML), then tasks/ creates; the hook remembers it."""
    small = kit.space("small")
    spy = mocker.patch.object(_transport, "send", wraps=_transport.send)
    offset = kit.log_offset()

    def sent() -> list[str]:
        return [f"{c.args[2]} {c.args[3]}" for c in spy.call_args_list]

    documented, server_path = protocol.create_run_paths(small)
    with UnpodHook(TOKEN_CONN) as h:
        first = h.create_run(
            small, pilot=kit.pilot, context="first create", documents=contacts("PathA", 2, 200)
        )
        tally.check(sent() == [f"POST {documented}", f"POST {server_path}"], f"first create sent {sent()}")
        server_seen = kit.requests_since(offset, "POST", f"/spaces/{small}/tasks/")
        tally.check(
            len(server_seen) == 2 and server_seen[0].endswith(" 404") and server_seen[1].endswith(" 200"),
            f"server saw {server_seen}",
        )
        spy.reset_mock()
        offset = kit.log_offset()
        second = h.create_run(
            small, pilot=kit.pilot, context="second create", documents=contacts("PathB", 2, 210)
        )
        tally.check(sent() == [f"POST {server_path}"], f"second create on the same hook sent {sent()}")
        tally.check(
            len(kit.requests_since(offset, "POST", f"/spaces/{small}/tasks/")) == 1,
            f"server saw {kit.requests_since(offset, 'POST', f'/spaces/{small}/tasks/')}",
        )
    for result in (first, second):
        tally.check(len(kit.mongo("tasks", run_id=result["run_id"])) == 2, f"run {result['run_id']} in Mongo")


def test_create_run_with_auto_schedule_is_scheduled(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    result = hook.create_run(
        kit.space("small"),
        pilot=kit.pilot,
        context="auto",
        documents=contacts("Auto", 1, 300),
        schedule="auto",
    )
    run = kit.mongo("runs", run_id=result["run_id"])
    tally.check(bool(run) and run[0]["status"] == "scheduled", f"auto schedule: Mongo run {run[:1]}")


@pytest.mark.parametrize(
    ("case", "body", "detail"),
    [
        (
            "no documents, no filters",
            {"documents": [], "schedule": {"type": "now"}},
            "No tasks provided and filters missing in data",
        ),
        (
            "custom schedule in the past",
            {
                "documents": [{"name": "Past", "contact_number": "+15550000400"}],
                "schedule": {"type": "custom", "calling_date": "2020-01-01", "calling_time": "10:00"},
            },
            "Scheduled time must be in the future.",
        ),
        (
            "custom schedule without date/time",
            {
                "documents": [{"name": "NoDate", "contact_number": "+15550000401"}],
                "schedule": {"type": "custom"},
            },
            "Invalid schedule format",
        ),
    ],
)
def test_400_answers_are_bad_request_errors_with_the_field_errors(
    case: str, body: dict[str, Any], detail: str, kit: Kit, tally: Tally, hook: UnpodHook
) -> None:
    """Real answer: 400 {"status_code": 400, "message": "Task Creation Failed",
    "data": {"errors": {"detail": ...}}, "errors": {"detail": ...}}.

    ``create_run`` validates these bodies first (empty documents, a schedule in the past), so the
    request goes through the hook's own request path with the body the server refuses.
    """
    _, server_path = protocol.create_run_paths(kit.space("small"))
    payload = {"pilot": kit.pilot, "context": "refused", **body}
    runs_before = len(kit.mongo("runs"))
    err = expect_error(
        tally,
        f"400 {case}",
        lambda: hook._call(
            "POST",
            server_path,
            what="creating a run",
            json_body=payload,
            resource="space",
            identifier=kit.space("small"),
        ),
        UnpodBadRequestError,
        detail,
    )
    tally.check(getattr(err, "status_code", None) == 400, f"status {getattr(err, 'status_code', None)}")
    errors = getattr(err, "errors", None)
    tally.check(isinstance(errors, dict) and detail in json.dumps(errors), f"{case}: .errors = {errors!r}")
    tally.check(len(kit.mongo("runs")) == runs_before, f"{case}: a run was created")


def test_206_validation_errors_carry_the_field_errors(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    """Real answer: 206 {"message": "There is some Validation error", "errors": {"context": [...]}}."""
    _, server_path = protocol.create_run_paths(kit.space("small"))
    payload = {"pilot": kit.pilot, "documents": [{"name": "x", "contact_number": "+15550000500"}]}
    err = expect_error(
        tally,
        "206 missing context",
        lambda: hook._call("POST", server_path, what="creating a run", json_body=payload),
        UnpodBusinessError,
        "There is some Validation error",
        "context",
    )
    errors = getattr(err, "errors", None)
    tally.check(isinstance(errors, dict) and "context" in errors, f".errors = {errors!r}")


def test_create_with_a_numeric_document_id(kit: Kit, tally: Tally, hook: UnpodHook) -> None:
    """The client accepts ``document_id: 7``; the real server answers 422 (ref_id must be a string).

    Either outcome is fine: the client sends it as a string (created, ref_id "7"), or a typed,
    certain error and no run in Mongo. Never "uncertain", never a crash.
    """
    small_id = kit.space_id("small")
    before = set(kit.mongo_ids("runs", space_id=small_id))
    documents = [{"name": "Numeric", "contact_number": "+15550000600", "document_id": 7}]
    try:
        result = hook.create_run(
            kit.space("small"), pilot=kit.pilot, context="numeric id", documents=documents
        )
    except UnpodError as err:
        tally.check(
            not isinstance(err, UnpodCreateRunUncertainError), f"numeric document_id: uncertain: {err}"
        )
        tally.check(
            set(kit.mongo_ids("runs", space_id=small_id)) == before, "numeric document_id: a run was left"
        )
        tally.check(
            getattr(err, "status_code", None) == 422, f"numeric document_id: {type(err).__name__}: {err}"
        )
    else:
        tasks = kit.mongo("tasks", run_id=result["run_id"])
        tally.check([t["ref_id"] for t in tasks] == ["7"], f"numeric document_id: tasks {tasks}")


# ============================================================================================
# Run statuses: every status the server (and the docs) use is known to the provider
# ============================================================================================


def test_run_status_constants() -> None:
    not_started = set(getattr(protocol, "RUN_STATUSES_NOT_STARTED", ()))
    in_progress = set(getattr(protocol, "RUN_STATUSES_IN_PROGRESS", ()))
    terminal = set(getattr(protocol, "RUN_STATUSES_TERMINAL", ()))
    from realkit import TALLY

    TALLY.check(
        {"pending", "scheduled", "queued", "hold"} <= not_started, f"RUN_STATUSES_NOT_STARTED = {not_started}"
    )
    TALLY.check(
        {"in_progress", "processing", "running"} <= in_progress, f"RUN_STATUSES_IN_PROGRESS = {in_progress}"
    )
    TALLY.check(
        {"completed", "partially_completed", "failed", "cancelled"} <= terminal,
        f"RUN_STATUSES_TERMINAL = {terminal}",
    )


class _FakeTI:
    def __init__(self) -> None:
        self.pushed: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.pushed[key] = value

    def xcom_pull(self, *args: Any, **kwargs: Any) -> Any:
        return None

    def get_first_reschedule_date(self, context: Any) -> Any:
        return None


def test_poke_sensor_waits_through_every_in_between_status_without_warning(
    kit: Kit, tally: Tally, mocker: Any
) -> None:
    """One status per look, set through the harness route after each look: the sensor sees them all,
    waits on each, succeeds on completed and never logs the unknown-status warning."""
    from unpod_provider.sensors.unpod import RunCompletedSensor

    small = kit.space("small")
    with UnpodHook(TOKEN_CONN) as h:
        run_id = h.create_run(
            small, pilot=kit.pilot, context="statuses", documents=contacts("Status", 2, 700)
        )["run_id"]
    sequence = ["queued", "hold", "scheduled", "processing", "in_progress", "running", "completed"]
    seen: list[str] = []
    lock = threading.Lock()
    original = UnpodHook.find_run

    def find_run(self: UnpodHook, *args: Any, **kwargs: Any) -> Any:
        run = original(self, *args, **kwargs)
        with lock:
            seen.append(str((run or {}).get("status")))
            if len(seen) <= len(sequence):
                nxt = sequence[len(seen) - 1]
                kit.set_run_status(run_id, nxt, "completed" if nxt == "completed" else None)
        return run

    mocker.patch.object(UnpodHook, "find_run", find_run)
    log = mocker.patch.object(RunCompletedSensor, "log", new_callable=mocker.PropertyMock).return_value
    sensor = RunCompletedSensor(
        task_id="wait",
        space_token=small,
        run_id=run_id,
        poke_interval=0.05,
        timeout=120,
        deferrable=False,
        mode="poke",
    )
    context: Any = {"ti": _FakeTI(), "params": {}}  # the slice of the task context the sensor uses
    result = sensor.execute(context)
    tally.check(seen == ["pending", *sequence], f"statuses seen by the sensor: {seen}")
    tally.check(result.get("status") == "completed", f"sensor returned {result}")
    warnings = [
        str(c.args[1] if len(c.args) > 1 else c.args[0]) for c in log.warning.call_args_list if c.args
    ]
    tally.check(
        not any("does not know" in w or "unknown" in w.lower() for w in warnings), f"warnings: {warnings}"
    )


async def test_trigger_waits_through_in_between_statuses_without_warning(
    kit: Kit, tally: Tally, mocker: Any
) -> None:
    """The deferrable path's trigger, in process: processing/in_progress are waited on, then completed."""
    from unpod_provider.triggers.unpod import RunCompletedTrigger

    small = kit.space("small")
    with UnpodHook(TOKEN_CONN) as h:
        run_id = h.create_run(small, pilot=kit.pilot, context="trigger", documents=contacts("Trig", 1, 800))[
            "run_id"
        ]
    sequence = ["processing", "in_progress", "completed"]
    seen: list[str] = []
    original = UnpodAsyncHook.afind_run

    async def afind_run(self: UnpodAsyncHook, *args: Any, **kwargs: Any) -> Any:
        run = await original(self, *args, **kwargs)
        seen.append(str((run or {}).get("status")))
        if len(seen) <= len(sequence):
            await asyncio.to_thread(kit.set_run_status, run_id, sequence[len(seen) - 1])
        return run

    mocker.patch.object(UnpodAsyncHook, "afind_run", afind_run)
    log = mocker.patch.object(RunCompletedTrigger, "log", new_callable=mocker.PropertyMock).return_value
    import time

    trigger = RunCompletedTrigger(
        space_token=small,
        run_id=run_id,
        unpod_conn_id=TOKEN_CONN,
        poll_interval=0.05,
        end_time=time.time() + 120,
    )
    events = [event async for event in trigger.run()]
    payload = events[0].payload if events else {}
    tally.check(
        payload.get("status") == "success" and payload.get("run_status") == "completed", f"event {payload}"
    )
    tally.check(seen[-len(sequence) :] == ["processing", "in_progress", "completed"], f"trigger saw {seen}")
    warnings = [str(c.args) for c in log.warning.call_args_list]
    tally.check(not any("does not know" in w for w in warnings), f"trigger warnings: {warnings}")
