"""Helpers of the real-server suite: where the kit is, its connection, raw Mongo reads, the tally.

The kit (``unpod-server``, see its README) runs the real Unpod server code (parvbhullar/unpod at
commit ebe59052095896f0ece2fcf08245b6a3bc835d56) on loopback. ``start.sh`` prints one JSON line
(base URL, tokens, space tokens, harness URL, seed manifest); the harness routes give the raw
Mongo documents (oldest first) and play the executor (``POST /runs/<id>/status``).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

SUITE_DIR = Path(__file__).resolve().parent
REPO_ROOT = SUITE_DIR.parent.parent
TRUE_VALUES = frozenset({"1", "true", "yes", "on", "y"})

#: The Unpod commit the kit runs (README "Tested against").
UNPOD_COMMIT = "ebe59052095896f0ece2fcf08245b6a3bc835d56"

#: Connection ids the suite defines (as ``AIRFLOW_CONN_<ID>`` variables) for every test.
TOKEN_CONN = "unpod_default"
JWT_CONN = "unpod_jwt"
BEARER_CONN = "unpod_bearer"
BAD_TOKEN_CONN = "unpod_bad_token"
BAD_JWT_CONN = "unpod_bad_jwt"
VIEWER_CONN = "unpod_viewer"
OUTSIDER_CONN = "unpod_outsider"
UNKNOWN_ORG_CONN = "unpod_unknown_org"

UNKNOWN_SPACE = "NOSUCHSPACE0000000000000"
UNKNOWN_RUN = "R" + "0" * 32


def env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUE_VALUES


def in_ci() -> bool:
    """``CI`` set to a true value: a missing kit or a failed start fails the suite, never skips."""
    return env_true("CI")


def kit_dir() -> Path:
    """``$UNPOD_SERVER_KIT``, else ``<repo>/../shared/unpod-server`` (where CI puts it)."""
    configured = os.environ.get("UNPOD_SERVER_KIT")
    return (
        Path(configured).expanduser().resolve()
        if configured
        else (REPO_ROOT.parent / "shared" / "unpod-server")
    )


def server_home() -> Path:
    """``$UNPOD_SERVER_HOME``, else ``${XDG_CACHE_HOME:-~/.cache}/airflow-provider-unpod/unpod-server``.

    Outside the repo and kept between runs: the kit's venv (~400 MB) and migrated template
    database are built once.
    """
    configured = os.environ.get("UNPOD_SERVER_HOME")
    if configured:
        return Path(configured).expanduser().resolve()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser().resolve() / "airflow-provider-unpod" / "unpod-server"


# --------------------------------------------------------------------------------------------
# The tally: every comparison and expected outcome is one check
# --------------------------------------------------------------------------------------------


@dataclass(repr=False)
class Tally:
    checks: int = 0
    ok: int = 0
    failed: list[str] = field(default_factory=list)
    lists: int = 0
    items: int = 0
    lost: int = 0
    duplicated: int = 0
    misordered: int = 0
    active: bool = False
    status_line: str | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def check(self, ok: bool, what: str) -> None:
        """Count one check; raise ``AssertionError(what)`` when it failed."""
        with self._lock:
            self.checks += 1
            if ok:
                self.ok += 1
            else:
                self.failed.append(what.splitlines()[0][:200])
        if not ok:
            raise AssertionError(what)

    def compare_ids(self, what: str, got: Sequence[str], expected: Sequence[str]) -> None:
        """One list against Mongo: nothing lost, nothing duplicated, the same (API) order."""
        counts = Counter(got)
        duplicated = sum(n - 1 for n in counts.values() if n > 1)
        lost = len(set(expected) - set(got))
        extra = len(set(got) - set(expected))
        same_order = list(got) == list(expected)
        with self._lock:
            self.lists += 1
            self.items += len(got)
            self.lost += lost
            self.duplicated += duplicated
            self.misordered += 0 if same_order else 1
        self.check(
            same_order and not lost and not duplicated and not extra,
            f"{what}: got {len(got)} items, Mongo has {len(expected)}: {lost} lost, {duplicated} duplicated, "
            f"{extra} not in Mongo, same order: {same_order}\n  first got {list(got)[:3]}\n  first expected "
            f"{list(expected)[:3]}",
        )

    def __repr__(self) -> str:
        return f"Tally({self.checks} checks, {self.ok} ok)"

    def summary(self) -> str:
        line = f"real server: {self.checks} checks, {self.ok} ok"
        if self.failed:
            line += f", {len(self.failed)} failed"
        line += (
            f"; {self.lists} lists compared with Mongo ({self.items} items): {self.lost} lost, "
            f"{self.duplicated} duplicated, {self.misordered} out of order"
        )
        return line


TALLY = Tally()


# --------------------------------------------------------------------------------------------
# The running kit
# --------------------------------------------------------------------------------------------


def _http_json(url: str, *, data: Any = None, timeout: float = 30.0) -> Any:
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(
        url,
        data=body,
        method="POST" if body is not None else "GET",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.load(response)


@dataclass
class Kit:
    """The connection line ``start.sh`` printed, plus the harness and the server's access log."""

    conn: dict[str, Any]
    home: Path
    kit: Path
    start_seconds: float = 0.0

    @property
    def base_url(self) -> str:
        return str(self.conn["base_url"])

    @property
    def token(self) -> str:
        return str(self.conn["token"])

    @property
    def jwt(self) -> str:
        return str(self.conn["jwt"])

    @property
    def org_handle(self) -> str:
        return str(self.conn["org_handle"])

    @property
    def pilot(self) -> str:
        return str(self.conn["pilot"])

    @property
    def harness_url(self) -> str:
        url = self.conn.get("harness_url")
        if url:
            return str(url)
        return str(self.conn["api_service_url"]).rsplit("/api/v1", 1)[0] + "/__harness__"

    @property
    def manifest(self) -> dict[str, Any]:
        value = self.__dict__.get("_manifest")
        if value is None:
            value = json.loads(Path(self.conn["seed_manifest"]).read_text(encoding="utf-8"))
            self.__dict__["_manifest"] = value
        return value

    def space(self, key: str) -> str:
        """The token of seeded space ``key`` (big, small, empty, archived, foreign)."""
        return str(self.conn["space_tokens"][key])

    def space_id(self, key: str) -> str:
        return str(self.manifest["spaces"][key]["id"])

    def seeded_run_ids(self, key: str) -> list[str]:
        """The seeded runs of a space, newest first."""
        return list(self.manifest["spaces"][key]["run_ids_newest_first"])

    def seeded_runs(self) -> dict[str, dict[str, Any]]:
        return dict(self.manifest["runs"])

    # ---- harness ---------------------------------------------------------------------------------

    def mongo(self, collection: str, **query: str) -> list[dict[str, Any]]:
        """Raw Mongo documents (no ``_id``), oldest first, filtered by equality."""
        qs = urllib.parse.urlencode(query)
        payload = _http_json(f"{self.harness_url}/mongo/{collection}?{qs}")
        return list(payload["data"])

    def mongo_newest_first(self, collection: str, **query: str) -> list[dict[str, Any]]:
        """The same documents in the API's order (newest first)."""
        return list(reversed(self.mongo(collection, **query)))

    def mongo_ids(self, collection: str, **query: str) -> list[str]:
        key = "run_id" if collection == "runs" else "task_id"
        return [str(d[key]) for d in self.mongo_newest_first(collection, **query)]

    def set_run_status(self, run_id: str, status: str, task_status: str | None = None) -> dict[str, Any]:
        """Play the executor: the run's status (and all its tasks') through the real models."""
        body: dict[str, Any] = {"status": status}
        if task_status:
            body["task_status"] = task_status
        answer = _http_json(f"{self.harness_url}/runs/{run_id}/status", data=body)
        if answer.get("updated") != 1:
            raise AssertionError(f"harness did not update run {run_id}: {answer}")
        return dict(answer)

    # ---- connections -------------------------------------------------------------------------------

    def connection_json(
        self, password: str, *, scheme: str | None = None, org_handle: str | None = None
    ) -> str:
        extra: dict[str, Any] = {"org_handle": org_handle or self.org_handle}
        if scheme:
            extra["auth_scheme"] = scheme
        return json.dumps({"conn_type": "unpod", "host": self.base_url, "password": password, "extra": extra})

    def connections(self) -> dict[str, str]:
        """``AIRFLOW_CONN_*`` variables for every connection id the suite uses."""
        conns = {
            TOKEN_CONN: self.connection_json(self.token),
            JWT_CONN: self.connection_json(self.jwt, scheme="JWT"),
            BEARER_CONN: self.connection_json(self.jwt, scheme="Bearer"),
            BAD_TOKEN_CONN: self.connection_json("0" * 40),
            BAD_JWT_CONN: self.connection_json("eyJhbGciOiJIUzI1NiJ9.e30.bm90LWEtc2lnbmF0dXJl", scheme="JWT"),
            VIEWER_CONN: self.connection_json(str(self.conn["viewer_token"])),
            OUTSIDER_CONN: self.connection_json(str(self.conn["outsider_token"])),
            UNKNOWN_ORG_CONN: self.connection_json(self.jwt, scheme="JWT", org_handle="no-such-org"),
        }
        return {f"AIRFLOW_CONN_{conn_id.upper()}": value for conn_id, value in conns.items()}

    def connection_env(self, conn_id: str = TOKEN_CONN, as_conn_id: str | None = None) -> dict[str, str]:
        """One connection's variable (optionally under another id) for a subprocess."""
        value = self.connections()[f"AIRFLOW_CONN_{conn_id.upper()}"]
        return {f"AIRFLOW_CONN_{(as_conn_id or conn_id).upper()}": value}

    # ---- backend-core's access log (gunicorn) --------------------------------------------------------

    @property
    def access_log(self) -> Path:
        return self.home / "run" / "dj.log"

    def log_offset(self) -> int:
        try:
            return self.access_log.stat().st_size
        except FileNotFoundError:
            return 0

    def requests_since(self, offset: int, method: str, path_part: str) -> list[str]:
        """Access-log lines of ``method`` requests whose path contains ``path_part``, after ``offset``."""
        try:
            with self.access_log.open("rb") as handle:
                handle.seek(offset)
                text = handle.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return []
        pattern = re.compile(rf'"{method} (\S*{re.escape(path_part)}\S*) HTTP/[0-9.]+" (\d{{3}})')
        return [f"{m.group(1)} {m.group(2)}" for m in pattern.finditer(text)]

    def runs_looks_since(self, offset: int, space_key: str) -> int:
        """How many times the runs list of a space was read (a sensor's or trigger's look)."""
        return len(self.requests_since(offset, "GET", f"/spaces/{self.space(space_key)}/runs/"))


# --------------------------------------------------------------------------------------------
# Comparing API items with raw Mongo documents
# --------------------------------------------------------------------------------------------

#: Fields the API fills in itself (the task response model sets run_mode "dev").
API_ONLY_FIELDS = {"tasks": ("run_mode",), "runs": ()}
TIMESTAMP_FIELDS = ("created", "modified")


def _timestamp(value: Any) -> Any:
    """Timestamps to the second, time zone dropped: the API answers whole seconds without a zone
    (``2026-12-04T19:14:09``) where Mongo holds milliseconds (``2026-12-04T19:14:09.035000``)."""
    if not isinstance(value, str):
        return value
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return value
    return parsed.replace(tzinfo=None, microsecond=0).isoformat()


def item_differences(
    collection: str, item: Mapping[str, Any], doc: Mapping[str, Any], *, skip: Iterable[str] = ()
) -> list[str]:
    """Fields where an API item disagrees with its Mongo document (ignoring API-only fields)."""
    ignored = set(API_ONLY_FIELDS[collection]) | set(skip)
    diffs = []
    for key, value in item.items():
        if key in ignored:
            continue
        if key not in doc:
            diffs.append(f"{key}: not in Mongo")
            continue
        expected = doc[key]
        if key in TIMESTAMP_FIELDS:
            value, expected = _timestamp(value), _timestamp(expected)
        if value != expected:
            diffs.append(f"{key}: API {value!r} != Mongo {expected!r}")
    return diffs


def wait_until(
    condition: Callable[[], Any], *, timeout: float, interval: float = 0.2, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; ``TimeoutError`` naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)
