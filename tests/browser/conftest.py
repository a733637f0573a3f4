"""Browser fixtures: Debian's chromium, driven by Playwright, against a real Keel server.

The server is uvicorn serving ``config.asgi`` in a subprocess on the pytest-django test
database, the way tests/integration starts its Celery worker, so the pages, the websocket
and the worker are the ones a user gets. It runs in either mode: PostgreSQL and Redis when
DATABASE_URL and REDIS_URL are set, else SQLite with the in-memory channel layer (the
consumer then polls the database). Static files need no collectstatic: WhiteNoise serves
them from the finders (WHITENOISE_USE_FINDERS in config/settings.py).
"""

from __future__ import annotations

import http.client
import importlib.util
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connections

# Imported so the browser tests can use the integration tests' real worker.
from tests.integration.conftest import celery_worker_process, database_url_for_worker

__all__ = ["celery_worker_process"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DESKTOP = {"width": 1280, "height": 900}
NARROW = {"width": 420, "height": 900}
# The function in contrast.js, without its leading comment (Playwright calls a string only
# when it starts as a function does).
CONTRAST_JS = "\n".join(
    line
    for line in (Path(__file__).parent / "contrast.js").read_text().splitlines()
    if not line.startswith("//")
)
ARTIFACTS = Path(settings.BASE_DIR) / "test-artifacts" / "screenshots"
PASSWORD = "browser-test-password"  # a throwaway test account's


@pytest.fixture(autouse=True)
def _browser_available() -> None:
    """Skip, saying what to install, before any server, worker or browser starts."""
    if not CHROMIUM.exists():
        pytest.skip("Debian's chromium is not installed: apt-get install -y chromium")
    if importlib.util.find_spec("playwright") is None:
        pytest.skip("the playwright package is not installed: pip install -e '.[dev]'")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KeelServer:
    """uvicorn serving Keel on one port; ``restart()`` brings it back on the same port."""

    def __init__(self, port: int, env: dict[str, str], log_path: Path) -> None:
        self.port = port
        self.env = env
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, seconds: float = 60) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host",
                 "127.0.0.1", "--port", str(self.port), "--timeout-graceful-shutdown", "3"],
                cwd=settings.BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Keel server exited while starting:\n{self.log()}")
            if self.answers():
                return
            time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"the Keel server did not answer within {seconds} s:\n{self.log()}")

    def answers(self) -> bool:
        """Whether the login page comes back (it needs the database, not only the port)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", "/login/")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


@pytest.fixture
def keel_server(transactional_db, models_root, tmp_path) -> Iterator[KeelServer]:
    """Keel over HTTP and websockets; transactional, so the server sees committed rows."""
    env = os.environ | {
        "DATABASE_URL": database_url_for_worker(),
        "KEEL_CHECKPOINT_ROOTS": str(models_root),
        "KEEL_DATA_DIR": str(settings.KEEL_DATA_DIR),
    }
    server = KeelServer(free_port(), env, tmp_path / "server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def live_server_url(keel_server) -> str:
    return keel_server.url


@pytest.fixture
def chromium(keel_server, monkeypatch):
    from playwright.sync_api import sync_playwright

    # Between its calls Playwright's sync API leaves its event loop marked as running in
    # this thread, so Django would refuse the test's own (synchronous) ORM calls. Set after
    # the server started, so its environment does not carry it.
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            # With a loop running, Django keeps this thread's connections apart from the
            # ones it had before, so the test's queries came on connections of their own:
            # close them while they are still the ones in view, or they outlive the test
            # database (PostgreSQL then refuses to drop it).
            connections.close_all()
            browser.close()


@pytest.fixture
def browser_page(chromium):
    """A desktop-sized page (1280 × 900)."""
    context = chromium.new_context(viewport=DESKTOP)
    context.set_default_timeout(15_000)
    yield context.new_page()
    context.close()


@pytest.fixture
def narrow_page(chromium) -> Callable:
    """Makes a 420 px wide page with the cookies (the login) of the page given."""
    contexts = []

    def make(like):
        context = chromium.new_context(viewport=NARROW, storage_state=like.context.storage_state())
        context.set_default_timeout(15_000)
        contexts.append(context)
        return context.new_page()

    yield make
    for context in contexts:
        context.close()


@pytest.fixture
def screenshot(request) -> Callable:
    """``screenshot(page, name)``: a full-page PNG kept in test-artifacts/screenshots/MODE/."""
    mode = "full" if settings.REDIS_URL else "embedded"
    test = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)
    folder = ARTIFACTS / mode / test
    folder.mkdir(parents=True, exist_ok=True)

    def take(page, name: str) -> Path:
        path = folder / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
        return path

    return take


@pytest.fixture
def operator_account(operator) -> tuple[str, str]:
    """The operator of tests/conftest.py, with a password this module knows."""
    operator.set_password(PASSWORD)
    operator.save()
    return operator.username, PASSWORD


@pytest.fixture
def logged_in_page(browser_page, live_server_url, operator_account):
    """The desktop page, logged in as the operator through the login form."""
    log_in(browser_page, live_server_url, *operator_account)
    return browser_page


def log_in(page, base_url: str, username: str, password: str) -> None:
    page.goto(f"{base_url}/login/")
    fill_login_form(page, username, password)


def fill_login_form(page, username: str, password: str) -> None:
    """Type into the login form on the page and submit it; returns once it is accepted."""
    page.fill("#id_username", username)
    page.fill("#id_password", password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/login/" not in url)


def off_the_loop(fn: Callable, *args, **kwargs):
    """Call fn in a thread of its own: code that uses async_to_sync (progress.publish) refuses
    to run in this one, where Playwright's event loop counts as running. Closes the thread's
    database connections after."""

    def call():
        try:
            return fn(*args, **kwargs)
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(call).result()


def low_contrast(page, minimum: float = 4.5) -> list[str]:
    """Text elements whose contrast with their background is under `minimum` (WCAG AA)."""
    return page.evaluate(CONTRAST_JS, minimum)
