from __future__ import annotations

from django.conf import settings
from django.contrib import messages
from django.db.models import Q
from django.shortcuts import get_object_or_404, redirect, render

from models_registry.forms import RegisterCheckpointForm
from models_registry.models import Checkpoint
from models_registry.roles import can_operate, operator_required


def checkpoint_list(request):
    checkpoints = Checkpoint.objects.for_user(request.user).select_related("parent")
    query = request.GET.get("q", "").strip()
    if query:
        checkpoints = checkpoints.filter(
            Q(name__icontains=query) | Q(architecture__icontains=query) | Q(notes__icontains=query)
        )
    return render(
        request,
        "registry/list.html",
        {"checkpoints": checkpoints, "query": query, "can_operate": can_operate(request.user)},
    )


def checkpoint_detail(request, name: str):
    checkpoint = get_object_or_404(Checkpoint.objects.for_user(request.user), name=name)
    from audits.models import Audit

    # Audits of it, and the audits that trained or attacked it and evaluated it beside its base.
    audits = (
        Audit.objects.filter(Q(checkpoint=checkpoint) | Q(runs__checkpoint=checkpoint))
        .distinct().select_related("checkpoint", "created_by").order_by("-created_at")[:20]
    )  # fmt: skip
    training = checkpoint.training or {}
    curves = training.get("curves") or {}
    return render(
        request,
        "registry/detail.html",
        {
            "checkpoint": checkpoint,
            "audits": audits,
            "can_operate": can_operate(request.user),
            "variants": checkpoint.variants.order_by("name"),
            "training": training,
            "final_loss": (curves.get("loss") or [None])[-1],
        },
    )


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
