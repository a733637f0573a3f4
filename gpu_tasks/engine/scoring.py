"""Log-likelihood of replies given a conversation: shared prefixes encoded once.

Each pair is scored four ways: chosen and rejected after the conversation, and
after an empty user turn. The difference is the calibrated (pointwise mutual
information) score that DESIGN.md explains; the raw sums are kept as well.
The empty turn is always rendered without a condition's system prompt: it
measures how predictable a reply is as text, which the condition must not move,
so a persona's pull toward flattering replies shows in the calibrated margin
instead of cancelling out. It is also scored once per reply, not per condition.

Work is packed as trees: one row of the batch holds a prefix (the rendered
conversation) followed by the replies that continue it, side by side. A 4D
attention mask lets each reply see the prefix and itself, never its siblings,
and position ids restart where the prefix ends, so every reply is scored
exactly as if it followed the prefix alone, while the prefix is encoded once.
The empty-turn prefix is shared by the replies packed in one row. Only
positions that predict a reply token go through the vocabulary projection,
a fifth of a small model's compute per token.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from gpu_tasks.engine.loading import LoadedModel

EMPTY_TURN = [{"role": "user", "content": ""}]
ROW_TOKENS = 512  # a shared prefix repeats across rows beyond this; attention grows as its square
HEAD_CHUNK = 1024  # reply positions per vocabulary projection; bounds the logits' memory
Tokens = tuple[int, ...]


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


@dataclass(frozen=True)
class Tree:
    """One packed row: a prefix and the continuations scored after it."""

    prefix: Tokens
    replies: tuple[Tokens, ...]

    @property
    def width(self) -> int:
        return len(self.prefix) + sum(len(r) for r in self.replies)


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
    calibration: dict[str, float] | None = None,
) -> list[PairScore]:
    """Score every request; `on_batch` hears how many replies each batch scored.

    `calibration` maps a reply's text to its empty-turn log-likelihood: replies
    found there are not scored again, and newly scored ones are added to it.
    Conversations and empty-turn replies go in separate batches, so what is
    already known never changes how the conversations are batched.
    """
    tok = loaded.tokenizer
    calibration = {} if calibration is None else calibration
    reply_ids: dict[str, Tokens] = {}
    conversations: dict[Tokens, dict[Tokens, None]] = {}  # prefix -> replies, first-seen order
    uncalibrated: dict[Tokens, str] = {}
    plans = []
    for req in requests:
        prompt = tuple(render_prompt(tok, req.messages, req.system))
        for reply in (req.chosen, req.rejected):
            if reply not in reply_ids:
                reply_ids[reply] = tuple(tok(reply, add_special_tokens=False)["input_ids"])
            ids = reply_ids[reply]
            if not ids:
                raise ValueError("a reply is empty after tokenisation")
            conversations.setdefault(prompt, {})[ids] = None
            if reply not in calibration:
                uncalibrated[ids] = reply
        plans.append((prompt, req.chosen, req.rejected))

    logps = continuation_logprobs(
        loaded, conversations, batch_tokens=batch_tokens, on_batch=on_batch
    )
    if uncalibrated:
        empty = tuple(render_prompt(tok, EMPTY_TURN, None))
        fresh = continuation_logprobs(
            loaded, {empty: dict.fromkeys(uncalibrated)}, batch_tokens=batch_tokens,
            on_batch=on_batch,
        )  # fmt: skip
        for ids, reply in uncalibrated.items():
            calibration[reply] = fresh[empty, ids]

    scores = []
    for prompt, chosen, rejected in plans:
        c, r = reply_ids[chosen], reply_ids[rejected]
        scores.append(PairScore(
            logps[prompt, c], logps[prompt, r], calibration[chosen], calibration[rejected],
            len(c), len(r),
        ))  # fmt: skip
    return scores


def continuation_logprobs(
    loaded: LoadedModel,
    children: dict[Tokens, dict[Tokens, None]],
    *,
    batch_tokens: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> dict[tuple[Tokens, Tokens], float]:
    """Summed log-probability of each continuation after its prefix, keyed (prefix, reply)."""
    logps: dict[tuple[Tokens, Tokens], float] = {}
    for batch in _buckets(_pack(children, ROW_TOKENS), batch_tokens):
        for tree, values in zip(batch, _tree_logprobs(loaded, batch), strict=True):
            for reply, value in zip(tree.replies, values, strict=True):
                logps[tree.prefix, reply] = value
        if on_batch is not None:
            on_batch(sum(len(t.replies) for t in batch))
    return logps


def _pack(children: dict[Tokens, dict[Tokens, None]], row_tokens: int) -> list[Tree]:
    """One tree per prefix, split where a row would grow past `row_tokens`."""
    trees = []
    for prefix, replies in children.items():
        row: list[Tokens] = []
        width = len(prefix)
        for reply in replies:
            if row and width + len(reply) > row_tokens:
                trees.append(Tree(prefix, tuple(row)))
                row, width = [], len(prefix)
            row.append(reply)
            width += len(reply)
        trees.append(Tree(prefix, tuple(row)))
    return trees


def _buckets(trees: list[Tree], batch_tokens: int) -> Iterable[list[Tree]]:
    """Batches of rows of similar width, each within the token budget once padded."""
    ordered = sorted(trees, key=lambda t: (t.width, t.prefix, t.replies))
    batch: list[Tree] = []
    for tree in ordered:
        if batch and tree.width * (len(batch) + 1) > batch_tokens:
            yield batch
            batch = []
        batch.append(tree)
    if batch:
        yield batch


@torch.inference_mode()
def _tree_logprobs(loaded: LoadedModel, batch: list[Tree]) -> list[list[float]]:
    """Summed log-probability of each reply of each tree, in one forward pass."""
    width = max(t.width for t in batch)
    input_ids = torch.full((len(batch), width), loaded.tokenizer.pad_token_id, dtype=torch.long)
    positions = torch.zeros((len(batch), width), dtype=torch.long)
    allowed = torch.zeros((len(batch), width, width), dtype=torch.bool)
    allowed[:, torch.arange(width), torch.arange(width)] = True  # padding sees itself: no NaN
    sources: list[int] = []  # flat index (row * width + position) of each prediction
    targets: list[int] = []
    owners: list[int] = []  # which reply, counted across the batch, each prediction scores
    reply_number = 0
    for row, tree in enumerate(batch):
        p = len(tree.prefix)
        input_ids[row, :p] = torch.tensor(tree.prefix)
        positions[row, :p] = torch.arange(p)
        allowed[row, :p, :p] = torch.ones(p, p, dtype=torch.bool).tril()
        start = p
        for reply in tree.replies:
            n = len(reply)
            end = start + n
            input_ids[row, start:end] = torch.tensor(reply)
            positions[row, start:end] = torch.arange(p, p + n)
            allowed[row, start:end, :p] = True
            allowed[row, start:end, start:end] = torch.ones(n, n, dtype=torch.bool).tril()
            # the prefix's last position predicts the reply's first token, then each its next
            sources += [row * width + s for s in (p - 1, *range(start, end - 1))]
            targets += reply
            owners += [reply_number] * n
            reply_number += 1
            start = end

    model = loaded.model
    dtype = model.dtype
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    hidden = model.base_model(
        input_ids=input_ids.to(loaded.device),
        attention_mask=mask[:, None].to(loaded.device),
        position_ids=positions.to(loaded.device),
        use_cache=False,
    ).last_hidden_state.flatten(0, 1)
    head = model.get_output_embeddings()
    index = torch.tensor(sources, device=loaded.device)
    wanted = torch.tensor(targets, device=loaded.device)
    token_logps = torch.empty(len(sources), dtype=torch.float32, device=loaded.device)
    for at in range(0, len(sources), HEAD_CHUNK):
        piece = slice(at, at + HEAD_CHUNK)
        logits = head(hidden[index[piece]]).float()
        token_logps[piece] = logits.log_softmax(-1).gather(1, wanted[piece, None])[:, 0]
    sums = torch.zeros(reply_number, dtype=torch.float64)
    sums.index_add_(0, torch.tensor(owners), token_logps.cpu().double())
    out, at = [], 0
    for tree in batch:
        out.append(sums[at : at + len(tree.replies)].tolist())
        at += len(tree.replies)
    return out
