from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from audits import progress
from audits.forms import AuditForm
from audits.heatmap import heatmap_data, summary_rows
from audits.models import FINISHED, Audit, Metric
from audits.services import audit_create
from models_registry.roles import operator_required

# Metrics that exist per domain x trait cell under the neutral condition.
HEATMAP_METRICS = (Metric.MARGIN, Metric.ACCURACY, Metric.MARGIN_MEAN_TOKEN)


def _get_audit(request, audit_id: int) -> Audit:
    return get_object_or_404(Audit.objects.for_user(request.user), pk=audit_id)


def audit_list(request):
    audits = Audit.objects.for_user(request.user).select_related("checkpoint", "created_by")
    return render(request, "audits/list.html", {"audits": audits[:100]})


@operator_required
def audit_new(request):
    initial = {"checkpoint": request.GET.get("checkpoint")}
    form = AuditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        audit = audit_create(
            checkpoint=form.cleaned_data["checkpoint"],
            suites=list(form.cleaned_data["suites"]),
            conditions=form.cleaned_data["conditions"],
            profile=form.cleaned_data["profile"],
            seed=form.cleaned_data["seed"],
            samples=form.cleaned_data["samples"],
            judge=form.cleaned_data["judge"],
            reward_model=form.cleaned_data["reward_model"],
            user=request.user,
        )
        messages.success(request, f"Queued audit {audit.pk}.")
        return redirect(audit)
    return render(request, "audits/new.html", {"form": form})


def audit_detail(request, audit_id: int):
    audit = _get_audit(request, audit_id)
    return render(
        request,
        "audits/detail.html",
        {
            "audit": audit,
            "snapshot": progress.audit_snapshot(audit),
            "suites": audit.suites.all(),
            "metrics": [(m.value, m.label) for m in HEATMAP_METRICS],
            "summary": summary_rows(audit),
        },
    )


@require_POST
@operator_required
def audit_cancel(request, audit_id: int):
    audit = _get_audit(request, audit_id)
    if audit.status in FINISHED:
        messages.info(request, f"Audit {audit.pk} has already {audit.status}.")
    else:
        audit.runs.exclude(status__in=FINISHED).update(cancel_requested=True)
        messages.success(request, "Cancelling: the worker stops after its current batch.")
    return redirect(audit)


def audit_heatmap_json(request, audit_id: int):
    audit = _get_audit(request, audit_id)
    metric = request.GET.get("metric", Metric.MARGIN)
    if metric not in HEATMAP_METRICS:
        return JsonResponse(
            {"error": f"unknown metric {metric!r}; use one of {', '.join(HEATMAP_METRICS)}"},
            status=400,
        )
    return JsonResponse(heatmap_data(audit, metric))
