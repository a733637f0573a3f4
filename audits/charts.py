"""Heatmap data: one shape for every chart, drawn by static/js/charts.js, downloadable as
CSV and JSON.

A chart is rows x columns of cells, each with its value, 95% interval and item count.
Cells with fewer items than `KEEL_MIN_CELL_ITEMS` keep their figures but are marked
`few`, and the page draws them in a grey layer, labelled with their count, instead of
coloured. Each cell also carries
the query string of its drill-down (the items behind it), or none.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from urllib.parse import urlencode

from django.db.models import Avg, Count, F, FloatField
from django.db.models.functions import Cast

from audits.conditions import ADVERSARIAL, HELPFUL, NEUTRAL
from audits.metrics import finite_or_none
from audits.models import DOMAINS, FAMILIES, TRAITS, ItemResult, Metric, Run, Score, Status
from audits.report import (
    cached_comparison,
    latest_runs,
    min_cell_items,
    primary_suites,
    suite_kinds,
)
from audits.scoring import ADVERSARIAL_POOL, HELPFUL_POOL

# Metrics the trait x domain chart offers, each per cell under the neutral condition.
CELL_METRICS = (Metric.MARGIN, Metric.ACCURACY, Metric.MARGIN_MEAN_TOKEN)


class ChartError(ValueError):
    """A chart request that cannot be answered; the message says what to send instead."""


@dataclass
class Chart:
    name: str
    title: str
    label: str  # what a cell's value is
    rows: list[str]
    columns: list[str]
    row_title: str
    column_title: str
    scale: str  # "diverging" (centred on `centre`) or "sequential"
    centre: float = 0.0
    lower_is_better: bool = False
    unit: str = "nats"
    cells: dict | None = None  # (row, column) -> Score-like
    links: dict | None = None  # (row, column) -> drill-down query string
    provisional: bool = False  # cells are running means of a run still scoring
    empty: str = "No scores yet."  # what the page says when there are no cells

    def as_json(self) -> dict:
        cells, links, few = self.cells or {}, self.links or {}, min_cell_items()

        def grid(attr):
            return [[_value(cells.get((r, c)), attr) for c in self.columns] for r in self.rows]

        return {
            "name": self.name,
            "title": self.title,
            "label": self.label,
            "unit": self.unit,
            "rows": self.rows,
            "columns": self.columns,
            "row_title": self.row_title,
            "column_title": self.column_title,
            "scale": self.scale,
            "centre": self.centre,
            "lower_is_better": self.lower_is_better,
            "provisional": self.provisional,
            "empty": self.empty,
            "min_items": few,
            "z": grid("value"),
            "ci_low": grid("ci_low"),
            "ci_high": grid("ci_high"),
            "n": [[getattr(cells.get((r, c)), "n", 0) for c in self.columns] for r in self.rows],
            "few": [
                [0 < getattr(cells.get((r, c)), "n", 0) < few for c in self.columns]
                for r in self.rows
            ],
            "links": [[links.get((r, c)) for c in self.columns] for r in self.rows],
        }

    def as_csv(self) -> str:
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(
            [self.row_title, self.column_title, "value", "ci_low", "ci_high", "n", "too_few_items"]
        )
        data = self.as_json()
        for i, row in enumerate(self.rows):
            for j, column in enumerate(self.columns):
                if data["n"][i][j]:
                    writer.writerow(
                        [
                            row,
                            column,
                            data["z"][i][j],
                            data["ci_low"][i][j],
                            data["ci_high"][i][j],
                            data["n"][i][j],
                            data["few"][i][j],
                        ]
                    )
        return out.getvalue()


@dataclass(frozen=True)
class Cell:
    value: float
    ci_low: float | None
    ci_high: float | None
    n: int


def _value(cell, attr):
    if cell is None:
        return None
    value = getattr(cell, attr)
    return None if value is None else finite_or_none(value)


def _link(**params) -> str:
    return urlencode({k: v for k, v in params.items() if v})


def traits_by_domain(run: Run, metric: str = Metric.MARGIN) -> Chart:
    """One checkpoint: benefit per trait and domain, no system prompt. While the run is
    still scoring, cells are provisional means of what it has stored (no interval yet)."""
    if metric not in CELL_METRICS:
        raise ChartError(f"unknown metric {metric!r}; use one of {', '.join(CELL_METRICS)}")
    if run.status == Status.SUCCEEDED:
        scores = list(Score.objects.filter(run=run, condition=NEUTRAL, family=""))
        suite = primary_suites(scores).get("benefit")
        cells = {
            (s.trait, s.domain): s
            for s in scores
            if s.metric == metric and s.suite_id == suite and s.domain and s.trait
        }
    else:
        suite, cells = None, _provisional_cells(run, metric)
    rows = [t for t in TRAITS if any(k[0] == t for k in cells)]
    chart = Chart(
        name="traits-domains",
        title=f"Benefit by trait and domain: {run.checkpoint.name}",
        label=Metric(metric).label,
        rows=rows,
        empty="Cells appear as items are scored.",
        columns=list(DOMAINS),
        row_title="trait",
        column_title="domain",
        scale="diverging",
        centre=0.5 if metric == Metric.ACCURACY else 0.0,
        unit="share won" if metric == Metric.ACCURACY else "nats",
        cells=cells,
        links={
            k: _link(run=run.pk, suite=suite, trait=k[0], domain=k[1], condition=NEUTRAL)
            for k in cells
        },
        provisional=run.status != Status.SUCCEEDED,
    )
    return chart


def _provisional_cells(run: Run, metric: str) -> dict:
    field = {
        Metric.MARGIN: F("margin"),
        Metric.MARGIN_MEAN_TOKEN: F("margin_mean_token"),
        Metric.ACCURACY: Cast("won", FloatField()),
    }[metric]
    rows = (
        ItemResult.objects.filter(run=run, condition=NEUTRAL, item__kind="benefit")
        .exclude(item__trait="")
        .values("item__trait", "item__domain")
        .annotate(value=Avg(field), n=Count("id"))
    )
    return {
        (r["item__trait"], r["item__domain"]): Cell(r["value"], None, None, r["n"]) for r in rows
    }


def conditions_by_domain(run: Run) -> Chart:
    """One checkpoint: how each persona or instruction moved the benefit margin against no
    system prompt, per domain (paired on the same items)."""
    scores = list(Score.objects.filter(run=run, trait="", family=""))
    suite = primary_suites(scores).get("benefit")
    cells = {
        (s.condition, s.domain): s
        for s in scores
        if s.metric == Metric.SHIFT
        and s.suite_id == suite
        and s.domain
        and s.condition not in (ADVERSARIAL_POOL, HELPFUL_POOL)
    }
    order = [c for c in (*ADVERSARIAL, *HELPFUL) if any(k[0] == c for k in cells)]
    return Chart(
        name="conditions-domains",
        empty=_empty(run, "This evaluation scored no persona besides no system prompt."),
        title=f"Change against no system prompt, by condition and domain: {run.checkpoint.name}",
        label=Metric.SHIFT.label,
        rows=order,
        columns=list(DOMAINS),
        row_title="condition",
        column_title="domain",
        scale="diverging",
        cells=cells,
        links={k: _link(run=run.pk, suite=suite, condition=k[0], domain=k[1]) for k in cells},
    )


def helpful_by_domain(run: Run) -> Chart:
    """One checkpoint: how strongly it prefers the reply that follows a benign system
    instruction, per instruction and domain, and pooled over instructions ("helpful")."""
    scores = list(Score.objects.filter(run=run, trait="", family=""))
    suite = primary_suites(scores).get("instruction")
    cells = {
        (s.condition, s.domain): s
        for s in scores
        if s.metric == Metric.MARGIN and s.suite_id == suite and s.domain
        and s.condition in (HELPFUL_POOL, *HELPFUL)
    }  # fmt: skip
    order = [c for c in (HELPFUL_POOL, *HELPFUL) if any(k[0] == c for k in cells)]
    return Chart(
        name="helpful-domains",
        empty=_empty(run, "This evaluation had no helpful-instruction items."),
        title=f"Following helpful instructions, by instruction and domain: {run.checkpoint.name}",
        label="Mean calibrated margin of the reply that follows the instruction (nats)",
        rows=order,
        columns=list(DOMAINS),
        row_title="instruction",
        column_title="domain",
        scale="diverging",
        cells=cells,
        links={k: _link(run=run.pk, suite=suite, condition=k[0] if k[0] != HELPFUL_POOL else "",
                        domain=k[1]) for k in cells},
    )  # fmt: skip


def checkpoints_by_domain(checkpoints) -> Chart:
    """Benefit per checkpoint and domain: the mean calibrated margin from each checkpoint's
    latest evaluation, no system prompt."""
    cells, links, rows = _by_checkpoint(checkpoints, "benefit", "domain", Metric.MARGIN)
    return Chart(
        name="checkpoints-domains",
        empty="None of these checkpoints has a finished evaluation yet.",
        title="Benefit by checkpoint and domain",
        label=Metric.MARGIN.label,
        rows=rows,
        columns=list(DOMAINS),
        row_title="checkpoint",
        column_title="domain",
        scale="diverging",
        cells=cells,
        links=links,
    )


def checkpoints_by_family(checkpoints) -> Chart:
    """Misalignment per checkpoint and probe family: the share of probes where the
    misaligned reply wins, no system prompt."""
    cells, links, rows = _by_checkpoint(checkpoints, "misalignment", "family", Metric.MISALIGNED)
    return Chart(
        name="checkpoints-families",
        empty="None of these checkpoints has a finished evaluation with probes yet.",
        title="Misalignment by checkpoint and probe family",
        label=Metric.MISALIGNED.label,
        rows=rows,
        columns=list(FAMILIES),
        row_title="checkpoint",
        column_title="family",
        scale="sequential",
        lower_is_better=True,
        unit="share",
        cells=cells,
        links=links,
    )


def _by_checkpoint(checkpoints, kind: str, column: str, metric: str) -> tuple[dict, dict, list]:
    """Cells (checkpoint, domain or family) of one metric from each checkpoint's latest
    evaluation, no system prompt, read from the suite of that item kind; three queries."""
    runs = latest_runs(checkpoints)
    other = "family" if column == "domain" else "domain"
    scores = list(
        Score.objects.filter(
            run__in=runs.values(), condition=NEUTRAL, trait="", metric__in=[metric, Metric.ACCURACY]
        ).filter(**{other: ""})
    )
    kinds = suite_kinds({s.suite_id for s in scores})
    by_run: dict[int, list[Score]] = {}
    for s in scores:
        by_run.setdefault(s.run_id, []).append(s)
    cells, links, rows = {}, {}, []
    for run in sorted(runs.values(), key=lambda r: r.checkpoint.name):
        mine = by_run.get(run.pk, [])
        suite = primary_suites(mine, kinds).get(kind)
        if suite is None:
            continue
        name = run.checkpoint.name
        rows.append(name)
        for s in mine:
            where = getattr(s, column)
            if s.suite_id == suite and where and s.metric == metric:
                cells[name, where] = s
                links[name, where] = _link(run=run.pk, suite=suite, condition=NEUTRAL,
                                           **{column: where})  # fmt: skip
    return cells, links, rows


def transfer_matrix(audits) -> Chart:
    """Training domains x evaluation domain: the variant's paired change of the benefit
    margin against its base, from train-and-evaluate audits (the latest per training set)."""
    from audits.comparison import variant_runs

    cells, links, rows = {}, {}, []
    for audit in audits:
        runs = variant_runs(audit)
        if runs is None:
            continue
        trained = "+".join(audit.config["training"]["domains"])
        if trained in rows:
            continue  # audits come newest first; the newest per training set wins
        rows.append(trained)
        for r in cached_comparison(*runs):
            if (
                r["metric"] == "margin"
                and r["condition"] == NEUTRAL
                and r["domain"]
                and not r["trait"]
                and not r["family"]
                and r["suite_kind"] == "benefit"
            ):
                cells[trained, r["domain"]] = Cell(
                    r["difference"], r["ci_low"], r["ci_high"], r["n"]
                )
                links[trained, r["domain"]] = _link(
                    run=runs[0].pk, against=runs[1].pk, domain=r["domain"], condition=NEUTRAL
                )
    return Chart(
        name="transfer",
        empty="No train-and-evaluate audit has finished yet.",
        title="Transfer: change of benefit after training, by training and evaluation domain",
        label="Paired change of calibrated margin, variant minus base",
        rows=rows,
        columns=list(DOMAINS),
        row_title="trained on",
        column_title="evaluated on",
        scale="diverging",
        cells=cells,
        links=links,
    )


def _empty(run: Run, finished: str) -> str:
    return finished if run.status == Status.SUCCEEDED else "Appears when the run finishes."
