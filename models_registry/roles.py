"""Keel's roles are Django groups, created by a data migration."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps

from django.core.exceptions import PermissionDenied

VIEWER, OPERATOR, COMPLIANCE, ADMIN = "viewer", "operator", "compliance", "admin"
ROLES = (VIEWER, OPERATOR, COMPLIANCE, ADMIN)


def has_role(user, *roles: str) -> bool:
    if not user.is_authenticated:
        return False
    if user.is_superuser:
        return True
    return user.groups.filter(name__in=roles).exists()


def can_operate(user) -> bool:
    """Register checkpoints, queue, cancel and retry audits."""
    return has_role(user, OPERATOR, ADMIN)


def operator_required(view: Callable) -> Callable:
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if not can_operate(request.user):
            raise PermissionDenied("Only operators and admins may do this.")
        return view(request, *args, **kwargs)

    return wrapper
