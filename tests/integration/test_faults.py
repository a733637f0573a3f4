"""Faults injected into real workers: a worker killed mid-evaluation, a broker that lost
its messages or restarted, a database that went away. Each run must end by itself with
the scores of an uninterrupted run, no duplicate rows, and never stay "running". The
workers run with FAST heartbeats and reaping (tests/integration/conftest.py)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time

import psycopg
import pytest
from django.db import connection
from django.utils import timezone

from audits.builtin import SUITES_DIR
from audits.models import Audit, ItemResult, Run, Score, Status
from audits.services import audit_create
from audits.suite_io import parse_jsonl, suite_store
from config.celery import app as celery_app
from gpu_tasks.evaluate import run_evaluation
from tests.integration.conftest import FAST, database_url_for_worker, start_worker
from tests.integration.test_worker import wait_until_finished

pytestmark = pytest.mark.integration


def queue_evaluation(checkpoint) -> Audit:
    """24 items (two traits of the starter suite) under two conditions: 48 scorings in
    three batches of writes, small enough for CI and long enough to be cut in the middle."""
    lines = (SUITES_DIR / "starter.jsonl").read_text().splitlines()
    subset = "\n".join(line for line in lines if '"trait": "truthfulness"' in line
                       or '"trait": "humility"' in line)  # fmt: skip
    suite = suite_store(name="faults-24", parsed=parse_jsonl(subset, "subset"),
                        description="", source="keel", license="Apache-2.0")  # fmt: skip
    assert suite.items.count() == 24
    return audit_create(
        checkpoint=checkpoint, suites=[suite], profile="standard",
        conditions=["neutral", "flattery"], samples=0,
    )  # fmt: skip


def scores_of(audit: Audit) -> list[tuple]:
    return sorted(
        Score.objects.filter(audit=audit).values_list(
            "suite__name", "domain", "trait", "family", "condition", "metric", "value",
            "ci_low", "ci_high", "n",
        )
    )  # fmt: skip


_reference: list = []  # computed once per session: the tiny model and items never change


@pytest.fixture
def reference(tiny_checkpoint, transactional_db):
    """Scores of the same evaluation run straight through in this process. Its results are
    then deleted, so the faulted run cannot copy them (evaluate._reuse_results)."""
    if _reference:
        return _reference[0]
    audit = queue_evaluation(tiny_checkpoint)
    celery_app.control.purge()  # this one is run here, not by a worker
    run = audit.runs.get()
    run_evaluation(run.pk)
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    expected = scores_of(audit), ItemResult.objects.filter(run=run).count()
    audit.delete()
    _reference.append(expected)
    return expected


def wait_for_progress(run: Run, done: int, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        run.refresh_from_db()
        if run.progress_done >= done and run.status == Status.RUNNING:
            return
        time.sleep(0.05)
    raise AssertionError(f"run {run.pk} reached {run.progress_done} of {done}: {run.log_tail}")


def assert_same_as_reference(audit: Audit, reference) -> Run:
    scores, results = reference
    assert audit.status == Status.SUCCEEDED, list(audit.runs.values_list("error", flat=True))
    run = audit.runs.get()
    assert ItemResult.objects.filter(run=run).count() == results
    assert scores_of(audit) == scores
    return run


def test_a_worker_killed_mid_evaluation_is_reaped_and_the_run_resumes_identically(
    tiny_checkpoint, reference, models_root, tmp_path
):
    celery_app.control.purge()
    log = tmp_path / "worker.log"
    worker = start_worker(log, models_root, FAST)
    try:
        audit = queue_evaluation(tiny_checkpoint)
        run = audit.runs.get()
        total_hint = reference[1]
        wait_for_progress(run, 16)  # the first batch of writes: 8 items x 2 conditions
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        run.refresh_from_db()
        assert run.status == Status.RUNNING and run.progress_done < total_hint
        stored_at_kill = ItemResult.objects.filter(run=run).count()
        assert 0 < stored_at_kill < total_hint

        worker = start_worker(log, models_root, FAST)  # no one queues anything by hand
        audit = wait_until_finished(audit, log)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    run = assert_same_as_reference(audit, reference)
    assert run.attempts == 2
    assert "stopped answering" in run.log_tail and "queued again" in run.log_tail
    assert f"resuming: {stored_at_kill} of" in run.log_tail


def test_a_run_whose_message_the_broker_lost_is_sent_again(
    tiny_checkpoint, reference, models_root, tmp_path
):
    audit = queue_evaluation(tiny_checkpoint)
    celery_app.control.purge()  # what a broker restarted without persistence does
    Run.objects.filter(audit=audit).update(queued_at=timezone.now() - timezone.timedelta(hours=1))
    log = tmp_path / "worker.log"
    worker = start_worker(log, models_root, FAST)
    try:
        audit = wait_until_finished(audit, log)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    run = assert_same_as_reference(audit, reference)
    assert "lost by the broker; sent again" in run.log_tail and run.attempts == 1


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_redis(port: int, folder) -> subprocess.Popen:
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return server
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("redis-server did not start")


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_a_broker_restart_loses_nothing(tiny_checkpoint, reference, models_root, tmp_path):
    """A Redis of its own, killed under a running run with another queued behind it, and
    started again empty: the worker reconnects, the running run finishes, and the queued
    one, whose message died with the broker, is sent again by the reaper."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    redis = start_redis(port, tmp_path)
    log = tmp_path / "worker.log"
    worker = start_worker(log, models_root, FAST | {"REDIS_URL": url})
    try:
        audits = [queue_evaluation(tiny_checkpoint) for _ in range(2)]
        celery_app.control.purge()  # they went to the test's own broker: send them to this one
        with celery_app.connection_for_write(url) as conn:
            for audit in audits:
                task = celery_app.tasks["gpu_tasks.tasks.evaluate_run"]
                task.apply_async((audit.runs.get().pk,), connection=conn, priority=3)
        first = audits[0].runs.get()
        wait_for_progress(first, 8)
        redis.send_signal(signal.SIGKILL)
        redis.wait(timeout=10)
        time.sleep(2)
        redis = start_redis(port, tmp_path)
        Run.objects.filter(audit=audits[1]).update(
            queued_at=timezone.now() - timezone.timedelta(hours=1)
        )
        finished = [wait_until_finished(audit, log) for audit in audits]
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        redis.terminate()
    for audit in finished:
        assert_same_as_reference(audit, reference)
    assert "lost by the broker; sent again" in audits[1].runs.get().log_tail


def test_a_database_outage_mid_run_is_ridden_out(tiny_checkpoint, reference, models_root, tmp_path):
    """The worker's connections are cut and new ones refused for a few seconds, as in a
    PostgreSQL restart; the run waits, reconnects and resumes."""
    if connection.vendor != "postgresql":
        pytest.skip("needs PostgreSQL")
    name = connection.settings_dict["NAME"]
    admin_url = database_url_for_worker().rsplit("/", 1)[0] + "/postgres"
    celery_app.control.purge()
    log = tmp_path / "worker.log"
    worker = start_worker(log, models_root, FAST | {
        "DATABASE_URL": database_url_for_worker() + "?application_name=keel-fault-worker",
        "KEEL_STALE_AFTER": "30",  # longer than the outage: the run is not reaped meanwhile
    })  # fmt: skip
    try:
        audit = queue_evaluation(tiny_checkpoint)
        run = audit.runs.get()
        wait_for_progress(run, 16)
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            try:
                cut = admin.execute(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = 'keel-fault-worker'"
                ).fetchone()[0]
                time.sleep(5)
            finally:
                admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        assert cut >= 1
        audit = wait_until_finished(audit, log)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    run = assert_same_as_reference(audit, reference)
    assert "database unavailable" in log.read_text()
    assert run.attempts == 1  # the same process carried on: no second claim counted
