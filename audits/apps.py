from django.apps import AppConfig


class AuditsConfig(AppConfig):
    name = "audits"

    def ready(self):
        from django.contrib.auth.models import User
        from django.contrib.auth.signals import user_login_failed
        from django.db.models.signals import m2m_changed

        from audits import signals

        user_login_failed.connect(signals.login_failed, dispatch_uid="keel-login-failed")
        m2m_changed.connect(
            signals.roles_changed, sender=User.groups.through, dispatch_uid="keel-roles"
        )
