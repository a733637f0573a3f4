"""Settings come from the environment: embedded defaults, full mode, production checks."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

PRINT = (
    "import json, django; django.setup(); from django.conf import settings as s; "
    "print(json.dumps({'engine': s.DATABASES['default']['ENGINE'], "
    "'db': str(s.DATABASES['default']['NAME']), 'broker': s.CELERY_BROKER_URL, "
    "'results': s.CELERY_RESULT_BACKEND, 'layer': s.CHANNEL_LAYERS['default']['BACKEND']}))"
)


def settings_under(env: dict[str, str], tmp_path) -> dict:
    base = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    base |= {"KEEL_DATA_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "config.settings", **env}
    out = subprocess.run(
        [sys.executable, "-c", PRINT], env=base, cwd=settings.BASE_DIR,
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    return json.loads(out.stdout)


def test_embedded_defaults_need_no_services(tmp_path):
    got = settings_under({}, tmp_path)
    assert got["engine"] == "django.db.backends.sqlite3"
    assert got["db"] == str(tmp_path / "keel.sqlite3")
    assert got["broker"] == "filesystem://"
    assert got["results"] is None
    assert got["layer"] == "channels.layers.InMemoryChannelLayer"


def test_urls_switch_to_postgresql_and_redis(tmp_path):
    got = settings_under(
        {"DATABASE_URL": "postgres://keel@db.example:5432/keel", "REDIS_URL": "redis://r:6379/2"},
        tmp_path,
    )
    assert got["engine"] == "django.db.backends.postgresql"
    assert got["db"] == "keel"
    assert got["broker"] == got["results"] == "redis://r:6379/2"
    assert got["layer"] == "channels_redis.core.RedisChannelLayer"


def test_check_deploy_is_clean_with_production_variables(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env |= {
        "KEEL_DATA_DIR": str(tmp_path),
        "KEEL_SECRET_KEY": "x" * 20 + "a-long-random-production-secret-key-0123456789",
        "KEEL_HTTPS": "1",
        "KEEL_ALLOWED_HOSTS": "keel.example.com",
    }
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=env, cwd=settings.BASE_DIR, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_a_bad_boolean_is_a_clear_error(tmp_path):
    with pytest.raises(subprocess.CalledProcessError) as excinfo:
        settings_under({"KEEL_HTTPS": "maybe"}, tmp_path)
    assert "KEEL_HTTPS='maybe': use 1/0, true/false" in excinfo.value.stderr


def test_the_debug_default_is_off():
    assert settings.DEBUG is False


def test_the_roles_exist_from_a_migration(db):
    assert set(Group.objects.values_list("name", flat=True)) >= {
        "viewer", "operator", "compliance", "admin",
    }  # fmt: skip
