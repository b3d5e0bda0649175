"""``python -m unpod_provider.testing``: serve the Unpod simulator until SIGINT/SIGTERM.

Prints one line with the base URL and the ``AIRFLOW_CONN_UNPOD_DEFAULT`` JSON (with ``--tls``:
HTTPS with a self-signed certificate, whose file the line names as ``CA file: PATH``). With
``--ready-file`` the chosen port is written there (atomically) once the server accepts
requests, and the file is removed on exit. Only loopback hosts are accepted.
"""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from unpod_provider.protocol import is_loopback_host


def build_parser() -> argparse.ArgumentParser:
    """The command line options."""
    parser = argparse.ArgumentParser(
        prog="python -m unpod_provider.testing", description="Serve the local Unpod simulator."
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="loopback address to listen on (default 127.0.0.1)"
    )
    parser.add_argument("--port", type=int, default=0, help="port (0 = pick a free one and print it)")
    parser.add_argument("--latency", type=float, default=0.0, help="seconds added to every Unpod request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data")
    parser.add_argument("--ready-file", type=Path, help="write the port here once the server is ready")
    parser.add_argument("--access-log", action="store_true", help="print uvicorn's access log")
    parser.add_argument(
        "--tls", action="store_true", help="serve HTTPS with a self-signed certificate (file printed)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator in the foreground; returns the exit status."""
    args = build_parser().parse_args(argv)
    if not is_loopback_host(args.host):
        print(f"error: refusing to listen on non-loopback host {args.host!r}", file=sys.stderr)
        return 2
    if args.latency < 0 or not 0 <= args.port <= 65535:
        print("error: --latency must be >= 0 and --port between 0 and 65535", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO if args.access_log else logging.WARNING, format="%(message)s")

    from unpod_provider.testing import UnpodSimulator

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        """SIGINT/SIGTERM: stop serving."""
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    ready_file: Path | None = args.ready_file
    try:
        with UnpodSimulator(
            host=args.host,
            port=args.port,
            seed=args.seed,
            latency=args.latency,
            access_log=args.access_log,
            tls=args.tls,
        ) as sim:
            conn = sim.connection_json()
            ca = f" (CA file: {sim.ca_file})" if sim.ca_file else ""
            print(
                f"Unpod simulator at {sim.base_url}{ca} AIRFLOW_CONN_UNPOD_DEFAULT={shlex.quote(conn)}",
                flush=True,
            )
            if ready_file is not None:
                tmp = ready_file.with_name(ready_file.name + ".tmp")
                tmp.write_text(f"{sim.port}\n", encoding="utf-8")
                os.replace(tmp, ready_file)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if ready_file is not None:
            ready_file.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
