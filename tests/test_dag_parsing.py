"""DAG parsing stays cheap: no network, no connection lookup, no HTTP stack pulled in.

Airflow re-parses DAG files every few seconds. In a fresh interpreter that has already imported
what every DAG file pays (``airflow.sdk``, ``BaseOperator``, ``BaseSensorOperator``), sockets and
connection lookups are made to fail, then the provider's operator and sensor modules are
imported and every operator and the sensor (each mode) is constructed in a DAG. Nothing may try
the network or read a connection, and ``requests``, ``httpx``, ``tenacity`` and ``fastapi`` must
not be imported by the provider (Airflow's own imports may already hold some of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

HEAVY = ("requests", "httpx", "tenacity", "fastapi")

PROBE = r"""
import datetime, inspect, json, socket, sys

import airflow.sdk
from airflow.sdk import DAG, BaseOperator, BaseSensorOperator

before = set(sys.modules)
attempts = []


def refuse(*args, **kwargs):
    attempts.append(repr(args)[:200])
    raise OSError("network blocked while parsing a DAG")


socket.socket.connect = refuse
socket.socket.connect_ex = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse

import unpod_provider.operators.unpod as operators
import unpod_provider.sensors.unpod as sensors
from unpod_provider._compat import BaseHook


def no_lookup(*args, **kwargs):
    attempts.append("connection lookup " + repr(args)[:100])
    raise RuntimeError("connection read while parsing a DAG")


BaseHook.get_connection = classmethod(no_lookup)
if hasattr(BaseHook, "aget_connection"):
    BaseHook.aget_connection = classmethod(no_lookup)

VALUES = {
    "space_token": "SPACE0TOKEN0ABC123XYZ789",
    "run_id": "R40fe5eface1511f082ac156368e7acc4",
    "pilot": "demo-agent",
    "context": "Call the lead",
    "documents": [{"name": "Ada", "contact_number": "+15550100"}],
}


def required(cls):
    names = []
    for klass in cls.__mro__:
        if klass is BaseOperator or not isinstance(klass, type) or not issubclass(klass, BaseOperator):
            continue
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.name in ("self", "task_id") or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                continue
            if p.default is inspect.Parameter.empty and p.name not in names:
                names.append(p.name)
    return names


built, unknown = [], {}
with DAG("parse_check", schedule=None, start_date=datetime.datetime(2025, 1, 1)):
    for name in operators.__all__:
        cls = getattr(operators, name)
        if not (isinstance(cls, type) and issubclass(cls, BaseOperator)):
            continue
        missing = [n for n in required(cls) if n not in VALUES]
        if missing:
            unknown[name] = missing
            continue
        cls(task_id=name.lower(), **{n: VALUES[n] for n in required(cls)})
        built.append(name)
    for mode, kwargs in {
        "poke": {"mode": "poke"},
        "reschedule": {"mode": "reschedule"},
        "deferrable": {"deferrable": True},
    }.items():
        sensors.RunCompletedSensor(
            task_id=f"wait_{mode}", space_token=VALUES["space_token"], run_id=VALUES["run_id"], **kwargs
        )
        built.append(f"RunCompletedSensor[{mode}]")

new = set(sys.modules) - before
print("PROBE " + json.dumps({
    "built": built,
    "unknown": unknown,
    "attempts": attempts,
    "heavy_new": sorted(m for m in new if m.split(".")[0] in HEAVY),
}))
""".replace("HEAVY", repr(HEAVY))


def run_probe() -> dict[str, object]:
    env = dict(os.environ)
    env.pop("AIRFLOW_CONN_UNPOD_DEFAULT", None)
    done = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    for line in done.stdout.splitlines():
        if line.startswith("PROBE "):
            result: dict[str, object] = json.loads(line[len("PROBE ") :])
            return result
    raise AssertionError(f"probe failed (exit {done.returncode}):\n{done.stderr[-4000:]}")


def test_parsing_a_dag_opens_no_connection_and_pulls_in_no_http_stack() -> None:
    result = run_probe()
    assert result["unknown"] == {}, "an operator has a required argument this test does not know"
    built = result["built"]
    assert isinstance(built, list)
    assert "ListSpaceTasksOperator" in built
    assert {
        "RunCompletedSensor[poke]",
        "RunCompletedSensor[reschedule]",
        "RunCompletedSensor[deferrable]",
    } <= set(built)
    assert result["attempts"] == []
    assert result["heavy_new"] == []
