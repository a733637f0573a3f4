"""The worker's side of a run: who holds it, its life cycle, and progress stored then
published.

A worker process claims a run before working on it (``claim``) and keeps a heartbeat
going while it does (``Heartbeat``). Another delivery of the same run, while its holder
is alive, is dropped; a holder that died (its heartbeat stale, or its process gone on
this host) loses the run to whoever claims it next. The reaper (gpu_tasks/reaper.py)
queues such runs again. The bodies resume from what was stored, so a run interrupted
any number of times ends with the scores of an uninterrupted one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import timedelta

from django.conf import settings
from django.db import (
    InterfaceError,
    OperationalError,
    close_old_connections,
    connection,
    transaction,
)
from django.utils import timezone

from audits import progress
from audits.models import FINISHED, Run, Status
from gpu_tasks.workers import identity

log = logging.getLogger(__name__)
DB_ERRORS = (OperationalError, InterfaceError)
DB_OUTAGE_MAX = 600  # seconds a run waits for its database to come back before failing


class LeaseLost(Exception):
    """Another worker took the run over: this one stops without touching it."""


def execute(run_id: int, body: Callable[[Run], None]) -> None:
    """Run a task's body once per run: skip finished runs and duplicate deliveries, honour
    a cancel requested while queued, ride out a database outage (the body resumes), and
    record any other failure on the run before re-raising it."""
    me = identity()
    waited, delay = 0.0, 1.0
    while True:
        try:
            run = claim(run_id, me)
            if run is None:
                return
            with Heartbeat(run.pk, me):
                body(run)
            return
        except LeaseLost:
            log.warning("run %s was taken over by another worker; %s stops", run_id, me)
            return
        except DB_ERRORS as exc:
            if waited >= DB_OUTAGE_MAX:
                raise
            log.warning("run %s: database unavailable (%s); trying again in %.0f s",
                        run_id, exc, delay)  # fmt: skip
            close_old_connections()
            connection.close()
            time.sleep(delay)
            waited, delay = waited + delay, min(delay * 2, 30.0)
        except Exception as exc:
            log.exception("run %s failed", run_id)
            run = Run.objects.select_related("audit").get(pk=run_id)
            if run.worker == me:
                finish(run, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
            raise


def claim(run_id: int, me: str) -> Run | None:
    """Take the run for this worker process, unless it is finished, cancelled, or held by
    a live one. Each claim counts as an attempt (a run whose every attempt kills its worker,
    say by running out of memory, must not loop forever)."""
    with transaction.atomic():
        run = Run.objects.select_for_update().select_related("audit", "checkpoint").get(pk=run_id)
        if run.status in FINISHED:
            log.info("run %s already %s; nothing to do", run.pk, run.status)
            return None
        if run.worker and run.worker != me and holder_alive(run):
            log.warning("run %s is held by %s; this delivery is a duplicate", run.pk, run.worker)
            return None
        if not run.cancel_requested:
            if run.worker != me:  # not a retry of this process after a database outage
                if run.worker:
                    run.log(f"taken over from {run.worker}, which stopped answering")
                run.attempts += 1
            run.worker = me
            run.heartbeat = timezone.now()
            run.save(update_fields=["worker", "attempts", "heartbeat", "log_tail"])
    if run.cancel_requested:
        finish(run, Status.CANCELLED)
        return None
    run.lease = me
    return run


def holder_alive(run: Run) -> bool:
    """Whether the process holding the run is still at work: its heartbeat is fresh and,
    when it runs on this host, its process exists."""
    if run.heartbeat is None or stale(run.heartbeat):
        return False
    host, _, pid = run.worker.rpartition(":")
    if host == identity().rpartition(":")[0] and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
    return True


def stale(heartbeat) -> bool:
    return heartbeat < timezone.now() - timedelta(seconds=settings.KEEL_STALE_AFTER)


class Heartbeat:
    """Beats for the run every KEEL_HEARTBEAT_SECONDS in a thread, so a long model load or
    training step never looks like a dead worker. It beats only while this process holds
    the run; a database outage only skips beats."""

    def __init__(self, run_id: int, me: str) -> None:
        self.run_id, self.me = run_id, me
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._beat, name=f"heartbeat-{run_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopped.set()
        self.thread.join(timeout=10)

    def _beat(self) -> None:
        try:
            while not self.stopped.wait(settings.KEEL_HEARTBEAT_SECONDS):
                try:
                    Run.objects.filter(pk=self.run_id, worker=self.me).update(
                        heartbeat=timezone.now()
                    )
                except DB_ERRORS as exc:
                    log.warning("heartbeat of run %s skipped: %s", self.run_id, exc)
                    connection.close()
        finally:
            connection.close()


def finish(run: Run, status: Status, error: str = "") -> None:
    run.mark_finished(status, error=error)
    progress.publish(run.audit_id)


def report(run: Run, *, stage: str | None = None, done: int | None = None,
           total: int | None = None) -> None:  # fmt: skip
    if stage is not None:
        run.stage = stage
    if done is not None:
        run.progress_done = done
    if total is not None:
        run.progress_total = total
    run.heartbeat = timezone.now()
    run.save(update_fields=["stage", "progress_done", "progress_total", "heartbeat", "log_tail"])
    progress.publish(run.audit_id)


def cancel_requested(run: Run) -> bool:
    """Checked between batches: whether to stop. Raises LeaseLost when another worker has
    taken the run over, so this one unwinds without writing anything more."""
    row = Run.objects.filter(pk=run.pk).values_list("cancel_requested", "worker").first()
    if row is None:
        raise LeaseLost(run.pk)
    requested, holder = row
    if holder != getattr(run, "lease", holder):
        raise LeaseLost(run.pk)
    return requested
