"""The end-to-end demo (``make demo``): a fresh Unpod run, waited for and reported on by Airflow.

1. Starts the Unpod simulator on a free loopback port (in this process, in a thread).
2. Creates a run in the demo space; it stays ``pending`` until Airflow's sensor first looks,
   then goes ``in_progress`` (+3 s) and ``completed`` (+10 s).
3. Runs the ``unpod_run_report`` example DAG under ``airflow dags test`` (a subprocess with its
   own SQLite ``AIRFLOW_HOME``; ``airflow db migrate`` runs the first time only): the deferrable
   sensor waits, the operator fetches the run's tasks, the report is written.
4. Prints the report and where its files are, then stops the simulator (also on Ctrl-C).

Usage: ``.venv/bin/python scripts/demo.py [--tasks N] [--report-dir DIR] [--fresh] [--verbose]``.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from unpod_provider.testing import DEMO_SPACE_TOKEN, UnpodSimulator
from unpod_provider.testing.dag_runner import DagTestResult, DagTestRunner, timeline_on_first_look

REPO_ROOT = Path(__file__).resolve().parent.parent
DAGS_FOLDER = REPO_ROOT / "dags_examples"
DAG_ID = "unpod_run_report"
#: The run's life once the sensor has first seen it: (status, seconds).
TIMELINE = [("pending", 0), ("in_progress", 3), ("completed", 10)]


def default_airflow_home() -> Path:
    """A per-user cache, so ``airflow db migrate`` runs only for the first demo."""
    user = "".join(ch for ch in getpass.getuser() if ch.isalnum()) or "user"
    return Path(tempfile.gettempdir()) / f"airflow-provider-unpod-demo-{user}" / "airflow-home"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=24, help="calls in the new run (default 24)")
    parser.add_argument("--report-dir", type=Path, default=None, help="where the report goes (default: temp)")
    parser.add_argument(
        "--airflow-home", type=Path, default=None, help="AIRFLOW_HOME to use (default: cache)"
    )
    parser.add_argument("--fresh", action="store_true", help="use a new, temporary AIRFLOW_HOME")
    parser.add_argument("--timeout", type=float, default=240.0, help="limit for the DAG run, seconds")
    parser.add_argument("--verbose", action="store_true", help="print Airflow's whole output")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        parser.error("--tasks must be at least 1")
    return args


def say(message: str) -> None:
    print(message, flush=True)


class RunWatcher:
    """Prints the run's status whenever it changes (pending -> in_progress -> completed)."""

    def __init__(self, sim: UnpodSimulator, run_id: str, started: float) -> None:
        self.sim, self.run_id, self.started = sim, run_id, started
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="demo-run-watcher", daemon=True)

    def __enter__(self) -> RunWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=2)

    def _watch(self) -> None:
        last = None
        while not self._stop.is_set():
            try:
                status = self.sim.run_status(self.run_id)
            except Exception:  # noqa: BLE001 - the simulator is stopping
                return
            if status != last:
                say(f"  [{time.monotonic() - self.started:5.1f}s] run {self.run_id[:12]}... is {status}")
                last = status
            self._stop.wait(0.25)


def print_result(result: DagTestResult, report_dir: Path, run_id: str, token: str, verbose: bool) -> int:
    """Print the report (or the failure) and return the exit code."""
    if verbose:
        say(result.output)
    states = ", ".join(f"{task} {state}" for task, state in result.task_states.items()) or "none"
    say(f"\nairflow dags test finished in {result.duration:.1f}s: {states}")
    if not result.succeeded:
        say(f"\nThe DAG run did not succeed (return code {result.returncode}). Airflow's last lines:")
        say(result.tail(60))
        return 1
    json_path = report_dir / f"unpod_run_report_{run_id}.json"
    text_path = report_dir / f"unpod_run_report_{run_id}.txt"
    if not json_path.exists() or not text_path.exists():
        say(f"\nThe DAG succeeded but the report is missing from {report_dir}")
        return 1
    report = json.loads(json_path.read_text(encoding="utf-8"))
    say("\n" + "=" * 78)
    say(text_path.read_text(encoding="utf-8").rstrip())
    say("=" * 78)
    say(
        f"\n{report['tasks']} calls: {report['completed']} completed, {report['failed']} failed; "
        f"mean call {report['mean_duration_seconds']} s"
    )
    say(f"Report files:\n  {json_path}\n  {text_path}")
    leaked = token in result.output
    say(
        "API token in Airflow's output: " + ("FOUND (this is a bug)" if leaked else "never (as it should be)")
    )
    return 1 if leaked else 0


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM cleans up like Ctrl-C: Airflow's process group is killed, the simulator stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    report_dir = (args.report_dir or Path(tempfile.mkdtemp(prefix="unpod-demo-report-"))).resolve()
    report_dir.mkdir(parents=True, exist_ok=True)
    home = None if args.fresh else (args.airflow_home or default_airflow_home())
    say("Unpod provider demo: wait for a run with Airflow, then report on its calls\n")
    try:
        with UnpodSimulator() as sim, DagTestRunner(DAGS_FOLDER, airflow_home=home) as runner:
            say(f"Unpod simulator listening on {sim.base_url}")
            say(f"Preparing Airflow in {runner.airflow_home} (SQLite; 'db migrate' the first time only)")
            runner.prepare()
            run_id = sim.add_run(DEMO_SPACE_TOKEN, n_tasks=args.tasks, timeline=[("pending", 0)])
            say(f"Created run {run_id} with {args.tasks} calls in space {DEMO_SPACE_TOKEN}")
            say(f"Running: airflow dags test {DAG_ID} -c '{json.dumps({'run_id': run_id})}'")
            say("  (the run moves once the sensor first looks: in_progress after 3 s, completed after 10 s)")
            env = {
                **sim.connection_env(),
                "UNPOD_POKE_INTERVAL": "2",
                "UNPOD_REPORT_DIR": str(report_dir),
                "UNPOD_SPACE_TOKEN": DEMO_SPACE_TOKEN,
            }
            with (
                RunWatcher(sim, run_id, started),
                timeline_on_first_look(sim, run_id, TIMELINE) as moving,
            ):
                result = runner.run(DAG_ID, {"run_id": run_id}, env=env, timeout=args.timeout)
            if not moving.is_set():
                say("Note: the sensor never looked at the run.")
            code = print_result(result, report_dir, run_id, sim.token, args.verbose)
    except KeyboardInterrupt:
        say("\nInterrupted: Airflow and the simulator were stopped.")
        return 130
    say(f"\nDemo finished in {time.monotonic() - started:.1f}s; simulator stopped.")
    return code


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
