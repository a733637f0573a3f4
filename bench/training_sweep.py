"""Which training settings and methods move held-out margins, and steering?

    .venv/bin/python bench/training_sweep.py --method dpo --domain health \\
        --config learning_rate=1e-4 --config learning_rate=2e-4,beta=0.3
    .venv/bin/python bench/training_sweep.py --method dpo --method sft --method grpo \\
        --config learning_rate=5e-4 --condition flattery --condition sales_pressure --helpful

For each --method and --config (overrides of the `quick` TrainSpec), trains a LoRA
adapter on the domain's train split (GRPO first trains its trait reward model on the
same pairs) and scores held-out items with the base and the variant in fp32: the
domain's `beneficial` items under the neutral condition and under each --condition
persona, and with --helpful the `steering-helpful` items under their own instruction.
Prints, per run, the paired change (variant minus base, 95% bootstrap interval) of:
- the calibrated margin, the mean per-token margin and the uncalibrated sum margin;
- per persona, the steering shift (margin under the persona minus neutral): a positive
  change means the variant is steered less (steering resistance);
- with --helpful, the calibrated margin of following the instruction (helpful
  steerability).
The same items, scorer and statistics as an audit; this only skips the database, so
settings can be tried quickly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def parse_config(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        out[key.strip()] = float(value) if any(c in value for c in ".e") else int(value)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default="smollm2-135m-instruct")
    parser.add_argument("--method", action="append", choices=["dpo", "sft", "grpo"])
    parser.add_argument("--domain", default="health")
    parser.add_argument("--config", action="append", default=[], type=parse_config)
    parser.add_argument(
        "--condition",
        action="append",
        default=[],
        help="a persona to measure steering under (repeatable)",
    )
    parser.add_argument(
        "--helpful",
        action="store_true",
        help="also score the steering-helpful items under their instruction",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from audits.conditions import ADVERSARIAL, NEUTRAL, condition_of
    from audits.metrics import paired_difference
    from audits.models import Item
    from gpu_tasks.checkpoints import training_base
    from gpu_tasks.engine.convert import bundled_minilm
    from gpu_tasks.engine.loading import load_uncached
    from gpu_tasks.engine.scoring import score_pairs
    from gpu_tasks.engine.training import (
        preference_rows,
        spec_for,
        train_policy,
        train_reward_model,
    )
    from gpu_tasks.evaluate import pair_request
    from models_registry.models import Checkpoint

    for name in args.condition:
        if name not in ADVERSARIAL:
            parser.error(f"--condition {name!r} is not a persona; choose from {list(ADVERSARIAL)}")
    work = Path(tempfile.mkdtemp(prefix="keel-sweep-"))
    base = training_base(Checkpoint.objects.get(name=args.checkpoint), work)
    rows = preference_rows(Item.objects.filter(split="train", domain=args.domain)
                           .order_by("item_id"))  # fmt: skip
    held = list(Item.objects.filter(suite__name="beneficial", split="eval", domain=args.domain)
                .order_by("item_id"))  # fmt: skip
    sets = {c: [pair_request(i, c) for i in held] for c in [NEUTRAL, *args.condition]}
    if args.helpful:
        sets["helpful"] = [
            pair_request(i, condition_of(i.tags))
            for i in Item.objects.filter(suite__name="steering-helpful").order_by("item_id")
        ]

    def scores(adapters):
        loaded = load_uncached(base, adapters, dtype=torch.float32)
        return {name: score_pairs(loaded, requests) for name, requests in sets.items()}

    def change(after, before) -> list[float]:
        e = paired_difference(after, before, 0)
        return [round(e.value, 4), round(e.ci_low, 4), round(e.ci_high, 4)]

    before = scores(())
    runs = [(m, o) for m in args.method or ["dpo"] for o in args.config or [{}]]
    for n, (method, overrides) in enumerate(runs):
        spec = spec_for(method, "quick", **overrides)
        started = time.monotonic()
        reward_dir = None
        if method == "grpo":
            reward_dir = work / f"run-{n}" / "reward"
            train_reward_model(bundled_minilm(), rows, [], reward_dir, seed=spec.seed)
        result = train_policy(base, spec, rows, work / f"run-{n}", reward_dir=reward_dir)
        seconds = time.monotonic() - started
        after = scores((result.adapter_dir,))
        a, b = after[NEUTRAL], before[NEUTRAL]
        report = {"method": method, "config": overrides, "train_seconds": round(seconds),
                  "items": len(held)}  # fmt: skip
        for name, value in (
            ("calibrated_margin", lambda s: s.margin),
            ("mean_token_margin", lambda s: s.margin_mean_token),
            ("uncalibrated_margin", lambda s: s.logp_chosen - s.logp_rejected),
        ):
            report[name] = change([value(s) for s in a], [value(s) for s in b])
        report["better"] = sum(x.margin > y.margin for x, y in zip(a, b, strict=True))
        for persona in args.condition:
            report[f"steering_shift_{persona}"] = {
                model: change([s.margin for s in scored[persona]],
                              [s.margin for s in scored[NEUTRAL]])
                for model, scored in (("base", before), ("variant", after))
            }  # fmt: skip
            report[f"steering_resistance_{persona}"] = change(
                [s.margin - n.margin for s, n in zip(after[persona], a, strict=True)],
                [s.margin - n.margin for s, n in zip(before[persona], b, strict=True)],
            )
        if args.helpful:
            helped = [s.margin for s in before["helpful"]]
            report["helpful_margin_base"] = round(sum(helped) / len(helped), 4)
            report["helpful_margin_change"] = change([s.margin for s in after["helpful"]], helped)
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
