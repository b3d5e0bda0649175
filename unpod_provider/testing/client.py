"""``SimulatorClient``: drive a simulator running in another process over its ``/_sim/`` API.

For the demo script and ``airflow dags test`` subprocesses, where the simulator was started with
``python -m unpod_provider.testing``. Standard library only (``urllib``), no Unpod token needed.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


class SimulatorControlError(RuntimeError):
    """A control request was refused (bad parameters, unknown space or run)."""


class SimulatorClient:
    """The simulator's Python API, over HTTP. ``base_url`` is ``http://127.0.0.1:PORT``.

    For a simulator serving HTTPS (``tls=True`` / ``--tls``) pass its certificate as ``ca_file``.
    """

    def __init__(self, base_url: str, *, timeout: float = 30.0, ca_file: str | None = None) -> None:
        """Point the client at a running simulator."""
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._ssl_context = ssl.create_default_context(cafile=ca_file) if ca_file else None

    def _call(self, method: str, path: str, body: Mapping[str, Any] | None = None) -> Any:
        """One control request; a 4xx/5xx becomes ``SimulatorControlError``."""
        data = json.dumps(dict(body)).encode("utf-8") if body is not None else None
        request = urllib.request.Request(
            f"{self.base_url}/_sim/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self._ssl_context) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            detail = err.read().decode("utf-8", "replace")[:500]
            raise SimulatorControlError(f"{method} /_sim/{path}: HTTP {err.code}: {detail}") from None

    def wait_ready(self, timeout: float = 15.0) -> None:
        """Poll ``/_sim/health`` until the simulator answers (or raise ``TimeoutError``)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._call("GET", "health")
                return
            except (OSError, SimulatorControlError):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the Unpod simulator at {self.base_url} is not answering") from None
                time.sleep(0.05)

    def state(self) -> dict[str, Any]:
        """Overview: seed, clock, spaces, settings, faults, create count."""
        return dict(self._call("GET", "state"))

    def reset(self, seed: int | None = None) -> None:
        """Back to the seeded state (optionally with another seed)."""
        self._call("POST", "reset", {} if seed is None else {"seed": seed})

    def inject(self, kind: str, **spec: Any) -> dict[str, Any]:
        """Same arguments as ``UnpodSimulator.inject``; returns the fault (with its id)."""
        return dict(self._call("POST", "faults", {"kind": kind, **spec}))

    def faults(self) -> list[dict[str, Any]]:
        """Faults still armed."""
        return list(self._call("GET", "faults"))

    def clear_faults(self) -> None:
        """Disarm every injected fault."""
        self._call("DELETE", "faults")

    def requests(self) -> list[dict[str, Any]]:
        """The request log (never holds the token)."""
        return list(self._call("GET", "requests"))

    def reset_requests(self) -> None:
        """Empty the request log."""
        self._call("DELETE", "requests")

    def settings(self, **values: Any) -> dict[str, Any]:
        """Read (no arguments) or change the switches: latency, page_size_cap, not_found_past_end, ..."""
        if not values:
            return dict(self._call("GET", "settings"))
        return dict(self._call("POST", "settings", values))

    def advance(self, seconds: float) -> float:
        """Move the simulator's clock forward; returns the new now."""
        return float(self._call("POST", "clock/advance", {"seconds": seconds})["now"])

    def add_space(self, n_tasks: int = 0, n_runs: int | None = None, **kwargs: Any) -> str:
        """Add a space (tasks generated lazily); returns its token."""
        body = {"n_tasks": n_tasks, "n_runs": n_runs, **kwargs}
        return str(self._call("POST", "spaces", body)["token"])

    def add_run(
        self,
        space: str,
        n_tasks: int = 20,
        *,
        timeline: Sequence[Sequence[Any]] | None = None,
        final_status: str | None = None,
        **kwargs: Any,
    ) -> str:
        """Add a run created now; returns its run_id."""
        body: dict[str, Any] = {"space": space, "n_tasks": n_tasks, **kwargs}
        if timeline is not None:
            body["timeline"] = [list(entry) for entry in timeline]
        if final_status is not None:
            body["final_status"] = final_status
        return str(self._call("POST", "runs", body)["run_id"])

    def set_run_status(self, run_id: str, status: str) -> dict[str, Any]:
        """Move a run to ``status`` now; returns the run."""
        return dict(self._call("POST", f"runs/{run_id}/status", {"status": status}))

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as listed now, plus space_token, n_tasks and timeline."""
        return dict(self._call("GET", f"runs/{run_id}"))

    def space_tasks(self, space: str) -> list[dict[str, Any]]:
        """Every task of a space, newest first."""
        return list(self._call("GET", f"spaces/{space}/tasks"))

    def space_runs(self, space: str) -> list[dict[str, Any]]:
        """Every run of a space, newest first."""
        return list(self._call("GET", f"spaces/{space}/runs"))
