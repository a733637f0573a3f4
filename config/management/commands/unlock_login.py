"""Lift a login lock-out before it ends by itself (see config/lockout.py)."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError

from audits.trail import Action, record
from config import lockout


class Command(BaseCommand):
    help = "Lift the login lock-out of an account and/or a network address, and forget its count."

    def add_arguments(self, parser):
        parser.add_argument("username", nargs="?", help="the account's username")
        parser.add_argument("--address", help="a client address locked out, e.g. 203.0.113.7")

    def handle(self, *args, username=None, address=None, **options):
        if not username and not address:
            raise CommandError("Name the account (USERNAME) or --address to unlock.", returncode=2)
        was_locked = lockout.clear(username=username, address=address)
        record(Action.LOGIN_UNLOCKED, name="", details={
            "username": username or "", "address": address or "", "was_locked": was_locked,
        })  # fmt: skip
        what = " and ".join(p for p in (username, address and f"address {address}") if p)
        if was_locked:
            self.stdout.write(f"Unlocked {what}: it may sign in again.")
        else:
            self.stdout.write(f"{what} was not locked; its count of failed sign-ins is cleared.")
