"""Keel's scoring against lm-evaluation-harness on the same items, model and machine.

    .venv/bin/python bench/lm_eval_agreement.py --suite starter \
        --checkpoint smollm2-135m-instruct --lm-eval /path/to/venv/bin/lm_eval

lm-eval is not a Keel dependency: install it in its own environment
(`pip install lm-eval==0.4.13 accelerate torch==2.13.0`). The script scores the
suite's eval items with Keel's engine in this process, exports the suite as an
lm-eval task rendered with the checkpoint's chat template, runs lm-eval (HF
backend, CPU, fp32), and compares per-item log-likelihoods, choices and time.
Keel's time includes its calibration passes (four sequences per item, lm-eval two).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", default="starter")
    parser.add_argument("--checkpoint", default="smollm2-135m-instruct")
    parser.add_argument("--lm-eval", required=True, help="path to the lm_eval executable")
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    import django

    django.setup()
    from audits.models import Suite
    from audits.suite_export import export_lm_eval
    from gpu_tasks.engine.loading import load
    from gpu_tasks.engine.scoring import PairRequest, score_pairs
    from models_registry.models import Checkpoint

    suite = Suite.objects.filter(name=args.suite).order_by("-version").first()
    checkpoint = Checkpoint.objects.filter(name=args.checkpoint).first()
    if suite is None or checkpoint is None:
        sys.exit("Unknown suite or checkpoint; run `python manage.py keel_setup` first.")
    items = list(suite.items.filter(split="eval").order_by("item_id"))
    loaded = load(checkpoint.path, checkpoint.fingerprint)

    started = time.perf_counter()
    scores = score_pairs(loaded, [PairRequest(i.messages, i.chosen, i.rejected) for i in items])
    keel_seconds = time.perf_counter() - started
    ours = {i.item_id: s for i, s in zip(items, scores, strict=True)}

    with tempfile.TemporaryDirectory() as tmp:
        yaml = export_lm_eval(suite, Path(tmp) / "task", tokenizer=loaded.tokenizer)
        command = [
            args.lm_eval, "--model", "hf", "--model_args",
            f"pretrained={checkpoint.path},dtype=float32", "--include_path", str(yaml.parent),
            "--tasks", yaml.stem, "--device", "cpu", "--batch_size", str(args.batch_size),
            "--log_samples", "--output_path", str(Path(tmp) / "out"),
        ]  # fmt: skip
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        lm_seconds = time.perf_counter() - started  # includes its start-up and model load
        [samples] = glob.glob(str(Path(tmp) / "out" / "*" / f"samples_{yaml.stem}_*.jsonl"))
        theirs = [json.loads(line) for line in Path(samples).read_text().splitlines()]

    same = 0
    worst = 0.0
    their_wins = 0
    for sample in theirs:
        mine = ours[sample["doc"]["id"]]
        chosen, rejected = (float(r[0]) for r in sample["filtered_resps"][:2])
        worst = max(worst, abs(chosen - mine.logp_chosen), abs(rejected - mine.logp_rejected))
        same += (chosen > rejected) == (mine.logp_chosen > mine.logp_rejected)
        their_wins += chosen > rejected
    n = len(theirs)
    keel_acc = sum(s.logp_chosen > s.logp_rejected for s in scores) / len(scores)
    print(json.dumps({
        "suite": f"{suite.name} v{suite.version}", "checkpoint": checkpoint.name, "items": n,
        "same_choice": same, "same_choice_share": round(same / n, 4),
        "max_abs_logp_difference": worst,
        "accuracy_keel_uncalibrated": round(keel_acc, 4),
        "accuracy_lm_eval": round(their_wins / n, 4),
        "keel_seconds": round(keel_seconds, 1),
        "lm_eval_seconds_incl_startup": round(lm_seconds, 1),
    }, indent=2))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
