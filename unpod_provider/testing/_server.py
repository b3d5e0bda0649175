"""``UnpodSimulator``: the simulator served by uvicorn in a background thread, plus its Python API.

FastAPI and uvicorn are imported in :meth:`UnpodSimulator.start`, not at import time, so
``import unpod_provider.testing`` stays cheap (DAG parsing, pytest plugin loading).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from unpod_provider.protocol import is_loopback_host
from unpod_provider.testing._faults import Fault
from unpod_provider.testing._model import SIM_ORG_HANDLE, SIM_TOKEN
from unpod_provider.testing._state import SimState

TLS_NAMES = ("127.0.0.1", "::1", "localhost")


def write_self_signed_cert(directory: Path, host: str) -> tuple[Path, Path]:
    """A key and a self-signed certificate (its own CA) for loopback, written to ``directory``.

    SubjectAltNames: 127.0.0.1, ::1, localhost and ``host``; valid from a day ago for 7 days.
    The extensions satisfy OpenSSL's strict verification (CA basic constraints, key usages,
    key identifiers), so clients can trust it with ``verify=<cert file>``.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for name in dict.fromkeys([*TLS_NAMES, host.strip("[]")]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            names.append(x509.DNSName(name))
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unpod simulator (localhost)")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=6))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path, cert_path = directory / "key.pem", directory / "cert.pem"
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


class UnpodSimulator:
    """A local Unpod server with seeded data, fault injection and a request log.

    Use as a context manager (``with UnpodSimulator() as sim: ...``) or call ``start()`` and
    ``stop()``. ``port=0`` picks a free loopback port. The host must be a loopback address.

    :param seed: seed of the generated data (same seed, same data).
    :param latency: seconds added to every Unpod request (benchmarks).
    :param clock: returns "now" in epoch seconds (default ``time.time``); ``advance`` adds to it.
        Seeded runs are dated November 2025: a clock before that shows them not yet finished.
    :param access_log: turn uvicorn's access log on (off by default).
    :param tls: serve HTTPS with a self-signed certificate made at start (its PEM file is
        ``ca_file``: trust it with ``verify=sim.ca_file``); removed again at stop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        latency: float = 0.0,
        token: str = SIM_TOKEN,
        clock: Callable[[], float] | None = None,
        access_log: bool = False,
        log_level: str = "warning",
        startup_timeout: float = 15.0,
        tls: bool = False,
    ) -> None:
        """Validate the host and build the seeded state; nothing is started yet."""
        if not is_loopback_host(host):
            raise ValueError(f"the Unpod simulator only listens on loopback addresses, not {host!r}")
        self.host = host
        self._requested_port = port
        self.state = SimState(seed=seed, token=token, clock=clock, latency=latency)
        self._access_log = access_log
        self._log_level = log_level
        self._startup_timeout = startup_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.tls = tls
        self._tls_dir: Path | None = None
        self._ca_file: Path | None = None

    # ---------------------------------------------------------------------------- lifecycle

    def start(self) -> UnpodSimulator:
        """Bind the port, start uvicorn in a daemon thread, return once it accepts requests."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already running")
        import uvicorn

        from unpod_provider.testing._app import create_app

        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host.strip("[]"), self._requested_port))
        except OSError:
            sock.close()
            raise
        self._port = int(sock.getsockname()[1])
        key_file: str | None = None
        cert_file: str | None = None
        if self.tls:
            try:
                key_file, cert_file = (str(path) for path in self._make_tls_files())
            except BaseException:
                sock.close()
                raise
        config = uvicorn.Config(
            create_app(self.state),
            log_config=None,
            log_level=self._log_level,
            access_log=self._access_log,
            lifespan="off",
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=5,
            timeout_graceful_shutdown=1,
            ssl_keyfile=key_file,
            ssl_certfile=cert_file,
        )
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=f"unpod-simulator-{self._port}", daemon=True
        )
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + self._startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"the Unpod simulator did not start on {self.host}:{self._port}")
            time.sleep(0.005)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Shut uvicorn down and join its thread (idempotent)."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.should_exit = True
        thread.join(timeout)
        if thread.is_alive():
            server.force_exit = True
            thread.join(timeout)
        self._server = None
        self._thread = None
        self._remove_tls_files()

    def _make_tls_files(self) -> tuple[Path, Path]:
        """Key and certificate in a fresh private temp dir (0700), removed at stop."""
        self._tls_dir = Path(tempfile.mkdtemp(prefix="unpod-simulator-tls-"))
        try:
            key_file, cert_file = write_self_signed_cert(self._tls_dir, self.host)
        except BaseException:
            self._remove_tls_files()
            raise
        self._ca_file = cert_file
        return key_file, cert_file

    def _remove_tls_files(self) -> None:
        """Delete the TLS temp dir (idempotent)."""
        directory, self._tls_dir, self._ca_file = self._tls_dir, None, None
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)

    @property
    def running(self) -> bool:
        """Whether the server thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> UnpodSimulator:
        """Start the server (see ``start``)."""
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the server, also when the block raised."""
        self.stop()

    def __repr__(self) -> str:
        """Base URL and seed (never the token)."""
        where = self.base_url if self._port else "not started"
        return f"UnpodSimulator({where}, seed={self.state.seed})"

    # ---------------------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The bound port (known once started)."""
        if self._port is None:
            raise RuntimeError("the simulator has not been started")
        return self._port

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT`` (``https://`` with ``tls=True``): the connection's Host."""
        host = f"[{self.host.strip('[]')}]" if ":" in self.host else self.host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"

    @property
    def ca_file(self) -> str | None:
        """With ``tls=True``, while running: the PEM certificate to trust (it is its own CA)."""
        return str(self._ca_file) if self._ca_file is not None else None

    @property
    def token(self) -> str:
        """The API token the simulator accepts."""
        return self.state.token

    @property
    def org_handle(self) -> str:
        """The main org handle (``acme``)."""
        return SIM_ORG_HANDLE

    def connection_dict(self, *, auth_scheme: str | None = None, **extra: Any) -> dict[str, Any]:
        """The Airflow connection as a dict (``conn_type``, ``host``, ``password``, ``extra``)."""
        extras: dict[str, Any] = {"org_handle": SIM_ORG_HANDLE, **extra}
        if auth_scheme is not None:
            extras["auth_scheme"] = auth_scheme
        return {"conn_type": "unpod", "host": self.base_url, "password": self.token, "extra": extras}

    def connection_json(
        self, conn_id: str = "unpod_default", *, auth_scheme: str | None = None, **extra: Any
    ) -> str:
        """JSON for ``AIRFLOW_CONN_<CONN_ID>`` (the JSON form has no conn_id; the name carries it)."""
        del conn_id  # accepted for symmetry with connection_env
        return json.dumps(self.connection_dict(auth_scheme=auth_scheme, **extra))

    def connection_env(self, conn_id: str = "unpod_default", **kwargs: Any) -> dict[str, str]:
        """``{"AIRFLOW_CONN_UNPOD_DEFAULT": <json>}`` for a subprocess environment."""
        return {f"AIRFLOW_CONN_{conn_id.upper()}": self.connection_json(conn_id, **kwargs)}

    # ---------------------------------------------------------------------------- data

    def add_space(
        self,
        n_tasks: int = 0,
        n_runs: int | None = None,
        *,
        name: str | None = None,
        token: str | None = None,
        org_handle: str = SIM_ORG_HANDLE,
        agents: Sequence[Mapping[str, Any]] | None = None,
        statuses: Sequence[str] | None = None,
        description: str = "",
    ) -> str:
        """Add a space (tasks generated lazily, runs in mixed terminal states); returns its token."""
        return self.state.add_space(
            n_tasks,
            n_runs,
            name=name,
            token=token,
            org_handle=org_handle,
            agents=agents,
            statuses=statuses,
            description=description,
        ).token

    def add_run(
        self,
        space: str,
        n_tasks: int = 20,
        *,
        timeline: Sequence[Sequence[Any]] | None = None,
        final_status: str | None = None,
        documents: Sequence[Mapping[str, Any]] | None = None,
        run_mode: str = "prod",
        assignee: str | None = None,
        objective: str | None = None,
    ) -> str:
        """Add a run created now (the newest of its space); returns its run_id.

        ``timeline``: ``[("pending", 0), ("in_progress", 2), ("completed", 6)]`` (seconds after
        creation, read against the clock). ``final_status``: that status from the start.
        Neither: the default timeline (pending, in_progress at +2 s, completed at +6 s).
        """
        return self.state.add_run(
            space,
            n_tasks,
            timeline=timeline,
            final_status=final_status,
            documents=documents,
            run_mode=run_mode,
            assignee=assignee,
            objective=objective,
        ).run_id

    def set_run_status(self, run_id: str, status: str) -> None:
        """Move a run to ``status`` now (any value, e.g. "paused"); its tasks follow."""
        self.state.set_run_status(run_id, status)

    def set_run_timeline(
        self, run_id: str, timeline: Sequence[Sequence[Any]], *, restart: bool = True
    ) -> None:
        """Replace what happens next to a run; offsets count from now when ``restart``."""
        self.state.set_run_timeline(run_id, timeline, restart=restart)

    def append_items(
        self, space: str, n: int, *, items: str = "tasks", status: str = "completed", tasks_per_run: int = 1
    ) -> list[str]:
        """Put ``n`` new tasks (one new run) or ``n`` new runs at the head of a space; returns run ids."""
        runs = self.state.append_items(space, n, items=items, status=status, tasks_per_run=tasks_per_run)
        return [run.run_id for run in runs]

    def append_run_tasks(self, run_id: str, n: int) -> None:
        """Put ``n`` new tasks at the head of an existing run."""
        self.state.append_run_tasks(run_id, n)

    def space_tasks(self, space: str) -> list[dict[str, Any]]:
        """Every task of the space as the server would list them now, newest first."""
        return self.state.all_space_tasks(space)

    def space_runs(self, space: str) -> list[dict[str, Any]]:
        """Every run of the space as the server would list them now, newest first."""
        return self.state.all_space_runs(space)

    def run_tasks(self, run_id: str) -> list[dict[str, Any]]:
        """Every task of a run, newest first."""
        return self.state.all_run_tasks(run_id)

    def get_run(self, run_id: str) -> dict[str, Any]:
        """The run as listed now, plus ``space_token``, ``n_tasks`` and ``timeline``."""
        return self.state.get_run(run_id)

    def run_status(self, run_id: str) -> str:
        """The run's status now."""
        return str(self.state.get_run(run_id)["status"])

    def space_tokens(self, org_handle: str | None = None) -> list[str]:
        """Tokens of all spaces (of one org when given), oldest first."""
        with self.state.lock:
            return [
                s.token
                for s in self.state.spaces.values()
                if org_handle is None or s.org.handle == org_handle
            ]

    # ---------------------------------------------------------------------------- clock

    def now(self) -> float:
        """The simulator's clock (epoch seconds)."""
        return self.state.now()

    def advance(self, seconds: float) -> float:
        """Move the simulator's clock forward; returns the new now (epoch seconds)."""
        return self.state.advance(seconds)

    # ---------------------------------------------------------------------------- faults

    def inject(
        self,
        kind: str,
        *,
        path: str | None = None,
        path_regex: str | None = None,
        method: str | None = None,
        query: Mapping[str, Any] | None = None,
        times: int | None = 1,
        skip: int = 0,
        **params: Any,
    ) -> Fault:
        """Inject a fault (see ``FAULT_KINDS``); it fires on ``times`` matching requests (None = forever)."""
        fault = Fault.create(
            kind,
            path=path,
            path_regex=path_regex,
            method=method,
            query=query,
            times=times,
            skip=skip,
            **params,
        )
        return self.state.add_fault(fault)

    def clear_faults(self) -> None:
        """Disarm every injected fault."""
        self.state.clear_faults()

    @property
    def faults(self) -> list[dict[str, Any]]:
        """Faults still armed (with their hit counts)."""
        return self.state.fault_list()

    # ---------------------------------------------------------------------------- switches

    @property
    def latency(self) -> float:
        """Seconds added to every Unpod request."""
        return self.state.latency

    @latency.setter
    def latency(self, value: float) -> None:
        self.state.update_settings(latency=value)

    @property
    def page_size_cap(self) -> int | None:
        """Silently cap page_size at this value (None = no cap, like the real server)."""
        return self.state.page_size_cap

    @page_size_cap.setter
    def page_size_cap(self, value: int | None) -> None:
        self.state.update_settings(page_size_cap=value)

    @property
    def not_found_past_end(self) -> bool:
        """Answer a page past the end with 404 instead of 200 and an empty list."""
        return self.state.not_found_past_end

    @not_found_past_end.setter
    def not_found_past_end(self, value: bool) -> None:
        self.state.update_settings(not_found_past_end=value)

    @property
    def create_paths(self) -> str:
        """Create paths served: "both" (default), "docs" (``tasks/create/``), "server" (POST ``tasks/``)."""
        return self.state.create_paths

    @create_paths.setter
    def create_paths(self, value: str) -> None:
        self.state.update_settings(create_paths=value)

    @property
    def spaces_need_jwt(self) -> bool:
        """Refuse the Token scheme on organizations and spaces (401), as the real server does."""
        return self.state.spaces_need_jwt

    @spaces_need_jwt.setter
    def spaces_need_jwt(self, value: bool) -> None:
        self.state.update_settings(spaces_need_jwt=value)

    @property
    def docs_mode(self) -> bool:
        """Docs flavour: space tasks page_size 20 by default, create status a string, docs space fields."""
        return self.state.docs_mode

    @docs_mode.setter
    def docs_mode(self, value: bool) -> None:
        self.state.update_settings(docs_mode=value)

    # ---------------------------------------------------------------------------- log, counters

    @property
    def requests(self) -> list[dict[str, Any]]:
        """Logged Unpod requests (copies): method, path, query, headers, status, faults, body."""
        return self.state.request_log()

    def reset_requests(self) -> None:
        """Empty the request log."""
        self.state.reset_requests()

    @property
    def create_count(self) -> int:
        """Runs created through the create-run endpoints."""
        return self.state.create_count

    def reset(self, seed: int | None = None) -> None:
        """Back to the seeded state (data, faults, log, clock, switches, create count)."""
        self.state.reset(seed)
