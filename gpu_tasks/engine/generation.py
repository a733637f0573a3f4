"""Batched sampling of assistant replies, reproducible for a seed and batch plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gpu_tasks.engine.loading import LoadedModel
from gpu_tasks.engine.scoring import render_prompt


@dataclass(frozen=True)
class Sampled:
    text: str
    tokens: int
    finished: bool  # False when the reply was cut at the token limit


@torch.inference_mode()
def sample_replies(
    loaded: LoadedModel,
    conversations: list[tuple[list[dict], str | None]],
    *,
    seed: int,
    max_new_tokens: int = 96,
    temperature: float = 0.7,
    top_p: float = 0.9,
    batch_size: int = 16,
) -> list[Sampled]:
    """One sampled reply per (messages, system prompt); batch b is seeded with seed + b."""
    tok = loaded.tokenizer
    configured = loaded.model.generation_config.eos_token_id
    eos = {tok.eos_token_id, *(configured if isinstance(configured, list) else [configured])}
    out: list[Sampled] = []
    for number, start in enumerate(range(0, len(conversations), batch_size)):
        prompts = [render_prompt(tok, m, s) for m, s in conversations[start : start + batch_size]]
        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), tok.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, prompt in enumerate(prompts):  # left padding: every reply starts at `width`
            ids[row, width - len(prompt) :] = torch.tensor(prompt)
            mask[row, width - len(prompt) :] = 1
        torch.manual_seed(seed + number)
        generated = loaded.model.generate(
            input_ids=ids.to(loaded.device), attention_mask=mask.to(loaded.device),
            do_sample=temperature > 0, temperature=temperature or None, top_p=top_p,
            max_new_tokens=max_new_tokens, pad_token_id=tok.pad_token_id,
        )[:, width:].tolist()  # fmt: skip
        for row in generated:
            stop = next((i for i, t in enumerate(row) if t in eos), None)
            reply = row if stop is None else row[:stop]
            out.append(Sampled(tok.decode(reply, skip_special_tokens=True).strip(), len(reply),
                               stop is not None))  # fmt: skip
    return out
