"""Websocket that relays an audit's progress to its page."""

from __future__ import annotations

import asyncio
import contextlib

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncJsonWebsocketConsumer
from channels.layers import InMemoryChannelLayer

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
        if user is None or not user.is_authenticated or not await self._visible(user, audit_id):
            await self.close(code=4403)
            return
        self.audit_id = audit_id
        self.group = group_name(audit_id)
        self.poller = None
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        snapshot = await self._snapshot()
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
            snapshot = await self._snapshot()
            if snapshot != last:
                await self.send_json(snapshot)
                last = snapshot

    @database_sync_to_async
    def _visible(self, user, audit_id: int) -> bool:
        return Audit.objects.for_user(user).filter(pk=audit_id).exists()

    @database_sync_to_async
    def _snapshot(self) -> dict:
        return dict(audit_snapshot(Audit.objects.get(pk=self.audit_id)))
