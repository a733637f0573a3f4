from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import get_user_model
from django.core.paginator import Paginator
from django.db.models import Count, Exists, OuterRef, Prefetch, Q
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from audits import charts, progress
from audits.comparison import persistence_deltas, reading_order, training_deltas
from audits.conditions import CONDITIONS, system_prompt
from audits.forms import AuditForm
from audits.models import (
    DOMAINS,
    FAMILIES,
    FINISHED,
    TRAITS,
    Audit,
    Generation,
    Grade,
    ItemResult,
    Run,
    Status,
    Worker,
)
from audits.report import base_run_for, cached_comparison, latest_runs, summary_rows
from audits.services import audit_cancel, audit_create, audit_retry
from models_registry.models import Checkpoint
from models_registry.roles import operator_required

PERIODS = {"1": "the last day", "7": "the last 7 days", "30": "the last 30 days"}
ITEMS_PER_PAGE = 25


def _get_audit(request, audit_id: int) -> Audit:
    return get_object_or_404(Audit.objects.for_user(request.user), pk=audit_id)


def _whole_number(text: str) -> int | None:
    """An id from a query string, or None: isdigit() is true of "²", which int() refuses, and
    SQLite cannot compare a number past 64 bits."""
    return int(text) if text.isdecimal() and len(text) <= 18 else None


def _get_run(request, run_id) -> Run:
    try:
        run_id = int(run_id)
    except (TypeError, ValueError):
        raise charts.ChartError("name a run with run=ID (a whole number)") from None
    audits = Audit.objects.for_user(request.user)
    run = Run.objects.filter(pk=run_id, audit__in=audits).select_related("checkpoint", "audit")
    found = run.first()
    if found is None:
        raise charts.ChartError(f"there is no run {run_id} you can read")
    return found


def audit_list(request):
    audits = Audit.objects.for_user(request.user).select_related("checkpoint", "created_by")
    filters = {k: request.GET.get(k, "").strip() for k in ("status", "checkpoint", "who", "since")}
    if filters["status"] in Status.values:
        audits = audits.filter(status=filters["status"])
    if filters["checkpoint"]:
        audits = audits.filter(checkpoint__name=filters["checkpoint"])
    if filters["who"] == "-":
        audits = audits.filter(created_by=None)
    elif filters["who"]:
        audits = audits.filter(created_by__username=filters["who"])
    if filters["since"] in PERIODS:
        since = timezone.now() - timedelta(days=int(filters["since"]))
        audits = audits.filter(created_at__gte=since)
    page = Paginator(audits, 50).get_page(request.GET.get("page"))
    return render(
        request,
        "audits/list.html",
        {
            "audits": page,
            "page": page,
            "filters": filters,
            "statuses": Status.values,
            "periods": PERIODS,
            "checkpoint_names": Checkpoint.objects.order_by("name").values_list("name", flat=True),
            "users": get_user_model().objects.filter(audit__isnull=False).distinct()
            .order_by("username").values_list("username", flat=True),
            "query": "&".join(f"{k}={v}" for k, v in filters.items() if v),
        },
    )  # fmt: skip


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
                priority=data["priority"], samples=data["samples"], judge=data["judge"],
                reward_model=data["reward_model"],
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
            "metrics": [(m.value, m.label) for m in charts.CELL_METRICS],
            "summary": summary_rows(audit),
            "several_checkpoints": audit.runs.values("checkpoint").distinct().count() > 1,
            "deltas": training_deltas(audit),
            "persistence": persistence_deltas(audit),
        },
    )


@require_POST
@operator_required
def audit_cancel_view(request, audit_id: int):
    audit = _get_audit(request, audit_id)
    if audit.status in FINISHED or not audit_cancel(audit, request.user):
        messages.info(request, f"Audit {audit.pk} has already {audit.status}.")
    else:
        messages.success(request, "Cancelling: the worker stops after its current batch.")
    return redirect(audit)


@require_POST
@operator_required
def audit_retry_view(request, audit_id: int):
    audit = _get_audit(request, audit_id)
    retried = audit_retry(audit, request.user)
    if retried:
        messages.success(
            request, f"Queued {retried} run(s) again; each resumes from what it had stored."
        )
    else:
        messages.info(request, "Nothing to retry: only failed or cancelled runs are retried.")
    return redirect(audit)


def chart_data(request, name: str, fmt: str):
    """One chart's cells as JSON (drawn by the page) or CSV (downloaded)."""
    try:
        chart = _chart(request, name)
    except charts.ChartError as exc:
        return JsonResponse({"error": f"{exc}."}, status=400)
    if fmt == "csv":
        response = HttpResponse(chart.as_csv(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="keel-{name}.csv"'
        return response
    response = JsonResponse(chart.as_json())
    if request.GET.get("download"):
        response["Content-Disposition"] = f'attachment; filename="keel-{name}.json"'
    return response


def _chart(request, name: str) -> charts.Chart:
    visible = Checkpoint.objects.for_user(request.user)
    if name == "traits-domains":
        return charts.traits_by_domain(
            _get_run(request, request.GET.get("run")), request.GET.get("metric", "margin")
        )
    if name == "conditions-domains":
        return charts.conditions_by_domain(_get_run(request, request.GET.get("run")))
    if name == "helpful-domains":
        return charts.helpful_by_domain(_get_run(request, request.GET.get("run")))
    if name in ("checkpoints-domains", "checkpoints-families"):
        ids = request.GET.getlist("id")
        if not all(_whole_number(i) is not None for i in ids):
            raise charts.ChartError("id= takes checkpoint ids (whole numbers)")
        chosen = visible.filter(pk__in=ids) if ids else visible.order_by("-registered_at")[:40]
        build = charts.checkpoints_by_domain if name == "checkpoints-domains" else (
            charts.checkpoints_by_family)  # fmt: skip
        return build(list(chosen))
    if name == "transfer":
        audits = Audit.objects.for_user(request.user).filter(
            plan="train-and-evaluate", status=Status.SUCCEEDED
        )
        return charts.transfer_matrix(audits.order_by("-created_at")[:50])
    raise charts.ChartError(
        f"there is no chart {name!r}; charts: traits-domains, conditions-domains, "
        "helpful-domains, checkpoints-domains, checkpoints-families, transfer"
    )


def item_results(request):
    """The items behind a heatmap cell: conversation, both replies, their log-likelihoods,
    the choice, sampled replies with every grade; filtered to lost or flipped items."""
    try:
        run = _get_run(request, request.GET.get("run"))
        against = _get_run(request, request.GET["against"]) if request.GET.get("against") else None
    except charts.ChartError as exc:
        return render(request, "audits/items.html", {"error": f"{exc}."}, status=400)
    if against is None and run.checkpoint.parent_id is not None:
        against = base_run_for(run, run.checkpoint.parent)
    where = {k: request.GET.get(k, "") for k in ("suite", "domain", "trait", "family", "condition")}
    results = ItemResult.objects.filter(run=run).select_related("item", "item__suite")
    suite_id = _whole_number(where["suite"])
    if suite_id is not None:
        results = results.filter(item__suite_id=suite_id)
    for key in ("domain", "trait", "family"):
        if where[key]:
            results = results.filter(**{f"item__{key}": where[key]})
    if where["condition"]:
        results = results.filter(condition=where["condition"])
    show = request.GET.get("show", "all")
    if show == "lost":
        results = results.filter(won=False)
    elif show == "flipped" and against is not None:
        other = ItemResult.objects.filter(
            run=against, item=OuterRef("item"), condition=OuterRef("condition")
        ).exclude(won=OuterRef("won"))
        results = results.filter(Exists(other))
    page = Paginator(results.order_by("item__item_id", "condition"), ITEMS_PER_PAGE).get_page(
        request.GET.get("page")
    )
    rows = list(page.object_list)
    theirs = {}
    if against is not None:
        theirs = {
            (r.item_id, r.condition): r
            for r in ItemResult.objects.filter(
                run=against, item__in=[r.item_id for r in rows],
                condition__in={r.condition for r in rows},
            )
        }  # fmt: skip
    generations = Generation.objects.filter(
        run=run, item__in=[r.item_id for r in rows]
    ).prefetch_related(Prefetch("grades", queryset=Grade.objects.order_by("grader", "id")))
    sampled: dict[tuple, list[Generation]] = {}
    for g in generations.order_by("sample"):
        sampled.setdefault((g.item_id, g.condition), []).append(g)
    for r in rows:
        r.against = theirs.get((r.item_id, r.condition))
        r.generations = sampled.get((r.item_id, r.condition), [])
        r.system = system_prompt(r.condition) if r.condition in CONDITIONS else None
    query = request.GET.copy()
    query.pop("page", None)
    query.pop("show", None)
    return render(
        request,
        "audits/items.html",
        {
            "run": run, "against": against, "page": page, "rows": rows, "show": show,
            "where": {k: v for k, v in where.items() if v and k != "suite"},
            "query": query.urlencode(), "choices": {"domain": DOMAINS, "trait": TRAITS,
                                                    "family": FAMILIES},
        },
    )  # fmt: skip


def compare(request):
    """Two checkpoints side by side: their latest evaluations paired item by item."""
    visible = Checkpoint.objects.for_user(request.user)
    runs = latest_runs(visible)
    names = sorted(r.checkpoint.name for r in runs.values())
    a, b = request.GET.get("a", ""), request.GET.get("b", "")
    context = {"names": names, "a": a, "b": b}
    if a and b:
        by_name = {r.checkpoint.name: r for r in runs.values()}
        missing = [n for n in (a, b) if n not in by_name]
        if missing:
            context["error"] = (
                f"{', '.join(missing)} has no finished evaluation to compare; pick checkpoints "
                "from the list, or audit it first."
            )
        elif a == b:
            context["error"] = "Pick two different checkpoints."
        else:
            first, second = by_name[a], by_name[b]
            rows = cached_comparison(first, second)
            # Each suite's condition rows over all items, each pair counted once.
            whole = [r for r in rows if not (r["domain"] or r["trait"] or r["family"])
                     and r["condition"] not in ("adversarial", "helpful")]  # fmt: skip
            context |= {
                "first": first,
                "second": second,
                "overall": sorted(
                    (r for r in rows if not r["domain"] and r["metric"] == "margin"),
                    key=reading_order,
                ),
                "by_domain": sorted(
                    (r for r in rows if r["domain"] and not r["trait"] and not r["family"]
                     and r["metric"] == "margin" and r["condition"] == "neutral"),
                    key=lambda r: (r["suite"], DOMAINS.index(r["domain"])),
                ),
                "flipped": sum(r["flipped"] for r in whole),
                "paired": sum(r["n"] for r in whole),
            }  # fmt: skip
    status = 400 if context.get("error") else 200
    return render(request, "audits/compare.html", context, status=status)


def workers(request):
    """Worker nodes, their devices and what runs on each, and how deep the queues are."""
    from gpu_tasks.reaper import QUEUES, broker_holdings
    from gpu_tasks.workers import SEEN_EVERY, node_of

    now = timezone.now()
    held = Run.objects.filter(status__in=[Status.QUEUED, Status.RUNNING]).exclude(worker="")
    by_node: dict[str, list[Run]] = {}
    for run in held.select_related("audit", "checkpoint").order_by("started_at"):
        by_node.setdefault(node_of(run.worker), []).append(run)
    recent = Worker.objects.filter(Q(stopped_at=None) | Q(stopped_at__gte=now - timedelta(days=1)))
    nodes = []
    for worker in recent:
        if worker.stopped_at:
            state = "stopped"
        elif now - worker.last_seen > timedelta(seconds=3 * SEEN_EVERY):
            state = "not answering"
        else:
            state = "up"
        nodes.append({"worker": worker, "state": state, "runs": by_node.pop(worker.name, [])})
    waiting = dict(
        Run.objects.filter(status=Status.QUEUED, worker="")
        .values_list("kind")
        .annotate(n=Count("pk"))
    )
    broker_error = ""
    try:
        holdings = broker_holdings()
    except Exception as exc:  # the page must show even when the broker is down
        holdings, broker_error = None, f"{type(exc).__name__}: {exc}"
    queues = [
        {"name": queue, "runs": waiting.get(kind, 0),
         "messages": holdings.depth.get(queue) if holdings else None}
        for kind, queue in QUEUES.items()
    ]  # fmt: skip
    return render(request, "audits/workers.html", {
        "nodes": nodes, "elsewhere": [r for runs in by_node.values() for r in runs],
        "queues": queues, "broker_error": broker_error, "stale_after": settings.KEEL_STALE_AFTER,
    })  # fmt: skip
