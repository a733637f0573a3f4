"""`config` as an app, so that Keel's security wiring is connected once at start-up."""

from django.apps import AppConfig


class KeelSecurityConfig(AppConfig):
    name = "config"
    label = "keel_security"
    verbose_name = "Keel security"

    def ready(self):
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from config import lockout

        # Connected after the audits app's receiver: the failed login is logged first.
        user_login_failed.connect(lockout.login_failed, dispatch_uid="keel-lockout-count")
        user_logged_in.connect(lockout.logged_in, dispatch_uid="keel-lockout-clear")
