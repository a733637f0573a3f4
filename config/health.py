"""``/healthz``: can this process reach its database and its broker?

For load balancers, container health checks and monitors: no login, no role, two cheap
checks (``SELECT 1``; a broker connection with a short timeout, or in embedded mode the
broker's folders), 200 when both pass, 503 naming the part that failed and why.

``python -m config.health [URL]`` asks a running web server the same question the way a
container's health check does (exit 0 when healthy, 1 with the answer otherwise): it sends
the first of ``KEEL_ALLOWED_HOSTS`` as the host and, with ``KEEL_HTTPS``, says the request
came through TLS, so neither the host check nor the https redirect turns it away.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import JsonResponse
from django.urls import path
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe

log = logging.getLogger(__name__)
BROKER_TIMEOUT = 3.0  # seconds to connect to the broker before calling it down
DEFAULT_URL = "http://127.0.0.1:8000/healthz"


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def check_broker() -> None:
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        for key in ("data_folder_in", "processed_folder", "control_folder"):
            folder = Path(settings.CELERY_BROKER_TRANSPORT_OPTIONS[key])
            if not folder.is_dir():
                raise OSError(f"broker folder {folder} is missing")
            if not os.access(folder, os.W_OK | os.X_OK):
                raise OSError(f"broker folder {folder} is not writable by this process")
        return
    from config.celery import app

    url = settings.CELERY_BROKER_URL
    with app.connection_for_write(url, connect_timeout=BROKER_TIMEOUT) as conn:
        conn.ensure_connection(max_retries=0, timeout=BROKER_TIMEOUT)


def _secrets() -> list[str]:
    """Passwords in the configuration, kept out of error messages anonymous callers read."""
    found = [settings.DATABASES["default"].get("PASSWORD") or ""]
    found.append(urlsplit(getattr(settings, "REDIS_URL", "") or "").password or "")
    return [s for s in found if s]


def _describe(exc: BaseException) -> str:
    message = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
    for secret in _secrets():
        message = message.replace(secret, "***")
    return message[:500]


@login_not_required
@never_cache
@require_safe
def healthz(request):
    body: dict[str, object] = {}
    errors: dict[str, str] = {}
    for part, check in (("database", check_database), ("broker", check_broker)):
        try:
            check()
        except Exception as exc:  # any failure is the answer, not a 500
            errors[part] = _describe(exc)
            log.warning("health check: %s failed: %s", part, errors[part])
        body[part] = "error" if part in errors else "ok"
    body["version"] = settings.KEEL_VERSION
    if errors:
        body["errors"] = errors
    return JsonResponse(body, status=503 if errors else 200)


urlpatterns = [path("", healthz, name="healthz")]  # config/urls.py: include("config.health")


def probe(url: str = DEFAULT_URL, timeout: float = 10.0) -> tuple[int, str]:
    """GET url as this container's own client; (status, body), status 0 when unreachable."""
    import urllib.error
    import urllib.request

    hosts = [h.strip() for h in os.environ.get("KEEL_ALLOWED_HOSTS", "").split(",") if h.strip()]
    host = (hosts[0] if hosts else "localhost").lstrip(".")
    headers = {"Host": "localhost" if host == "*" else host}
    if os.environ.get("KEEL_HTTPS", "").lower() in {"1", "true", "yes", "on"}:
        headers["X-Forwarded-Proto"] = "https"  # read only when KEEL_HTTPS is on
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - http(s) URL we build
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except OSError as exc:
        return 0, f"{url}: {exc}"


if __name__ == "__main__":
    status, text = probe(sys.argv[1] if len(sys.argv) > 1 else DEFAULT_URL)
    if status != 200:
        print(f"unhealthy ({status or 'no answer'}): {text}", file=sys.stderr)
    sys.exit(0 if status == 200 else 1)
