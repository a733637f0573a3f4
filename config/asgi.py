"""ASGI entry point: Django for HTTP, Channels for the progress websockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddleware, get_user  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from channels.sessions import CookieMiddleware, SessionMiddleware  # noqa: E402

from audits.consumers import database_call  # noqa: E402
from audits.routing import websocket_urlpatterns  # noqa: E402


class UserMiddleware(AuthMiddleware):
    """Channels' AuthMiddleware, reading the session's user on any free thread instead of
    the one thread per process that Channels' database calls share (audits.consumers)."""

    async def resolve_scope(self, scope):
        scope["user"]._wrapped = await database_call(get_user.func)(scope)


application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AllowedHostsOriginValidator(
            CookieMiddleware(SessionMiddleware(UserMiddleware(URLRouter(websocket_urlpatterns))))
        ),
    }
)
