"""The reaper, run by Celery beat every minute and by each worker as it starts:

- a run whose holder stopped answering (no heartbeat for KEEL_STALE_AFTER seconds) is
  queued again, or failed once it has had KEEL_MAX_ATTEMPTS attempts;
- a queued run whose message the broker no longer holds (a broker restarted without
  persistence, a filesystem-broker message taken by a worker that was then killed) is
  sent again.

Sending a run twice is harmless: a delivery of a finished run, or of one a live worker
holds, is dropped (gpu_tasks/progress.py ``claim``). So the reaper errs on the side of
sending.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audits import progress
from audits.models import Run, RunKind, Status

log = logging.getLogger(__name__)
QUEUES = {RunKind.EVALUATE: "evaluate", RunKind.TRAIN: "train"}
RESEND_AFTER = 60  # seconds a queued run must wait before its message counts as lost


@dataclass
class Holdings:
    """What the broker holds: messages waiting per queue, and the runs they are for."""

    depth: dict[str, int] = field(default_factory=dict)
    run_ids: set[int] = field(default_factory=set)


@dataclass
class Reaped:
    requeued: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    resent: list[int] = field(default_factory=list)


def reap() -> Reaped:
    reaped = Reaped()
    cutoff = timezone.now() - timedelta(seconds=settings.KEEL_STALE_AFTER)
    stale = Run.objects.filter(
        status__in=[Status.QUEUED, Status.RUNNING], heartbeat__lt=cutoff
    ).exclude(worker="")
    for run_id in stale.values_list("pk", flat=True):
        _requeue_or_fail(run_id, cutoff, reaped)

    holdings = broker_holdings()
    if holdings is not None:
        waiting = Run.objects.filter(
            status=Status.QUEUED, worker="",
            queued_at__lt=timezone.now() - timedelta(seconds=RESEND_AFTER),
        ).exclude(pk__in=holdings.run_ids)  # fmt: skip
        for run in waiting:
            run.log("its message was lost by the broker; sent again")
            run.queued_at = timezone.now()
            run.save(update_fields=["log_tail", "queued_at"])
            enqueue(run)
            reaped.resent.append(run.pk)
    if reaped.requeued or reaped.failed or reaped.resent:
        log.warning("reaper: queued again %s, failed %s, sent again %s",
                    reaped.requeued, reaped.failed, reaped.resent)  # fmt: skip
    return reaped


@transaction.atomic
def _requeue_or_fail(run_id: int, cutoff, reaped: Reaped) -> None:
    run = Run.objects.select_for_update().select_related("audit").get(pk=run_id)
    if run.status not in (Status.QUEUED, Status.RUNNING) or not run.worker:
        return  # finished or reaped meanwhile
    if run.heartbeat is None or run.heartbeat >= cutoff:
        return  # it beat meanwhile
    silent = f"{run.worker} stopped answering (last heartbeat {run.heartbeat:%H:%M:%S} UTC)"
    if run.attempts >= settings.KEEL_MAX_ATTEMPTS:
        run.worker = ""
        run.mark_finished(
            Status.FAILED,
            error=f"{silent}, after {run.attempts} attempts; the run was stopped so that it "
            "does not loop. Look at the worker's log (out of memory?), then retry the audit.",
        )
        transaction.on_commit(lambda: progress.publish(run.audit_id))
        reaped.failed.append(run.pk)
        return
    run.log(f"{silent}; queued again (attempt {run.attempts + 1} of "
            f"{settings.KEEL_MAX_ATTEMPTS})")  # fmt: skip
    run.status = Status.QUEUED
    run.worker = ""
    run.queued_at = timezone.now()
    run.save(update_fields=["status", "worker", "queued_at", "log_tail"])
    run.audit.refresh_status()
    transaction.on_commit(lambda: (enqueue(run), progress.publish(run.audit_id)))
    reaped.requeued.append(run.pk)


def enqueue(run: Run) -> None:
    """Send the run's task to its queue, at its audit's priority."""
    from gpu_tasks.tasks import evaluate_run, train_run

    task = train_run if run.kind == RunKind.TRAIN else evaluate_run
    task.apply_async((run.pk,), priority=run.audit.priority)


def broker_holdings() -> Holdings | None:
    """The broker's waiting and taken-but-unacknowledged messages for Keel's queues, read
    straight from Redis or the filesystem broker's folder; None for other brokers."""
    url = settings.CELERY_BROKER_URL
    if url.startswith(("redis://", "rediss://")):
        return _redis_holdings(url)
    if url.startswith("filesystem://"):
        folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS["data_folder_in"])
        return _filesystem_holdings(folder)
    return None


def _run_id(raw: bytes | str) -> int | None:
    """The run id a Celery message carries (its first argument), or None."""
    try:
        message = json.loads(raw)
        if isinstance(message, list):  # an unacknowledged entry: [message, exchange, key]
            message = message[0]
        body = message["body"]
        if message.get("properties", {}).get("body_encoding") == "base64":
            body = base64.b64decode(body)
        args = json.loads(body)[0]
        return int(args[0])
    except (ValueError, KeyError, IndexError, TypeError):
        return None


def _redis_holdings(url: str) -> Holdings:
    import redis

    steps = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("priority_steps", [0])
    sep = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("sep", "\x06\x16")
    holdings = Holdings()
    client = redis.Redis.from_url(url)
    try:
        for queue in QUEUES.values():
            depth = 0
            for step in steps:
                key = queue if step == 0 else f"{queue}{sep}{step}"
                messages = client.lrange(key, 0, -1)
                depth += len(messages)
                holdings.run_ids.update(filter(None, map(_run_id, messages)))
            holdings.depth[queue] = depth
        # Taken but not acknowledged: held while young. An old one whose run is still waiting
        # for its first claim was taken by a worker that died before claiming it; Redis would
        # give it back only after the visibility timeout (an hour), so it counts as lost.
        young = client.zrangebyscore("unacked_index", time.time() - RESEND_AFTER, "+inf")
        if young:
            holdings.run_ids.update(filter(None, map(_run_id, client.hmget("unacked", young))))
    finally:
        client.close()
    return holdings


def _filesystem_holdings(folder: Path) -> Holdings:
    holdings = Holdings(depth=dict.fromkeys(QUEUES.values(), 0))
    for path in folder.glob("*.msg"):
        queue = path.name.partition(".")[2].removesuffix(".msg")  # ms_uuid.QUEUE.msg
        try:
            raw = path.read_bytes()
        except FileNotFoundError:  # taken meanwhile
            continue
        if queue in holdings.depth:
            holdings.depth[queue] += 1
        run_id = _run_id(raw)
        if run_id is not None:
            holdings.run_ids.add(run_id)
    return holdings
