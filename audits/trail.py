"""The audit log: who did what to which object, when, in a hash chain.

`record()` is the one way to write an event. Each event's hash covers its own fields and the
hash of the event before it; `prev_hash` is unique, so two writers racing for the same
predecessor cannot both succeed: the loser reads the new head and tries again. The chain is
therefore linear and follows the id order, and `verify()` finds the first row that was
altered, deleted or reordered behind Keel's back.

The acting user comes from the request (`ActorMiddleware` sets it for the request's
duration), or is given explicitly; with neither, the event is from the command line.
"""

from __future__ import annotations

import contextvars
import hashlib
import json
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from audits.models import Event

GENESIS = "0" * 64
ATTEMPTS = 50

_actor: contextvars.ContextVar = contextvars.ContextVar("keel_actor", default=None)


class Action:
    REGISTER = "checkpoint.register"
    ALIAS = "checkpoint.alias"
    IMPORT = "suite.import"
    QUEUE = "audit.queue"
    CANCEL = "audit.cancel"
    RETRY = "audit.retry"
    EXPORT = "export"
    LOGIN_FAILED = "login.failed"
    LOGIN_LOCKED = "login.locked"
    LOGIN_UNLOCKED = "login.unlocked"
    EDIT = "checkpoint.edit"  # notes or tags changed in Django's admin
    ROLE_CHANGE = "user.roles"
    API_TOKEN = "user.api-token"  # noqa: S105 (an action name, not a secret)

    ALL = (
        REGISTER,
        ALIAS,
        IMPORT,
        QUEUE,
        CANCEL,
        RETRY,
        EXPORT,
        LOGIN_FAILED,
        LOGIN_LOCKED,
        LOGIN_UNLOCKED,
        EDIT,
        ROLE_CHANGE,
        API_TOKEN,
    )


class ActorMiddleware:
    """Makes the request's user the actor of every event recorded while it is handled."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        token = _actor.set(request.user if request.user.is_authenticated else None)
        try:
            return self.get_response(request)
        finally:
            _actor.reset(token)


def event_hash(event: Event) -> str:
    """SHA-256 over the event's recorded fields and its predecessor's hash. The actor is
    hashed by name (kept as it was), so deactivating or deleting a user breaks nothing."""
    content = {
        "at": event.at.isoformat(timespec="microseconds"),
        "actor": event.actor_name,
        "action": event.action,
        "object": [event.object_type, event.object_id, event.object_repr],
        "details": event.details,
        "prev": event.prev_hash,
    }
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def record(action: str, obj=None, *, details: dict | None = None, actor=None, name: str = ""):
    """Append one event. ``obj`` is a model instance (or None); ``actor`` overrides the
    request's user; ``name`` records an actor that is not a user (a failed login's name)."""
    actor = actor if actor is not None else _actor.get()
    if actor is not None and not actor.is_authenticated:
        actor = None
    fields = {
        "at": timezone.now(),
        "actor": actor,
        "actor_name": actor.get_username() if actor is not None else name,
        "action": action,
        "object_type": obj._meta.model_name if obj is not None else "",
        "object_id": str(obj.pk) if obj is not None else "",
        "object_repr": str(obj)[:300] if obj is not None else "",
        "details": json.loads(json.dumps(details or {}, default=str)),
    }
    for _ in range(ATTEMPTS):
        try:
            with transaction.atomic():
                head = Event.objects.order_by("-id").values_list("hash", flat=True).first()
                event = Event(**fields, prev_hash=head or GENESIS)
                event.hash = event_hash(event)
                event.save()
                return event
        except IntegrityError:  # another event took this predecessor; link to the new head
            continue
    raise RuntimeError(f"could not append to the audit log after {ATTEMPTS} attempts")


@dataclass(frozen=True)
class Verdict:
    events: int
    head: str
    broken: Event | None = None
    problem: str = ""

    @property
    def intact(self) -> bool:
        return self.broken is None


def verify() -> Verdict:
    """Walk the chain in id order; stop at the first event whose contents no longer match
    its hash, or that does not link to the event before it."""
    events = Event.objects.order_by("id").iterator(chunk_size=2000)
    previous, count, last = None, 0, GENESIS
    for event in events:
        if event.prev_hash != last:
            where = f"event {previous.pk}" if previous else "the start of the log"
            return Verdict(
                count, last, event,
                f"event {event.pk} does not link to {where}: an event between them was "
                "deleted, or one of them was moved or altered",
            )  # fmt: skip
        if event_hash(event) != event.hash:
            return Verdict(
                count, last, event,
                f"event {event.pk} ({event.action} at {event.at:%Y-%m-%d %H:%M:%S}) was altered "
                "after it was written: its contents no longer match its hash",
            )  # fmt: skip
        previous, last, count = event, event.hash, count + 1
    return Verdict(count, last)
