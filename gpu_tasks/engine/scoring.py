"""Log-likelihood of replies given a conversation, batched and bucketed by length.

Each pair is scored four ways: chosen and rejected after the conversation, and
after an empty user turn. The difference is the calibrated (pointwise mutual
information) score that DESIGN.md explains; the raw sums are kept as well.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from gpu_tasks.engine.loading import LoadedModel

EMPTY_TURN = [{"role": "user", "content": ""}]


@dataclass(frozen=True)
class PairRequest:
    messages: list[dict]
    chosen: str
    rejected: str
    system: str | None = None


@dataclass(frozen=True)
class PairScore:
    logp_chosen: float
    logp_rejected: float
    logp_chosen_unconditional: float
    logp_rejected_unconditional: float
    tokens_chosen: int
    tokens_rejected: int

    @property
    def margin(self) -> float:
        """Calibrated margin: how much more the conversation favours chosen than rejected."""
        return (self.logp_chosen - self.logp_chosen_unconditional) - (
            self.logp_rejected - self.logp_rejected_unconditional
        )

    @property
    def margin_mean_token(self) -> float:
        return self.logp_chosen / self.tokens_chosen - self.logp_rejected / self.tokens_rejected


def render_prompt_text(tokenizer, messages: list[dict], system: str | None = None) -> str:
    """The conversation as text, up to where the assistant's reply starts."""
    if system:
        messages = [{"role": "system", "content": system}, *messages]
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    # base models: a plain transcript
    return "".join(f"{m['role'].capitalize()}: {m['content']}\n" for m in messages) + "Assistant:"


def render_prompt(tokenizer, messages: list[dict], system: str | None) -> list[int]:
    """Token ids of the conversation up to where the assistant's reply starts."""
    text = render_prompt_text(tokenizer, messages, system)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def score_pairs(
    loaded: LoadedModel,
    requests: list[PairRequest],
    *,
    batch_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> list[PairScore]:
    tok = loaded.tokenizer
    reply_ids: dict[str, list[int]] = {}
    empty_prompts: dict[str | None, list[int]] = {}
    sequences: dict[tuple[tuple[int, ...], tuple[int, ...]], float] = {}
    plans = []
    for req in requests:
        prompt = tuple(render_prompt(tok, req.messages, req.system))
        if req.system not in empty_prompts:
            empty_prompts[req.system] = render_prompt(tok, EMPTY_TURN, req.system)
        empty = tuple(empty_prompts[req.system])
        keys = []
        for reply in (req.chosen, req.rejected):
            if reply not in reply_ids:
                reply_ids[reply] = tok(reply, add_special_tokens=False)["input_ids"]
            ids = tuple(reply_ids[reply])
            if not ids:
                raise ValueError("a reply is empty after tokenisation")
            keys += [(prompt, ids), (empty, ids)]
        for key in keys:
            sequences[key] = 0.0
        plans.append(keys)

    for batch in _buckets(list(sequences), batch_tokens):
        for key, logp in zip(batch, _logprobs(loaded, batch), strict=True):
            sequences[key] = logp
        if on_batch is not None:
            on_batch(len(batch))

    scores = []
    for keys in plans:
        chosen, chosen_u, rejected, rejected_u = (sequences[k] for k in keys)
        scores.append(
            PairScore(chosen, rejected, chosen_u, rejected_u, len(keys[0][1]), len(keys[2][1]))
        )
    return scores


def _buckets(keys: list, batch_tokens: int) -> Iterable[list]:
    """Batches of similar length, each within the token budget once padded."""
    ordered = sorted(keys, key=lambda k: (len(k[0]) + len(k[1]), k))
    batch: list = []
    for key in ordered:
        length = len(key[0]) + len(key[1])
        if batch and length * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(key)
    if batch:
        yield batch


@torch.inference_mode()
def _logprobs(loaded: LoadedModel, batch: list) -> list[float]:
    """Summed log-probability of each reply given its prompt (right-padded batch)."""
    pad = loaded.tokenizer.pad_token_id
    width = max(len(p) + len(r) for p, r in batch)
    input_ids = torch.full((len(batch), width), pad, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (prompt, reply) in enumerate(batch):
        ids = prompt + reply
        input_ids[row, : len(ids)] = torch.tensor(ids)
        attention[row, : len(ids)] = 1
    logits = loaded.model(
        input_ids=input_ids.to(loaded.device), attention_mask=attention.to(loaded.device)
    ).logits
    out = []
    for row, (prompt, reply) in enumerate(batch):
        start = len(prompt)
        # Only the positions that predict the reply need a softmax over the vocabulary.
        logprobs = torch.log_softmax(logits[row, start - 1 : start - 1 + len(reply)].float(), -1)
        targets = input_ids[row, start : start + len(reply)].to(loaded.device)
        out.append(float(logprobs.gather(1, targets[:, None]).sum()))
    return out
