"""The worker's side of progress: store it on the run, then publish the snapshot."""

from __future__ import annotations

from django.utils import timezone

from audits import progress
from audits.models import Run


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
