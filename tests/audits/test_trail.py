"""The audit log: what is recorded, that Keel cannot edit it, and that the hash chain finds
a row altered or deleted behind Keel's back."""

from __future__ import annotations

import pytest
from django.contrib.auth.models import Group
from django.core.management import CommandError, call_command
from django.db import connection
from django.urls import reverse

from audits.models import AppendOnlyError, Event
from audits.services import audit_cancel, audit_create, audit_retry
from audits.trail import GENESIS, Action, event_hash, record, verify
from models_registry.roles import COMPLIANCE, OPERATOR


def _raw(sql: str, params: list) -> None:
    """What someone with database access could do; Keel offers no way to."""
    with connection.cursor() as cursor:
        cursor.execute(sql.replace("TABLE", Event._meta.db_table), params)


@pytest.fixture
def start(db) -> dict:
    """Where the log stood before the test (and before the fixtures listed after this one):
    modules that commit their data, and the worker tests, leave their events in it."""
    last = Event.objects.order_by("-id").first()
    return {"id": last.pk if last else 0, "events": Event.objects.count(),
            "head": last.hash if last else GENESIS}  # fmt: skip


def test_each_event_links_to_the_one_before_it(start, django_user_model):
    otto = django_user_model.objects.create_user("otto-operator")
    first = record(Action.EXPORT, details={"n": 1}, actor=otto)
    second = record(Action.EXPORT, details={"n": 2})
    assert first.prev_hash == start["head"] and second.prev_hash == first.hash
    assert first.hash == event_hash(Event.objects.get(pk=first.pk))  # survives a round trip
    assert first.actor_name == "otto-operator" and second.actor_name == ""
    verdict = verify()
    assert verdict.intact and verdict.events == start["events"] + 2
    assert verdict.head == second.hash


def test_keel_cannot_edit_or_delete_events(db):
    event = record(Action.EXPORT, details={"n": 1})
    event.details = {"n": 2}
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        Event.objects.filter(pk=event.pk).update(details={})
    with pytest.raises(AppendOnlyError):
        Event.objects.all().delete()
    assert Event.objects.get(pk=event.pk).details == {"n": 1}


def test_verify_reports_the_first_altered_row(start, capsys):
    events = [record(Action.EXPORT, details={"n": i}) for i in range(5)]
    call_command("auditlog", "verify")
    assert f"intact: {start['events'] + 5} event(s)" in capsys.readouterr().out
    _raw("UPDATE TABLE SET details = %s WHERE id = %s", ['{"n": 99}', events[2].pk])
    _raw("UPDATE TABLE SET actor_name = %s WHERE id = %s", ["mallory", events[3].pk])
    verdict = verify()
    assert not verdict.intact and verdict.broken.pk == events[2].pk
    assert verdict.events == start["events"] + 2
    assert "altered" in verdict.problem
    with pytest.raises(CommandError, match=f"event {events[2].pk} .* was altered") as raised:
        call_command("auditlog", "verify")
    assert raised.value.returncode == 1


def test_verify_reports_a_deleted_row_and_a_cut_off_end(db):
    events = [record(Action.EXPORT, details={"n": i}) for i in range(4)]
    head = verify().head
    _raw("DELETE FROM TABLE WHERE id = %s", [events[1].pk])
    verdict = verify()
    assert verdict.broken.pk == events[2].pk and "does not link" in verdict.problem
    with pytest.raises(CommandError, match="does not link"):
        call_command("auditlog", "verify")
    # Deleting the newest event leaves a valid chain: only a head kept elsewhere shows it.
    _raw("DELETE FROM TABLE WHERE id >= %s", [events[1].pk])
    assert verify().intact
    with pytest.raises(CommandError, match="no longer in the chain"):
        call_command("auditlog", "verify", "--head", head)


def test_actions_are_recorded_with_actor_object_and_details(
    start, operator, tiny_checkpoint, starter_suite, client
):
    audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[starter_suite], user=operator, samples=0
    )
    assert audit_cancel(audit, operator) == 1
    audit.runs.update(status="cancelled")
    audit.refresh_status()
    assert audit_retry(audit, operator) == 1
    operator.groups.add(Group.objects.get(name=COMPLIANCE))
    operator.groups.remove(Group.objects.get(name=OPERATOR))
    client.post(reverse("login"), {"username": "otto-operator", "password": "wrong"})
    rows = list(
        Event.objects.filter(id__gt=start["id"])
        .order_by("id")
        .values_list("action", "actor_name", "object_type", "object_id")
    )
    assert rows == [
        (Action.ROLE_CHANGE, "", "user", str(operator.pk)),  # the fixture made otto an operator
        (Action.REGISTER, "", "checkpoint", str(tiny_checkpoint.pk)),
        (Action.IMPORT, "", "suite", str(starter_suite.pk)),
        (Action.QUEUE, "otto-operator", "audit", str(audit.pk)),
        (Action.CANCEL, "otto-operator", "audit", str(audit.pk)),
        (Action.RETRY, "otto-operator", "audit", str(audit.pk)),
        (Action.ROLE_CHANGE, "", "user", str(operator.pk)),
        (Action.ROLE_CHANGE, "", "user", str(operator.pk)),
        (Action.LOGIN_FAILED, "otto-operator", "", ""),
    ]
    mine = Event.objects.filter(id__gt=start["id"])
    queued = mine.get(action=Action.QUEUE)
    assert queued.details["config_hash"] == audit.config_hash
    assert queued.details["fingerprint"] == tiny_checkpoint.fingerprint
    roles = mine.filter(action=Action.ROLE_CHANGE).order_by("id")
    assert [e.details for e in roles] == [
        {"added": [OPERATOR]},
        {"added": [COMPLIANCE]},
        {"removed": [OPERATOR]},
    ]
    assert verify().intact


def test_a_role_change_through_the_admin_names_the_admin(start, site_admin, viewer, client):
    client.force_login(site_admin)
    response = client.post(
        reverse("admin:auth_user_change", args=[viewer.pk]),
        {
            "username": viewer.username,
            "is_active": "on",
            "groups": [Group.objects.get(name=OPERATOR).pk],
            "date_joined_0": "2026-01-01",
            "date_joined_1": "00:00:00",
            "initial-date_joined_0": "2026-01-01",
            "initial-date_joined_1": "00:00:00",
        },
    )
    assert response.status_code == 302, response.content[:2000]
    changes = Event.objects.filter(
        id__gt=start["id"], action=Action.ROLE_CHANGE, object_id=str(viewer.pk)
    )
    details = [(e.actor_name, e.details) for e in changes.order_by("id")]
    assert ("ada-admin", {"added": [OPERATOR]}) in details
    assert ("ada-admin", {"removed": ["viewer"]}) in details


def test_the_log_page_is_for_compliance_and_filters(start, compliance, viewer, client):
    export = record(Action.EXPORT, details={"subject": "one"})
    record(Action.LOGIN_FAILED, details={"username": "x"}, name="x")
    client.force_login(viewer)
    assert client.get(reverse("auditlog")).status_code == 403
    client.force_login(compliance)
    page = client.get(reverse("auditlog"), {"action": Action.EXPORT}).content.decode()
    assert "one" in page and "login.failed</code>" not in page
    page = client.get(reverse("auditlog"), {"verify": "1"}).content.decode()
    total = start["events"] + 4  # the two fixtures' role changes, and these two
    assert f"Chain intact: {total} events" in page
    _raw("UPDATE TABLE SET details = %s WHERE id = %s", ['{"subject": "two"}', export.pk])
    page = client.get(reverse("auditlog"), {"verify": "1"}).content.decode()
    assert f"Chain broken after {total - 2} intact events" in page
