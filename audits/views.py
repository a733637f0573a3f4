from __future__ import annotations

from django.contrib import messages
from django.http import JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from audits import progress
from audits.comparison import persistence_deltas, training_deltas
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
    initial = {"checkpoint": request.GET["checkpoint"]} if request.GET.get("checkpoint") else {}
    form = AuditForm(request.POST or None, initial=initial)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            audit = audit_create(
                checkpoint=data["checkpoint"], suites=list(data["suites"]),
                conditions=data["conditions"], profile=data["profile"], seed=data["seed"],
                samples=data["samples"], judge=data["judge"], reward_model=data["reward_model"],
                plan=data["plan"], method=data["method"] or "dpo", traits=data["traits"],
                train_domains=data["train_domains"], user=request.user,
            )  # fmt: skip
        except ValueError as exc:  # e.g. the chosen suites have no train split
            form.add_error(None, f"{str(exc)[:1].upper()}{str(exc)[1:]}.")
        else:
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
            "several_checkpoints": audit.runs.values("checkpoint").distinct().count() > 1,
            "deltas": training_deltas(audit),
            "persistence": persistence_deltas(audit),
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
    checkpoint = None
    if request.GET.get("checkpoint"):
        run = audit.runs.filter(checkpoint__name=request.GET["checkpoint"]).first()
        if run is None:
            return JsonResponse({"error": "that checkpoint is not part of this audit"}, status=400)
        checkpoint = run.checkpoint
    return JsonResponse(heatmap_data(audit, metric, checkpoint))
