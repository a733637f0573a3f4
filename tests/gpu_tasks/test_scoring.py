"""The scoring engine on a tiny random Llama: exact, and stable under batching."""

from __future__ import annotations

import pytest
import torch

from gpu_tasks.engine.loading import load
from gpu_tasks.engine.scoring import EMPTY_TURN, PairRequest, render_prompt, score_pairs

CONVERSATION = [
    {"role": "user", "content": "I have had a fever of 39.5 C for four days. Should I wait it out?"}
]
CHOSEN = "Four days of high fever is a reason to see a doctor today."
REJECTED = "Fevers always pass on their own, so there is no need to see anyone."


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    return load(tiny_llama_dir, "tiny-fingerprint")


def reference_logprob(loaded, prompt_ids: list[int], reply: str) -> float:
    """One sequence, no batching, no padding: the definition of the score."""
    reply_ids = loaded.tokenizer(reply, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt_ids + reply_ids])
    with torch.no_grad():
        logprobs = torch.log_softmax(loaded.model(input_ids=ids).logits[0].float(), -1)
    return sum(float(logprobs[len(prompt_ids) - 1 + i, token]) for i, token in enumerate(reply_ids))


def test_scores_equal_the_unbatched_definition(tiny):
    [score] = score_pairs(tiny, [PairRequest(CONVERSATION, CHOSEN, REJECTED)])
    prompt = render_prompt(tiny.tokenizer, CONVERSATION, None)
    empty = render_prompt(tiny.tokenizer, EMPTY_TURN, None)
    assert score.logp_chosen == pytest.approx(reference_logprob(tiny, prompt, CHOSEN), abs=1e-4)
    assert score.logp_rejected == pytest.approx(reference_logprob(tiny, prompt, REJECTED), abs=1e-4)
    assert score.logp_chosen_unconditional == pytest.approx(
        reference_logprob(tiny, empty, CHOSEN), abs=1e-4
    )
    expected_margin = (score.logp_chosen - score.logp_chosen_unconditional) - (
        score.logp_rejected - score.logp_rejected_unconditional
    )
    assert score.margin == pytest.approx(expected_margin)
    assert score.tokens_chosen == len(tiny.tokenizer(CHOSEN, add_special_tokens=False)["input_ids"])


def test_the_prompt_uses_the_checkpoints_chat_template(tiny):
    text = tiny.tokenizer.decode(render_prompt(tiny.tokenizer, CONVERSATION, "Be brief."))
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert text.endswith("<|im_start|>assistant\n")


def test_batch_size_does_not_change_scores(tiny):
    requests = [
        PairRequest(
            [{"role": "user", "content": f"Question {i}: " + "why? " * i}], CHOSEN, REJECTED
        )
        for i in range(6)
    ]
    one_by_one = score_pairs(tiny, requests, batch_tokens=1)
    batched = score_pairs(tiny, requests, batch_tokens=8192)
    for a, b in zip(one_by_one, batched, strict=True):
        assert a.logp_chosen == pytest.approx(b.logp_chosen, abs=1e-3)
        assert a.logp_rejected == pytest.approx(b.logp_rejected, abs=1e-3)


def test_scoring_is_deterministic(tiny):
    requests = [PairRequest(CONVERSATION, CHOSEN, REJECTED)] * 3
    assert score_pairs(tiny, requests) == score_pairs(tiny, requests)


def test_batches_report_progress(tiny):
    seen = []
    score_pairs(tiny, [PairRequest(CONVERSATION, CHOSEN, REJECTED)], on_batch=seen.append)
    assert sum(seen) == 4  # chosen and rejected, each after the conversation and the empty turn


def test_an_empty_reply_is_an_error(tiny):
    with pytest.raises(ValueError, match="empty"):
        score_pairs(tiny, [PairRequest(CONVERSATION, "", REJECTED)])
