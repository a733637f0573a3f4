"""Bench-only ASGI entry point: Keel's `config.asgi.application`, with each request's server
time written to a file per server process.

    KEEL_BENCH_TIMING_DIR=/tmp/timing gunicorn bench.timed_asgi:application \\
        -k uvicorn.workers.UvicornWorker

bench/dashboard_load.py --soak serves this instead of `config.asgi:application`; nothing else
changes (same settings, middleware and channel layer). Each process appends one line per
HTTP request to `timing-<pid>.tsv` in KEEL_BENCH_TIMING_DIR, tab-separated:

    end (Unix time, s)   server ms   status   in flight   path?query

- server ms: from the app receiving the request to the final response body chunk handed to
  the server (`more_body` false), so it includes the wait for a thread, the database and the
  GIL while other requests run, but not the network or the client;
- status: the response's, or 0 when the app sent no response (the server then answers 500);
- in flight: this process's HTTP requests under way when this one arrived, itself included
  (under a closed-loop load it says how much of the server time is sharing the CPU).

A websocket is written as one line too, with path `ws:/ws/...`: ms from the connection to
the first message sent (the progress snapshot), status 101, or the close code if the consumer
closed first.

Why a file rather than a `Server-Timing` response header: the header leaves with the
response start, before the body, so it cannot carry the time to the final body chunk; and the
file also keeps the requests whose client gave up. One append per request costs one
`os.write` (a few microseconds), against page times of milliseconds.
"""

from __future__ import annotations

import os
import time

from config.asgi import application as keel_application

TIMING_DIR = os.environ.get("KEEL_BENCH_TIMING_DIR", "")
if not TIMING_DIR or not os.path.isdir(TIMING_DIR):
    raise RuntimeError(
        "bench.timed_asgi needs KEEL_BENCH_TIMING_DIR set to an existing folder, where each "
        f"server process writes its timing file (got {TIMING_DIR!r}); bench/dashboard_load.py "
        "--soak sets it"
    )

if os.environ.get("KEEL_BENCH_IMPORT_URLCONF") == "1":
    # --preload: import every view now (in gunicorn's master, before it forks the workers)
    # rather than on a worker's first request, inside its event loop, which then cannot
    # send gunicorn its heartbeat while the imports run.
    import importlib

    from django.conf import settings

    importlib.import_module(settings.ROOT_URLCONF)

_file = {"pid": 0, "fd": -1}
_in_flight = 0


def _write(end: float, ms: float, status: int, in_flight: int, path: str) -> None:
    pid = os.getpid()
    if _file["pid"] != pid:  # opened in each worker, after gunicorn forks it
        name = os.path.join(TIMING_DIR, f"timing-{pid}.tsv")
        _file["fd"] = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        _file["pid"] = pid
    line = f"{end:.3f}\t{ms:.2f}\t{status}\t{in_flight}\t{path}\n"
    os.write(_file["fd"], line.encode("utf-8", "replace"))


def _path(scope: dict) -> str:
    query = scope.get("query_string", b"").decode("latin-1")
    return scope["path"] + (f"?{query}" if query else "")


async def application(scope, receive, send):
    if scope["type"] == "http":
        await _timed_http(scope, receive, send)
    elif scope["type"] == "websocket":
        await _timed_websocket(scope, receive, send)
    else:
        await keel_application(scope, receive, send)


async def _timed_http(scope, receive, send):
    global _in_flight
    started = time.perf_counter()
    _in_flight += 1
    arrived_with = _in_flight
    status = 0
    finished: float | None = None

    async def timed_send(message: dict) -> None:
        nonlocal status, finished
        if message["type"] == "http.response.start":
            status = message["status"]
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = finished or time.perf_counter()

    try:
        await keel_application(scope, receive, timed_send)
    finally:
        _in_flight -= 1
        end = finished or time.perf_counter()
        _write(time.time(), (end - started) * 1000, status, arrived_with, _path(scope))


async def _timed_websocket(scope, receive, send):
    started = time.perf_counter()
    written = False

    async def timed_send(message: dict) -> None:
        nonlocal written
        await send(message)
        if not written and message["type"] in ("websocket.send", "websocket.close"):
            written = True
            status = 101 if message["type"] == "websocket.send" else message.get("code", 1000)
            ms = (time.perf_counter() - started) * 1000
            _write(time.time(), ms, status, 0, f"ws:{_path(scope)}")

    await keel_application(scope, receive, timed_send)
