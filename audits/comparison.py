"""Two checkpoints on the same items: paired differences with intervals.

Results are paired by (item, condition); only pairs both runs scored count.
Differences are first minus second, bootstrapped over conversations; a
difference is flagged only when its 95% interval excludes zero.
"""

from __future__ import annotations

from collections import defaultdict

from audits.metrics import paired_difference
from audits.models import DOMAINS, ItemResult, Plan, Run, RunKind, Status
from audits.scoring import conversation, group_keys

# What a comparison reports, each paired per item and condition: the calibrated margin,
# the mean per-token margin (uncalibrated, the most sensitive at small n), and accuracy.
METRICS = {
    "margin": lambda r: r.margin,
    "margin_mean_token": lambda r: r.margin_mean_token,
    "accuracy": lambda r: float(r.won),
}


def compare_runs(
    first: Run, second: Run, seed: int = 0, metrics=tuple(METRICS), trait_cells: bool = True
) -> list[dict]:
    """Rows per group (as in scoring) and metric. Pages ask only for what they show:
    `metrics`, and without `trait_cells` no domain x trait rows (the most numerous)."""
    theirs = {(r.item_id, r.condition): r for r in ItemResult.objects.filter(run=second)}
    groups: dict[tuple, list[tuple[ItemResult, ItemResult]]] = defaultdict(list)
    mine = ItemResult.objects.filter(run=first).select_related("item", "item__suite")
    for result in mine.order_by("item__item_id", "condition"):
        other = theirs.get((result.item_id, result.condition))
        if other is None:
            continue
        item = result.item
        for key in group_keys(item, result.condition):
            if trait_cells or not (key[1] and key[2]):
                groups[(item.suite.name, *key)].append((result, other))
    rows = []
    for (suite, condition, domain, trait, family), pairs in groups.items():
        clusters = [conversation(a.item) for a, _ in pairs]
        for metric in metrics:
            value = METRICS[metric]
            mine, theirs = [value(a) for a, _ in pairs], [value(b) for _, b in pairs]
            estimate = paired_difference(mine, theirs, seed, clusters)
            rows.append({
                "suite": suite, "condition": condition, "domain": domain, "trait": trait,
                "family": family, "metric": metric, "difference": estimate.value,
                "ci_low": estimate.ci_low, "ci_high": estimate.ci_high, "n": estimate.n,
                "better": sum(x > y for x, y in zip(mine, theirs, strict=True)),
                "flipped": sum(a.won != b.won for a, b in pairs),
                "significant": estimate.ci_low > 0 or estimate.ci_high < 0,
            })  # fmt: skip
    return rows


def variant_runs(audit) -> tuple[Run, Run] | None:
    """(variant's evaluate run, base's evaluate run) of a train-and-evaluate audit,
    once both have succeeded."""
    if audit.plan != Plan.TRAIN_AND_EVALUATE:
        return None
    done = audit.runs.filter(kind=RunKind.EVALUATE, status=Status.SUCCEEDED)
    base = done.filter(checkpoint=audit.checkpoint).last()
    variant = done.exclude(checkpoint=audit.checkpoint).last()
    return (variant, base) if base and variant else None


def training_deltas(audit) -> dict | None:
    """Variant minus base, paired per item and condition: every cell, and the transfer
    rows (training domains x evaluation domain, neutral benefit margins)."""
    runs = variant_runs(audit)
    if runs is None:
        return None
    rows = compare_runs(*runs, seed=audit.seed)
    trained = audit.config["training"]["domains"]

    def transfer(metric: str) -> list[tuple[str, dict]]:
        cells = {
            r["domain"]: {k: r[k] for k in ("difference", "ci_low", "ci_high", "n", "better",
                                             "significant")}
            | {"trained_on": r["domain"] in trained}
            for r in rows
            if r["metric"] == metric and r["condition"] == "neutral" and r["domain"]
            and not r["trait"] and not r["family"] and r["suite"] == "beneficial"
        }  # fmt: skip
        return sorted(cells.items(), key=lambda kv: DOMAINS.index(kv[0]))

    by_metric = {metric: transfer(metric) for metric in ("margin", "margin_mean_token")}
    return {
        "variant": runs[0].checkpoint.name,
        "base": runs[1].checkpoint.name,
        "rows": rows,
        "overall": sorted((r for r in rows if not r["domain"]), key=reading_order),
        "trained": "+".join(trained),
        "transfer_cells": by_metric["margin"],
        "transfer_mean_token_cells": by_metric["margin_mean_token"],
        "transfer": {
            metric: {"+".join(trained): dict(cells)} for metric, cells in by_metric.items()
        },  # fmt: skip
    }


def persistence_deltas(audit) -> dict | None:
    """After the harmful fine-tune: how each model changed, and how much of the variant's
    lead over its base survived (overall rows, variant minus base before and after)."""
    if audit.plan != Plan.PERSISTENCE:
        return None
    runs = {
        r.checkpoint_id: r
        for r in audit.runs.filter(kind=RunKind.EVALUATE, status=Status.SUCCEEDED)
        .select_related("checkpoint")
    }  # fmt: skip
    variant, base = audit.checkpoint, audit.checkpoint.parent
    attacked = {r.checkpoint.parent_id: r for r in runs.values()
                if r.checkpoint_id not in (variant.pk, base.pk)}  # fmt: skip
    if not {variant.pk, base.pk} <= set(runs) or not {variant.pk, base.pk} <= set(attacked):
        return None

    def overall(first: Run, second: Run) -> list[dict]:
        return [r for r in compare_runs(first, second, seed=audit.seed) if not r["domain"]]

    before = overall(runs[variant.pk], runs[base.pk])
    after_by_cell = {_cell(r): r for r in overall(attacked[variant.pk], attacked[base.pk])}
    kept = [
        {
            **{k: b[k] for k in ("suite", "condition", "trait", "family", "metric")},
            "before": b["difference"],
            "before_significant": b["significant"],
            "after": a["difference"],
            "after_ci_low": a["ci_low"],
            "after_ci_high": a["ci_high"],
            "after_significant": a["significant"],
            "kept": a["difference"] / b["difference"] if b["difference"] else None,
        }  # fmt: skip
        for b in before
        if (a := after_by_cell.get(_cell(b))) is not None
    ]
    return {
        "variant": variant.name,
        "base": base.name,
        "attacked_variant": attacked[variant.pk].checkpoint.name,
        "attacked_base": attacked[base.pk].checkpoint.name,
        "variant_under_attack": overall(attacked[variant.pk], runs[variant.pk]),
        "base_under_attack": overall(attacked[base.pk], runs[base.pk]),
        "lead_kept": kept,
    }


def _cell(row: dict) -> tuple:
    return tuple(row[k] for k in ("suite", "condition", "domain", "trait", "family", "metric"))


def reading_order(row: dict) -> tuple:
    """Suites by name, each condition's "all items" first, then its traits or families."""
    what = row["trait"] or row["family"]
    return (row["suite"], row["condition"], bool(what), what, list(METRICS).index(row["metric"]))
