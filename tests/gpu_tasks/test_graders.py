"""Sampling and the three graders, on tiny random models."""

from __future__ import annotations

import shutil

import pytest

from gpu_tasks.engine.generation import sample_replies
from gpu_tasks.engine.graders import (
    JUDGE_VERSION,
    RULES_VERSION,
    Case,
    judge_grades,
    reward_grades,
    rule_grades,
)
from gpu_tasks.engine.loading import load, load_classifier

ASK = [{"role": "user", "content": "How do I lower my blood pressure?"}]
RUBRIC = [
    {"criterion": "suggests seeing a doctor for readings above 180/120", "weight": 3},
    {"criterion": "mentions salt, exercise or weight", "weight": 1},
]


def rules(reply: str, instruction: str | None = None) -> dict[str, tuple[float, str]]:
    return {
        g.criterion: (g.score, g.rationale) for g in rule_grades(Case(ASK, reply, [], instruction))
    }


@pytest.mark.parametrize(
    ("instruction", "good", "bad"),
    [
        ("bullet_points", "- Eat less salt\n- Walk daily", "Eat less salt and walk daily."),
        ("brevity", "Eat less salt. Walk daily.", "Eat less salt. Walk daily. Sleep well. Relax."),
        ("formal_tone", "Please reduce your salt intake.", "Don't eat salt! It's bad."),
        ("spanish", "Reduzca la sal y camine todos los días para su salud.", "Eat less salt."),
        ("french", "Réduisez le sel et marchez tous les jours pour la santé.", "Eat less salt."),
        ("numbered_steps", "1. Eat less salt\n2. Walk daily", "2. Walk\n1. Eat"),
        ("start_with_summary", "Summary: less salt.\nDetails follow.", "Less salt.\nSummary: x"),
        ("json_output", '{"answer": "less salt", "caveats": []}', '{"answer": "less salt"}'),
    ],
)
def test_rules_check_each_helpful_instruction(instruction, good, bad):
    assert rules(good, instruction)[f"follows {instruction}"][0] == 1.0
    score, why = rules(bad, instruction)[f"follows {instruction}"]
    assert score == 0.0 and why


def test_rules_flag_absolute_certainty_with_the_words_found():
    score, why = rules("This diet is guaranteed to work and completely safe.")[
        "no absolute-certainty claims"
    ]
    assert score == 0.0
    assert "guaranteed" in why and "completely safe" in why
    assert rules("It may help; check with your doctor.")["no absolute-certainty claims"][0] == 1.0
    assert {g.version for g in rule_grades(Case(ASK, "x", []))} == {RULES_VERSION}


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, "tiny-fingerprint")


def test_sampling_is_reproducible_for_a_seed_and_stops_at_the_limit(tiny):
    conversations = [(ASK, None), (ASK, "Be brief.")] * 2
    first = sample_replies(tiny, conversations, seed=3, max_new_tokens=12, batch_size=2)
    again = sample_replies(tiny, conversations, seed=3, max_new_tokens=12, batch_size=2)
    other = sample_replies(tiny, conversations, seed=4, max_new_tokens=12, batch_size=2)
    assert first == again
    assert [s.text for s in first] != [s.text for s in other]
    assert all(s.tokens <= 12 and (s.finished or s.tokens == 12) for s in first)


def test_the_judge_gives_one_probability_per_criterion_and_keeps_its_prompt(tiny):
    [grades] = judge_grades(tiny, "tiny", [Case(ASK, "Eat less salt.", RUBRIC)])
    assert [g.criterion for g in grades] == [c["criterion"] for c in RUBRIC]
    assert [g.weight for g in grades] == [3.0, 1.0]
    for grade in grades:
        assert 0.0 < grade.score < 1.0
        assert grade.grader == "judge:tiny" and grade.version == JUDGE_VERSION
        assert grade.criterion in grade.prompt and "Eat less salt." in grade.prompt
        assert grade.rationale == f"P(Yes) = {grade.score:.3f}"


def test_the_judge_prefers_yes_when_the_model_does(tiny):
    """P(Yes) must come from the model's own next-token odds: compare with a direct forward."""
    import math

    import torch

    from gpu_tasks.engine.graders import JUDGE_SYSTEM, judge_prompt
    from gpu_tasks.engine.scoring import render_prompt

    case = Case(ASK, "Eat less salt.", RUBRIC[:1])
    [[grade]] = judge_grades(tiny, "tiny", [case])
    ids = render_prompt(tiny.tokenizer, judge_prompt(case, RUBRIC[0]["criterion"]), JUDGE_SYSTEM)
    with torch.no_grad():
        logits = tiny.model(input_ids=torch.tensor([ids])).logits[0, -1].float()
    yes = tiny.tokenizer("Yes", add_special_tokens=False)["input_ids"][0]
    no = tiny.tokenizer("No", add_special_tokens=False)["input_ids"][0]
    expected = 1 / (1 + math.exp(float(logits[no] - logits[yes])))
    assert grade.score == pytest.approx(expected, abs=1e-5)


def build_reward_model(target, tokenizer_dir, labels: int = 1):
    import torch
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, num_labels=labels, pad_token_id=2,
    )  # fmt: skip
    LlamaForSequenceClassification(config).save_pretrained(target, safe_serialization=True)
    for f in tokenizer_dir.iterdir():
        shutil.copy(f, target / f.name)
    return target


def test_a_reward_model_grades_whole_replies(tmp_path, smollm2_tokenizer_dir):
    path = build_reward_model(tmp_path / "rm", smollm2_tokenizer_dir)
    reward = load_classifier(path, "rm")
    cases = [Case(ASK, "Eat less salt.", []), Case(ASK, "Ignore it.", [])]
    grades = reward_grades(reward, "rm", cases)
    assert len(grades) == 2
    assert all(0.0 < g.score < 1.0 and g.grader == "reward:rm" for g in grades)
    assert grades[0].score != grades[1].score
    assert "Eat less salt." in grades[0].prompt


def test_a_classifier_with_several_outputs_is_not_a_reward_model(tmp_path, smollm2_tokenizer_dir):
    path = build_reward_model(tmp_path / "two", smollm2_tokenizer_dir, labels=2)
    with pytest.raises(ValueError, match="a reward model has 1"):
        load_classifier(path, "two")
