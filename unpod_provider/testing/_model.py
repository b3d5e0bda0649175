"""The simulator's data model: organizations, spaces, runs and tasks, generated deterministically.

Pure Python (no FastAPI, no uvicorn). A run never stores its tasks: task ``i`` of a run is built
from ``(run seed, i)`` when a page is served, so a space of 100,000 tasks costs a few objects. A
run's status comes from its timeline (status, seconds after creation) read against the
simulator's clock, and its tasks follow it: pending while the run has not started, in progress
while it runs, completed/failed outputs once it ends.
"""

from __future__ import annotations

import hashlib
import random
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

# --------------------------------------------------------------------------------------------
# Constants shared with the public API
# --------------------------------------------------------------------------------------------

#: The API token the simulator accepts (40 hex characters, like a DRF token).
SIM_TOKEN = "51a1ab0d51a1ab0d51a1ab0d51a1ab0d51a1ab0d"
#: The org handle of the seeded main organization.
SIM_ORG_HANDLE = "acme"
#: A second organization the token's user also belongs to.
SIM_OTHER_ORG_HANDLE = "globex"
#: The fixed demo space (140 tasks, 25 runs in mixed terminal states) of ``acme``.
DEMO_SPACE_TOKEN = "DEMO0SPACE0TOKEN00000001"
DEMO_SPACE_NAME = "Demo outreach"
DEMO_SPACE_TASKS = 140
DEMO_SPACE_RUNS = 25
#: The agent handle of every seeded space (``pilot`` of a create-run request).
DEMO_AGENT_HANDLE = "sales-bot-v3"

#: Timeline of a run created through the API (or ``add_run`` without one): status, seconds.
#: As the real server's executor moves a run (it never sets the docs' "running").
DEFAULT_TIMELINE: tuple[tuple[str, float], ...] = (("pending", 0.0), ("in_progress", 2.0), ("completed", 6.0))

#: Seeded runs start here (UTC), so seeded data never depends on the wall clock.
SEED_EPOCH = datetime(2025, 11, 1, 8, 0, 0, tzinfo=timezone.utc).timestamp()

TERMINAL_MIX = ("completed", "partially_completed", "failed", "cancelled")
_TERMINAL_WEIGHTS = (60, 20, 12, 8)
_NOT_STARTED = ("pending", "scheduled", "queued")

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def hex32(*parts: object) -> str:
    """32 hex characters derived from ``parts`` (stable across processes and Python versions)."""
    text = ":".join(map(str, parts))
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def int_seed(*parts: object) -> int:
    """A 64-bit integer seed derived from ``parts`` (an int seeds ``random.Random`` quickly)."""
    digest = hashlib.blake2b(":".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def space_token_for(*parts: object) -> str:
    """A 24-character uppercase letters/digits space token derived from ``parts``."""
    rng = random.Random(":".join(str(p) for p in parts))
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return "".join(rng.choice(alphabet) for _ in range(24))


def fmt_run_time(ts: float) -> str:
    """Run timestamps: UTC, no zone, no fraction (``2025-11-30T17:51:52``)."""
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def fmt_task_time(ts: float) -> str:
    """Task timestamps: UTC, no zone, microseconds (``2025-01-15T14:30:00.000000``)."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(timespec="microseconds")


def fmt_call_time(ts: float) -> str:
    """Call start/end times inside a task output (``2025-11-21 13:45:20``)."""
    return datetime.fromtimestamp(ts, timezone.utc).replace(tzinfo=None).isoformat(" ", timespec="seconds")


def slugify(name: str, suffix: str) -> str:
    """``"Demo outreach"`` -> ``"demo-outreach-ab12cd34"`` (the server's slug shape)."""
    base = "".join(ch if ch.isalnum() and ch.isascii() else "-" for ch in name.lower()).strip("-")
    while "--" in base:
        base = base.replace("--", "-")
    return f"{base or 'space'}-{suffix}"


def normalize_timeline(timeline: Sequence[Sequence[Any]]) -> list[tuple[str, float]]:
    """Validate ``[(status, seconds), ...]``: non-empty, string statuses, offsets >= 0, sorted."""
    result: list[tuple[str, float]] = []
    for entry in timeline:
        if isinstance(entry, Mapping):
            status, offset = entry.get("status"), entry.get("at", entry.get("after", 0))
        else:
            if len(entry) != 2:
                raise ValueError(f"timeline entries are (status, seconds) pairs, got {entry!r}")
            status, offset = entry[0], entry[1]
        if not isinstance(status, str) or not status.strip():
            raise ValueError(f"timeline status must be a non-empty string, got {status!r}")
        if isinstance(offset, bool) or not isinstance(offset, (int, float)) or offset < 0:
            raise ValueError(f"timeline offset must be a number of seconds >= 0, got {offset!r}")
        result.append((status.strip(), float(offset)))
    if not result:
        raise ValueError("a timeline needs at least one (status, seconds) entry")
    result.sort(key=lambda item: item[1])
    if result[0][1] != 0:
        result.insert(0, ("pending", 0.0))
    return result


# --------------------------------------------------------------------------------------------
# Seed vocabulary (some of it deliberately non-ASCII: Hindi, emoji, accents)
# --------------------------------------------------------------------------------------------

_CONTACTS = (
    ("Rajesh Kumar", "+919988776655", "rajesh.kumar@techstart.in"),
    ("Anita Rao", "+919900112233", None),
    ("José Álvarez", "+34612345678", "jose.alvarez@ejemplo.es"),
    ("Zoë Müller", "+4915112345678", "zoe.mueller@beispiel.de"),
    ("François Dubois", "+33612345678", "f.dubois@exemple.fr"),
    ("प्रिया शर्मा", "+919812345678", "priya.sharma@example.in"),
    ("Ngozi Okafor", "+2348031234567", None),
    ("Mei Chen", "+8613812345678", "mei.chen@example.cn"),
    ("Łukasz Nowak", "+48512345678", "lukasz.nowak@przyklad.pl"),
    ("Ana Lúcia Pereira", "+5511912345678", "ana.pereira@exemplo.br"),
    ("Søren Nielsen", "+4520123456", "soren@eksempel.dk"),
    ("Aarav Patel", "+919876501234", "aarav.patel@example.in"),
)

_USERS: tuple[dict[str, Any], ...] = (
    {
        "id": "456",
        "email": "sales.manager@acme.example",
        "full_name": "Sarah Johnson",
        "location": {"city": "Pune", "region": "Maharashtra", "country": "IN", "timezone": "Asia/Kolkata"},
    },
    {
        "id": "457",
        "email": "ops.lead@acme.example",
        "full_name": "Émile Laurent",
        "location": {
            "city": "Lyon",
            "region": "Auvergne-Rhône-Alpes",
            "country": "FR",
            "timezone": "Europe/Paris",
        },
    },
    {
        "id": "458",
        "email": "growth@acme.example",
        "full_name": "Kwame Mensah",
        "location": {"city": "Accra", "region": "Greater Accra", "country": "GH", "timezone": "Africa/Accra"},
    },
)

_OBJECTIVES = (
    "Follow up with potential clients for product demo",
    "Confirm appointment for next week",
    "Collect feedback on the last delivery",
    "Remind customers about the renewal offer",
)

_END_REASONS = ("customer-ended-call", "assistant-ended-call", "silence-timed-out", "voicemail")

_OUTCOMES = (
    # (summary.status, classification labels, call summary)
    ("Interested", ["Interested"], "The customer is interested and asked for a demo."),
    ("Call Back", ["Call Back"], "The customer asked to be called back later."),
    ("Not Interested", ["Not Interested"], "The customer is not interested at the moment."),
    ("Do Not Call", ["DNC"], "The customer asked not to be called again."),
    ("Voicemail", ["Voicemail"], "The call reached a voicemail box."),
    ("Interested", ["Interested", "Pricing"], "The customer wants pricing details by email."),
)

_ASSISTANT_LINES = (
    "Hello {first}, this is Maya calling from Acme. Is now a good time?",
    "नमस्ते {first} जी, मैं Acme से माया बोल रही हूँ।",
    "Great, I'll send you the details on WhatsApp 😊",
    "Thank you for your time, {first}. Have a great day! 🙏",
    "Could you tell me a convenient time for a quick demo?",
    "Parfait, je vous rappelle demain à 10 h.",
)

_USER_LINES = (
    "Yes, tell me.",
    "हाँ, बोलिए। मुझे इसके बारे में और जानना है।",
    "Sounds good 👍",
    "Ça marche, merci beaucoup.",
    "Call me back next week, por favor.",
    "नहीं, अभी मुझे रुचि नहीं है।",
    "Who gave you my number? 🤔",
    "Sí, claro. ¿Cuánto cuesta?",
)

_FAILED_ERRORS = (
    "Task exceeded maximum retries (3)",
    "Number not reachable",
    "Call failed: carrier rejected the call (SIP 503)",
)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


#: How many rendered tasks a run keeps (about 2.5 KB each).
RENDERED_TASKS_PER_RUN = 20_000


@dataclass
class SimOrg:
    """An organization the token's user belongs to."""

    id: int
    name: str
    handle: str
    token: str
    domain: str
    role: str = "owner"
    is_private_domain: bool = True

    def to_api(self) -> dict[str, Any]:
        """The ``organizations/`` item."""
        return {
            "name": self.name,
            "token": self.token,
            "domain": self.domain,
            "domain_handle": self.handle,
            "is_private_domain": self.is_private_domain,
            "role": self.role,
        }


@dataclass
class SimSpace:
    """A space: metadata plus its runs (oldest first; the API lists them newest first)."""

    id: int
    token: str
    name: str
    slug: str
    org: SimOrg
    agents: list[dict[str, Any]]
    created: float
    description: str = ""
    privacy_type: str = "shared"
    space_type: str = "knowledge_base"
    content_type: str = "table"
    runs: list[SimRun] = field(default_factory=list, repr=False)

    def to_api(self, *, docs: bool = False) -> dict[str, Any]:
        """The ``spaces/`` item (the server's fields; plus the docs' ones when ``docs``)."""
        data: dict[str, Any] = {
            "name": self.name,
            "slug": self.slug,
            "token": self.token,
            "description": self.description,
            "logo": None,
            "privacy_type": self.privacy_type,
            "space_type": self.space_type,
            "content_type": self.content_type,
            "organization": {"name": self.org.name, "domain_handle": self.org.handle},
        }
        if docs:
            handles = self.agent_handles()
            data["id"] = self.id
            data["agent_handle"] = handles[0] if handles else None
            data["created_at"] = fmt_run_time(self.created) + "Z"
        return data

    def detail(self, *, docs: bool = False) -> dict[str, Any]:
        """The ``spaces/{token}/`` object: list fields plus agents, created, modified."""
        data = self.to_api(docs=docs)
        data["agents"] = [dict(agent) for agent in self.agents]
        data["created"] = fmt_run_time(self.created)
        modified = max([self.created] + [run.created for run in self.runs])
        data["modified"] = fmt_run_time(modified)
        return data

    def task_count(self) -> int:
        """Tasks in all runs of the space."""
        return sum(run.n_tasks for run in self.runs)

    def agent_handles(self) -> list[str]:
        """Handles of the space's agents (valid ``pilot`` values)."""
        return [str(agent.get("handle")) for agent in self.agents]


@dataclass
class SimRun:
    """A run. Its tasks are generated from ``(seed, index)``; index ``n_tasks - 1`` is the newest."""

    run_id: str
    space: SimSpace = field(repr=False)
    seq: int
    created: float
    timeline: list[tuple[str, float]]
    n_tasks: int
    seed: str
    assignee: str = DEMO_AGENT_HANDLE
    objective: str = _OBJECTIVES[0]
    run_mode: str = "prod"
    user_index: int = 0
    thread_id: str | None = None
    batch_count: int = 1
    documents: list[dict[str, Any]] | None = field(default=None, repr=False)
    #: Spacing of task creation times inside the run (seconds), so tasks sort newest first.
    task_spacing: float = 0.01
    _user_token: str | None = field(default=None, repr=False, compare=False)
    #: Rendered tasks by (index, status, since), so serving a page costs little simulator CPU
    #: (benchmarks measure the client, not this). Bounded; a status change makes new keys.
    _rendered: OrderedDict[tuple[int, str, float], dict[str, Any]] = field(
        default_factory=OrderedDict, repr=False, compare=False
    )

    # -- status ------------------------------------------------------------------------------

    def status_at(self, now: float) -> tuple[str, float]:
        """The status at ``now`` and the time it was entered (the run's ``modified``)."""
        elapsed = max(0.0, now - self.created)  # a run "created in the future" has not moved yet
        status, since = self.timeline[0][0], self.timeline[0][1]
        for entry_status, offset in self.timeline:
            if offset <= elapsed:
                status, since = entry_status, offset
            else:
                break
        return status, self.created + since

    def set_status(self, status: str, now: float) -> None:
        """From ``now`` on the run is ``status``; history kept, future timeline entries dropped."""
        elapsed = max(0.0, now - self.created)
        kept = [(s, off) for s, off in self.timeline if off <= elapsed]
        kept.append((status, elapsed))
        self.timeline = kept

    def to_api(self, now: float) -> dict[str, Any]:
        """The ``runs/`` item."""
        status, since = self.status_at(now)
        return {
            "space_id": str(self.space.id),
            "user": _USERS[self.user_index % len(_USERS)]["id"],
            "thread_id": self.thread_id,
            "run_id": self.run_id,
            "collection_ref": f"collection_data_{self.space.token}",
            "run_mode": self.run_mode,
            "status": status,
            "batch_count": self.batch_count,
            "created": fmt_run_time(self.created),
            "modified": fmt_run_time(since),
        }

    # -- tasks -------------------------------------------------------------------------------

    def task_id(self, index: int) -> str:
        """Task ``index``'s id: "T" + 32 hex, stable."""
        return "T" + hex32(self.seed, "task", index)

    def task_status(self, index: int, run_status: str) -> str:
        """How task ``index`` looks while the run is ``run_status``."""
        if run_status in _NOT_STARTED:
            return run_status
        if run_status in ("running", "processing", "in_progress"):
            return "in_progress"
        if run_status in ("completed", "failed", "cancelled"):
            return run_status
        if run_status == "partially_completed":
            if self.n_tasks >= 2 and index in (0, 1):
                return "failed" if index == 0 else "completed"
            roll = int_seed(self.seed, "mix", index) / 2**64
            return "failed" if roll < 0.3 else "completed"
        return "hold"  # an unknown run status (e.g. "paused"): tasks wait

    def task(self, index: int, now: float) -> dict[str, Any]:
        """Task ``index`` of this run as the server sends it at time ``now`` (treat as read-only)."""
        run_status, since = self.status_at(now)
        key = (index, run_status, since)
        cached = self._rendered.get(key)
        if cached is not None:
            self._rendered.move_to_end(key)
            return cached
        task = self._render_task(index, run_status, since)
        self._rendered[key] = task
        if len(self._rendered) > RENDERED_TASKS_PER_RUN:
            self._rendered.popitem(last=False)
        return task

    def _render_task(self, index: int, run_status: str, since: float) -> dict[str, Any]:
        """Build task ``index`` while the run is ``run_status`` (entered at ``since``)."""
        status = self.task_status(index, run_status)
        created = self.created + index * self.task_spacing
        user = _USERS[self.user_index % len(_USERS)]
        # One generator per task, always drawn in the same order: input first, then the output.
        rng = random.Random(int_seed(self.seed, index))
        document = self._document(index, rng)
        ref_id = document.get("document_id", document.get("id"))
        if self.documents is None:
            ref_id = f"lead_doc_{rng.getrandbits(32):08x}"
        task: dict[str, Any] = {
            "space_id": str(self.space.id),
            "thread_id": self.thread_id,
            "user": user["id"],
            "user_org_id": str(self.space.org.id),
            "user_info": {
                "id": user["id"],
                "email": user["email"],
                "full_name": user["full_name"],
                "user_token": self.user_token,
                "location": dict(user["location"]),
            },
            "run_id": self.run_id,
            "task_id": self.task_id(index),
            "collection_ref": f"collection_data_{self.space.token}",
            "execution_type": "call",
            "task": {"objective": self.objective},
            "input": document,
            "output": self._output(status, document, max(since, created), rng),
            "attachments": [],
            "ref_id": ref_id,
            "assignee": self.assignee,
            "run_mode": self.run_mode,
            "status": status,
            "created": fmt_task_time(created),
            "modified": fmt_task_time(max(since, created)),
        }
        return task

    def _document(self, index: int, rng: random.Random) -> dict[str, Any]:
        """The task's input: the create-run document, or a generated contact."""
        if self.documents is not None and index < len(self.documents):
            return dict(self.documents[index])
        name, number, email = rng.choice(_CONTACTS)
        number = number[:-3] + f"{rng.randrange(1000):03d}"
        doc: dict[str, Any] = {"name": name, "contact_number": number}
        if email:
            doc["email"] = email
        return doc

    @property
    def user_token(self) -> str:
        """The ``user_info.user_token`` of the run's tasks (credential-like, stable per run)."""
        token = self._user_token
        if token is None:
            token = self._user_token = space_token_for(self.seed, "user-token", self.user_index)
        return token

    def _output(
        self, status: str, document: Mapping[str, Any], ended: float, rng: random.Random
    ) -> dict[str, Any]:
        """``{}`` until the task ends; a full call output when completed; ``{"error"}`` when failed."""
        if status == "failed":
            return {"error": rng.choice(_FAILED_ERRORS)}
        if status != "completed":
            return {}
        name = str(document.get("name") or "Customer")
        first = name.split()[0]
        turns = []
        for turn in range(rng.randint(2, 7)):
            if turn % 2 == 0:
                line = rng.choice(_ASSISTANT_LINES).format(first=first)
                turns.append({"role": "assistant", "content": line, "user_id": None, "timestamp": ""})
            else:
                line = rng.choice(_USER_LINES)
                turns.append({"role": "user", "content": line, "user_id": "unknown", "timestamp": ""})
        duration = round(rng.uniform(8.0, 240.0), 3)
        cost = round(duration * 0.0018, 3)
        start = ended - duration
        label_status, labels, summary = rng.choice(_OUTCOMES)
        call_id = f"{rng.getrandbits(128):032x}"
        call_id = f"{call_id[:8]}-{call_id[8:12]}-{call_id[12:16]}-{call_id[16:20]}-{call_id[20:32]}"
        score = rng.randint(1, 10)
        return {
            "call_id": call_id,
            "customer": name,
            "contact_number": str(document.get("contact_number", "")),
            "call_end_reason": rng.choice(_END_REASONS),
            "recording_url": f"https://store.unpod.ai/media/private/high-call-recordings/{call_id}.mp3",
            "transcript": turns,
            "start_time": fmt_call_time(start),
            "end_time": fmt_call_time(ended),
            "assistant_number": "+919949883072",
            "call_summary": summary,
            "duration": duration,
            "cost": cost,
            "post_call_data": {
                "classification": {"labels": list(labels), "summary": summary},
                "summary": {
                    "status": label_status,
                    "summary": summary,
                    "name": name,
                    "contact": str(document.get("contact_number", "N/A")),
                    "callback_datetime": "N/A",
                    "hours_from_now": "N/A",
                },
                "success_evaluator": f'{{"score": {score}, "reason": "{label_status.lower()}"}}',
                "call_back": None,
                "follow_up": None,
                "structured_data": f'{{"customer_name": {encode_basestring(name)}}}',
                "webhook_data": None,
                "call_evaluation": [],
            },
            "call_type": "outbound",
            "metadata": {"cost": cost, "type": "outboundPhoneCall", "usage": {}},
        }


def split_tasks(rng: random.Random, n_tasks: int, n_runs: int) -> list[int]:
    """Split ``n_tasks`` into ``n_runs`` varied, positive sizes (zeros only if runs > tasks)."""
    if n_runs <= 0:
        return []
    if n_tasks < n_runs:
        return [1] * n_tasks + [0] * (n_runs - n_tasks)
    cuts = sorted(rng.sample(range(1, n_tasks), n_runs - 1)) if n_runs > 1 else []
    bounds = [0, *cuts, n_tasks]
    return [bounds[i + 1] - bounds[i] for i in range(n_runs)]


def mixed_terminal_statuses(rng: random.Random, n_runs: int) -> list[str]:
    """``n_runs`` terminal statuses: every terminal status at least once (when n >= 4), weighted."""
    statuses = list(TERMINAL_MIX[: min(n_runs, len(TERMINAL_MIX))])
    statuses += rng.choices(TERMINAL_MIX, weights=_TERMINAL_WEIGHTS, k=max(0, n_runs - len(statuses)))
    rng.shuffle(statuses)
    return statuses


def default_agents(handle: str = DEMO_AGENT_HANDLE) -> list[dict[str, Any]]:
    """The ``agents`` of a seeded space."""
    return [{"name": "Sales Bot v3", "handle": handle, "type": "Voice"}]


def random_objective(rng: random.Random) -> str:
    """A task objective for a seeded run."""
    return rng.choice(_OBJECTIVES)


def user_count() -> int:
    """How many seeded users runs are spread over."""
    return len(_USERS)
