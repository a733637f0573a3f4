"""The web process's admission gate (config/asgi.py): at most KEEL_WEB_REQUESTS HTTP requests
in Django at once, the rest waiting in arrival order; static files, /healthz and websockets
never wait. Its effect under load is in BENCHMARKS.md (the soak)."""

from __future__ import annotations

import asyncio

from django.conf import settings

from config.asgi import Admission, application


class Recorder:
    """An ASGI app that notes how many requests are inside it at once, and in what order
    they came in; each stays until `release` is set."""

    def __init__(self):
        self.inside = self.most = 0
        self.order: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope, receive, send):
        self.inside += 1
        self.most = max(self.most, self.inside)
        self.order.append(scope["path"])
        await self.release.wait()
        self.inside -= 1


def http(path: str) -> dict:
    return {"type": "http", "path": path}


def test_requests_past_the_limit_wait_their_turn_in_arrival_order():
    async def scenario():
        inner = Recorder()
        gate = Admission(inner, 3, passes=("/static/",))
        requests = [asyncio.create_task(gate(http(f"/p{i}"), None, None)) for i in range(10)]
        await asyncio.sleep(0.05)
        assert inner.order == ["/p0", "/p1", "/p2"]  # the other seven wait outside
        inner.release.set()
        await asyncio.gather(*requests)
        return inner

    inner = asyncio.run(scenario())
    assert inner.most == 3
    assert inner.order == [f"/p{i}" for i in range(10)]


def test_static_files_health_and_websockets_pass_a_full_gate():
    async def scenario():
        inner = Recorder()
        gate = Admission(inner, 1, passes=("/static/", "/healthz"))
        held = asyncio.create_task(gate(http("/audits/"), None, None))
        waiting = asyncio.create_task(gate(http("/checkpoints/"), None, None))
        passing = [
            asyncio.create_task(gate(scope, None, None))
            for scope in (http("/static/keel.css"), http("/healthz"),
                          {"type": "websocket", "path": "/ws/audits/1/"})
        ]  # fmt: skip
        await asyncio.sleep(0.05)
        seen = list(inner.order)
        inner.release.set()
        await asyncio.gather(held, waiting, *passing)
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "/audits/"
    # /checkpoints/ still waits for /audits/; the other three went straight in
    assert sorted(seen[1:]) == ["/healthz", "/static/keel.css", "/ws/audits/1/"]


def test_zero_means_no_limit():
    async def scenario():
        inner = Recorder()
        gate = Admission(inner, 0, passes=())
        requests = [asyncio.create_task(gate(http(f"/p{i}"), None, None)) for i in range(20)]
        await asyncio.sleep(0.05)
        inside = inner.inside
        inner.release.set()
        await asyncio.gather(*requests)
        return inside

    assert asyncio.run(scenario()) == 20


def test_the_served_application_is_gated_by_the_setting():
    gate = application.application_mapping["http"]
    assert isinstance(gate, Admission)
    assert gate.limit == settings.KEEL_WEB_REQUESTS
    pool = settings.DATABASES["default"].get("OPTIONS", {}).get("pool")
    if pool:  # full mode: below the pool, so websockets always find a connection
        assert 0 < gate.limit < pool["max_size"]
    assert "/static/" in gate.passes and "/healthz" in gate.passes
