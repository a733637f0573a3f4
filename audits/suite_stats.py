"""What a suite holds, and whether style gives its answers away."""

from __future__ import annotations

from collections import Counter

from audits.models import Suite


def suite_stats(suite: Suite) -> dict:
    items = list(suite.items.all())
    pairs = [i for i in items if i.chosen and i.rejected]
    words_chosen = [len(i.chosen.split()) for i in pairs]
    words_rejected = [len(i.rejected.split()) for i in pairs]
    longer_chosen = sum(c > r for c, r in zip(words_chosen, words_rejected, strict=True))
    return {
        "name": suite.name,
        "version": suite.version,
        "content_hash": suite.content_hash,
        "source": suite.source,
        "license": suite.license,
        "items": len(items),
        "by_split": dict(Counter(i.split for i in items)),
        "by_kind": dict(Counter(i.kind for i in items)),
        "by_domain": dict(sorted(Counter(i.domain for i in items).items())),
        "by_trait": dict(sorted(Counter(i.trait for i in items if i.trait).items())),
        "by_family": dict(sorted(Counter(i.family for i in items if i.family).items())),
        "by_domain_trait": {
            f"{d}/{t}": n
            for (d, t), n in sorted(Counter((i.domain, i.trait) for i in items if i.trait).items())
        },
        "multi_turn_share": _share(sum(len(i.messages) > 1 for i in items), len(items)),
        "mean_words_chosen": _mean(words_chosen),
        "mean_words_rejected": _mean(words_rejected),
        # If "pick the longer reply" scores far from 50%, length leaks the answer.
        "longer_reply_is_chosen": _share(longer_chosen, len(pairs)),
    }


def _share(part: int, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _mean(values: list[int]) -> float | None:
    return round(sum(values) / len(values), 1) if values else None
