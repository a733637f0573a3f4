"""Limits and security at the boundaries users touch: the login lock-out, API rate limits,
hostile query strings on every page, the Content-Security-Policy, the Django admin's
read-only results, the production settings on a real request, and the websocket's origin
check. (The suite importer's fuzzing is in tests/audits/test_suite_fuzz.py, the browser's
view of the policy in tests/browser/test_csp.py.)"""

from __future__ import annotations

import http.client
import os
import re
import secrets
import socket
import subprocess
import sys
import time
from itertools import count
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.core.cache import cache
from django.core.management import call_command
from rest_framework.authtoken.models import Token

from audits.models import Audit, Event, Score, Suite
from audits.services import audit_create
from audits.trail import Action
from config import lockout
from models_registry.models import Alias, Checkpoint
from tests.conftest import make_user
from tests.integration.conftest import database_url_for_worker

PASSWORD = "a-long-test-password-1"  # noqa: S105 (a throwaway test account's)
_addresses = count(1)


@pytest.fixture
def fast_passwords(settings):
    """Sign-ins are what is tested here, not the hasher: a fast one keeps each test quick."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def address() -> str:
    """A client address of this test's own; its lock-out count starts and ends empty (in
    full mode the counts live in Redis, which outlives a test run)."""
    value = f"198.51.100.{next(_addresses)}"
    lockout.clear(address=value)
    yield value
    lockout.clear(address=value)


@pytest.fixture
def lena(db, fast_passwords):
    lockout.clear(username="lock-lena")  # a name-based count left by an earlier run
    user = make_user("lock-lena", "viewer")
    user.set_password(PASSWORD)
    user.save()
    yield user
    lockout.clear(username="lock-lena")


def sign_in(client, address: str, username: str, password: str, path: str = "/login/"):
    return client.post(path, {"username": username, "password": password}, REMOTE_ADDR=address)


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


# --- Login lock-out --------------------------------------------------------------------


def test_five_failed_sign_ins_lock_the_account_even_with_the_right_password(client, lena, address):
    for _ in range(4):
        page = sign_in(client, address, "lock-lena", "wrong").content.decode()
        assert "Your username and password didn&#x27;t match. Try again." in page
    page = sign_in(client, address, "lock-lena", "wrong").content.decode()
    message = "Too many failed sign-ins for this account; try again in 15 minutes or ask an admin."
    assert message in page
    response = sign_in(client, address, "lock-lena", PASSWORD)
    assert response.status_code == 200 and message in response.content.decode()
    assert not signed_in(client)

    locks = Event.objects.filter(action=Action.LOGIN_LOCKED)
    assert list(locks.values_list("actor_name", flat=True)) == ["lock-lena"]
    assert locks.get().details == {"locked": "account", "username": "lock-lena",
                                   "address": address, "failures": 5, "minutes": 15}  # fmt: skip
    # Only the account is locked: another account from the same address signs in.
    other = make_user("other-olga", "viewer")
    other.set_password(PASSWORD)
    other.save()
    assert sign_in(client, address, "other-olga", PASSWORD).status_code == 302


def test_the_lock_lifts_when_its_window_ends(client, lena, address, monkeypatch):
    for _ in range(5):
        sign_in(client, address, "lock-lena", "wrong")
    later = time.time() + 15 * 60 + 1
    monkeypatch.setattr(lockout.time, "time", lambda: later)
    assert sign_in(client, address, "lock-lena", PASSWORD).status_code == 302


def test_a_successful_sign_in_clears_the_accounts_count(client, lena, address):
    for _ in range(4):
        sign_in(client, address, "lock-lena", "wrong")
    assert sign_in(client, address, "lock-lena", PASSWORD).status_code == 302
    client.logout()
    for _ in range(4):
        sign_in(client, address, "lock-lena", "wrong")
    assert sign_in(client, address, "lock-lena", PASSWORD).status_code == 302


def test_many_accounts_failing_from_one_address_lock_the_address(client, lena, address, settings):
    settings.KEEL_LOGIN_MAX_FAILURES_PER_ADDRESS = 3
    for name in ("guess-a", "guess-b", "guess-c"):
        lockout.clear(username=name)
        sign_in(client, address, name, "wrong")
    page = sign_in(client, address, "lock-lena", PASSWORD).content.decode()
    assert "Too many failed sign-ins for your network address; try again in 15 minutes" in page
    assert not signed_in(client)
    assert sign_in(client, "198.51.100.250", "lock-lena", PASSWORD).status_code == 302
    for name in ("guess-a", "guess-b", "guess-c"):
        lockout.clear(username=name)


def test_a_name_without_an_account_locks_the_same_way(client, db, address):
    """Otherwise the lock-out would tell an attacker which names are real."""
    lockout.clear(username="nobody-here")
    for _ in range(5):
        sign_in(client, address, "nobody-here", "wrong")
    page = sign_in(client, address, "nobody-here", "wrong").content.decode()
    assert "Too many failed sign-ins for this account" in page
    lockout.clear(username="nobody-here")


def test_the_admin_login_is_locked_too(client, db, fast_passwords, address):
    lockout.clear(username="lock-adam")
    admin = make_user("lock-adam", "admin")
    admin.is_staff = True  # Django's admin login form also asks for staff status
    admin.set_password(PASSWORD)
    admin.save()
    for _ in range(5):
        sign_in(client, address, "lock-adam", "wrong", path="/admin/login/")
    response = sign_in(client, address, "lock-adam", PASSWORD, path="/admin/login/")
    assert response.status_code == 200 and not signed_in(client)
    lockout.clear(username="lock-adam")
    assert sign_in(client, address, "lock-adam", PASSWORD, path="/admin/login/").status_code == 302


def test_an_admin_unlocks_an_account_from_the_command_line(client, lena, address, capsys):
    for _ in range(5):
        sign_in(client, address, "lock-lena", "wrong")
    call_command("unlock_login", "lock-lena")
    assert "Unlocked lock-lena: it may sign in again." in capsys.readouterr().out
    assert Event.objects.filter(action=Action.LOGIN_UNLOCKED).get().details == {
        "username": "lock-lena", "address": "", "was_locked": True,
    }  # fmt: skip
    assert sign_in(client, address, "lock-lena", PASSWORD).status_code == 302


@pytest.mark.skipif(not settings.REDIS_URL, reason="embedded mode: one process, its own memory")
def test_a_lock_is_seen_by_every_web_process(client, db, address, settings):
    """The counts live in Redis: another process sees the lock this one set."""
    settings.KEEL_LOGIN_MAX_FAILURES_PER_ADDRESS = 2
    for name in ("guess-d", "guess-e"):
        lockout.clear(username=name)
        sign_in(client, address, name, "wrong")
    code = (
        "import django, types; django.setup(); from config.lockout import lock_for; "
        f"lock = lock_for(types.SimpleNamespace(META={{'REMOTE_ADDR': {address!r}}}), None); "
        "print(lock.reason if lock else 'none')"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=settings.BASE_DIR, check=True,
                         capture_output=True, text=True, env=os.environ | {
                             "DJANGO_SETTINGS_MODULE": "config.settings"})  # fmt: skip
    assert out.stdout.strip() == "address"
    for name in ("guess-d", "guess-e"):
        lockout.clear(username=name)


# --- API rate limits -------------------------------------------------------------------


@pytest.fixture
def token(viewer) -> str:
    return Token.objects.create(user=viewer).key


def test_requests_past_the_users_rate_get_a_429_that_says_how_long_to_wait(client, token, settings):
    settings.REST_FRAMEWORK = settings.REST_FRAMEWORK | {
        "DEFAULT_THROTTLE_RATES": {"user": "3/min", "anon": "3/min"}
    }
    auth = {"HTTP_AUTHORIZATION": f"Token {token}"}
    assert [client.get("/api/v1/suites/", **auth).status_code for _ in range(3)] == [200] * 3
    response = client.get("/api/v1/suites/", **auth)
    assert response.status_code == 429
    wait = int(response["Retry-After"])
    assert 0 < wait <= 60
    assert response.json() == {
        "detail": f"Too many requests: Keel's API rate limit for you is reached. Try again in "
        f"{wait} second{'s' if wait != 1 else ''} (the Retry-After header says the same), "
        "and space out your requests."
    }


def test_failed_token_authentications_are_limited_per_address(client, token, address, settings):
    settings.KEEL_API_MAX_AUTH_FAILURES = 3
    cache.delete_many([f"api-auth-failures:{address}", f"api-auth-failures:{address}:until"])
    bad = {"HTTP_AUTHORIZATION": "Token " + "0" * 40, "REMOTE_ADDR": address}
    assert [client.get("/api/v1/suites/", **bad).status_code for _ in range(3)] == [401] * 3
    refused = client.get("/api/v1/suites/", **bad)
    assert refused.status_code == 429
    assert 0 < int(refused["Retry-After"]) <= 15 * 60
    assert refused.json()["detail"].startswith(
        "Too many failed API authentications from your address; try again in 15 minutes."
    )
    # Even the right token, from that address, until the window ends; others are not held up.
    good = {"HTTP_AUTHORIZATION": f"Token {token}"}
    assert client.get("/api/v1/suites/", **good, REMOTE_ADDR=address).status_code == 429
    assert client.get("/api/v1/suites/", **good, REMOTE_ADDR="198.51.100.251").status_code == 200
    cache.delete_many([f"api-auth-failures:{address}", f"api-auth-failures:{address}:until"])


def test_a_forged_forwarded_for_header_does_not_change_the_address(client, token, address):
    """The API counts by REMOTE_ADDR; X-Forwarded-For as a client sends it is ignored."""
    from rest_framework.throttling import AnonRateThrottle

    request = type("R", (), {"META": {"REMOTE_ADDR": address, "HTTP_X_FORWARDED_FOR": "1.2.3.4"},
                             "headers": {"x-forwarded-for": "1.2.3.4"}})()  # fmt: skip
    assert AnonRateThrottle().get_ident(request) == address


def test_the_schema_documents_429_with_retry_after_on_every_operation(client, token):
    from drf_spectacular.generators import SchemaGenerator

    schema = SchemaGenerator().get_schema(request=None, public=True)
    operations = [op for path in schema["paths"].values() for op in path.values()]
    assert operations
    for operation in operations:
        assert "Retry-After" in operation["responses"]["429"]["headers"]


# --- Hostile query strings on every page -------------------------------------------------

HOSTILE = [
    "a\x00b", "²", "9" * 30, "-1", "' OR '1'='1", "<script>x</script>", "x" * 3000, "😀",
]  # fmt: skip


@pytest.fixture
def pages(db, tiny_checkpoint, starter_suite):
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    run = audit.runs.get()
    Alias.objects.create(name="production", checkpoint=tiny_checkpoint)
    name = tiny_checkpoint.name
    return [  # (path, base query, parameters tried)
        ("/checkpoints/", {}, ["q", "tag", "page"]),
        (f"/checkpoints/{name}/", {}, ["x"]),
        ("/audits/", {}, ["status", "checkpoint", "who", "since", "page"]),
        (f"/audits/{audit.pk}/", {}, ["x"]),
        ("/audits/new/", {}, ["checkpoint"]),
        ("/suites/", {}, ["x"]),
        ("/suites/starter/", {}, ["version", "split", "kind", "domain", "trait", "family", "page"]),
        ("/suites/import/", {}, ["x"]),
        ("/items/", {"run": run.pk}, ["run", "against", "suite", "domain", "trait", "family",
                                      "condition", "show", "page"]),
        ("/compare/", {"a": name}, ["a", "b"]),
        ("/charts/traits-domains.json", {"run": run.pk}, ["run", "metric", "download"]),
        ("/charts/conditions-domains.csv", {"run": run.pk}, ["run"]),
        ("/charts/checkpoints-domains.json", {}, ["id"]),
        ("/charts/checkpoints-families.csv", {}, ["id"]),
        ("/charts/transfer.json", {}, ["x"]),
        ("/auditlog/", {}, ["action", "who", "object", "since", "page", "verify"]),
        ("/account/token/", {}, ["x"]),
        ("/admin/", {}, ["x"]),
        ("/admin/audits/audit/", {}, ["q", "o", "p", "status__exact"]),
        ("/admin/models_registry/checkpoint/", {}, ["q", "o"]),
        ("/admin/auth/user/", {}, ["q", "is_staff__exact"]),
        ("/api/v1/checkpoints/", {}, ["name", "tag", "page"]),
        ("/api/v1/audits/", {}, ["checkpoint", "status", "created_after", "page"]),
        (f"/api/v1/audits/{audit.pk}/scores/", {}, ["metric", "domain", "condition"]),
        ("/api/v1/events/", {}, ["action", "actor", "page"]),
        ("/api/v1/gate/", {"checkpoint": name, "against": name}, ["min_benefit_change"]),
    ]  # fmt: skip


def test_no_hostile_query_string_makes_any_page_fail(client, site_admin, pages):
    """Every page's parameters, each given every hostile value in turn (the others valid), as
    an admin (who reaches every page): never a server error; NUL is refused with a sentence."""
    client.force_login(site_admin)
    client.raise_request_exception = False  # collect every failure, as a 500
    auth = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=site_admin).key}"}
    failures = []
    for path, base, parameters in pages:
        for parameter in parameters:
            for value in HOSTILE:
                response = client.get(path, base | {parameter: value}, **auth)
                if response.status_code >= 500:
                    failures.append((path, parameter, value[:20], response.status_code))
                elif "\x00" in value:
                    body = response.content.decode()
                    if response.status_code != 400 or "contains a NUL character" not in body:
                        failures.append((path, parameter, "NUL", response.status_code))
    assert not failures


@pytest.mark.parametrize("path", ["/suites/\x00/", "/checkpoints/a\x00/", "/api/v1/\x00"])
def test_nul_in_the_path_is_refused_with_a_sentence(client, viewer, path):
    client.force_login(viewer)
    response = client.get(path)
    assert response.status_code == 400
    assert "The address contains a NUL character (%00); remove it and try again." in (
        response.content.decode()
    )


def test_nul_in_a_form_field_is_refused_before_any_view(client, operator):
    client.force_login(operator)
    response = client.post("/checkpoints/register/", {"path": "models/\x00", "name": "x"})
    assert response.status_code == 400
    assert "The form field &#x27;path&#x27; contains a NUL character" in response.content.decode()


def test_forms_over_djangos_limits_get_a_sentence_not_a_bare_400(client, operator, settings):
    client.force_login(operator)
    fields = {f"f{i}": "1" for i in range(settings.DATA_UPLOAD_MAX_NUMBER_FIELDS + 1)}
    response = client.post("/audits/new/", fields)
    assert response.status_code == 400
    assert "The form has more than 1000 fields (DATA_UPLOAD_MAX_NUMBER_FIELDS)" in (
        response.content.decode()
    )
    response = client.post("/audits/new/", {"checkpoint": "x" * (2_621_440 + 1)})  # multipart
    assert response.status_code == 413
    assert "The form&#x27;s fields hold more than 2.5 MiB (DATA_UPLOAD_MAX_MEMORY_SIZE)" in (
        response.content.decode()
    )
    response = client.post("/audits/new/", "checkpoint=" + "x" * 2_621_440,
                           content_type="application/x-www-form-urlencoded")  # fmt: skip
    assert response.status_code == 413
    assert "The request body is 2.5 MiB; Keel accepts at most 2.5 MiB outside a file upload" in (
        response.content.decode()
    )
    body = client.post(
        "/api/v1/audits/", data="[" + "1," * 1_400_000 + "1]", content_type="application/json"
    )
    assert body.status_code == 413
    assert body.json()["detail"].startswith("The request body is 2.7 MiB; Keel accepts at most")


# --- Content-Security-Policy ------------------------------------------------------------

INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)(?![^>]*application/json)[^>]*>", re.I)
INLINE_HANDLER = re.compile(r"<[^>]+\son[a-z]+\s*=", re.I)


def test_every_page_carries_the_policy_and_no_inline_script(client, site_admin, pages):
    anonymous = client.get("/login/")
    assert anonymous["Content-Security-Policy"] == settings.KEEL_CSP
    assert "script-src 'self';" in settings.KEEL_CSP
    assert "'unsafe-eval'" not in settings.KEEL_CSP
    client.force_login(site_admin)
    for path, base, _ in pages:
        if path.startswith("/api/"):
            continue
        response = client.get(path, base)
        assert response.status_code == 200, path
        assert response["Content-Security-Policy"] == settings.KEEL_CSP, path
        if response["Content-Type"].startswith("text/html"):
            page = response.content.decode()
            assert not INLINE_SCRIPT.search(page), (path, INLINE_SCRIPT.search(page))
            assert not INLINE_HANDLER.search(page), (path, INLINE_HANDLER.search(page))


# --- Django's admin: results are read-only; what may change is logged ---------------------


def test_the_admin_shows_results_but_cannot_change_add_or_delete_them(
    client, site_admin, tiny_checkpoint, starter_suite
):
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    run = audit.runs.get()
    score = Score.objects.create(audit=audit, run=run, checkpoint=tiny_checkpoint,
                                 suite=starter_suite, condition="neutral", metric="accuracy",
                                 value=0.5, ci_low=0.3, ci_high=0.7, n=20)  # fmt: skip
    client.force_login(site_admin)
    item = starter_suite.items.first()
    for model, obj in (("audit", audit), ("score", score), ("suite", starter_suite),
                       ("item", item)):  # fmt: skip
        base = f"/admin/audits/{model}/"
        assert client.get(base).status_code == 200
        page = client.get(f"{base}{obj.pk}/change/")
        assert page.status_code == 200 and b'name="_save"' not in page.content, model
        assert client.post(f"{base}{obj.pk}/change/", {"status": "failed"}).status_code == 403
        assert client.get(f"{base}add/").status_code == 403
        assert client.post(f"{base}{obj.pk}/delete/", {"post": "yes"}).status_code == 403
    audit.refresh_from_db()
    assert audit.status == "queued" and Score.objects.filter(pk=score.pk).exists()
    assert Suite.objects.filter(pk=starter_suite.pk).exists() and Audit.objects.count() == 1


def test_checkpoint_notes_edited_in_the_admin_are_logged(client, site_admin, tiny_checkpoint):
    client.force_login(site_admin)
    url = f"/admin/models_registry/checkpoint/{tiny_checkpoint.pk}/change/"
    response = client.post(url, {"notes": "calibrated on health", "tags": '["candidate"]',
                                 "kind": tiny_checkpoint.kind, "training": "{}"})  # fmt: skip
    assert response.status_code == 302, response.content.decode()[:2000]
    tiny_checkpoint.refresh_from_db()
    assert tiny_checkpoint.notes == "calibrated on health"
    event = Event.objects.filter(action=Action.EDIT).get()
    assert (event.actor_name, event.object_id) == (site_admin.username, str(tiny_checkpoint.pk))
    assert event.details["changed"]["notes"] == {"before": "", "after": "calibrated on health"}
    assert event.details["changed"]["tags"] == {"before": [], "after": ["candidate"]}
    # Registered checkpoints are never deleted, and what identifies them never changes.
    assert client.post(url.replace("change", "delete"), {"post": "yes"}).status_code == 403
    assert Checkpoint.objects.filter(pk=tiny_checkpoint.pk).exists()


def test_aliases_moved_or_removed_in_the_admin_are_logged(client, site_admin, tiny_checkpoint):
    client.force_login(site_admin)
    response = client.post("/admin/models_registry/alias/add/",
                           {"name": "production", "checkpoint": tiny_checkpoint.pk})  # fmt: skip
    assert response.status_code == 302
    alias = Alias.objects.get(name="production")
    assert client.post(f"/admin/models_registry/alias/{alias.pk}/delete/",
                       {"post": "yes"}).status_code == 302  # fmt: skip
    details = list(Event.objects.filter(action=Action.ALIAS).order_by("id")
                   .values_list("details", flat=True))  # fmt: skip
    assert details == [
        {"alias": "production", "via": "admin"},
        {"alias": "production", "removed": True, "via": "admin"},
    ]


# --- CSRF on every form and API write ----------------------------------------------------


def test_every_write_without_a_csrf_token_is_refused_and_changes_nothing(
    site_admin, tiny_checkpoint, starter_suite
):
    """A signed-in admin's browser posting from another site (no CSRF token): every page
    that changes something, and the API under a session cookie, answer 403 and store nothing."""
    from django.test import Client

    from audits.models import Audit

    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(site_admin)
    before = (Audit.objects.count(), Event.objects.count(), Suite.objects.count(),
              Checkpoint.objects.count(), Alias.objects.count(), Token.objects.count())  # fmt: skip
    writes = [
        ("/audits/new/", {"checkpoint": tiny_checkpoint.pk, "suites": [starter_suite.pk]}),
        (f"/audits/{audit.pk}/cancel/", {}),
        (f"/audits/{audit.pk}/retry/", {}),
        ("/suites/import/", {"name": "forged"}),
        ("/checkpoints/register/", {"path": "x", "name": "forged"}),
        (f"/checkpoints/{tiny_checkpoint.name}/alias/", {"alias": "production"}),
        ("/account/token/", {}),
        ("/logout/", {}),
        ("/admin/models_registry/alias/add/", {"name": "p", "checkpoint": tiny_checkpoint.pk}),
    ]
    for path, data in writes:
        assert browser.post(path, data).status_code == 403, path
    api = browser.post("/api/v1/audits/", {"checkpoint": tiny_checkpoint.name},
                       content_type="application/json")  # fmt: skip
    assert api.status_code == 403 and "CSRF" in api.json()["detail"]
    after = (Audit.objects.count(), Event.objects.count(), Suite.objects.count(),
             Checkpoint.objects.count(), Alias.objects.count(), Token.objects.count())  # fmt: skip
    assert after == before
    assert not audit.runs.filter(cancel_requested=True).exists()
    assert "_auth_user_id" in browser.session  # the forged logout did not sign out
    # The control: the same admin's own page, whose form carries the token, may cancel.
    page = browser.get(f"/audits/{audit.pk}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    cancel = browser.post(f"/audits/{audit.pk}/cancel/", {"csrfmiddlewaretoken": token})
    assert cancel.status_code == 302
    assert audit.runs.get().cancel_requested


# --- Guessing ids --------------------------------------------------------------------------


def test_guessing_an_event_id_does_not_reach_the_audit_log_without_the_role(
    client, viewer, operator, compliance
):
    """Every role reads every checkpoint, suite and audit by design (for_user: a role reads
    the whole registry); the audit log is the one thing some roles may not read, by list or
    by id."""
    from audits.trail import record

    event = record(Action.LOGIN_FAILED, details={"username": "x"}, name="x")
    for user, allowed in ((viewer, False), (operator, False), (compliance, True)):
        auth = {"HTTP_AUTHORIZATION": f"Token {Token.objects.create(user=user).key}"}
        response = client.get(f"/api/v1/events/{event.pk}/", **auth)
        assert response.status_code == (200 if allowed else 403), user
        client.force_login(user)
        page = client.get("/auditlog/", {"object": ""})
        assert page.status_code == (200 if allowed else 403), user


# --- Production settings, on a real request ---------------------------------------------


def production_env(tmp_path: Path) -> dict[str, str]:
    return os.environ | {
        "KEEL_HTTPS": "1",
        "KEEL_SECRET_KEY": secrets.token_urlsafe(50),
        "KEEL_ALLOWED_HOSTS": "keel.example.org",
        "KEEL_DATA_DIR": str(settings.KEEL_DATA_DIR),
        "DJANGO_SETTINGS_MODULE": "config.settings",
    }


def test_check_deploy_is_clean_in_this_mode(tmp_path):
    """tests/test_settings.py checks embedded mode; this runs with the test's own database
    and Redis variables (full mode when they are set)."""
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env=production_env(tmp_path), cwd=settings.BASE_DIR, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    assert "System check identified no issues (0 silenced)." in result.stdout


@pytest.fixture
def production_server(transactional_db, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = production_env(tmp_path) | {"DATABASE_URL": database_url_for_worker()}
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "config.asgi:application", "--host", "127.0.0.1",
         "--port", str(port)], cwd=settings.BASE_DIR, env=env, stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # up once the first page (Keel's imports) is served
        try:
            request(port, "GET", "/login/", {"X-Forwarded-Proto": "https"})
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "server.log").read_text()
            time.sleep(0.2)
    yield port
    process.terminate()
    process.wait(timeout=20)
    log.close()


def request(port: int, method: str, path: str, headers: dict, body: str = ""):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body or None, headers={"Host": "keel.example.org",
                                                               **headers})  # fmt: skip
        response = conn.getresponse()
        return response.status, response.headers, response.read().decode()
    finally:
        conn.close()


def test_production_answers_with_hsts_secure_cookies_and_the_policy(production_server):
    user = make_user("prod-pia", "viewer")
    user.set_password(PASSWORD)
    user.save()
    port = production_server
    status, headers, _ = request(port, "GET", "/login/", {})
    assert status == 301 and headers["Location"] == "https://keel.example.org/login/"

    tls = {"X-Forwarded-Proto": "https"}  # as the TLS proxy in front of Keel says
    status, headers, page = request(port, "GET", "/login/", tls)
    assert status == 200
    assert headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains; preload"
    assert headers["Content-Security-Policy"] == settings.KEEL_CSP
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csrf_cookie = headers["Set-Cookie"]
    assert csrf_cookie.startswith("csrftoken=") and "; Secure" in csrf_cookie
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)

    cookie = csrf_cookie.split(";")[0]
    form = f"username=prod-pia&password={PASSWORD}&csrfmiddlewaretoken={token}"
    status, headers, _ = request(port, "POST", "/login/", tls | {
        "Cookie": cookie, "Origin": "https://keel.example.org",
        "Content-Type": "application/x-www-form-urlencoded",
    }, form)  # fmt: skip
    assert status == 302, headers
    session = [c for c in headers.get_all("Set-Cookie") if c.startswith("sessionid=")]
    assert session and "; Secure" in session[0] and "; HttpOnly" in session[0]

    # A form posted from another site is refused (CSRF), even with the right cookie.
    status, _, page = request(port, "POST", "/login/", tls | {
        "Cookie": cookie, "Origin": "https://evil.example",
        "Content-Type": "application/x-www-form-urlencoded",
    }, form)  # fmt: skip
    assert status == 403


# --- The websocket's origin --------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_websocket_from_another_origin_is_refused(client, viewer, tiny_checkpoint, starter_suite,
                                                    settings):  # fmt: skip
    from config.asgi import application

    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)
    client.force_login(viewer)
    cookie = f"sessionid={client.cookies['sessionid'].value}".encode()

    def connect(origin: bytes | None) -> tuple[bool, object]:
        headers = [(b"host", b"127.0.0.1:8000"), (b"cookie", cookie)]
        headers += [(b"origin", origin)] if origin else []

        async def attempt():
            comm = WebsocketCommunicator(application, f"/ws/audits/{audit.pk}/", headers=headers)
            connected, code = await comm.connect()
            if connected:
                snapshot = await comm.receive_json_from(timeout=5)
                assert snapshot["status"] == "queued"
            await comm.disconnect()
            return connected, code

        return async_to_sync(attempt)()

    assert connect(b"http://127.0.0.1:8000")[0] is True
    for origin in (b"https://evil.example", b"http://127.0.0.1.evil.example", None):
        connected, code = connect(origin)
        assert connected is False and code != 4403, origin  # refused before the consumer
