"""P4: cheap DAG parsing. What importing the provider's operators and sensor adds to a DAG file.

Every DAG file already pays ``import airflow.sdk`` and ``from airflow.sdk import BaseOperator,
BaseSensorOperator``; in fresh interpreters (``runs`` of each, median) this measures that
baseline and then what ``import unpod_provider.operators.unpod, unpod_provider.sensors.unpod``
adds on top, in the same process. A second baseline adds what Airflow's DAG processor has
already imported when it parses a file (``airflow.dag_processing.processor``). Each run also
checks that the provider's import pulls none of ``requests``, ``httpx``, ``tenacity``,
``fastapi`` into ``sys.modules`` (beyond what the baseline already imported).

Airflow discovers installed providers while ``airflow.sdk`` is imported, so the provider's
``get_provider_info`` entry point is part of every baseline: its import cost is reported too.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._common import PYTHON, REPO_ROOT, BenchmarkError, child_env, median, ratio

HEAVY = ("requests", "httpx", "tenacity", "fastapi")
PROVIDER_MODULES = ("unpod_provider.operators.unpod", "unpod_provider.sensors.unpod")
BASELINES = {
    "sdk": "import airflow.sdk\nfrom airflow.sdk import BaseOperator, BaseSensorOperator\n",
    "dag_processor": (
        "import airflow.sdk\nfrom airflow.sdk import BaseOperator, BaseSensorOperator\n"
        "import airflow.dag_processing.processor\n"
    ),
}

_PROBE = """
import importlib, json, sys, time
t0 = time.perf_counter()
exec(compile({baseline!r}, "<baseline>", "exec"))
t1 = time.perf_counter()
before = set(sys.modules)
for name in {modules!r}:
    importlib.import_module(name)
t2 = time.perf_counter()
new = set(sys.modules) - before
heavy = sorted(m for m in new if m.split(".")[0] in {heavy!r})
print("P4-PROBE " + json.dumps({{"baseline_ms": (t1 - t0) * 1000, "added_ms": (t2 - t1) * 1000,
      "heavy_new": heavy, "heavy_in_baseline": sorted(m for m in {heavy!r} if m in before),
      "new_modules": len(new)}}))
"""


def probe(baseline: str, workdir: Path, *, importtime: bool = False) -> dict[str, Any]:
    """One fresh interpreter: baseline import time, then what the provider's modules add."""
    code = _PROBE.format(baseline=BASELINES[baseline], modules=PROVIDER_MODULES, heavy=HEAVY)
    cmd = [PYTHON, *(["-X", "importtime"] if importtime else []), "-c", code]
    done = subprocess.run(
        cmd, cwd=REPO_ROOT, env=child_env(workdir), capture_output=True, text=True, timeout=300, check=False
    )
    for line in done.stdout.splitlines():
        if line.startswith("P4-PROBE "):
            result: dict[str, Any] = json.loads(line[len("P4-PROBE ") :])
            if importtime:
                result["provider_info_ms"] = provider_info_ms(done.stderr)
            return result
    raise BenchmarkError(f"P4 probe failed (exit {done.returncode}): {done.stderr[-3000:]}")


def provider_info_ms(importtime_log: str) -> float:
    """Self time of the provider's modules imported during the baseline (provider discovery)."""
    total_us = 0
    for line in importtime_log.splitlines():
        if "<baseline>" in line:
            break
        parts = line.split("|")
        if len(parts) == 3 and parts[2].strip().startswith("unpod_provider"):
            total_us += int(parts[0].split(":")[1])
    return round(total_us / 1000, 1)


def run(workdir: Path, *, runs: int = 7) -> dict[str, Any]:
    """``runs`` fresh interpreters per baseline (after one warm-up that fills the bytecode cache)."""
    warm = probe("sdk", workdir, importtime=True)
    out: dict[str, Any] = {"runs": runs, "provider_info_ms": warm["provider_info_ms"]}
    for name in BASELINES:
        results = [probe(name, workdir) for _ in range(runs)]
        heavy_new = sorted({m for r in results for m in r["heavy_new"]})
        if heavy_new:
            raise BenchmarkError(f"P4: importing the provider pulled in {heavy_new}")
        base = median([r["baseline_ms"] for r in results])
        added = median([r["added_ms"] for r in results])
        out[name] = {
            "baseline_ms": round(base, 1),
            "added_ms": round(added, 1),
            "added_ms_all": [round(r["added_ms"], 1) for r in results],
            "ratio": ratio(base + added, base),
            "heavy_in_baseline": results[0]["heavy_in_baseline"],
            "heavy_added": heavy_new,
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.p4_imports [RUNS]``: P4 alone, printed as JSON."""
    import sys
    import tempfile

    args = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory(prefix="unpod-bench-p4-") as tmp:
        print(json.dumps(run(Path(tmp), runs=int(args[0]) if args else 7), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
