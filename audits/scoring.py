"""Turn a run's ItemResults into Scores with 95% intervals."""

from __future__ import annotations

from collections import defaultdict

from django.db import transaction

from audits.metrics import Estimate, bootstrap_mean, wilson
from audits.models import ItemResult, Metric, Run, Score


@transaction.atomic
def scores_compute(run: Run) -> int:
    """Per cell (domain x trait or family), per domain, and overall; per condition."""
    groups: dict[tuple, list[ItemResult]] = defaultdict(list)
    results = ItemResult.objects.filter(run=run).select_related("item").order_by("item__item_id")
    for result in results:
        item = result.item
        key_bits = (item.suite_id, result.condition)
        groups[(*key_bits, item.domain, item.trait, item.family)].append(result)
        groups[(*key_bits, item.domain, "", "")].append(result)
        groups[(*key_bits, "", item.trait, item.family)].append(result)
        groups[(*key_bits, "", "", "")].append(result)
    Score.objects.filter(run=run).delete()
    rows = []
    for (suite_id, condition, domain, trait, family), members in groups.items():
        estimates: dict[str, Estimate] = {
            Metric.ACCURACY: wilson(sum(r.won for r in members), len(members)),
            Metric.MARGIN: bootstrap_mean([r.margin for r in members], seed=run.audit.seed),
            Metric.MARGIN_MEAN_TOKEN: bootstrap_mean(
                [r.margin_mean_token for r in members], seed=run.audit.seed
            ),
        }
        rows += [
            Score(
                audit=run.audit,
                run=run,
                checkpoint=run.checkpoint,
                suite_id=suite_id,
                domain=domain,
                trait=trait,
                family=family,
                condition=condition,
                metric=metric,
                value=e.value,
                ci_low=e.ci_low,
                ci_high=e.ci_high,
                n=e.n,
            )  # fmt: skip
            for metric, e in estimates.items()
        ]
    Score.objects.bulk_create(rows)
    return len(rows)
