"""ASGI entry point: Django for HTTP, Channels for the progress websockets."""

import asyncio
import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddleware, get_user  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402
from django.conf import settings  # noqa: E402

from audits.consumers import database_call  # noqa: E402
from audits.routing import websocket_urlpatterns  # noqa: E402


class Admission:
    """At most `limit` HTTP requests in Django at once per process; the rest wait here, in
    arrival order, holding neither a thread nor a database connection. Without it, 100
    clients meant 70 requests in flight, each on its own thread, queued for the pool's
    connections, and a websocket's database call waited behind all of them (the soak in
    BENCHMARKS.md). With the limit below the pool's size, websockets always find a
    connection. Static files and /healthz pass straight through."""

    def __init__(self, app, limit: int, passes: tuple[str, ...]):
        self.app, self.limit, self.passes = app, limit, passes
        self.gate: asyncio.Semaphore | None = None  # made inside the server's event loop

    async def __call__(self, scope, receive, send):
        if self.limit < 1 or scope["type"] != "http" or scope["path"].startswith(self.passes):
            return await self.app(scope, receive, send)
        if self.gate is None:
            self.gate = asyncio.Semaphore(self.limit)
        async with self.gate:
            await self.app(scope, receive, send)


class UserMiddleware(AuthMiddleware):
    """Channels' AuthMiddleware, reading the session's user on any free thread instead of
    the one thread per process that Channels' database calls share (audits.consumers)."""

    async def resolve_scope(self, scope):
        scope["user"]._wrapped = await database_call(get_user.func)(scope)


application = ProtocolTypeRouter(
    {
        "http": Admission(
            django_asgi_app,
            settings.KEEL_WEB_REQUESTS,
            passes=(f"/{settings.STATIC_URL.strip('/')}/", "/healthz"),
        ),
        "websocket": AllowedHostsOriginValidator(
            CookieMiddleware(SessionMiddleware(UserMiddleware(URLRouter(websocket_urlpatterns))))
        ),
    }
)
