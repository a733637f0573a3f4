"""API rate limits, counted in the shared cache (Redis in full mode, so every web process
counts together): requests per user and per anonymous address (KEEL_API_RATE_USER,
KEEL_API_RATE_ANON), and failed token authentications per address
(KEEL_API_MAX_AUTH_FAILURES within KEEL_LOGIN_LOCKOUT_MINUTES). A refusal is a 429 whose
`detail` says how long to wait, with a Retry-After header in seconds."""

from __future__ import annotations

import math
import time

from django.conf import settings
from django.core.cache import cache
from rest_framework.authentication import TokenAuthentication, get_authorization_header
from rest_framework.exceptions import APIException, AuthenticationFailed, Throttled
from rest_framework.settings import api_settings
from rest_framework.throttling import AnonRateThrottle, UserRateThrottle

from config.lockout import client_address, count_in_window


class _RateFromSettings:
    """The rate as configured now (DRF copies it once, when the class is defined)."""

    scope: str

    def get_rate(self):
        return api_settings.DEFAULT_THROTTLE_RATES[self.scope]


class UserRate(_RateFromSettings, UserRateThrottle):
    def get_cache_key(self, request, view):
        """Per account: its id and when it joined, so a re-created account (SQLite reuses
        the ids of deleted rows) starts afresh, as the login lock-out does."""
        if not request.user or not request.user.is_authenticated:
            return None
        user = request.user
        return self.cache_format % {
            "scope": self.scope, "ident": f"{user.pk}-{user.date_joined.timestamp()}"
        }  # fmt: skip


class AnonRate(_RateFromSettings, AnonRateThrottle):
    pass


def throttled_detail(wait: int | None) -> str:
    after = f"in {wait} second{'s' if wait != 1 else ''}" if wait else "shortly"
    return (
        f"Too many requests: Keel's API rate limit for you is reached. Try again {after} "
        "(the Retry-After header says the same), and space out your requests."
    )


class TooManyAuthFailures(Throttled):
    default_code = "too_many_auth_failures"

    def __init__(self, wait: float):
        minutes = max(1, math.ceil(wait / 60))
        APIException.__init__(
            self,
            f"Too many failed API authentications from your address; try again in {minutes} "
            f"minute{'s' if minutes != 1 else ''}. Send `Authorization: Token <key>` with the "
            "key from your account page (/account/token/).",
        )
        self.wait = math.ceil(wait)


class LimitedTokenAuthentication(TokenAuthentication):
    """Token authentication that counts failures per client address: past the limit, every
    request from that address that sends a token is refused with a 429 until the window
    ends, so keys cannot be guessed at speed."""

    def authenticate(self, request):
        sent = get_authorization_header(request).split()
        if not sent or sent[0].lower() != self.keyword.lower().encode():
            return None  # no token: another authentication's turn
        key = f"api-auth-failures:{client_address(request)}"
        failures = cache.get(key) or 0
        if failures >= settings.KEEL_API_MAX_AUTH_FAILURES:
            until = cache.get(f"{key}:until") or time.time()
            raise TooManyAuthFailures(max(1.0, until - time.time()))
        try:
            return super().authenticate(request)
        except AuthenticationFailed:
            window = settings.KEEL_LOGIN_LOCKOUT_MINUTES * 60
            cache.add(f"{key}:until", time.time() + window, timeout=window)
            count_in_window(key, window)
            raise
