"""unpod_score_calls: score every completed call of an Unpod run, one mapped task per call.

1. ``wait_for_run``: ``RunCompletedSensor(deferrable=True)`` (returns at once for a finished run).
2. ``fetch_completed_calls``: ``ListRunTasksOperator(status="completed", fields=[...])`` keeps
   each call's id, contact name, transcript, duration and outcome.
3. ``score_call``: ``.expand()`` over that list, one mapped task instance per call, scoring the
   transcript with a simple deterministic heuristic (0..100).
4. ``summarise_scores``: the reduce step: count, mean, best and worst calls, score bands.

Dynamic task mapping creates at most ``[core] max_map_length`` (default 1024) task instances;
for larger runs score in batches instead. Trigger with ``{"run_id": "R..."}``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from airflow.sdk import Param, dag, task

from unpod_provider.operators.unpod import ListRunTasksOperator
from unpod_provider.sensors.unpod import RunCompletedSensor

#: The simulator's demo space (``unpod_provider.testing.DEMO_SPACE_TOKEN``), when no env var is set.
DEMO_SPACE_TOKEN = "DEMO0SPACE0TOKEN00000001"
SPACE_TOKEN = os.environ.get("UNPOD_SPACE_TOKEN") or DEMO_SPACE_TOKEN


def _float_env(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name, default))
    except ValueError:
        return default
    return value if value > 0 else default


POKE_INTERVAL = _float_env("UNPOD_POKE_INTERVAL", 10.0)

CALL_FIELDS = [
    "task_id",
    "input.name",
    "output.transcript",
    "output.duration",
    "output.post_call_data.summary.status",
]

#: Words that make a call look better or worse (several languages, as the calls are).
POSITIVE_CUES = (
    "yes",
    "sounds good",
    "interested",
    "tell me",
    "claro",
    "merci",
    "ça marche",
    "👍",
    "हाँ",
    "जानना है",
)
NEGATIVE_CUES = ("not interested", "who gave you", "do not call", "don't call", "नहीं", "रुचि नहीं")
OUTCOME_POINTS = {
    "interested": 25,
    "call back": 10,
    "voicemail": -10,
    "not interested": -20,
    "do not call": -35,
}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def score_transcript(call: Mapping[str, Any]) -> dict[str, Any]:
    """A deterministic 0..100 score of one call from its transcript, duration and outcome."""
    output = _mapping(call.get("output"))
    transcript = output.get("transcript")
    user_lines = [
        str(turn.get("content") or "").lower()
        for turn in (transcript if isinstance(transcript, list) else [])
        if isinstance(turn, Mapping) and turn.get("role") == "user"
    ]
    score = 40 + 5 * min(len(user_lines), 4)
    positives = sum(cue in line for line in user_lines for cue in POSITIVE_CUES)
    negatives = sum(cue in line for line in user_lines for cue in NEGATIVE_CUES)
    score += 8 * positives - 12 * negatives
    duration = output.get("duration")
    if isinstance(duration, (int, float)) and not isinstance(duration, bool):
        score += 10 if duration >= 60 else (0 if duration >= 20 else -10)
    outcome = _mapping(_mapping(output.get("post_call_data")).get("summary")).get("status")
    score += OUTCOME_POINTS.get(str(outcome or "").lower(), 0)
    return {
        "task_id": call.get("task_id"),
        "name": _mapping(call.get("input")).get("name"),
        "outcome": outcome,
        "user_turns": len(user_lines),
        "score": max(0, min(100, score)),
    }


def summarise(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Count, mean, best and worst calls, and bands (>= 70 good, < 40 poor)."""
    values = [int(s["score"]) for s in scores]
    ranked = sorted(scores, key=lambda s: (-int(s["score"]), str(s.get("task_id"))))
    return {
        "calls": len(values),
        "mean_score": round(sum(values) / len(values), 2) if values else None,
        "good": sum(v >= 70 for v in values),
        "average": sum(40 <= v < 70 for v in values),
        "poor": sum(v < 40 for v in values),
        "best": [dict(s) for s in ranked[:3]],
        "worst": [dict(s) for s in ranked[::-1][:3]],
    }


@dag(
    dag_id="unpod_score_calls",
    schedule=None,
    catchup=False,
    tags=["unpod", "example"],
    doc_md=__doc__,
    params={
        "space_token": Param(
            SPACE_TOKEN,
            type="string",
            pattern=r"^[A-Za-z0-9_-]+$",
            description="The Unpod space holding the run (env UNPOD_SPACE_TOKEN; default: demo space).",
        ),
        "run_id": Param("", type="string", description="The run whose completed calls to score (required)."),
    },
)
def unpod_score_calls() -> None:
    """Wait for a run, fetch its completed calls, score each one (mapped), then reduce."""
    wait = RunCompletedSensor(
        task_id="wait_for_run",
        space_token="{{ params.space_token }}",
        run_id="{{ params.run_id }}",
        deferrable=True,
        poke_interval=POKE_INTERVAL,
        timeout=6 * 3600,
    )
    calls = ListRunTasksOperator(
        task_id="fetch_completed_calls",
        space_token="{{ params.space_token }}",
        run_id="{{ params.run_id }}",
        status="completed",
        fields=CALL_FIELDS,
    )
    wait >> calls

    @task
    def score_call(call: dict[str, Any]) -> dict[str, Any]:
        """Score one call (one mapped task instance per call)."""
        return score_transcript(call)

    @task
    def summarise_scores(scores: list[dict[str, Any]]) -> dict[str, Any]:
        """Reduce: mean score, bands, best and worst calls; printed to the log."""
        result = summarise(list(scores))
        print(
            f"Scored {result['calls']} calls: mean {result['mean_score']}, "
            f"{result['good']} good, {result['average']} average, {result['poor']} poor"
        )
        for best in result["best"]:
            print(f"  best: {best['task_id']} score {best['score']} ({best['outcome']})")
        return result

    summarise_scores(score_call.expand(call=calls.output))  # type: ignore[arg-type]  # XComArg


unpod_score_calls()
