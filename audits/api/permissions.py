"""Keel's roles on the REST API: every endpoint needs a role; writes need more."""

from __future__ import annotations

from rest_framework import permissions

from models_registry.roles import NO_ROLE, can_export, can_operate, can_read


class Reader(permissions.BasePermission):
    """Any role reads. Unsafe methods also need the view's `write_check` (default: operator)."""

    message = NO_ROLE

    def has_permission(self, request, view):
        if not can_read(request.user):
            return False
        if request.method in permissions.SAFE_METHODS:
            return True
        check = getattr(view, "write_check", can_operate)
        self.message = "Only operators and admins may do this."
        return check(request.user)


class Exporter(permissions.BasePermission):
    message = "Only compliance and admins may export or read the audit log."

    def has_permission(self, request, view):
        return can_export(request.user)


def exception_handler(exc, context):
    """DRF's handler; every error body has a `detail` sentence saying what to do."""
    from rest_framework.exceptions import Throttled
    from rest_framework.views import exception_handler as drf_exception_handler

    from audits.api.throttling import TooManyAuthFailures, throttled_detail

    response = drf_exception_handler(exc, context)
    if isinstance(exc, Throttled) and not isinstance(exc, TooManyAuthFailures):
        response.data = {"detail": throttled_detail(exc.wait)}
    if response is not None and isinstance(response.data, dict) and "detail" not in response.data:
        fields = "; ".join(
            f"{field}: {' '.join(str(m) for m in (msgs if isinstance(msgs, list) else [msgs]))}"
            for field, msgs in response.data.items()
        )
        response.data = {"detail": f"Invalid request. {fields}", "errors": response.data}
    return response
