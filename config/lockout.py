"""Login lock-out: too many failed sign-ins for one account, or from one network address,
within KEEL_LOGIN_LOCKOUT_MINUTES, and further sign-ins are refused for that long, even with
the right password.

The counts live in Django's cache: Redis in full mode, shared by every web process, whose
atomic INCR and key expiry are exactly a counter per window; in embedded mode the one web
process's memory. (The database would survive a Redis restart, but would need a table, a
clean-up of old rows and a write per failed attempt; a restart that forgets a lock-out only
gives an attacker another few guesses.) An account is counted by its id and creation time,
so a name typed in another case or a deleted and re-created account starts afresh; a name
that belongs to no account is counted by the name, so locking behaves the same whether or not
the account exists (it tells nobody which names are real).

Every password sign-in passes here: Keel's login page (`LockoutAuthenticationForm`, which
also says why it refuses) and Django's admin (`LockoutBackend`, first among the backends).
A successful sign-in clears the account's count; `manage.py unlock_login` clears a lock.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass

from django import forms
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.core.exceptions import PermissionDenied

ACCOUNT, ADDRESS = "account", "address"


@dataclass(frozen=True)
class Lock:
    reason: str  # ACCOUNT or ADDRESS
    seconds: int  # until it lifts

    @property
    def minutes(self) -> int:
        return max(1, math.ceil(self.seconds / 60))

    def message(self) -> str:
        whose = "this account" if self.reason == ACCOUNT else "your network address"
        unit = "minute" if self.minutes == 1 else "minutes"
        return (
            f"Too many failed sign-ins for {whose}; try again in {self.minutes} {unit} "
            "or ask an admin."
        )


def window_seconds() -> int:
    return settings.KEEL_LOGIN_LOCKOUT_MINUTES * 60


def client_address(request) -> str:
    """The address the request came from. Behind a proxy, uvicorn already puts the client's
    address here from X-Forwarded-For when the proxy is one it trusts (--forwarded-allow-ips);
    a header the client sends itself is never believed."""
    return (request.META.get("REMOTE_ADDR") or "") if request is not None else ""


def account_subject(username: str) -> str:
    model = get_user_model()
    user = None
    if "\x00" not in username:  # PostgreSQL refuses NUL in a query; no account has one
        found = model._default_manager.filter(**{model.USERNAME_FIELD: username})
        user = found.values_list("pk", "date_joined").first()
    if user is not None:
        return f"user:{user[0]}:{user[1].timestamp()}"
    return "name:" + hashlib.sha256(username.encode("utf-8", "replace")).hexdigest()


def _subjects(username: str | None, address: str) -> list[tuple[str, str, int]]:
    """(reason, cache key part, limit) for each thing counted."""
    subjects = []
    if username:
        subjects.append((ACCOUNT, account_subject(username), settings.KEEL_LOGIN_MAX_FAILURES))
    if address:
        subjects.append((ADDRESS, f"addr:{address}", settings.KEEL_LOGIN_MAX_FAILURES_PER_ADDRESS))
    return subjects


def _lock_key(subject: str) -> str:
    return f"login-lock:{subject}"


def _count_key(subject: str) -> str:
    return f"login-failures:{subject}"


def lock_for(request, username: str | None) -> Lock | None:
    """The lock that refuses this sign-in now, if any (the account's before the address's)."""
    now = time.time()
    for reason, subject, _limit in _subjects(username, client_address(request)):
        until = cache.get(_lock_key(subject))
        if until is not None and until > now:
            return Lock(reason, math.ceil(until - now))
    return None


def note_failure(request, username: str | None) -> None:
    """Count one failed sign-in; lock, and say so in the audit log, when a count reaches
    its limit. Attempts refused while locked are not counted again (the lock does not grow)."""
    if lock_for(request, username) is not None:
        return
    address = client_address(request)
    window = window_seconds()
    for reason, subject, limit in _subjects(username, address):
        failures = count_in_window(_count_key(subject), window)
        if failures >= limit:
            cache.set(_lock_key(subject), time.time() + window, timeout=window)
            cache.delete(_count_key(subject))
            _record_lock(reason, username, address, failures)


def count_in_window(key: str, window: int) -> int:
    """Add one to a count in the cache that starts at its first failure and is forgotten
    `window` seconds later; the count now."""
    cache.add(key, 0, timeout=window)
    try:
        return cache.incr(key)
    except ValueError:  # expired between add and incr
        cache.set(key, 1, timeout=window)
        return 1


def _record_lock(reason: str, username: str | None, address: str, failures: int) -> None:
    from audits.trail import Action, record

    name = (username or "")[:150]
    record(Action.LOGIN_LOCKED, name=name, details={
        "locked": reason, "username": name, "address": address, "failures": failures,
        "minutes": settings.KEEL_LOGIN_LOCKOUT_MINUTES,
    })  # fmt: skip


def clear(*, username: str | None = None, address: str | None = None) -> bool:
    """Lift the lock and forget the count of an account and/or an address; whether there
    was a lock."""
    subjects = []
    if username:
        subjects.append(account_subject(username))
    if address:
        subjects.append(f"addr:{address}")
    was_locked = False
    for subject in subjects:
        was_locked = cache.get(_lock_key(subject)) is not None or was_locked
        cache.delete_many([_lock_key(subject), _count_key(subject)])
    return was_locked


# --- Wiring: signals, the authentication backend, the login form --------------------------


def login_failed(sender, credentials, request=None, **kwargs):
    username = credentials.get(get_user_model().USERNAME_FIELD)
    note_failure(request, str(username) if username is not None else None)


def logged_in(sender, request, user, **kwargs):
    """A successful sign-in clears the account's count (not the address's: an attacker with
    an account of their own could otherwise reset it between guesses)."""
    cache.delete(_count_key(account_subject(user.get_username())))


class LockoutBackend:
    """Refuses every password sign-in to a locked account or from a locked address, from
    whichever form it comes (Keel's login page, Django's admin). Authenticates no one, and
    has no get_user: a session is never this backend's (the test client's force_login takes
    the first backend that has one)."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        lock = lock_for(request, username)
        if lock is not None:
            raise PermissionDenied(lock.message())  # stops the backends that follow
        return None


class LockoutAuthenticationForm(AuthenticationForm):
    """Django's login form, saying so when a lock-out refuses the sign-in."""

    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "Your username and password didn't match. Try again.",
    }

    def clean(self):
        username = self.cleaned_data.get("username")
        lock = lock_for(self.request, username)
        if lock is not None:
            raise forms.ValidationError(lock.message(), code="locked")
        try:
            return super().clean()
        except forms.ValidationError:
            lock = lock_for(self.request, username)  # this failure may have been the last
            if lock is not None:
                raise forms.ValidationError(lock.message(), code="locked") from None
            raise
