"""Worker nodes as the workers page sees them: each registers itself when it starts
(queues, devices, concurrency), keeps ``last_seen`` fresh from a thread, and says when it
stops. Who holds a run is ``identity()``: the node's name and the process id."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from celery import current_task
from celery.signals import worker_ready, worker_shutdown
from django.conf import settings
from django.db import DatabaseError, connection
from django.utils import timezone

log = logging.getLogger(__name__)
SEEN_EVERY = 15  # seconds between a node's "still here"
_stop = threading.Event()


def identity() -> str:
    """keel@host:pid of this process: the Celery node name inside a task, else the host."""
    request = getattr(current_task, "request", None)
    node = getattr(request, "hostname", None) or f"keel@{socket.gethostname()}"
    return f"{node}:{os.getpid()}"


def node_of(holder: str) -> str:
    return holder.rpartition(":")[0]


@worker_ready.connect
def _register(sender, **_) -> None:
    from audits.models import Worker
    from gpu_tasks import reaper, slots

    consumer = sender
    now = timezone.now()
    Worker.objects.update_or_create(
        name=consumer.hostname,
        defaults={
            "queues": sorted(q.name for q in consumer.task_consumer.queues),
            "devices": slots.declared_devices(),
            "jobs_per_device": settings.KEEL_JOBS_PER_DEVICE,
            "concurrency": consumer.pool.num_processes if consumer.pool else 1,
            "version": settings.KEEL_VERSION,
            "started_at": now,
            "last_seen": now,
            "stopped_at": None,
        },
    )
    threading.Thread(target=_seen, args=(consumer.hostname,), daemon=True).start()
    try:
        reaper.reap()  # what died with an earlier worker is queued again at once
    except Exception:
        log.exception("reaping at start-up failed; it is tried again every minute")


def _seen(name: str) -> None:
    """The node's heartbeat; it also reaps every KEEL_REAP_EVERY seconds, from the main
    process, so stale runs are queued again even while every job slot is busy."""
    from audits.models import Worker
    from gpu_tasks import reaper

    last_reap = time.monotonic()
    while not _stop.wait(min(SEEN_EVERY, settings.KEEL_REAP_EVERY)):
        try:
            Worker.objects.filter(name=name).update(last_seen=timezone.now())
            if time.monotonic() - last_reap >= settings.KEEL_REAP_EVERY:
                last_reap = time.monotonic()
                reaper.reap()
        except Exception as exc:  # the database or the broker is down: try again later
            log.warning("worker heartbeat or reaping skipped: %s", exc)
            connection.close()
    connection.close()


@worker_shutdown.connect
def _unregister(sender, **_) -> None:
    from audits.models import Worker

    _stop.set()
    try:
        Worker.objects.filter(name=sender.hostname).update(stopped_at=timezone.now())
    except DatabaseError:
        log.exception("could not record the worker's shutdown")
