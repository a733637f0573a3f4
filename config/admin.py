"""Django's admin site, governed by Keel's roles: only admins reach it, and they hold every
model permission there (each ModelAdmin still refuses what Keel never allows, such as
deleting a checkpoint; the audit log is not in the admin at all)."""

from django.contrib.admin import AdminSite
from django.contrib.admin.apps import AdminConfig

from models_registry.roles import can_manage


class KeelAdminSite(AdminSite):
    site_header = "Keel administration"

    def has_permission(self, request):
        return can_manage(request.user)


class KeelAdminConfig(AdminConfig):
    default_site = "config.admin.KeelAdminSite"


class RoleBackend:
    """Gives Keel admins Django's model permissions; authenticates no one."""

    def authenticate(self, request, **credentials):
        return None

    def has_perm(self, user, perm, obj=None):
        return can_manage(user)

    def has_module_perms(self, user, app_label):
        return can_manage(user)
