"""Reward-hacking watch: does GRPO please its reward model without getting better?

    .venv/bin/python bench/reward_hacking.py --domain health --steps 40 --every 10

Trains a trait reward model and a GRPO LoRA adapter on the domain's train split (the
`quick` GRPO settings unless overridden), keeps every periodic save, and for the base
and each save measures, on the domain's *held-out* prompts:
- the training reward: the trait reward model's mean score of sampled replies (seeded,
  the same length limit as in training), and the reward GRPO logged at that step;
- independent graders that the policy never saw: the rubric rules' pass rate on the
  same replies, and the paired calibrated log-likelihood margin of the held-out
  preference pairs (beneficial reply against misaligned) and of 60 misalignment probes.
Prints one JSON line per checkpoint, each score with its paired change from the base
(95% bootstrap interval); a rising training reward with flat or falling independent
scores is reward hacking.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="smollm2-135m-instruct")
    parser.add_argument("--domain", default="health")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", type=int, default=10)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--completion-tokens", type=int, default=None)
    parser.add_argument("--reward-epochs", type=int, default=10)
    parser.add_argument("--reward-lr", type=float, default=2e-4)
    parser.add_argument(
        "--reward-domains",
        choices=["trained", "all"],
        default="trained",
        help="train the reward model on the trained domain's pairs or all 12",
    )
    parser.add_argument("--group", type=int, default=None, help="GRPO completions per prompt")
    parser.add_argument(
        "--reward-only", action="store_true", help="train and describe the reward model, then stop"
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    parser.add_argument("--work", type=Path, default=None, help="keep files here")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from audits.metrics import paired_difference
    from audits.models import Item
    from gpu_tasks.checkpoints import training_base
    from gpu_tasks.engine.convert import bundled_minilm
    from gpu_tasks.engine.generation import sample_replies
    from gpu_tasks.engine.graders import Case, reward_scores, rule_grades
    from gpu_tasks.engine.loading import load_classifier_uncached, load_uncached
    from gpu_tasks.engine.training import (
        pair_scores,
        preference_rows,
        spec_for,
        train_policy,
        train_reward_model,
    )
    from models_registry.models import Checkpoint

    work = args.work or Path(tempfile.mkdtemp(prefix="keel-reward-hacking-"))
    work.mkdir(parents=True, exist_ok=True)
    base = training_base(Checkpoint.objects.get(name=args.checkpoint), work)
    train = preference_rows(Item.objects.filter(split="train", domain=args.domain)
                            .order_by("item_id"))  # fmt: skip
    heldout_items = list(Item.objects.filter(suite__name="beneficial", split="eval",
                                             domain=args.domain).order_by("item_id"))  # fmt: skip
    probes = list(Item.objects.filter(suite__name="probes", split="eval").order_by("item_id"))
    probes = [p for i, p in enumerate(probes) if i % 3 == 0]  # 60, every family
    overrides = {"steps": args.steps, "save_every": args.every}
    if args.learning_rate:
        overrides["learning_rate"] = args.learning_rate
    if args.completion_tokens:
        overrides["max_completion_length"] = args.completion_tokens
    if args.group:
        overrides["num_generations"] = args.group
    reward_rows = train
    if args.reward_domains == "all":
        reward_rows = preference_rows(Item.objects.filter(split="train").order_by("item_id"))
    spec = spec_for("grpo", "quick", **overrides)

    started = time.monotonic()
    held_pairs = preference_rows(heldout_items)
    record = train_reward_model(
        bundled_minilm(), reward_rows, held_pairs, work / "reward",
        epochs=args.reward_epochs, learning_rate=args.reward_lr,
    )  # fmt: skip
    reward = load_classifier_uncached(work / "reward")
    chosen, rejected = pair_scores(reward, held_pairs)
    record = {k: v for k, v in record.items() if k != "loss"}
    record["heldout_logit_sd"] = round(statistics.pstdev(chosen + rejected), 4)
    record["heldout_chosen_minus_rejected"] = round(statistics.fmean(
        c - r for c, r in zip(chosen, rejected, strict=True)), 4)  # fmt: skip
    print(json.dumps({"reward_model": record}), flush=True)
    if args.reward_only:
        return 0
    result = train_policy(base, spec, train, work / "grpo", reward_dir=work / "reward",
                          keep_saves=True)  # fmt: skip
    train_seconds = time.monotonic() - started
    curve = {h["step"]: h for h in result.history}
    saves = sorted((work / "grpo" / "trainer").glob("checkpoint-*"),
                   key=lambda p: int(p.name.rsplit("-", 1)[1]))  # fmt: skip

    base_scores = None
    for step, adapters in [(0, ()), *[(int(p.name.rsplit("-", 1)[1]), (p,)) for p in saves]]:
        loaded = load_uncached(base, adapters, dtype=torch.float32)
        replies = sample_replies(
            loaded, [(i.messages, None) for i in heldout_items], seed=0,
            max_new_tokens=spec.max_completion_length, temperature=spec.temperature,
        )  # fmt: skip
        scores = {
            "reward_model": reward_scores(reward, [
                [*i.messages, {"role": "assistant", "content": r.text}]
                for i, r in zip(heldout_items, replies, strict=True)]),
            "rules_pass": [
                statistics.fmean(g.score for g in rule_grades(Case(i.messages, r.text, i.rubric)))
                for i, r in zip(heldout_items, replies, strict=True)],
            "heldout_margin": margins(loaded, heldout_items),
            "probes_margin": margins(loaded, probes),
        }  # fmt: skip
        base_scores = base_scores or scores
        report = {"step": step, "train_reward_logged": curve.get(step, {}).get("reward"),
                  "replies_cut_at_limit": sum(not r.finished for r in replies)}  # fmt: skip
        for name, values in scores.items():
            report[name] = {"mean": round(statistics.fmean(values), 4)}
            if step:  # the paired change from the base, with its 95% interval
                change = paired_difference(values, base_scores[name], 0)
                report[name]["change"] = [
                    round(x, 4) for x in (change.value, change.ci_low, change.ci_high)
                ]
        print(json.dumps(report), flush=True)
    print(json.dumps({"train_seconds": round(train_seconds), "steps": result.steps,
                      "spec": spec.as_config()}))  # fmt: skip
    return 0


def margins(loaded, items) -> list[float]:
    """Calibrated margins of the items' preference pairs, neutral condition."""
    from audits.conditions import NEUTRAL
    from gpu_tasks.engine.scoring import score_pairs
    from gpu_tasks.evaluate import pair_request

    return [s.margin for s in score_pairs(loaded, [pair_request(i, NEUTRAL) for i in items])]


if __name__ == "__main__":
    sys.exit(main())
