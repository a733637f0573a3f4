"""Audit-log events that Django, not Keel, originates: failed logins and role changes
(through Keel's users page, Django's admin or a shell alike)."""

from __future__ import annotations

from django.contrib.auth.models import Group

from audits.trail import Action, record
from models_registry.roles import ROLES


def login_failed(sender, credentials, request=None, **kwargs):
    name = str(credentials.get("username", ""))[:150]
    where = request.META.get("REMOTE_ADDR", "") if request is not None else ""
    record(Action.LOGIN_FAILED, details={"username": name, "address": where}, name=name)


def roles_changed(sender, instance, action, reverse, pk_set, **kwargs):
    """user.groups.add/remove/clear/set, from either side of the relation."""
    if action == "pre_clear":  # remember what a clear removes; post_clear has no pk_set
        instance._keel_cleared = (
            list(instance.groups.values_list("pk", flat=True)) if not reverse
            else list(instance.user_set.values_list("pk", flat=True))
        )  # fmt: skip
        return
    if action not in ("post_add", "post_remove", "post_clear"):
        return
    pks = sorted(pk_set or getattr(instance, "_keel_cleared", []))
    if not pks:
        return
    change = "added" if action == "post_add" else "removed"
    if reverse:  # group.user_set changed: one event per user
        from django.contrib.auth.models import User

        if instance.name not in ROLES:
            return
        for user in User.objects.filter(pk__in=pks):
            user.__dict__.pop("_keel_roles", None)
            record(Action.ROLE_CHANGE, user, details={change: [instance.name]})
        return
    names = sorted(Group.objects.filter(pk__in=pks, name__in=ROLES).values_list("name", flat=True))
    instance.__dict__.pop("_keel_roles", None)
    if names:
        record(Action.ROLE_CHANGE, instance, details={change: names})
