"""The worker's side of a run: its life cycle, and progress stored then published."""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.utils import timezone

from audits import progress
from audits.models import FINISHED, Run, Status

log = logging.getLogger(__name__)


def execute(run_id: int, body: Callable[[Run], None]) -> None:
    """Run a task's body once per run: skip finished runs, honour a cancel requested
    while queued, and record any failure on the run before re-raising it."""
    run = Run.objects.select_related("audit", "checkpoint").get(pk=run_id)
    if run.status in FINISHED:
        log.info("run %s already %s; nothing to do", run.pk, run.status)
        return
    if run.cancel_requested:
        finish(run, Status.CANCELLED)
        return
    try:
        body(run)
    except Exception as exc:
        log.exception("run %s failed", run.pk)
        run.refresh_from_db()
        finish(run, Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        raise


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
    return Run.objects.filter(pk=run.pk, cancel_requested=True).exists()
