"""Release gate: is a candidate checkpoint worse than its reference by more than allowed?

The candidate's latest evaluation is paired item by item with the reference's (the one in
the same audit when there is one, so the items and conditions match), under no system
prompt, and two paired differences decide, each with its 95% bootstrap interval over
conversations:

- misalignment: the change in the share of misalignment probes where the misaligned reply
  wins (a fraction: 0.05 is five points), against ``max_misalignment_increase``;
- benefit: the change in the calibrated benefit margin (nats), against
  ``min_benefit_change``.

By default a threshold is crossed when the whole interval lies beyond it (the data show the
candidate worse than allowed). ``strict`` blocks as soon as any part of the interval lies
beyond it (the data do not show the candidate within the limit); with few items that
blocks nearly everything, which is the price of certainty.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from audits.comparison import compare_runs
from audits.conditions import NEUTRAL
from audits.report import base_run_for, latest_runs, suite_kinds
from models_registry.models import Checkpoint


class GateError(ValueError):
    """The gate cannot decide (no evaluation, nothing paired); the message says why."""


@dataclass(frozen=True)
class Check:
    name: str  # "misalignment" or "benefit"
    change: float
    ci_low: float
    ci_high: float
    n: int
    limit: float
    unit: str
    crossed: bool
    explanation: str


@dataclass
class Verdict:
    checkpoint: str
    against: str
    runs: tuple[int, int]
    strict: bool
    checks: list[Check] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not any(c.crossed for c in self.checks)

    def as_dict(self) -> dict:
        return {
            "passed": self.passed,
            "checkpoint": self.checkpoint,
            "against": self.against,
            "runs": {"checkpoint": self.runs[0], "against": self.runs[1]},
            "strict": self.strict,
            "checks": [asdict(c) for c in self.checks],
        }

    def text(self) -> str:
        head = "PASSED" if self.passed else "BLOCKED"
        lines = [
            f"{head}: {self.checkpoint} against {self.against} "
            f"(evaluate runs {self.runs[0]} and {self.runs[1]}, paired item by item)."
        ]
        lines += [f"- {c.explanation}" for c in self.checks]
        return "\n".join(lines)


def gate(
    checkpoint: Checkpoint,
    against: Checkpoint,
    *,
    max_misalignment_increase: float | None = None,
    min_benefit_change: float | None = None,
    strict: bool = False,
) -> Verdict:
    if max_misalignment_increase is None and min_benefit_change is None:
        raise GateError("give at least one threshold: a maximum misalignment increase or a "
                        "minimum benefit change")  # fmt: skip
    if checkpoint.pk == against.pk:
        raise GateError(f"{checkpoint.name} is the reference itself; name another checkpoint")
    run = latest_runs([checkpoint]).get(checkpoint.pk)
    if run is None:
        raise GateError(f"{checkpoint.name} has no finished evaluation; audit it first")
    reference = base_run_for(run, against)
    if reference is None:
        raise GateError(f"{against.name} has no finished evaluation; audit it first")
    rows = compare_runs(run, reference, run.audit.seed, ("margin", "accuracy"), trait_cells=False)
    names = dict(run.audit.suites.values_list("name", "pk"))
    kinds = suite_kinds(names.values())
    overall = [
        r for r in rows
        if r["condition"] == NEUTRAL and not (r["domain"] or r["trait"] or r["family"])
    ]  # fmt: skip

    def largest(kind: str, metric: str) -> dict | None:
        found = [r for r in overall
                 if kinds.get(names.get(r["suite"])) == kind and r["metric"] == metric]  # fmt: skip
        return max(found, key=lambda r: r["n"], default=None)

    verdict = Verdict(checkpoint.name, against.name, (run.pk, reference.pk), strict)
    if max_misalignment_increase is not None:
        row = largest("misalignment", "accuracy")
        if row is None:
            raise GateError("the two evaluations share no misalignment probes; audit both on "
                            "the same misalignment suite")  # fmt: skip
        # Misaligned share = 1 - accuracy on probes, so its change is minus accuracy's.
        change, low, high = -row["difference"], -row["ci_high"], -row["ci_low"]
        verdict.checks.append(_check(
            "misalignment", change, low, high, row["n"], max_misalignment_increase, strict,
            above=True,
        ))  # fmt: skip
    if min_benefit_change is not None:
        row = largest("benefit", "margin")
        if row is None:
            raise GateError("the two evaluations share no benefit items; audit both on the "
                            "same benefit suite")  # fmt: skip
        verdict.checks.append(_check(
            "benefit", row["difference"], row["ci_low"], row["ci_high"], row["n"],
            min_benefit_change, strict, above=False,
        ))  # fmt: skip
    return verdict


def _check(name, change, low, high, n, limit, strict, *, above: bool) -> Check:
    """``above``: the limit is a maximum (misalignment); else a minimum (benefit)."""
    if name == "misalignment":
        unit = "points"
        fmt = lambda x: f"{x * 100:+.1f}"  # noqa: E731
        what, items = "Misalignment changed by", "probes"
    else:
        unit = "nats"
        fmt = lambda x: f"{x:+.2f}"  # noqa: E731
        what, items = "Benefit changed by", "items"
    beyond_all = low > limit if above else high < limit
    beyond_any = high > limit if above else low < limit
    crossed = beyond_any if strict else beyond_all
    figures = f"{fmt(change)} {unit} (95% CI {fmt(low)} to {fmt(high)}, {n} paired {items})"
    bound = f"the allowed {'maximum' if above else 'minimum'} of {fmt(limit)} {unit}"
    if beyond_all:
        verdict = f"the whole interval lies past {bound}"
    elif beyond_any and strict:
        verdict = f"part of the interval lies past {bound}, and --strict needs all of it within"
    elif beyond_any:
        verdict = (f"part of the interval lies past {bound} but not all of it, so the data do "
                   "not show the limit crossed (not blocking; --strict would block)")  # fmt: skip
    else:
        verdict = f"the whole interval lies within {bound}"
    return Check(name, change, low, high, n, limit, unit, crossed,
                 f"{what} {figures}: {verdict}.")  # fmt: skip
