"""What compliance needs in the browser: exports of report cards and audits, the audit log,
and everyone's API token."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import messages
from django.core.paginator import Paginator
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from rest_framework.authtoken.models import Token

from audits.export import ExportError, audit_document, export, report_card_document
from audits.models import Audit, Event
from audits.trail import Action, record, verify
from models_registry.models import Checkpoint
from models_registry.roles import export_required

PERIODS = {"1": "the last day", "7": "the last 7 days", "30": "the last 30 days"}


def _download(request, document_for, obj, fmt: str) -> HttpResponse:
    try:
        content, media, filename = export(document_for(obj), fmt, obj, user=request.user)
    except ExportError as exc:
        messages.error(request, f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        return redirect(obj)
    response = HttpResponse(content, content_type=media)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


@export_required
def report_card_export(request, name: str, fmt: str):
    checkpoint = get_object_or_404(Checkpoint.objects.for_user(request.user), name=name)
    return _download(request, report_card_document, checkpoint, fmt)


@export_required
def audit_export(request, audit_id: int, fmt: str):
    audit = get_object_or_404(Audit.objects.for_user(request.user), pk=audit_id)
    return _download(request, audit_document, audit, fmt)


@export_required
def audit_log(request):
    events = Event.objects.select_related("actor")
    filters = {k: request.GET.get(k, "").strip() for k in ("action", "who", "object", "since")}
    if filters["action"] in Action.ALL:
        events = events.filter(action=filters["action"])
    if filters["who"] == "-":
        events = events.filter(actor_name="")
    elif filters["who"]:
        events = events.filter(actor_name=filters["who"])
    if filters["object"]:
        kind, _, pk = filters["object"].partition(":")
        events = events.filter(object_type=kind, **({"object_id": pk} if pk else {}))
    if filters["since"] in PERIODS:
        events = events.filter(at__gte=timezone.now() - timedelta(days=int(filters["since"])))
    page = Paginator(events, 50).get_page(request.GET.get("page"))
    for event in page:  # a details key such as "items" would shadow dict.items in a template
        event.detail_pairs = sorted(event.details.items())
    context = {
        "page": page,
        "filters": filters,
        "actions": Action.ALL,
        "periods": PERIODS,
        "actors": Event.objects.exclude(actor_name="").order_by("actor_name")
        .values_list("actor_name", flat=True).distinct(),
        "query": "&".join(f"{k}={v}" for k, v in filters.items() if v),
        "verdict": verify() if request.GET.get("verify") else None,
    }  # fmt: skip
    return render(request, "audits/auditlog.html", context)


def api_token(request):
    """Anyone with a role can hold one API token; making a new one revokes the old."""
    if request.method != "POST":
        token = Token.objects.filter(user=request.user).first()
        return render(request, "registration/token.html", {"token": token})
    with transaction.atomic():
        Token.objects.filter(user=request.user).delete()
        token = Token.objects.create(user=request.user)
        record(Action.API_TOKEN, request.user, details={"created": token.created})
    messages.success(request, "New API token made; the old one, if any, no longer works. "
                     "Copy it now: it is shown on this page only until you leave it.")  # fmt: skip
    return render(request, "registration/token.html", {"token": token, "fresh": True})
