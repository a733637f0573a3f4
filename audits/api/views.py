"""Keel's REST API: checkpoints, suites, audits (create, status, cancel, retry), scores,
report cards, exports, the release gate and the audit log. Roles as on the pages."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django.db.models import Count, Prefetch
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import NotFound, ValidationError
from rest_framework.response import Response
from rest_framework.views import APIView

from audits.api import serializers as s
from audits.api.permissions import Exporter, Reader
from audits.export import (
    ExportError,
    audit_document,
    card_data,
    export,
    json_safe,
    report_card_document,
)
from audits.gate import GateError, gate
from audits.models import Audit, Event, Run, Score, Status, Suite
from audits.report import report_card
from audits.services import audit_cancel, audit_create, audit_retry
from audits.suite_io import SuiteError, check_size, parse_file, suite_store
from audits.trail import Action
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_register

EXPORT_FORMATS = OpenApiParameter(
    "fmt", str, OpenApiParameter.PATH, enum=["pdf", "json", "csv"], description="file format"
)
FILE = {
    (200, "application/pdf"): OpenApiTypes.BINARY,
    (200, "application/json"): OpenApiTypes.OBJECT,
    (200, "text/csv"): OpenApiTypes.STR,
    400: OpenApiResponse(description="nothing to export yet"),
}


def _sentence(exc: Exception) -> str:
    text = str(exc).rstrip(".")
    return f"{text[:1].upper()}{text[1:]}."


def _create(request, serializer_class, service):
    """Validate the body, then call the service that pages and commands use too; its
    refusals (CheckpointError is a ValueError) become 400s with its message."""
    data = serializer_class(data=request.data)
    data.is_valid(raise_exception=True)
    try:
        return service(**data.validated_data, user=request.user)
    except ValueError as exc:
        raise ValidationError({"detail": _sentence(exc)}) from None


def _file(request, build, obj, fmt: str) -> HttpResponse:
    if fmt not in ("pdf", "json", "csv"):
        raise NotFound("Formats: pdf, json, csv.")
    try:
        content, media, filename = export(build(obj), fmt, obj, user=request.user)
    except ExportError as exc:
        raise ValidationError({"detail": _sentence(exc)}) from None
    response = HttpResponse(content, content_type=media)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time, moved to UTC before it reaches the database: Python accepts
    offsets up to 24 hours, PostgreSQL refuses those past 15:59 (found by the fuzz test)."""

    def filter(self, qs, value):
        if value is not None:
            try:
                value = value.astimezone(UTC)
            except OverflowError:
                raise ValidationError({self.field_name: "That time is out of range."}) from None
        return super().filter(qs, value)


class CheckpointFilter(django_filters.FilterSet):
    tag = django_filters.CharFilter(method="filter_tag", max_length=50)
    parent = django_filters.CharFilter(field_name="parent__name", max_length=100)

    class Meta:
        model = Checkpoint
        fields = ["name", "kind", "format", "architecture"]

    def filter_tag(self, queryset, name, value):
        return queryset.filter(tags__icontains=f'"{value}"')  # as the checkpoint list page


class CheckpointViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Registered checkpoints. POST registers one (operators)."""

    serializer_class = s.CheckpointSerializer
    lookup_field = "name"
    lookup_value_regex = "[-a-zA-Z0-9_]+"
    filterset_class = CheckpointFilter

    def get_queryset(self):
        return (Checkpoint.objects.for_user(self.request.user)
                .select_related("parent", "registered_by").prefetch_related("aliases")
                .order_by("-registered_at", "-id"))  # fmt: skip

    @extend_schema(request=s.CheckpointRegisterSerializer, responses={201: s.CheckpointSerializer})
    def create(self, request, *args, **kwargs):
        checkpoint = _create(request, s.CheckpointRegisterSerializer, checkpoint_register)
        return Response(s.CheckpointSerializer(checkpoint).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: OpenApiTypes.OBJECT})
    @action(detail=True, url_path="report-card")
    def report_card(self, request, name=None):
        """The report card: headline indices with intervals, grades, deltas, flags."""
        card = report_card(self.get_object())
        if card.run is None:
            return Response({"checkpoint": name, "run": None, "indices": [],
                             "detail": "No finished evaluation yet; queue an audit."})  # fmt: skip
        return Response(json_safe(card_data(card) | {"audit": card.run.audit_id}))

    @extend_schema(parameters=[EXPORT_FORMATS], responses=FILE)
    @action(detail=True, url_path=r"export/(?P<fmt>[a-z]+)", permission_classes=[Exporter])
    def export(self, request, name=None, fmt=None):
        """The report card as PDF, JSON or CSV, with provenance and a data hash (compliance)."""
        return _file(request, report_card_document, self.get_object(), fmt)


class SuiteFilter(django_filters.FilterSet):
    class Meta:
        model = Suite
        fields = ["name", "version"]


class SuiteViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Item suites, every version. POST imports a file (operators)."""

    serializer_class = s.SuiteSerializer
    filterset_class = SuiteFilter

    def get_queryset(self):
        return Suite.objects.annotate(n_items=Count("items")).order_by("name", "-version")

    @extend_schema(request={"multipart/form-data": s.SuiteImportSerializer},
                   responses={201: s.SuiteSerializer})  # fmt: skip
    def create(self, request, *args, **kwargs):
        from audits.builtin import reserved_suite_names

        data = s.SuiteImportSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        form = data.validated_data
        if form["name"] in reserved_suite_names():
            raise ValidationError({"detail": f"{form['name']!r} is a built-in suite's name; "
                                             "choose another."})  # fmt: skip
        upload = form["file"]
        try:
            check_size(upload.size, upload.name)
            parsed = parse_file(upload.read(), upload.name)
        except SuiteError as exc:
            raise ValidationError({"detail": "The file has problems; nothing was stored.",
                                   "problems": exc.problems}) from None  # fmt: skip
        suite = suite_store(name=form["name"], parsed=parsed, description="",
                            source=form["source"], license=form["license"],
                            user=request.user)  # fmt: skip
        suite.n_items = suite.items.count()
        return Response(s.SuiteSerializer(suite).data, status=status.HTTP_201_CREATED)


class AuditFilter(django_filters.FilterSet):
    checkpoint = django_filters.CharFilter(field_name="checkpoint__name", max_length=100)
    created_by = django_filters.CharFilter(field_name="created_by__username", max_length=150)
    created_after = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")

    class Meta:
        model = Audit
        fields = ["status", "plan", "profile"]


class ScoreFilter(django_filters.FilterSet):
    checkpoint = django_filters.CharFilter(field_name="checkpoint__name", max_length=100)
    suite = django_filters.CharFilter(field_name="suite__name", max_length=100)

    class Meta:
        model = Score
        fields = ["run", "domain", "trait", "family", "condition", "metric"]


class AuditViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    """Audits with their runs' progress. POST queues one; cancel and retry (operators)."""

    serializer_class = s.AuditSerializer
    filterset_class = AuditFilter

    def get_queryset(self):
        return (Audit.objects.for_user(self.request.user)
                .select_related("checkpoint", "created_by")
                .prefetch_related("suites", Prefetch("runs", Run.objects.select_related(
                    "checkpoint")))
                .order_by("-created_at", "-id"))  # fmt: skip

    @extend_schema(request=s.AuditCreateSerializer, responses={201: s.AuditSerializer})
    def create(self, request, *args, **kwargs):
        audit = _create(request, s.AuditCreateSerializer, audit_create)
        return Response(s.AuditSerializer(self.get_queryset().get(pk=audit.pk)).data,
                        status=status.HTTP_201_CREATED)  # fmt: skip

    @extend_schema(request=None, responses={200: s.AuditSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        """Ask the workers to stop after their current batch."""
        audit = self.get_object()
        audit_cancel(audit, request.user)
        return Response(s.AuditSerializer(self.get_queryset().get(pk=audit.pk)).data)

    @extend_schema(request=None, responses={200: s.AuditSerializer})
    @action(detail=True, methods=["post"])
    def retry(self, request, pk=None):
        """Queue failed and cancelled runs again; each resumes from what it stored."""
        audit = self.get_object()
        if audit.status not in (Status.FAILED, Status.CANCELLED):
            raise ValidationError({"detail": f"Audit {audit.pk} is {audit.status}; only failed "
                                             "or cancelled audits are retried."})  # fmt: skip
        audit_retry(audit, request.user)
        return Response(s.AuditSerializer(self.get_queryset().get(pk=audit.pk)).data)

    @extend_schema(responses={200: s.ScoreSerializer(many=True)},
                   parameters=[OpenApiParameter(f, str) for f in
                               ("checkpoint", "suite", "domain", "trait", "family", "condition",
                                "metric")] + [OpenApiParameter("run", int)])  # fmt: skip
    @action(detail=True, filter_backends=[])
    def scores(self, request, pk=None):
        """Every score of the audit: value, 95% interval and n; filter by any field."""
        audit = self.get_object()
        scores = Score.objects.filter(audit=audit).select_related("checkpoint", "suite")
        scores = ScoreFilter(request.query_params, scores.order_by("id")).qs
        page = self.paginate_queryset(scores)
        return self.get_paginated_response(s.ScoreSerializer(page, many=True).data)

    @extend_schema(parameters=[EXPORT_FORMATS], responses=FILE)
    @action(detail=True, url_path=r"export/(?P<fmt>[a-z]+)", permission_classes=[Exporter])
    def export(self, request, pk=None, fmt=None):
        """The audit as PDF, JSON or CSV, with provenance and a data hash (compliance)."""
        return _file(request, audit_document, self.get_object(), fmt)


class GateView(APIView):
    """The release gate: is the candidate worse than the reference beyond a limit?
    200 with `passed` either way; 400 when it cannot decide."""

    @extend_schema(parameters=[s.GateQuerySerializer], responses={
        200: OpenApiTypes.OBJECT, 400: OpenApiResponse(description="cannot decide")})  # fmt: skip
    def get(self, request):
        query = s.GateQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        q = query.validated_data
        visible = Checkpoint.objects.for_user(request.user)
        found = {c.name: c for c in visible.filter(name__in=[q["checkpoint"], q["against"]])}
        missing = [n for n in (q["checkpoint"], q["against"]) if n not in found]
        if missing:
            raise ValidationError({"detail": f"No checkpoint named {', '.join(missing)}."})
        try:
            verdict = gate(
                found[q["checkpoint"]], found[q["against"]], strict=q["strict"],
                max_misalignment_increase=q.get("max_misalignment_increase"),
                min_benefit_change=q.get("min_benefit_change"),
            )  # fmt: skip
        except GateError as exc:
            raise ValidationError({"detail": f"Cannot decide: {_sentence(exc)}"}) from None
        return Response(json_safe(verdict.as_dict()) | {"explanation": verdict.text()})


class EventFilter(django_filters.FilterSet):
    action = django_filters.ChoiceFilter(choices=[(a, a) for a in Action.ALL])
    actor = django_filters.CharFilter(field_name="actor_name", max_length=150)
    since = UtcDateTimeFilter(field_name="at", lookup_expr="gte")

    class Meta:
        model = Event
        fields = ["object_type", "object_id"]


class EventViewSet(viewsets.ReadOnlyModelViewSet):
    """The audit log, newest first (compliance and admins)."""

    serializer_class = s.EventSerializer
    permission_classes = [Reader, Exporter]
    filterset_class = EventFilter
    queryset = Event.objects.order_by("-id")
