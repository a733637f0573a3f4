"""The whole flow through a real Celery worker process: queue in the web app, watch, read scores.

Runs in whichever mode the environment selects: embedded (SQLite, filesystem
broker) by default, PostgreSQL and Redis when DATABASE_URL and REDIS_URL are set.
"""

from __future__ import annotations

import time

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator

from audits.consumers import AuditProgressConsumer
from audits.models import Audit, ItemResult, Status

pytestmark = pytest.mark.integration


def wait_until_finished(audit: Audit, worker_log, seconds: float = 240) -> Audit:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        audit.refresh_from_db()
        if audit.status in (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED):
            return audit
        time.sleep(0.5)
    raise AssertionError(f"audit still {audit.status}; worker log:\n{worker_log.read_text()}")


def test_an_audit_queued_in_the_browser_is_run_by_the_worker(
    client, operator, tiny_checkpoint, starter_suite, celery_worker_process
):
    client.force_login(operator)
    response = client.post(
        "/audits/new/",
        {
            "checkpoint": tiny_checkpoint.name,
            "suites": [starter_suite.pk],
            "profile": "quick",
            "seed": 0,
            "conditions": ["neutral"],
            "samples": 1,
        },  # fmt: skip
    )
    assert response.status_code == 302
    audit = Audit.objects.get()

    snapshots = []

    async def watch():
        comm = WebsocketCommunicator(AuditProgressConsumer.as_asgi(), f"/ws/audits/{audit.pk}/")
        comm.scope["user"] = operator
        comm.scope["url_route"] = {"kwargs": {"audit_id": audit.pk}}
        connected, _ = await comm.connect()
        assert connected
        while True:
            snapshot = await comm.receive_json_from(timeout=240)
            snapshots.append(snapshot)
            if snapshot["status"] in ("succeeded", "failed", "cancelled"):
                break
        await comm.disconnect()

    async_to_sync(watch)()
    audit = wait_until_finished(audit, celery_worker_process)
    assert audit.status == Status.SUCCEEDED, audit.runs.get().error
    run = audit.runs.get()
    assert run.attempts == 1
    assert ItemResult.objects.filter(run=run).count() == 60
    assert audit.scores.filter(domain="", trait="", metric="accuracy").get().n == 60

    # The page saw the run move: progress only grows and ends complete.
    done = [s["runs"][0]["done"] for s in snapshots]
    assert done == sorted(done)
    assert snapshots[-1]["runs"][0]["done"] == run.progress_total == 60 + run.generations.count()
    assert len(snapshots) >= 2
    heatmap = client.get(f"/charts/traits-domains.json?run={run.pk}").json()
    assert all(v is not None for row in heatmap["z"] for v in row)


def test_a_failing_run_is_marked_failed_with_its_reason(
    operator, tiny_checkpoint, starter_suite, celery_worker_process, settings
):
    from audits.services import audit_create

    # Vanish the weights after registration: the worker must say why it failed.
    tiny_checkpoint.path = str(settings.KEEL_CHECKPOINT_ROOTS[0] / "gone")
    tiny_checkpoint.save()
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])
    audit = wait_until_finished(audit, celery_worker_process)
    assert audit.status == Status.FAILED
    assert "does not exist" in audit.runs.get().error
