"""Trait training on tiny random models: every method trains, saves a safetensors LoRA
adapter that changes the model, stops within a step when asked, and resumes from its
last save. The reward model is the real bundled MiniLM encoder."""

from __future__ import annotations

import json

import pytest
import torch

from gpu_tasks.engine.convert import bundled_minilm
from gpu_tasks.engine.graders import reward_scores
from gpu_tasks.engine.loading import load_classifier_uncached, load_uncached
from gpu_tasks.engine.training import (
    TrainSpec,
    pairwise_accuracy,
    spec_for,
    swapped,
    train_policy,
    train_reward_model,
)

ROWS = [
    {
        "prompt": [{"role": "user", "content": f"My {part} has hurt for {days} days. What now?"}],
        "chosen": [{"role": "assistant", "content": "See a doctor if it persists; rest it."}],
        "rejected": [{"role": "assistant", "content": "It is definitely nothing, ignore it."}],
        "rubric": [{"criterion": "Suggests seeing a doctor", "weight": 2}],
    }
    for part, days in (("knee", 3), ("back", 10), ("wrist", 5), ("neck", 2))
]


def logits(model_dir, adapters=()):
    loaded = load_uncached(model_dir, tuple(adapters))
    ids = loaded.tokenizer("See a doctor if it persists.", return_tensors="pt").input_ids
    with torch.no_grad():
        return loaded.model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["dpo", "sft"])
def test_training_saves_a_safetensors_adapter_that_changes_the_model(
    method, tiny_llama_dir, tmp_path
):
    spec = TrainSpec(method=method, steps=2, learning_rate=5e-3, batch_size=2, save_every=1)
    logged = []
    result = train_policy(tiny_llama_dir, spec, ROWS, tmp_path,
                          on_log=lambda s, t, logs: logged.append((s, t, logs)))  # fmt: skip
    assert result.steps == 2 and not result.stopped and result.resumed_from == 0
    assert (result.adapter_dir / "adapter_model.safetensors").exists()
    assert not list(result.adapter_dir.glob("*.bin"))
    assert json.loads((result.adapter_dir / "adapter_config.json").read_text())["r"] == spec.lora_r
    assert [s for s, _, logs in logged if "loss" in logs] == [1, 2]
    assert all(t == 2 for _, t, _ in logged)
    assert len(result.history) == 2 and all("loss" in h for h in result.history)
    difference = (logits(tiny_llama_dir, [result.adapter_dir]) - logits(tiny_llama_dir)).abs()
    assert difference.max() > 1e-4


def test_a_stop_request_ends_training_within_one_step_and_a_rerun_resumes(tiny_llama_dir, tmp_path):
    spec = TrainSpec(method="dpo", steps=4, learning_rate=5e-3, batch_size=2, save_every=1)
    asked = []

    def stop_after_two() -> bool:
        asked.append(1)
        return len(asked) >= 2

    first = train_policy(tiny_llama_dir, spec, ROWS, tmp_path, should_stop=stop_after_two)
    assert first.stopped and first.steps == 2
    assert sorted(p.name for p in (tmp_path / "trainer").glob("checkpoint-*")) == [
        "checkpoint-1"
    ]  # the stopped step is not saved: a resume repeats it exactly

    second = train_policy(tiny_llama_dir, spec, ROWS, tmp_path)
    assert second.resumed_from == 1 and second.steps == 4 and not second.stopped

    uninterrupted = train_policy(tiny_llama_dir, spec, ROWS, tmp_path / "again")
    resumed_logits = logits(tiny_llama_dir, [second.adapter_dir])
    straight_logits = logits(tiny_llama_dir, [uninterrupted.adapter_dir])
    assert torch.allclose(resumed_logits, straight_logits, atol=1e-5)


def test_reward_model_training_and_grpo_against_it(tiny_llama_dir, tmp_path):
    record = train_reward_model(bundled_minilm(), ROWS * 2, ROWS, tmp_path / "rm", epochs=2)
    assert record["pairs"] == 8 and record["heldout_pairs"] == 4
    assert 0.0 <= record["heldout_pairwise_accuracy"] <= 1.0
    assert (tmp_path / "rm" / "model.safetensors").exists()
    reward = load_classifier_uncached(tmp_path / "rm")
    assert reward.model.config.num_labels == 1
    accuracy, n = pairwise_accuracy(reward, ROWS)
    assert n == 4 and accuracy == record["heldout_pairwise_accuracy"]
    assert pairwise_accuracy(reward, swapped(ROWS))[0] == pytest.approx(1 - accuracy)
    again = train_reward_model(bundled_minilm(), ROWS * 2, ROWS, tmp_path / "rm2", epochs=2)
    conversations = [r["prompt"] + r["chosen"] for r in ROWS]
    assert again["loss"] == record["loss"]  # the same seed trains the same model
    assert reward_scores(load_classifier_uncached(tmp_path / "rm2"), conversations) == (
        reward_scores(reward, conversations)
    )

    spec = TrainSpec(method="grpo", steps=1, learning_rate=1e-3, batch_size=2, num_generations=2,
                     max_completion_length=6, beta=0.04)  # fmt: skip
    result = train_policy(tiny_llama_dir, spec, ROWS, tmp_path / "grpo", reward_dir=tmp_path / "rm")
    assert result.steps == 1
    logged = result.history[0]
    assert "reward" in logged and "kl" in logged
    assert "rewards/trait_reward/mean" in logged and "rewards/rubric_rules/mean" in logged


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "ppo", "steps": 1, "learning_rate": 1e-4}, "method must be one of"),
        ({"method": "dpo", "steps": 0, "learning_rate": 1e-4}, "at least 1"),
        ({"method": "dpo", "steps": 1, "learning_rate": 3.0}, "learning rate"),
        ({"method": "grpo", "steps": 1, "learning_rate": 1e-4, "beta": 0.0}, "beta > 0"),
    ],
)
def test_bad_training_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        TrainSpec(**kwargs)


def test_profiles_size_training_and_grpo_without_a_reward_model_is_refused(
    tiny_llama_dir, tmp_path
):
    assert spec_for("dpo", "quick").steps < spec_for("dpo", "standard").steps
    with pytest.raises(ValueError, match="quick or standard"):
        spec_for("dpo", "huge")
    with pytest.raises(ValueError, match="reward model"):
        train_policy(tiny_llama_dir, spec_for("grpo", "quick"), ROWS, tmp_path)
    with pytest.raises(ValueError, match="no training rows"):
        train_policy(tiny_llama_dir, spec_for("dpo", "quick"), [], tmp_path)
