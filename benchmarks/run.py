"""``make bench``: run P1-P4, print one table, write ``benchmarks/results.json``.

Every figure is a ratio against a baseline measured in the same run on the same simulator (or,
for P4, in the same interpreters); none is checked against a wall-clock threshold here. The
targets are printed beside the figures; a miss is reported, not raised. A benchmark that cannot
produce a correct result (different task lists, a page requested twice, a wait without its one
event) stops the run with an error.

Usage: ``python -m benchmarks.run [--only p1,p3] [--quick] [--out PATH]``. ``--quick`` uses tiny
sizes (seconds; what ``tests/test_benchmarks_smoke.py`` runs) and does not write results.json
unless ``--out`` is given.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from benchmarks import p1_pages, p2_memory, p3_waits, p4_imports
from benchmarks._common import REPO_ROOT, workspace

RESULTS = REPO_ROOT / "benchmarks" / "results.json"

FULL: dict[str, dict[str, Any]] = {
    "p1": {"n_tasks": 10_000, "latency": 0.05, "repeats": 5},
    "p2": {"small": 1_000, "large": 100_000},
    "p3": {"n_waits": 1000, "n_shared_spaces": 10, "poll_interval": 1.0, "warmup": 4.0, "window": 10.0},
    "p4": {"runs": 7},
}
QUICK: dict[str, dict[str, Any]] = {
    "p1": {"n_tasks": 500, "latency": 0.01, "repeats": 1, "http_operator": False},
    "p2": {"small": 100, "large": 1_000},
    "p3": {"n_waits": 20, "n_shared_spaces": 2, "poll_interval": 0.5, "warmup": 1.0, "window": 1.0},
    "p4": {"runs": 1},
}
RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "p1": p1_pages.run,
    "p2": p2_memory.run,
    "p3": p3_waits.run,
    "p4": p4_imports.run,
}


def headline(results: dict[str, Any]) -> dict[str, Any]:
    """The keys the README and the issue name, from the detailed results."""
    out: dict[str, Any] = {}
    if "p1" in results:
        out["p1_speedup"] = results["p1"]["speedup"]
        out["p1_speedup_vs_http_operator"] = results["p1"].get("speedup_vs_http_operator")
        out["p1_speedup_ceiling"] = results["p1"]["speedup_ceiling"]
        out["p1_speedup_max_concurrency_8"] = results["p1"]["speedup_hook_8"]
    if "p2" in results:
        out["p2_rss_ratio"] = results["p2"]["rss_ratio"]
    if "p3" in results:
        own = results["p3"]["own_spaces"]
        out["p3_rss_mb"] = own["peak_rss_mb"]
        out["p3_requests_per_wait_per_interval"] = own["requests_per_wait_per_interval"]
        out["p3_cpu_s_per_min"] = own["cpu_s_per_min"]
        out["p3_shared_spaces_requests_per_wait_per_interval"] = results["p3"]["shared_spaces"][
            "requests_per_wait_per_interval"
        ]
    if "p4" in results:
        out["p4_import_ms"] = results["p4"]["sdk"]["added_ms"]
        out["p4_import_ratio"] = results["p4"]["sdk"]["ratio"]
    return out


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        text = f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
    else:
        text = str(value)
    return f"{text}{unit}"


def table_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """(claim, measured, baseline, ratio, target) rows."""
    rows: list[tuple[str, str, str, str, str]] = []
    if "p1" in results:
        p1 = results["p1"]
        clients = p1["clients"]
        what = f"P1 {p1['n_tasks']:,} tasks, {p1['pages']} pages, {p1['latency_s'] * 1000:g} ms latency"
        rows.append(
            (
                what + f" (hook, default {p1['default_max_concurrency']} at once)",
                _fmt(clients["hook"]["best_s"], " s"),
                "requests loop " + _fmt(clients["requests_loop"]["best_s"], " s"),
                _fmt(p1["speedup"], "x faster"),
                ">= 6x; same list; 1 request/page",
            )
        )
        if "http_operator" in clients:
            rows.append(
                (
                    "P1 same, against HttpOperator pagination",
                    _fmt(clients["hook"]["best_s"], " s"),
                    "HttpOperator " + _fmt(clients["http_operator"]["best_s"], " s"),
                    _fmt(p1["speedup_vs_http_operator"], "x faster"),
                    "",
                )
            )
        loop_baseline = "requests loop " + _fmt(clients["requests_loop"]["best_s"], " s")
        for claim, seconds, speedup, unit, target in (
            (
                "P1 same, no latency (simulator CPU-bound: the ceiling)",
                p1["hook_no_latency_s"],
                p1["speedup_ceiling"],
                "x",
                "",
            ),
            (
                "P1 same, hook with max_concurrency=8",
                clients["hook_8"]["best_s"],
                p1["speedup_hook_8"],
                "x faster",
                "",
            ),
            (
                "P1 same, hook with max_concurrency=1",
                clients["hook_sequential"]["best_s"],
                p1["speedup_sequential_hook"],
                "x",
                "(sequential path kept)",
            ),
        ):
            rows.append((claim, _fmt(seconds, " s"), loop_baseline, _fmt(speedup, unit), target))
    if "p2" in results:
        p2 = results["p2"]
        rows.append(
            (
                f"P2 export {p2['large']['n_tasks']:,} tasks to JSONL, peak RSS",
                _fmt(p2["large"]["peak_rss_mb"], " MB"),
                f"{p2['small']['n_tasks']:,} tasks " + _fmt(p2["small"]["peak_rss_mb"], " MB"),
                _fmt(p2["rss_ratio"], "x"),
                "< 1.5x",
            )
        )
    if "p3" in results:
        p3 = results["p3"]
        own, shared = p3["own_spaces"], p3["shared_spaces"]
        base = p3.get("own_spaces_unshared")
        sbase = p3.get("shared_spaces_unshared")
        n = own["n_waits"]
        rows.append(
            (
                f"P3 {n:,} waits / {own['n_spaces']:,} spaces, peak RSS",
                _fmt(own["peak_rss_mb"], " MB"),
                ("a client per trigger " + _fmt(base["peak_rss_mb"], " MB")) if base else "n/a",
                _fmt(own["peak_rss_mb"] / base["peak_rss_mb"], "x") if base else "n/a",
                "< 300 MB",
            )
        )
        rows.append(
            (
                f"P3 {n:,} waits / {own['n_spaces']:,} spaces, CPU",
                _fmt(own["cpu_s_per_min"], " s/min") + " (" + _fmt(own["cpu_ms_per_look"], " ms/look") + ")",
                ("a client per trigger " + _fmt(base["cpu_ms_per_look"], " ms/look")) if base else "n/a",
                _fmt(own["cpu_ms_per_look"] / base["cpu_ms_per_look"], "x") if base else "n/a",
                "(a look every " + _fmt(own["mean_look_interval_s"], " s") + " per wait)",
            )
        )
        rows.append(
            (
                f"P3 {n:,} waits / {own['n_spaces']:,} spaces, requests per wait per interval",
                _fmt(own["requests_per_wait_per_interval"]),
                ("a client per trigger " + _fmt(base["requests_per_wait_per_interval"])) if base else "n/a",
                "",
                "exactly 1",
            )
        )
        rows.append(
            (
                f"P3 {shared['n_waits']:,} waits / {shared['n_spaces']} spaces, requests per wait "
                "per interval",
                _fmt(shared["requests_per_wait_per_interval"]),
                ("a lookup per trigger " + _fmt(sbase["requests_per_wait_per_interval"])) if sbase else "n/a",
                _fmt(shared["requests_per_wait_per_interval"] / sbase["requests_per_wait_per_interval"], "x")
                if sbase and sbase["requests_per_wait_per_interval"]
                else "n/a",
                "far fewer than 1",
            )
        )
        rows.append(
            (
                f"P3 {shared['n_waits']:,} waits / {shared['n_spaces']} spaces, peak RSS / CPU",
                _fmt(shared["peak_rss_mb"], " MB") + " / " + _fmt(shared["cpu_s_per_min"], " s/min"),
                (
                    "a client per trigger "
                    + _fmt(sbase["peak_rss_mb"], " MB")
                    + " / "
                    + _fmt(sbase["cpu_s_per_min"], " s/min")
                )
                if sbase
                else "",
                "",
                "(a look every " + _fmt(shared["mean_look_interval_s"], " s") + " per wait)",
            )
        )
    if "p4" in results:
        p4 = results["p4"]
        rows.append(
            (
                "P4 import operators + sensor, added to a DAG file",
                _fmt(p4["sdk"]["added_ms"], " ms"),
                "airflow.sdk + BaseOperator " + _fmt(p4["sdk"]["baseline_ms"], " ms"),
                _fmt(p4["sdk"]["ratio"], "x"),
                "< 30 ms; no requests/httpx/tenacity/fastapi",
            )
        )
        rows.append(
            (
                "P4 same, in the DAG processor (its imports loaded)",
                _fmt(p4["dag_processor"]["added_ms"], " ms"),
                "+ airflow.dag_processing " + _fmt(p4["dag_processor"]["baseline_ms"], " ms"),
                _fmt(p4["dag_processor"]["ratio"], "x"),
                "",
            )
        )
        rows.append(
            (
                "P4 provider discovery (get_provider_info), in every baseline",
                _fmt(p4["provider_info_ms"], " ms"),
                "",
                "",
                "",
            )
        )
    return rows


def render(results: dict[str, Any]) -> str:
    rows = [("Claim", "Measured", "Baseline (same run)", "Ratio", "Target"), *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for index, row in enumerate(rows):
        lines.append("| " + " | ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)) + " |")
        if index == 0:
            lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def run(only: Sequence[str], *, quick: bool) -> dict[str, Any]:
    sizes = QUICK if quick else FULL
    results: dict[str, Any] = {}
    timings: dict[str, float] = {}
    with workspace() as workdir:
        for name in only:
            started = time.monotonic()
            print(f"running {name.upper()} ...", file=sys.stderr, flush=True)
            results[name] = RUNNERS[name](workdir, **sizes[name])
            timings[name] = round(time.monotonic() - started, 1)
    return {
        **headline(results),
        "details": results,
        "seconds": timings,
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_average": list(os.getloadavg()),
        },
        "quick": quick,
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="p1,p2,p3,p4", help="comma-separated subset of p1,p2,p3,p4")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: proves the scripts work")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default {RESULTS})")
    args = parser.parse_args(argv)
    only = [name.strip().lower() for name in args.only.split(",") if name.strip()]
    unknown = sorted(set(only) - set(RUNNERS))
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(unknown)}")
    started = time.monotonic()
    results = run(only, quick=args.quick)
    results["total_seconds"] = round(time.monotonic() - started, 1)
    print(render(results["details"]))
    print(f"\n{results['total_seconds']:.0f} s in all; figures in ", end="")
    out = args.out if args.out is not None else (None if args.quick else RESULTS)
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out)
        print(out)
    else:
        print("(not written: --quick)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
