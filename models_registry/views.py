from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Prefetch, Q
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_POST

from audits.trail import Action, record
from models_registry.forms import AliasForm, RegisterCheckpointForm
from models_registry.models import Alias, Checkpoint
from models_registry.roles import can_operate, operator_required

PER_PAGE = 50
CHART_ROWS = 40  # checkpoints shown in the list page's heatmaps


def checkpoint_list(request):
    checkpoints = (
        Checkpoint.objects.for_user(request.user)
        .select_related("parent")
        .prefetch_related(Prefetch("aliases", queryset=Alias.objects.order_by("name")))
    )
    query = request.GET.get("q", "").strip()
    tag = request.GET.get("tag", "").strip()
    if query:
        checkpoints = checkpoints.filter(
            Q(name__icontains=query)
            | Q(architecture__icontains=query)
            | Q(notes__icontains=query)
            | Q(tags__icontains=query)
            | Q(aliases__name__icontains=query)
        ).distinct()
    if tag:
        checkpoints = checkpoints.filter(tags__icontains=f'"{tag}"')
    page = Paginator(checkpoints, PER_PAGE).get_page(request.GET.get("page"))
    checkpoints = list(page.object_list)
    chart_ids = [c.pk for c in checkpoints[:CHART_ROWS]]
    return render(
        request,
        "registry/list.html",
        {
            "checkpoints": checkpoints,
            "page": page,
            "page_query": "&".join(f"{k}={v}" for k, v in (("q", query), ("tag", tag)) if v),
            "query": query,
            "tag": tag,
            "can_operate": can_operate(request.user),
            "chart_query": "&".join(f"id={pk}" for pk in chart_ids),
        },
    )


def checkpoint_detail(request, name: str):
    from audits.models import Audit
    from audits.report import family_trend, report_card

    checkpoint = get_object_or_404(
        Checkpoint.objects.for_user(request.user).select_related("parent"), name=name
    )
    # Audits of it, and the audits that trained or attacked it and evaluated it beside its base.
    audits = (
        Audit.objects.filter(Q(checkpoint=checkpoint) | Q(runs__checkpoint=checkpoint))
        .distinct()
        .select_related("checkpoint", "created_by")
        .order_by("-created_at")[:20]
    )
    training = checkpoint.training or {}
    curves = training.get("curves") or {}
    family = checkpoint.family()
    trend = family_trend(family)
    children: dict[int | None, list[Checkpoint]] = {}
    for member in family:
        children.setdefault(member.parent_id, []).append(member)
    return render(
        request,
        "registry/detail.html",
        {
            "checkpoint": checkpoint,
            "card": report_card(checkpoint),
            "audits": audits,
            "can_operate": can_operate(request.user),
            "tree": _tree(family[0], children),
            "trend": trend if len(trend) > 1 else [],  # a trend needs two evaluated members
            "aliases": checkpoint.aliases.order_by("name"),
            "alias_form": AliasForm(),
            "training": training,
            "final_loss": (curves.get("loss") or [None])[-1],
        },
    )


def _tree(node: Checkpoint, children: dict) -> dict:
    """A nested lineage: each checkpoint with its variants."""
    return {"checkpoint": node, "variants": [_tree(c, children) for c in children.get(node.pk, [])]}


@require_POST
@operator_required
def checkpoint_alias(request, name: str):
    checkpoint = get_object_or_404(Checkpoint.objects.for_user(request.user), name=name)
    form = AliasForm(request.POST)
    if form.is_valid():
        alias, created = Alias.objects.update_or_create(
            name=form.cleaned_data["name"],
            defaults={"checkpoint": checkpoint, "set_by": request.user},
        )
        record(Action.ALIAS, checkpoint, details={"alias": alias.name})
        messages.success(request, f"Alias {alias.name} now points to {checkpoint.name}.")
    else:
        messages.error(request, " ".join(e for errors in form.errors.values() for e in errors))
    return redirect(checkpoint)


@operator_required
def checkpoint_register_view(request):
    form = RegisterCheckpointForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        checkpoint = form.save(user=request.user)
        if checkpoint is not None:
            messages.success(request, f"Registered {checkpoint.name}.")
            return redirect(checkpoint)
    return render(
        request,
        "registry/register.html",
        {"form": form, "roots": settings.KEEL_CHECKPOINT_ROOTS},
    )
