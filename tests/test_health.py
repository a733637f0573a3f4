"""/healthz answers without login: 200 when the database and the broker answer, 503 naming
the part that does not (the gunicorn-served version is in tests/integration/test_deploy.py)."""

from __future__ import annotations

import socket

import pytest
from django.conf import settings

from config.health import probe


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


@pytest.mark.django_db
def test_healthy_in_this_mode_without_login(client):
    response = client.get("/healthz")
    assert response.status_code == 200, response.content
    assert response.json() == {"database": "ok", "broker": "ok", "version": settings.KEEL_VERSION}
    assert "no-cache" in response["Cache-Control"]
    assert client.head("/healthz").status_code == 200
    assert client.post("/healthz").status_code == 405


@pytest.mark.django_db
def test_embedded_broker_folder_checked(client, settings, tmp_path):
    folders = {
        "data_folder_in": tmp_path / "queue",
        "data_folder_out": tmp_path / "queue",
        "processed_folder": tmp_path / "processed",
        "control_folder": tmp_path / "control",
    }
    for folder in folders.values():
        folder.mkdir(exist_ok=True)
    settings.CELERY_BROKER_URL = "filesystem://"
    settings.CELERY_BROKER_TRANSPORT_OPTIONS = {k: str(v) for k, v in folders.items()}
    assert client.get("/healthz").json()["broker"] == "ok"

    (tmp_path / "control").rmdir()
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["database"] == "ok" and body["broker"] == "error"
    assert body["errors"] == {"broker": f"OSError: broker folder {tmp_path / 'control'} is missing"}


@pytest.mark.django_db
def test_redis_broker_down_is_503_naming_it(client, settings):
    port = closed_port()
    settings.CELERY_BROKER_URL = f"redis://:hunter2-secret@127.0.0.1:{port}/0"
    settings.REDIS_URL = settings.CELERY_BROKER_URL
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert (body["database"], body["broker"]) == ("ok", "error")
    assert f"127.0.0.1:{port}" in body["errors"]["broker"]
    assert "refused" in body["errors"]["broker"].lower()
    assert "hunter2" not in response.content.decode()


def test_probe_reports_no_answer():
    status, text = probe(f"http://127.0.0.1:{closed_port()}/healthz", timeout=2)
    assert status == 0 and "refused" in text.lower()
