"""A real Celery worker process, pointed at the test database and the configured broker."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from config.celery import app as celery_app


def database_url_for_worker() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


# Workers that beat every second, count as dead after 8 s of silence and reap every second:
# recovery from a killed worker takes seconds instead of the production default of minutes.
FAST = {"KEEL_HEARTBEAT_SECONDS": "1", "KEEL_STALE_AFTER": "8", "KEEL_REAP_EVERY": "1"}


@pytest.fixture
def celery_worker_process(transactional_db, models_root, tmp_path):
    celery_app.control.purge()  # drop messages left by earlier runs
    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, models_root)
    try:
        yield log_path
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def start_worker(log_path: Path, models_root: Path, env: dict | None = None) -> subprocess.Popen:
    """A worker process on the test database, logging to log_path, once it is ready.
    ``env`` adds to or overrides its environment (e.g. fast heartbeats and reaping)."""
    env = (
        os.environ
        | {
            "DATABASE_URL": database_url_for_worker(),
            "KEEL_CHECKPOINT_ROOTS": str(models_root),
            "KEEL_DATA_DIR": str(settings.KEEL_DATA_DIR),
            "KEEL_DTYPE": "float32",  # as in the test process (tests/conftest.py)
        }
        | (env or {})
    )
    offset = log_path.stat().st_size if log_path.exists() else 0
    with log_path.open("ab") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "evaluate,train",
             "--pool", "solo", "--loglevel", "INFO",
             "--without-heartbeat", "--without-gossip", "--without-mingle"],  # fmt: skip
            cwd=settings.BASE_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for_line(log_path, "ready.", worker, seconds=60, offset=offset)
    except Exception:
        worker.kill()
        raise
    return worker


def wait_for_line(
    path: Path, needle: str, process: subprocess.Popen, seconds: float, offset: int = 0
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if needle in path.read_bytes()[offset:].decode(errors="replace"):
            return
        if process.poll() is not None:
            raise RuntimeError(f"worker exited early:\n{path.read_text(errors='replace')}")
        time.sleep(0.2)
    raise TimeoutError(f"worker not ready after {seconds}s:\n{path.read_text(errors='replace')}")
