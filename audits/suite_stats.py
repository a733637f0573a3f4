"""A data-quality report per suite: balance, length ratios, duplicates, style-only baselines.

A suite measures behaviour only if style gives the answer away in neither
direction: both baselines here look at the replies alone and should score near
50% when asked which reply is the beneficial one.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from itertools import combinations

from audits.models import Item, Suite

NEAR_DUPLICATE_JACCARD = 0.8
WORD = re.compile(r"[a-z0-9']+")


def suite_stats(suite: Suite) -> dict:
    items = list(suite.items.order_by("item_id"))
    pairs = [i for i in items if i.chosen and i.rejected]
    evaluated = [i for i in pairs if i.split == "eval"]
    train, trained_on = training_pairs(suite)
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
        "by_split_domain_trait": _counts(i for i in items if i.trait),
        "by_split_family": _counts((i for i in items if i.family), key="family"),
        "multi_turn_share": _share(sum(len(i.messages) > 1 for i in items), len(items)),
        "length_ratio": _length_ratios(pairs),
        "duplicates": _duplicates(items),
        "baselines": {
            "longer_reply_accuracy": _longer_reply_accuracy(evaluated),
            "bag_of_words_accuracy": _bag_of_words_accuracy(train, evaluated),
            "bag_of_words_trained_on": trained_on,
            "eval_pairs": len(evaluated),
        },
    }


def training_pairs(suite: Suite) -> tuple[list[Item], str]:
    """The suite's own train split, else Keel's beneficial train split."""
    own = list(suite.items.filter(split="train").exclude(chosen="").exclude(rejected=""))
    if own:
        return own, f"{suite} train split"
    beneficial = Suite.objects.filter(name="beneficial").order_by("-version").first()
    if beneficial is None:
        return [], "none (no train split available)"
    return list(beneficial.items.filter(split="train")), f"{beneficial} train split"


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def _counts(items, key: str = "trait") -> dict[str, int]:
    counted = Counter(f"{i.split}/{i.domain}/{getattr(i, key)}" for i in items)
    return dict(sorted(counted.items()))


def _share(part: float, whole: int) -> float | None:
    return round(part / whole, 3) if whole else None


def _length_ratios(pairs: list[Item]) -> dict:
    ratios = sorted(len(i.chosen.split()) / max(1, len(i.rejected.split())) for i in pairs)
    if not ratios:
        return {}

    def q(p: float) -> float:
        return round(ratios[min(len(ratios) - 1, int(p * len(ratios)))], 3)

    return {"min": ratios[0], "p10": q(0.1), "median": q(0.5), "p90": q(0.9),
            "max": round(ratios[-1], 3)}  # fmt: skip


def _duplicates(items: list[Item]) -> dict:
    def conversation(item: Item) -> str:
        return " ".join(m["content"] for m in item.messages)

    exact = Counter(" ".join(words(conversation(i))) for i in items)
    replies = Counter(r for i in items for r in (i.chosen, i.rejected) if r)
    bags = [(i.item_id, set(words(conversation(i)))) for i in items]
    near = [
        [a_id, b_id]
        for (a_id, a), (b_id, b) in combinations(bags, 2)
        if a and b and len(a & b) / len(a | b) >= NEAR_DUPLICATE_JACCARD
    ]
    return {
        "same_conversation": sum(n - 1 for n in exact.values() if n > 1),
        "same_reply_text": sum(n - 1 for n in replies.values() if n > 1),
        "near_duplicate_conversations": len(near),
        "near_duplicate_examples": near[:10],
    }


def _longer_reply_accuracy(pairs: list[Item]) -> float | None:
    """Pick the reply with more words; ties count half."""
    score = sum(
        1.0 if len(i.chosen.split()) > len(i.rejected.split())
        else 0.5 if len(i.chosen.split()) == len(i.rejected.split()) else 0.0
        for i in pairs
    )  # fmt: skip
    return _share(score, len(pairs))


def _bag_of_words_accuracy(train: list[Item], pairs: list[Item]) -> float | None:
    """Naive Bayes on reply words (no conversation), trained to tell beneficial from
    misaligned replies; picks the reply it rates more beneficial."""
    if not train or not pairs:
        return None
    good = Counter(w for i in train for w in words(i.chosen))
    bad = Counter(w for i in train for w in words(i.rejected))
    vocabulary = len(set(good) | set(bad)) + 1
    total_good, total_bad = sum(good.values()), sum(bad.values())

    def log_odds(text: str) -> float:
        return sum(
            math.log((good[w] + 1) / (total_good + vocabulary))
            - math.log((bad[w] + 1) / (total_bad + vocabulary))
            for w in words(text)
        )

    score = 0.0
    for item in pairs:
        a, b = log_odds(item.chosen), log_odds(item.rejected)
        score += 1.0 if a > b else 0.5 if a == b else 0.0
    return _share(score, len(pairs))
