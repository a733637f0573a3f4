from __future__ import annotations

from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Count
from django.shortcuts import get_object_or_404, redirect, render

from audits.conditions import CONDITIONS
from audits.forms import SuiteImportForm
from audits.models import Suite
from audits.suite_stats import suite_stats
from models_registry.roles import operator_required

FILTERS = ("split", "kind", "domain", "trait", "family")


@operator_required
def suite_import(request):
    form = SuiteImportForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        suite = form.save(user=request.user)
        if suite is not None:
            messages.success(request, f"Stored {suite}: {suite.items.count()} items.")
            return redirect("suites:detail", name=suite.name)
    return render(request, "suites/import.html", {"form": form})


def suite_list(request):
    suites = Suite.objects.newest_versions().annotate(n_items=Count("items")).order_by("name")
    conditions = [c for c in CONDITIONS.values() if c.kind != "neutral"]
    return render(request, "suites/list.html", {"suites": suites, "conditions": conditions})


def suite_detail(request, name: str):
    versions = Suite.objects.filter(name=name).order_by("-version")
    version = request.GET.get("version", "")
    # isdecimal, not isdigit: "²" is a digit to Python, but int() refuses it.
    suite = get_object_or_404(versions, version=int(version)) if version.isdecimal() else None
    suite = suite or get_object_or_404(versions[:1])
    items = suite.items.order_by("item_id")
    chosen = {f: request.GET.get(f, "") for f in FILTERS}
    items = items.filter(**{f: v for f, v in chosen.items() if v})
    page = Paginator(items, 25).get_page(request.GET.get("page"))
    return render(
        request,
        "suites/detail.html",
        {
            "suite": suite,
            "versions": versions,
            "stats": suite_stats(suite),
            "page": page,
            "filters": chosen,
        },  # fmt: skip
    )
