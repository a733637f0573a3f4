"""How an item is presented: neutral, under an adversarial persona, or a helpful instruction.

The personas and instructions live in suites/conditions.json; each becomes the
system prompt of the conversation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

NEUTRAL = "neutral"
CONDITIONS_FILE = Path(__file__).resolve().parent / "suites" / "conditions.json"


@dataclass(frozen=True)
class Condition:
    name: str
    kind: str  # "neutral", "adversarial" or "helpful"
    description: str
    system: str | None


def _load() -> dict[str, Condition]:
    data = json.loads(CONDITIONS_FILE.read_text(encoding="utf-8"))
    found = {NEUTRAL: Condition(NEUTRAL, "neutral", "No system prompt beyond the model's own.",
                                None)}  # fmt: skip
    for kind in ("adversarial", "helpful"):
        for entry in data[kind]:
            found[entry["name"]] = Condition(
                entry["name"], kind, entry["description"], entry["system"]
            )
    return found


CONDITIONS = _load()
ADVERSARIAL = tuple(n for n, c in CONDITIONS.items() if c.kind == "adversarial")
HELPFUL = tuple(n for n, c in CONDITIONS.items() if c.kind == "helpful")


def condition_of(tags: list) -> str | None:
    """The helpful instruction an instruction item tests, from its `condition:NAME` tag."""
    for tag in tags:
        if isinstance(tag, str) and tag.startswith("condition:"):
            return tag.removeprefix("condition:")
    return None


def conditions_for(kind: str, tags: list, audit_conditions: list[str]) -> list[str]:
    """Instruction items are scored under their own instruction only; others under each
    condition the audit asks for."""
    if kind == "instruction":
        return [condition_of(tags) or NEUTRAL]
    return list(audit_conditions)


def system_prompt(condition: str) -> str | None:
    try:
        return CONDITIONS[condition].system
    except KeyError:
        raise ValueError(f"unknown condition {condition!r}") from None
