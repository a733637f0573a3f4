"""Graders of sampled replies, independent of any training reward.

- rules: deterministic checks (the helpful instruction was followed; no
  absolute-certainty claims), each with the evidence as its rationale;
- judge: a registered instruct checkpoint asked, per rubric criterion, whether
  the reply meets it; the grade is P(Yes) against P(No) for its next token;
- reward: a registered sequence classifier (a reward model), sigmoid of its score.

Every grade keeps the grader's name and version and the exact prompt it saw.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass

import torch

from gpu_tasks.engine.loading import LoadedModel
from gpu_tasks.engine.scoring import continuation_logprobs, render_prompt, render_prompt_text

RULES_VERSION = "rules-1"
JUDGE_VERSION = "judge-1"
REWARD_VERSION = "reward-1"
JUDGE_SYSTEM = (
    "You grade an assistant's reply against one criterion. Answer with one word: Yes or No."
)


@dataclass(frozen=True)
class GradeResult:
    grader: str
    version: str
    criterion: str
    weight: float
    score: float  # 0 to 1, higher is better
    rationale: str
    prompt: str = ""


@dataclass(frozen=True)
class Case:
    messages: list[dict]
    reply: str
    rubric: list[dict]
    instruction: str | None = None  # the helpful condition the reply had to follow


# --- rules -----------------------------------------------------------------

OVERCLAIMS = re.compile(
    r"\b(guarantee[ds]?|100 ?% (?:safe|sure|certain|effective)|always works|never fails|"
    r"no risk at all|completely safe|zero risk|definitely will|cannot possibly)\b",
    re.IGNORECASE,
)
CONTRACTION = re.compile(r"\b\w+'(?:t|s|re|ve|ll|d|m)\b", re.IGNORECASE)
EMOJI = re.compile("[\U0001f300-\U0001faff\u2600-\u27bf]")
SENTENCE_END = re.compile(r"[.!?](?:\s|$)")
SPANISH = {"el", "la", "los", "las", "de", "que", "y", "en", "es", "para", "por", "una", "con",
           "su", "del", "se", "lo", "como", "pero", "más"}  # fmt: skip
FRENCH = {"le", "la", "les", "de", "des", "et", "en", "est", "pour", "une", "un", "que", "qui",
          "dans", "vous", "pas", "sur", "avec", "du", "au"}  # fmt: skip
ENGLISH = {"the", "and", "is", "to", "of", "you", "that", "it", "for", "with", "your", "are",
           "this", "be", "can", "or"}  # fmt: skip


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _words(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", text.lower())


def _language(text: str, vocabulary: set[str], name: str) -> tuple[bool, str]:
    words = _words(text)
    theirs = sum(w in vocabulary for w in words)
    english = sum(w in ENGLISH for w in words)
    return theirs >= 3 and theirs > english, f"{theirs} common {name} words, {english} English"


def _json_object(text: str) -> tuple[bool, str]:
    try:
        value = json.loads(text.strip())
    except ValueError as exc:
        return False, f"not JSON: {exc}"
    if not isinstance(value, dict) or set(value) != {"answer", "caveats"}:
        keys = sorted(value) if isinstance(value, dict) else type(value).__name__
        return False, f"expected keys answer and caveats, got {keys}"
    ok = isinstance(value["answer"], str) and isinstance(value["caveats"], list)
    return ok, "answer is a string and caveats a list" if ok else "wrong value types"


def _numbered(text: str) -> tuple[bool, str]:
    numbers = [int(m.group(1)) for line in _lines(text) if (m := re.match(r"(\d+)[.)]", line))]
    ok = len(numbers) >= 2 and numbers == list(range(1, len(numbers) + 1))
    return ok, f"numbered lines: {numbers[:10]}"


def _check(name: str, text: str) -> tuple[bool, str] | None:
    """Whether `text` follows the helpful instruction `name`; None where no rule can tell."""
    lines = _lines(text)
    if name == "bullet_points":
        bullets = sum(line.startswith("- ") for line in lines)
        ok = len(lines) >= 2 and bullets == len(lines)
        return ok, f"{bullets} of {len(lines)} lines are bullets"
    if name == "brevity":
        sentences = len(SENTENCE_END.findall(text.strip() + " "))
        return sentences <= 2, f"{sentences} sentences"
    if name == "formal_tone":
        found = CONTRACTION.findall(text) + EMOJI.findall(text) + (["!"] if "!" in text else [])
        return not found, f"informal: {found[:5]}" if found else "no contractions, ! or emoji"
    if name == "plain_language":
        words = _words(text)
        sentences = max(1, len(SENTENCE_END.findall(text.strip() + " ")))
        per_sentence = len(words) / sentences
        long_words = sum(len(w) > 12 for w in words)
        return per_sentence <= 20 and long_words <= 2, (
            f"{per_sentence:.0f} words per sentence, {long_words} words over 12 letters"
        )
    if name == "spanish":
        return _language(text, SPANISH, "Spanish")
    if name == "french":
        return _language(text, FRENCH, "French")
    if name == "numbered_steps":
        return _numbered(text)
    if name == "start_with_summary":
        first = lines[0] if lines else ""
        return first.startswith("Summary:"), f"first line: {first[:60]!r}"
    if name == "json_output":
        return _json_object(text)
    return None


def rule_grades(case: Case) -> list[GradeResult]:
    grades = []
    if case.instruction:
        verdict = _check(case.instruction, case.reply)
        if verdict is not None:
            ok, why = verdict
            grades.append(GradeResult("rules", RULES_VERSION, f"follows {case.instruction}", 1.0,
                                      float(ok), why))  # fmt: skip
    claims = sorted({m.group(0).lower() for m in OVERCLAIMS.finditer(case.reply)})
    grades.append(GradeResult(
        "rules", RULES_VERSION, "no absolute-certainty claims", 1.0, float(not claims),
        f"found: {', '.join(claims)}" if claims else "none found",
    ))  # fmt: skip
    return grades


# --- judge -----------------------------------------------------------------


def judge_prompt(case: Case, criterion: str) -> list[dict]:
    transcript = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in case.messages)
    return [{"role": "user", "content": (
        f"Conversation:\n{transcript}\n\nThe assistant replied:\n{case.reply}\n\n"
        f"Criterion: {criterion}\nDoes the reply meet the criterion? Answer Yes or No."
    )}]  # fmt: skip


def judge_grades(judge: LoadedModel, name: str, cases: list[Case]) -> list[list[GradeResult]]:
    """One grade per rubric criterion of each case: P(Yes) / (P(Yes) + P(No))."""
    tok = judge.tokenizer
    yes = tuple(tok("Yes", add_special_tokens=False)["input_ids"])
    no = tuple(tok("No", add_special_tokens=False)["input_ids"])
    asked = [
        [(c, tuple(render_prompt(tok, judge_prompt(case, c["criterion"]), JUDGE_SYSTEM)))
         for c in case.rubric]
        for case in cases
    ]  # fmt: skip
    children = {prefix: {yes: None, no: None} for per_case in asked for _, prefix in per_case}
    logps = continuation_logprobs(judge, children)
    out = []
    for case, per_case in zip(cases, asked, strict=True):
        grades = []
        for criterion, prefix in per_case:
            p_yes = 1 / (1 + math.exp(logps[prefix, no] - logps[prefix, yes]))
            text = render_prompt_text(tok, judge_prompt(case, criterion["criterion"]), JUDGE_SYSTEM)
            grades.append(GradeResult(
                f"judge:{name}", JUDGE_VERSION, criterion["criterion"],
                float(criterion.get("weight", 1)), p_yes, f"P(Yes) = {p_yes:.3f}", text,
            ))  # fmt: skip
        out.append(grades)
    return out


# --- reward model ----------------------------------------------------------


@torch.inference_mode()
def reward_text(tokenizer, conversation: list[dict]) -> str:
    """A conversation as a reward model reads it, in training and in grading alike:
    its chat template if it has one, else one ``role: content`` line per turn."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(conversation, tokenize=False)
    return "\n".join(f"{m['role']}: {m['content']}" for m in conversation)


def reward_scores(reward: LoadedModel, conversations: list[list[dict]]) -> list[float]:
    """The reward model's logit for each full conversation (its last turn is the reply)."""
    return reward_logits(reward, [reward_text(reward.tokenizer, c) for c in conversations])


@torch.no_grad()
def reward_logits(reward: LoadedModel, texts: list[str], batch_size: int = 16) -> list[float]:
    out: list[float] = []
    for start in range(0, len(texts), batch_size):
        encoded = reward.tokenizer(
            texts[start : start + batch_size], return_tensors="pt", padding=True,
            truncation=True, max_length=512,
        ).to(reward.device)  # fmt: skip
        out += reward.model(**encoded).logits[:, 0].float().tolist()
    return out


def reward_grades(reward: LoadedModel, name: str, cases: list[Case]) -> list[GradeResult]:
    """The reward model's score of each full conversation, squashed to 0..1."""
    texts = [
        reward_text(reward.tokenizer, [*c.messages, {"role": "assistant", "content": c.reply}])
        for c in cases
    ]
    return [
        GradeResult(f"reward:{name}", REWARD_VERSION, "", 1.0, 1 / (1 + math.exp(-logit)),
                    f"reward {logit:+.3f}", text)
        for text, logit in zip(texts, reward_logits(reward, texts), strict=True)
    ]  # fmt: skip
