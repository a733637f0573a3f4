"""The progress websocket: authenticated, sends the stored state, then updates."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import AnonymousUser

from audits import progress
from audits.consumers import AuditProgressConsumer
from audits.models import Run, Status
from audits.services import audit_create


def communicator(user, audit_id: int) -> WebsocketCommunicator:
    comm = WebsocketCommunicator(AuditProgressConsumer.as_asgi(), f"/ws/audits/{audit_id}/")
    comm.scope["user"] = user
    comm.scope["url_route"] = {"kwargs": {"audit_id": audit_id}}
    return comm


@pytest.fixture
def audit(tiny_checkpoint, starter_suite):
    return audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite])


@pytest.fixture
def in_memory_layer(settings):
    """Refusals are about who may connect, not about transport: no Redis needed."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}


def assert_refused(user, audit_id: int) -> None:
    async def scenario():
        comm = communicator(user, audit_id)
        connected, code = await comm.connect()
        assert (connected, code) == (False, 4403)
        await comm.disconnect()  # as a server does after a close: the consumer must end

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_an_anonymous_socket_is_refused(audit, in_memory_layer):
    assert_refused(AnonymousUser(), audit.pk)


@pytest.mark.django_db(transaction=True)
def test_a_signed_in_user_without_a_role_is_refused(audit, in_memory_layer):
    from tests.conftest import make_user

    assert_refused(make_user("no-role-yet", None), audit.pk)


@pytest.mark.django_db(transaction=True)
def test_an_unknown_audit_is_refused(viewer, in_memory_layer):
    assert_refused(viewer, 12345)


@pytest.mark.django_db(transaction=True)
def test_it_sends_the_stored_state_then_published_updates(viewer, audit):
    run = audit.runs.get()

    async def scenario():
        comm = communicator(viewer, audit.pk)
        connected, _ = await comm.connect()
        assert connected
        first = await comm.receive_json_from(timeout=5)
        assert first["audit"] == audit.pk
        assert first["status"] == Status.QUEUED
        assert first["runs"][0]["done"] == 0

        await database_sync_to_async(
            lambda: Run.objects.filter(pk=run.pk).update(
                status=Status.RUNNING, progress_done=20, progress_total=60
            )
        )()
        await database_sync_to_async(progress.publish)(audit.pk)
        update = await comm.receive_json_from(timeout=5)
        assert update["runs"][0]["done"] == 20
        assert update["runs"][0]["percent"] == 33
        await comm.disconnect()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
def test_it_polls_stored_progress_when_the_layer_cannot_cross_processes(viewer, audit, settings):
    """Embedded mode: the worker's in-memory layer never reaches the web process."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    run = audit.runs.get()

    async def scenario():
        comm = communicator(viewer, audit.pk)
        await comm.connect()
        await comm.receive_json_from(timeout=5)
        # A write by another process: no publish, only the database changes.
        await database_sync_to_async(
            lambda: Run.objects.filter(pk=run.pk).update(progress_done=45, progress_total=60)
        )()
        update = await comm.receive_json_from(timeout=5)
        assert update["runs"][0]["done"] == 45
        await comm.disconnect()

    async_to_sync(scenario)()


@pytest.mark.django_db(transaction=True)
@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (full mode)")
def test_an_idle_socket_survives_redis_read_timeouts(viewer, audit):
    """redis-py 8 drops reads after 5 s unless told otherwise; a quiet run must not kill it."""
    run = audit.runs.get()

    async def scenario():
        comm = communicator(viewer, audit.pk)
        await comm.connect()
        await comm.receive_json_from(timeout=5)
        await asyncio.sleep(7)
        await database_sync_to_async(
            lambda: Run.objects.filter(pk=run.pk).update(progress_done=5, progress_total=60)
        )()
        await database_sync_to_async(progress.publish)(audit.pk)
        update = await comm.receive_json_from(timeout=5)
        assert update["runs"][0]["done"] == 5
        await comm.disconnect()

    async_to_sync(scenario)()
