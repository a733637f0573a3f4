"""Which training settings move held-out margins in the trained domain?

    .venv/bin/python bench/training_sweep.py --method dpo --domain health \\
        --config learning_rate=1e-4 --config learning_rate=2e-4,beta=0.3

For each --config (overrides of the `quick` TrainSpec), trains a LoRA adapter on the
domain's train split and scores the domain's held-out `beneficial` items with the base
and the variant in fp32 (neutral condition). Prints, per config, the paired change of
the calibrated margin, the mean per-token margin and the uncalibrated sum margin, each
with a 95% bootstrap interval, and the training wall time. The same items, scorer and
statistics as an audit; this only skips the database, so settings can be tried quickly.
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
    parser.add_argument("--method", default="dpo", choices=["dpo", "sft"])
    parser.add_argument("--domain", default="health")
    parser.add_argument("--config", action="append", default=[], type=parse_config)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()

    import django

    django.setup()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from audits.conditions import NEUTRAL, system_prompt
    from audits.metrics import paired_difference
    from audits.models import Item
    from gpu_tasks.checkpoints import training_base
    from gpu_tasks.engine.loading import load_uncached
    from gpu_tasks.engine.scoring import PairRequest, score_pairs
    from gpu_tasks.engine.training import preference_rows, spec_for, train_policy
    from models_registry.models import Checkpoint

    work = Path(tempfile.mkdtemp(prefix="keel-sweep-"))
    base = training_base(Checkpoint.objects.get(name=args.checkpoint), work)
    rows = preference_rows(Item.objects.filter(split="train", domain=args.domain)
                           .order_by("item_id"))  # fmt: skip
    held = list(Item.objects.filter(suite__name="beneficial", split="eval", domain=args.domain)
                .order_by("item_id"))  # fmt: skip
    requests = [PairRequest(i.messages, i.chosen, i.rejected, system_prompt(NEUTRAL))
                for i in held]  # fmt: skip

    def scores(adapters):
        return score_pairs(load_uncached(base, adapters, dtype=torch.float32), requests)

    before = scores(())
    for n, overrides in enumerate(args.config or [{}]):
        spec = spec_for(args.method, "quick", **overrides)
        started = time.monotonic()
        result = train_policy(base, spec, rows, work / f"run-{n}")
        seconds = time.monotonic() - started
        after = scores((result.adapter_dir,))
        report = {"config": overrides, "train_seconds": round(seconds), "items": len(held)}
        for name, value in (
            ("calibrated_margin", lambda s: s.margin),
            ("mean_token_margin", lambda s: s.margin_mean_token),
            ("uncalibrated_margin", lambda s: s.logp_chosen - s.logp_rejected),
        ):
            e = paired_difference([value(s) for s in after], [value(s) for s in before], 0)
            report[name] = [round(e.value, 4), round(e.ci_low, 4), round(e.ci_high, 4)]
        report["better"] = sum(a.margin > b.margin for a, b in zip(after, before, strict=True))
        print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
