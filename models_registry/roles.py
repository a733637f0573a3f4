"""Keel's roles are Django groups, created by a data migration.

What each role may do (a user may hold several roles; a superuser holds them all):

    viewer      read checkpoints, suites, audits, report cards and charts
    operator    also register checkpoints, import suites, queue, cancel and retry audits
    compliance  also export report cards and audits, and read the audit log
    admin       everything, and manage users and their roles

Compliance is not an operator: whoever certifies an audit should not be the one who ran
it (separation of duties). A person who needs both holds both roles.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.core.exceptions import PermissionDenied

VIEWER, OPERATOR, COMPLIANCE, ADMIN = "viewer", "operator", "compliance", "admin"
ROLES = (VIEWER, OPERATOR, COMPLIANCE, ADMIN)
NO_ROLE = "Your account has no role yet: ask a Keel admin to give you one (viewer at least)."


def roles_of(user) -> frozenset[str]:
    """The user's roles, read once per user object (a request's user lives one request)."""
    if user is None or not user.is_authenticated or not user.is_active:
        return frozenset()
    if user.is_superuser:
        return frozenset(ROLES)
    cached = getattr(user, "_keel_roles", None)
    if cached is None:
        cached = frozenset(user.groups.filter(name__in=ROLES).values_list("name", flat=True))
        user._keel_roles = cached
    return cached


def has_role(user, *roles: str) -> bool:
    return bool(roles_of(user) & set(roles))


def can_read(user) -> bool:
    return bool(roles_of(user))


def can_operate(user) -> bool:
    """Register checkpoints, import suites, queue, cancel and retry audits."""
    return has_role(user, OPERATOR, ADMIN)


def can_export(user) -> bool:
    """Export report cards and audits (PDF, CSV, JSON) and read the audit log."""
    return has_role(user, COMPLIANCE, ADMIN)


def can_manage(user) -> bool:
    """Manage users and their roles, and use Django's admin site."""
    return has_role(user, ADMIN)


def _required(check: Callable, message: str) -> Callable:
    def decorator(view: Callable) -> Callable:
        @wraps(view)
        def wrapper(request, *args, **kwargs):
            if not check(request.user):
                raise PermissionDenied(message)
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


operator_required = _required(can_operate, "Only operators and admins may do this.")
export_required = _required(can_export, "Only compliance and admins may export or read the log.")
admin_required = _required(can_manage, "Only admins may manage users and roles.")


class RoleRequiredMiddleware:
    """A signed-in user without any role reads nothing: every page but logging out says so.
    (Anonymous users are sent to the login page by LoginRequiredMiddleware before this.)"""

    OPEN = ("/login/", "/logout/", "/static/", "/api/", "/healthz")  # the API checks roles itself

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        user = request.user
        if user.is_authenticated and not can_read(user) and not request.path.startswith(self.OPEN):
            raise PermissionDenied(NO_ROLE)
        return self.get_response(request)
