"""How an item is presented. The foundation knows the neutral condition only."""

from __future__ import annotations

NEUTRAL = "neutral"
# condition name -> system prompt (None: the model's own default)
CONDITIONS: dict[str, str | None] = {NEUTRAL: None}


def system_prompt(condition: str) -> str | None:
    try:
        return CONDITIONS[condition]
    except KeyError:
        raise ValueError(f"unknown condition {condition!r}") from None
