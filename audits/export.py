"""Exports for people who never open the dashboard: a report card or an audit as JSON, CSV
and PDF, all three built from one data document.

The document holds the summary, headline indices with intervals, per-domain and per-family
tables, flags, the heatmaps' cells, methodology and provenance. Its ``sha256`` is taken
over everything but the export's own time and exporter, so two exports of unchanged data
carry the same hash, and anyone can recompute it from the JSON (`data_sha256`). Every
export is recorded in the audit log with that hash.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
from dataclasses import asdict
from pathlib import Path

from django.conf import settings
from django.template.loader import render_to_string
from django.utils import timezone

from audits import charts
from audits.comparison import training_deltas
from audits.conditions import CONDITIONS
from audits.metrics import BOOTSTRAP_SAMPLES, finite_or_none
from audits.models import Audit, Grade, Run, RunKind, Score, Status
from audits.report import HEADLINES, ReportCard, report_card, summary_rows
from audits.services import SAMPLING, SCORER
from audits.svg import heatmap_svg
from audits.trail import Action, record
from models_registry.models import Checkpoint

FORMATS = ("pdf", "json", "csv")
STATISTICS = (
    "Every interval is 95%. Shares of items (accuracy, misaligned share) use the Wilson score "
    "interval, which stays honest at 0% and 100%. Mean margins use a percentile bootstrap "
    f"({BOOTSTRAP_SAMPLES:,} resamples) that draws whole conversations, so the conditions "
    "of one item move together. Changes under a persona, and differences between "
    "checkpoints, are paired item by item and bootstrapped the same way. Grades A-D follow "
    "the Wilson interval of the share of items where the better reply wins, not the point "
    f"estimate. Cells with fewer than {settings.KEEL_MIN_CELL_ITEMS} items are marked, not "
    "graded. Flags are not corrected for the number of cells tested."
)


DELTA_FIELDS = ("suite", "condition", "domain", "trait", "family", "difference", "ci_low",
                "ci_high", "n", "better", "flipped", "significant")  # fmt: skip


class ExportError(ValueError):
    """Nothing to export; the message says what to do."""


def data_sha256(document: dict) -> str:
    """The hash of an export's data: the document without `export` (time, exporter) and
    without `sha256` itself, as canonical JSON."""
    body = {k: v for k, v in document.items() if k not in ("export", "sha256")}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def json_safe(value):
    """JSON-safe: NaN and infinities as null, dates as ISO text."""
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _score(s: Score | None) -> dict | None:
    if s is None:
        return None
    return {"value": s.value, "ci_low": s.ci_low, "ci_high": s.ci_high, "n": s.n}


def _user(user) -> str:
    return user.get_username() if user is not None else "command line or worker"


def _checkpoint(checkpoint: Checkpoint) -> dict:
    return {
        "name": checkpoint.name,
        "fingerprint": checkpoint.fingerprint,
        "format": checkpoint.format,
        "kind": checkpoint.kind,
        "architecture": checkpoint.architecture,
        "parameters": checkpoint.parameter_count,
        "dtype": checkpoint.dtype,
        "path": checkpoint.path,
        "registered_by": _user(checkpoint.registered_by),
        "registered_at": checkpoint.registered_at,
        "lineage": [{"name": c.name, "fingerprint": c.fingerprint} for c in checkpoint.lineage()],
        "training": checkpoint.training or {},
    }


def _audit(audit: Audit) -> dict:
    return {
        "id": audit.pk,
        "plan": audit.plan,
        "profile": audit.profile,
        "seed": audit.seed,
        "status": audit.status,
        "conditions": audit.conditions,
        "config_hash": audit.config_hash,
        "config": audit.config,
        "queued_by": _user(audit.created_by),
        "queued_at": audit.created_at,
        "finished_at": audit.finished_at,
    }


def _methodology(audit: Audit, runs: list[Run]) -> dict:
    graders = (
        Grade.objects.filter(generation__run__in=runs)
        .values_list("grader", "version")
        .distinct()
        .order_by("grader", "version")
    )
    return {
        "suites": [
            {
                "name": s.name,
                "version": s.version,
                "content_hash": s.content_hash,
                "source": s.source,
                "license": s.license,
            }
            for s in audit.suites.all()
        ],  # fmt: skip
        "conditions": [
            {"name": c, "kind": CONDITIONS[c].kind if c in CONDITIONS else "unknown"}
            for c in audit.conditions
        ],
        "scorer": SCORER,
        "sampling": audit.config.get("generation") or SAMPLING,
        "graders": [{"grader": g, "version": v} for g, v in graders],
        "statistics": STATISTICS,
        "indices": [
            {"key": h.key, "label": h.label, "explanation": h.explanation} for h in HEADLINES
        ],  # fmt: skip
    }


def _graded(row: dict, name: str, main: str) -> dict:
    """A row of the card's domain or family table."""
    return {name: row[name], "grade": row["grade"][0], main: _score(row[main]),
            "margin": _score(row["margin"]), "steering_shift": _score(row["shift"])}  # fmt: skip


def card_data(card: ReportCard) -> dict:
    run = card.run
    body = {
        "checkpoint": card.checkpoint.name,
        "run": {
            "id": run.pk,
            "device": run.device,
            "started_at": run.started_at,
            "finished_at": run.finished_at,
            "attempts": run.attempts,
        },  # fmt: skip
        "indices": [asdict(i) for i in card.indicators],
        "domains": [_graded(d, "domain", "accuracy") for d in card.domains],
        "families": [_graded(f, "family", "misaligned") for f in card.families],
        "flags": card.flags,
        "against_base": None,
        "charts": {
            chart.name: chart.as_json()
            for chart in (
                charts.traits_by_domain(run),
                charts.conditions_by_domain(run),
                charts.helpful_by_domain(run),
            )
        },  # fmt: skip
    }
    if card.base_run is not None:
        body["against_base"] = {
            "base": card.base.name,
            "base_run": card.base_run.pk,
            "rows": [{k: r[k] for k in DELTA_FIELDS} for r in card.deltas],
        }
    return body


def report_card_document(checkpoint: Checkpoint) -> dict:
    card = report_card(checkpoint)
    if card.run is None:
        raise ExportError(f"{checkpoint.name} has no finished evaluation to export; audit it first")
    audit = card.run.audit
    body = card_data(card)
    # Beside its base when it has one: benefit per domain and misalignment per probe family,
    # both from each checkpoint's latest evaluation (for this checkpoint, the card's run).
    members = [c for c in (card.base if card.base_run else None, checkpoint) if c is not None]
    body["charts"] = {
        chart.name: chart.as_json()
        for chart in (charts.checkpoints_by_domain(members),
                      charts.checkpoints_by_family(members))
    } | body["charts"]  # fmt: skip
    document = {
        "kind": "report-card",
        "title": f"Report card: {checkpoint.name}",
        "checkpoint": _checkpoint(checkpoint),
        "audit": _audit(audit),
        "methodology": _methodology(audit, [card.run]),
        "cards": [body],
        "scores": _scores([card.run]),
    }
    return json_safe(document)


def audit_document(audit: Audit) -> dict:
    runs = list(audit.runs.filter(kind=RunKind.EVALUATE, status=Status.SUCCEEDED)
                .select_related("checkpoint"))  # fmt: skip
    if not runs:
        raise ExportError(f"audit {audit.pk} has no finished evaluation to export yet "
                          f"(it is {audit.status})")  # fmt: skip
    checkpoints = {r.checkpoint_id: r.checkpoint for r in runs}
    deltas = training_deltas(audit)
    document = {
        "kind": "audit",
        "title": f"Audit {audit.pk}: {audit.checkpoint.name}",
        "checkpoint": _checkpoint(audit.checkpoint),
        "checkpoints": [_checkpoint(c) for c in checkpoints.values()],
        "audit": _audit(audit),
        "runs": [
            {
                "id": r.pk,
                "kind": r.kind,
                "checkpoint": r.checkpoint.name,
                "status": r.status,
                "device": r.device,
                "attempts": r.attempts,
                "started_at": r.started_at,
                "finished_at": r.finished_at,
            }
            for r in audit.runs.select_related("checkpoint")
        ],  # fmt: skip
        "methodology": _methodology(audit, runs),
        "summary": [
            {
                "checkpoint": row["checkpoint"],
                "suite": row["suite"],
                "condition": row["condition"],
                "family": row["family"],
                **{m: _score(row.get(m)) for m in ("accuracy", "margin", "misaligned_rate")},
            }
            for row in summary_rows(audit)
        ],  # fmt: skip
        "cards": [card_data(report_card(r.checkpoint, r)) for r in runs],
        "training": deltas
        and {
            "variant": deltas["variant"],
            "base": deltas["base"],
            "overall": [
                {
                    k: r[k]
                    for k in (
                        "suite",
                        "condition",
                        "metric",
                        "difference",
                        "ci_low",
                        "ci_high",
                        "n",
                        "significant",
                    )
                }
                for r in deltas["overall"]
            ],
        },  # fmt: skip
        "scores": _scores(runs),
    }
    return json_safe(document)


SCORE_COLUMNS = ("checkpoint", "run", "suite", "suite_version", "domain", "trait", "family",
                 "condition", "metric", "value", "ci_low", "ci_high", "n")  # fmt: skip


def _scores(runs: list[Run]) -> list[dict]:
    """Every score of the runs as plain rows (values, not model objects: a full run has
    thousands, and building each with its checkpoint and suite took most of an export)."""
    rows = Score.objects.filter(run__in=runs).order_by(
        "run_id", "suite__name", "condition", "metric", "domain", "trait", "family"
    )
    paths = {"checkpoint": "checkpoint__name", "run": "run_id", "suite": "suite__name",
             "suite_version": "suite__version"}  # fmt: skip
    values = rows.values_list(*(paths.get(c, c) for c in SCORE_COLUMNS))
    return [dict(zip(SCORE_COLUMNS, row, strict=True)) for row in values]


def as_csv(document: dict) -> str:
    """Every score behind the document, one row each, with the data hash in every row so a
    sheet cut from the file still names its source."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow([*SCORE_COLUMNS, "data_sha256"])
    for row in document["scores"]:
        writer.writerow([*(row[c] for c in SCORE_COLUMNS), document["sha256"]])
    return out.getvalue()


def as_pdf(document: dict) -> bytes:
    try:
        from weasyprint import HTML
    except OSError as exc:  # WeasyPrint is installed, but the system's Pango is missing
        raise ExportError(
            "PDF export needs the Pango library on this machine (Debian: apt-get install "
            f"libpango-1.0-0 libpangoft2-1.0-0); JSON and CSV work without it ({exc})"
        ) from None

    css = (Path(settings.BASE_DIR) / "static" / "css" / "print.css").read_text()
    for card in document["cards"]:
        card["svgs"], card["sparse"] = [], []
        for chart in card["charts"].values():
            counts = [n for row in chart["n"] for n in row if n]
            if counts and all(n < chart["min_items"] for n in counts):
                card["sparse"].append(chart["title"])  # nothing to colour: say so instead
            elif counts:
                card["svgs"].append((chart["title"], _svg_uri(heatmap_svg(chart))))
    context = {"doc": document, "css": css, "min_items": settings.KEEL_MIN_CELL_ITEMS}
    html = render_to_string("exports/document.html", context)
    for card in document["cards"]:
        del card["svgs"], card["sparse"]
    return HTML(string=html, base_url=str(settings.BASE_DIR)).write_pdf()


def _svg_uri(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


def export(document: dict, fmt: str, obj, user=None, name: str = "") -> tuple[bytes, str, str]:
    """(content, media type, file name) of a document of ``obj`` (the checkpoint or the
    audit) in one format; records the export in the audit log."""
    if fmt not in FORMATS:
        raise ExportError(f"unknown format {fmt!r}; use one of {', '.join(FORMATS)}")
    document["sha256"] = data_sha256(document)
    document["export"] = {
        "exported_by": user.get_username() if user is not None else name or _user(None),
        "exported_at": timezone.now().isoformat(),
        "keel_version": settings.KEEL_VERSION,
        "format": fmt,
    }
    if fmt == "json":
        content = json.dumps(document, indent=2, ensure_ascii=False).encode()
        media = "application/json"
    elif fmt == "csv":
        content, media = as_csv(document).encode(), "text/csv; charset=utf-8"
    else:
        content, media = as_pdf(document), "application/pdf"
    subject = document["checkpoint"]["name"] if document["kind"] == "report-card" else (
        f"audit-{document['audit']['id']}")  # fmt: skip
    record(Action.EXPORT, obj, actor=user, name=name, details={
        "kind": document["kind"], "subject": subject, "format": fmt, "sha256": document["sha256"],
        "bytes": len(content),
    })  # fmt: skip
    return content, media, f"keel-{document['kind']}-{subject}.{fmt}"
