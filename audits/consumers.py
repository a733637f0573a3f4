"""Websocket that relays an audit's progress to its page."""

from __future__ import annotations

import asyncio
import contextlib

from asgiref.sync import sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import InMemoryChannelLayer
from django.db import close_old_connections

from audits.models import FINISHED, Audit
from audits.progress import audit_snapshot, group_name

POLL_SECONDS = 1.0


class AuditProgressConsumer(AsyncJsonWebsocketConsumer):
    """Sends the stored snapshot on connect, then every update.

    Updates come from the worker through the channel layer. The embedded
    in-memory layer cannot carry them across processes, so there the consumer
    polls the database instead.
    """

    async def connect(self):
        user = self.scope.get("user")
        audit_id = int(self.scope["url_route"]["kwargs"]["audit_id"])
        self.audit_id = audit_id
        snapshot = None
        if user is not None and user.is_authenticated:
            snapshot = await database_call(self._visible_snapshot)(user)
        if snapshot is None:
            await self.close(code=4403)
            return
        self.group = group_name(audit_id)
        self.poller = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send_json(snapshot)
        if isinstance(self.channel_layer, InMemoryChannelLayer):
            self.poller = asyncio.create_task(self._poll(snapshot))

    async def disconnect(self, code):
        if getattr(self, "poller", None) is not None:
            self.poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.poller
        if hasattr(self, "group"):
            await self.channel_layer.group_discard(self.group, self.channel_name)

    async def audit_progress(self, event):
        await self.send_json(event["payload"])

    async def _poll(self, last: dict) -> None:
        while last["status"] not in FINISHED:
            await asyncio.sleep(POLL_SECONDS)
            snapshot = await database_call(self._snapshot)()
            if snapshot != last:
                await self.send_json(snapshot)
                last = snapshot

    def _visible_snapshot(self, user) -> dict | None:
        """The audit's snapshot if the user may read it, else None: one trip for both."""
        audit = Audit.objects.for_user(user).filter(pk=self.audit_id).first()
        return None if audit is None else dict(audit_snapshot(audit))

    def _snapshot(self) -> dict:
        return dict(audit_snapshot(Audit.objects.get(pk=self.audit_id)))


def database_call(function):
    """``function`` run on any free thread, its connection given back after. Channels'
    database_sync_to_async runs every consumer's calls on one thread per process, so under
    load a page's websocket waited behind all of them (the soak in BENCHMARKS.md)."""

    def call(*args, **kwargs):
        close_old_connections()
        try:
            return function(*args, **kwargs)
        finally:
            close_old_connections()

    return sync_to_async(call, thread_sensitive=False)
