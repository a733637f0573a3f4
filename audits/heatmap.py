"""Data for the domains x traits heatmap of one audit."""

from __future__ import annotations

from audits.conditions import NEUTRAL
from audits.metrics import finite_or_none
from audits.models import DOMAINS, TRAITS, Audit, Metric


def heatmap_data(audit: Audit, metric: str, checkpoint=None) -> dict:
    """One checkpoint's cells: the audit's own checkpoint unless another (its variant) is named."""
    scores = audit.scores.filter(
        metric=metric, condition=NEUTRAL, family="", checkpoint=checkpoint or audit.checkpoint
    )
    cells = {(s.domain, s.trait): s for s in scores.exclude(domain="").exclude(trait="")}
    z, low, high, n = [], [], [], []
    for trait in TRAITS:
        row = [cells.get((domain, trait)) for domain in DOMAINS]
        z.append([s.value if s else None for s in row])
        low.append([finite_or_none(s.ci_low) if s else None for s in row])
        high.append([finite_or_none(s.ci_high) if s else None for s in row])
        n.append([s.n if s else 0 for s in row])
    return {
        "metric": metric,
        "label": Metric(metric).label,
        "domains": list(DOMAINS),
        "traits": list(TRAITS),
        "z": z,
        "ci_low": low,
        "ci_high": high,
        "n": n,
        "centre": 0.5 if metric == Metric.ACCURACY else 0.0,
    }


def summary_rows(audit: Audit) -> list[dict]:
    """Per suite and condition: overall and per misalignment family, accuracy and margin."""
    scores = audit.scores.filter(domain="", trait="").select_related("suite", "checkpoint")
    cells: dict[tuple, dict] = {}
    for s in scores.order_by("run_id", "suite__name", "condition", "family"):
        row = cells.setdefault(
            (s.checkpoint.name, s.suite.name, s.condition, s.family),
            {"checkpoint": s.checkpoint.name, "suite": s.suite.name, "condition": s.condition,
             "family": s.family or "all items"},
        )  # fmt: skip
        row[s.metric] = s
    return list(cells.values())
