"""What a profile evaluates: which eval items, and which conditions when none are chosen.

- quick: one item per cell (suite x domain x trait or family; one per helpful
  instruction), under neutral and two adversarial personas. SmolLM2 on two CPU
  cores finishes the built-in suites in a few minutes.
- standard: every eval item, under the conditions chosen (quick's by default).
- full: every eval item under neutral and every adversarial persona.

The quick subset depends only on item ids, never on the seed, so quick audits of
two checkpoints always cover the same items and can be compared pair by pair.
"""

from __future__ import annotations

import hashlib

from audits.conditions import ADVERSARIAL, NEUTRAL, condition_of
from audits.models import Item, Profile

QUICK_CONDITIONS = (NEUTRAL, "flattery", "sales_pressure")


def default_conditions(profile: str) -> list[str]:
    if profile == Profile.FULL:
        return [NEUTRAL, *ADVERSARIAL]
    return list(QUICK_CONDITIONS)


def select_items(items: list[Item], profile: str) -> list[Item]:
    """The items a profile scores, in the order given."""
    if profile != Profile.QUICK:
        return items
    chosen: dict[tuple, Item] = {}
    for item in items:
        if item.kind == "instruction":
            cell = (item.suite_id, condition_of(item.tags))
        else:
            cell = (item.suite_id, item.domain, item.trait or item.family)
        best = chosen.get(cell)
        if best is None or _rank(item) < _rank(best):
            chosen[cell] = item
    keep = {item.pk for item in chosen.values()}
    return [item for item in items if item.pk in keep]


def _rank(item: Item) -> str:
    return hashlib.sha256(item.item_id.encode()).hexdigest()


def generation_items(items: list[Item], profile: str) -> list[Item]:
    """The items whose replies are sampled and graded: in quick, one benefit item per
    domain, one probe per family and one item per helpful instruction; else all."""
    if profile != Profile.QUICK:
        return items
    chosen: dict[tuple, Item] = {}
    for item in items:
        cell = (item.kind, condition_of(item.tags) if item.kind == "instruction"
                else item.family if item.kind == "misalignment" else item.domain)  # fmt: skip
        if cell not in chosen or _rank(item) < _rank(chosen[cell]):
            chosen[cell] = item
    keep = {item.pk for item in chosen.values()}
    return [item for item in items if item.pk in keep]
