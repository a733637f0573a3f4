"""The reaper, run claims and device slots, against the configured database and broker
(PostgreSQL and Redis in CI, SQLite and the filesystem broker embedded)."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from audits.models import Priority, Run, Status, Worker
from audits.services import audit_create
from config.celery import app as celery_app
from gpu_tasks import reaper
from gpu_tasks.progress import claim

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def queued(tiny_checkpoint, starter_suite):
    celery_app.control.purge()
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    yield audit.runs.get()
    celery_app.control.purge()


def test_a_queued_run_is_in_the_broker_and_counted_on_its_queue(queued):
    holdings = reaper.broker_holdings()
    assert queued.pk in holdings.run_ids
    assert holdings.depth["evaluate"] == 1 and holdings.depth["train"] == 0
    assert reaper.reap().resent == []  # its message is there: nothing to send


def test_a_run_held_by_a_silent_worker_is_queued_again(queued, settings):
    assert claim(queued.pk, "keel@elsewhere:1") is not None
    celery_app.control.purge()
    Run.objects.filter(pk=queued.pk).update(
        status=Status.RUNNING, heartbeat=timezone.now() - timedelta(seconds=10)
    )
    settings.KEEL_STALE_AFTER = 60
    assert reaper.reap().requeued == []  # 10 s of silence is not death
    settings.KEEL_STALE_AFTER = 5
    assert reaper.reap().requeued == [queued.pk]
    queued.refresh_from_db()
    assert queued.status == Status.QUEUED and queued.worker == ""
    assert "keel@elsewhere:1 stopped answering" in queued.log_tail
    assert "queued again (attempt 2 of 3)" in queued.log_tail
    assert queued.pk in reaper.broker_holdings().run_ids


def test_a_run_that_keeps_killing_its_worker_is_failed_not_looped(queued, settings):
    settings.KEEL_STALE_AFTER = 5
    for attempt in range(1, settings.KEEL_MAX_ATTEMPTS + 1):
        claimed = claim(queued.pk, f"keel@elsewhere:{attempt}")
        assert claimed is not None and claimed.attempts == attempt
        Run.objects.filter(pk=queued.pk).update(heartbeat=timezone.now() - timedelta(minutes=1))
        reaped = reaper.reap()
    assert reaped.failed == [queued.pk]
    queued.refresh_from_db()
    assert queued.status == Status.FAILED and queued.audit.status == Status.FAILED
    assert "after 3 attempts" in queued.error and "retry the audit" in queued.error


def test_a_second_delivery_is_dropped_while_the_holder_lives(queued):
    first = claim(queued.pk, f"keel@{os.uname().nodename}:{os.getpid()}")
    assert first is not None and first.attempts == 1
    assert claim(queued.pk, "keel@other:7") is None  # the holder beats and exists
    queued.refresh_from_db()
    assert queued.attempts == 1 and queued.worker.endswith(f":{os.getpid()}")


def test_a_holder_process_gone_from_this_host_loses_the_run_at_once(queued):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from gpu_tasks.workers import identity

    node = identity().rpartition(":")[0]
    assert claim(queued.pk, f"{node}:{dead.pid}") is not None
    taken = claim(queued.pk, f"{node}:{os.getpid()}")  # heartbeat fresh, process gone
    assert taken is not None and taken.attempts == 2
    assert f"taken over from {node}:{dead.pid}" in taken.log_tail


def test_a_run_whose_message_was_lost_is_sent_again_at_its_priority(queued):
    celery_app.control.purge()
    assert reaper.reap().resent == []  # queued moments ago: its message may be in flight
    Run.objects.filter(pk=queued.pk).update(queued_at=timezone.now() - timedelta(minutes=5))
    assert reaper.reap().resent == [queued.pk]
    assert queued.pk in reaper.broker_holdings().run_ids
    assert reaper.reap().resent == []  # sent once, not every minute


@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="Redis only")
def test_high_priority_runs_are_taken_before_normal_ones(tiny_checkpoint, starter_suite):
    celery_app.control.purge()
    normal = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    high = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0,
                        priority=Priority.HIGH)  # fmt: skip
    taken = []  # what a worker would take, in order
    with celery_app.connection_for_read() as conn:
        for _ in range(2):
            message = conn.default_channel.basic_get("evaluate", no_ack=True)
            taken.append(message.payload[0][0])
    assert taken == [high.runs.get().pk, normal.runs.get().pk]


HOLD_SLOT = """
import time, django
django.setup()
from gpu_tasks.slots import process_device
print(process_device(), time.monotonic(), flush=True)
time.sleep(3)
"""


def test_each_job_process_takes_its_own_device_slot_and_waits_when_none_is_free(tmp_path):
    env = os.environ | {
        "KEEL_WORKER_DEVICES": "cpu", "KEEL_JOBS_PER_DEVICE": "2", "KEEL_DATA_DIR": str(tmp_path),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }  # fmt: skip
    holders = [
        subprocess.Popen(
            [sys.executable, "-c", HOLD_SLOT],
            env=env,
            cwd=settings.BASE_DIR,
            stdout=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for _ in range(3)
    ]
    got = sorted(
        (float(stamp), device)
        for device, stamp in (p.communicate(timeout=120)[0].split() for p in holders)
    )
    assert [device for _, device in got] == ["cpu"] * 3
    host = os.uname().nodename
    assert sorted(p.name for p in (tmp_path / "locks").iterdir()) == [
        f"{host}-cpu-0.lock", f"{host}-cpu-1.lock"
    ]  # fmt: skip
    # Two took a slot at once; the third waited for one of them to exit (each holds 3 s).
    assert got[2][0] - got[0][0] >= 2.0


def test_the_workers_page_shows_nodes_devices_runs_and_queues(client, operator, queued):
    now = timezone.now()
    Worker.objects.create(name="keel@gpu-7", queues=["evaluate"], devices=["cuda:0", "cuda:1"],
                          concurrency=2, started_at=now, last_seen=now)  # fmt: skip
    Worker.objects.create(name="keel@gone", queues=["train"], devices=[], concurrency=1,
                          started_at=now, last_seen=now - timedelta(minutes=10))  # fmt: skip
    Run.objects.filter(pk=queued.pk).update(
        worker="keel@gpu-7:4242", device="cuda:1 bfloat16", status=Status.RUNNING,
        heartbeat=now, progress_done=3, progress_total=12,
    )  # fmt: skip
    client.force_login(operator)
    page = client.get("/audits/workers/").content.decode()
    assert "keel@gpu-7" in page and "cuda:0, cuda:1" in page and "up" in page
    assert "keel@gone" in page and "not answering" in page
    assert "cuda:1 bfloat16" in page and "keel@gpu-7:4242" in page and "25%" in page
    # The queue table: no run waiting now, and the broker holds the one message sent.
    assert "<td>evaluate</td><td>0</td><td>1</td>" in page.replace("\n", "")
