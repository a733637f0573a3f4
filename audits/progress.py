"""Progress of an audit: one typed snapshot, sent by the worker and the consumer alike."""

from __future__ import annotations

import logging
from typing import TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from audits.models import Audit

log = logging.getLogger(__name__)


class RunProgress(TypedDict):
    run: int
    kind: str
    checkpoint: str
    status: str
    stage: str
    done: int
    total: int
    percent: int
    device: str
    error: str
    log_tail: str


class AuditProgress(TypedDict):
    audit: int
    status: str
    runs: list[RunProgress]
    scores: int


def group_name(audit_id: int) -> str:
    return f"audit.{audit_id}"


def audit_snapshot(audit: Audit) -> AuditProgress:
    runs = audit.runs.select_related("checkpoint").order_by("id")
    return {
        "audit": audit.pk,
        "status": audit.status,
        "runs": [
            {
                "run": run.pk,
                "kind": run.kind,
                "checkpoint": run.checkpoint.name,
                "status": run.status,
                "stage": run.stage,
                "done": run.progress_done,
                "total": run.progress_total,
                "percent": run.percent,
                "device": run.device,
                "error": run.error,
                "log_tail": run.log_tail[-2000:],
            }
            for run in runs
        ],
        "scores": audit.scores.count(),
    }


def publish(audit_id: int) -> None:
    """Send the audit's stored progress to its websocket group. Best effort: progress is
    stored first, and a channel layer that is down (Redis restarting) must not fail the
    run; pages get the stored snapshot when their websocket connects again."""
    layer = get_channel_layer()
    if layer is None:
        return
    payload = audit_snapshot(Audit.objects.get(pk=audit_id))
    try:
        async_to_sync(layer.group_send)(
            group_name(audit_id), {"type": "audit.progress", "payload": payload}
        )
    except Exception as exc:  # redis-py's ConnectionError, TimeoutError, ...
        log.warning("progress of audit %s not published (channel layer: %s)", audit_id, exc)
