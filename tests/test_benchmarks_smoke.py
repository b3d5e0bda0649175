"""The benchmarks (``make bench``) at tiny sizes: the scripts run and their results are correct.

Each benchmark starts the simulator in its own process and measures in child processes, as in
the real run. Only correctness is asserted: identical task lists, one request per page, every
task exported once, one event per wait, one request per look, no HTTP stack pulled in by the
provider's import. Never a duration: the figures themselves are for ``make bench``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # ``benchmarks`` is not installed; ``pytest`` alone may not see it
    sys.path.insert(0, str(REPO_ROOT))

from benchmarks import _deps, p1_pages, p2_memory, p3_waits, p4_imports  # noqa: E402
from benchmarks.run import render  # noqa: E402

#: Each runs a benchmark's child processes: in make test, not in the fast lane.
pytestmark = pytest.mark.slow


def test_p1_same_tasks_and_one_request_per_page(tmp_path: Path) -> None:
    # The HttpOperator baseline only when its provider is already set up (no install here).
    with_http = _deps._installed_in_venv() or _deps._in_target()
    result = p1_pages.run(tmp_path, n_tasks=450, latency=0.0, repeats=1, http_operator=with_http)
    assert result["identical_results"] and result["one_request_per_page"]
    assert result["pages"] == 5
    clients = result["clients"]
    expected = {"hook", "hook_8", "hook_sequential", "requests_loop"}
    expected |= {"http_operator"} if with_http else set()
    assert set(clients) == expected
    assert len({d for c in clients.values() for d in c["digests"]}) == 1
    assert all(c["tasks"] == [450] for c in clients.values())


def test_p2_exports_every_task_once(tmp_path: Path) -> None:
    result = p2_memory.run(tmp_path, small=100, large=1_000)
    assert (result["small"]["count"], result["small"]["requests"]) == (100, 1)
    assert (result["large"]["count"], result["large"]["requests"]) == (1_000, 10)
    assert result["rss_ratio"] is not None and result["large"]["peak_rss_mb"] > 0


def test_p3_one_event_per_wait_and_one_request_per_look(tmp_path: Path) -> None:
    result = p3_waits.run(
        tmp_path, n_waits=20, n_shared_spaces=2, poll_interval=0.5, warmup=1.0, window=1.0, baseline=True
    )
    for name in ("own_spaces", "shared_spaces", "own_spaces_unshared"):
        scenario = result[name]
        assert scenario["events_ok"] == 20, name
        assert scenario["pending_after_finish"] == 0, name
        assert scenario["looks_total"] >= 20, name
    # One wait per space: every look is exactly one request, shared client or not.
    for name in ("own_spaces", "own_spaces_unshared"):
        assert result[name]["requests_total"] == result[name]["looks_total"], name
    # Ten waits per space: one request serves the looks of many waits.
    shared = result["shared_spaces"]
    assert shared["requests_total"] * 3 <= shared["looks_total"]


def test_p4_provider_import_pulls_in_no_http_stack(tmp_path: Path) -> None:
    result = p4_imports.run(tmp_path, runs=1)
    for name in ("sdk", "dag_processor"):
        assert result[name]["heavy_added"] == []
        assert result[name]["added_ms"] > 0 and result[name]["baseline_ms"] > 0


@pytest.mark.parametrize("only", ["p4"])
def test_make_bench_entry_point_writes_results(tmp_path: Path, only: str) -> None:
    out = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--quick", "--only", only, "--out", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert "p4_import_ms" in results and results["quick"] is True
    assert "| P4 import operators + sensor" in done.stdout
    assert render(results["details"]) in done.stdout
