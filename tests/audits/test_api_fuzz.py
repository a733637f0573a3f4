"""The REST API fuzzed by schemathesis against its own OpenAPI schema (drf-spectacular),
through the real WSGI application and test database, as an admin (every write allowed)
and as a viewer (writes refused): no request may cause a server error, and every response
must keep to what the schema promises (status codes, content types, bodies)."""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from drf_spectacular.generators import SchemaGenerator
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from audits.services import audit_create
from tests.conftest import make_user

schema = schemathesis.openapi.from_dict(SchemaGenerator().get_schema(request=None, public=True))
schema.app = get_wsgi_application()

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]  # fmt: skip
# Derandomized: CI explores the same cases every run, so a red run means a change, not luck.
# (A random run found the time-zone offset fault tested below; raise max_examples and drop
# derandomize to explore further by hand.)
FUZZ = settings(
    max_examples=15,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.filter_too_much],
)  # fmt: skip


@pytest.fixture(autouse=True)
def _keep_the_test_connection():
    """The WSGI handler closes the database connection after each request; inside a test's
    transaction it must not (Django's own test client does the same)."""
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


@pytest.fixture
def something_to_find(tiny_checkpoint, starter_suite):
    """A checkpoint, a suite and an audit (never queued: the test's transaction is never
    committed, so no worker hears of it)."""
    audit_create(checkpoint=tiny_checkpoint, suites=[starter_suite], samples=0)


@pytest.fixture
def admin_headers(db, something_to_find) -> dict:
    token = Token.objects.create(user=make_user("ada-admin", "admin"))
    return {"Authorization": f"Token {token.key}"}


@pytest.fixture
def viewer_headers(db, something_to_find) -> dict:
    token = Token.objects.create(user=make_user("vera-viewer", "viewer"))
    return {"Authorization": f"Token {token.key}"}


@schema.parametrize()
@FUZZ
def test_as_an_admin_the_api_never_errors_and_keeps_to_its_schema(case, admin_headers):
    case.call_and_validate(headers=admin_headers, checks=CHECKS)


@schema.include(method="POST").parametrize()  # reads take the admin's code paths
@FUZZ
def test_as_a_viewer_the_api_refuses_writes_without_errors(case, viewer_headers):
    case.call_and_validate(headers=viewer_headers, checks=CHECKS)


@pytest.mark.parametrize("offset", ["%2B16:15", "-23:59"])
def test_a_time_filter_with_an_offset_postgresql_refuses_is_moved_to_utc(db, client, offset):
    token = Token.objects.create(user=make_user("vera-viewer", "viewer"))
    auth = {"HTTP_AUTHORIZATION": f"Token {token.key}"}
    for path in ("/api/v1/audits/?created_after=", "/api/v1/events/?since="):
        response = client.get(f"{path}2026-07-18T12:00:52{offset}", **auth)
        assert response.status_code in (200, 403), response.content  # events: compliance only
    response = client.get("/api/v1/audits/?created_after=0001-01-01T00:00:00%2B16:00", **auth)
    assert response.status_code == 400 and "out of range" in response.json()["detail"]
