"""Keel's scoring against lm-evaluation-harness on the same items, model and machine.

    .venv/bin/python bench/lm_eval_agreement.py --suite starter \
        --checkpoint smollm2-135m-instruct --lm-eval /path/to/venv/bin/lm_eval

lm-eval is not a Keel dependency: install it in its own environment
(`pip install lm-eval==0.4.13 accelerate torch==2.13.0`). The script scores the
suite's eval items with Keel's engine in this process, exports the suite as an
lm-eval task rendered with the checkpoint's chat template, runs lm-eval (HF
backend, CPU, fp32 or --dtype), and compares per-item log-likelihoods, choices and time.
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
    parser.add_argument("--limit", type=int, help="only the first N eval items")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16"), default="float32",
        help="both tools in this dtype (agreement to 1e-3 is the fp32 claim)",
    )  # fmt: skip
    args = parser.parse_args()
    os.environ["KEEL_DTYPE"] = args.dtype

    import django

    django.setup()
    from audits.conditions import NEUTRAL
    from audits.models import Suite
    from audits.suite_export import export_lm_eval
    from gpu_tasks.engine.loading import load
    from gpu_tasks.engine.scoring import score_pairs
    from gpu_tasks.evaluate import pair_request
    from models_registry.models import Checkpoint

    suite = Suite.objects.filter(name=args.suite).order_by("-version").first()
    checkpoint = Checkpoint.objects.filter(name=args.checkpoint).first()
    if suite is None or checkpoint is None:
        sys.exit("Unknown suite or checkpoint; run `python manage.py keel_setup` first.")
    items = list(suite.items.filter(split="eval").order_by("item_id"))[: args.limit]
    loaded = load(checkpoint.path, checkpoint.fingerprint)
    peak = matmul_peak(loaded.dtype)

    counted = count_work(loaded, items)
    started = time.perf_counter()
    scores = score_pairs(loaded, [pair_request(i, NEUTRAL) for i in items])
    keel_seconds = time.perf_counter() - started
    ours = {i.item_id: s for i, s in zip(items, scores, strict=True)}
    flops = model_flops(loaded, counted)
    same_work_seconds = time_conditional_only(loaded, items)

    with tempfile.TemporaryDirectory() as tmp:
        yaml = export_lm_eval(suite, Path(tmp) / "task", tokenizer=loaded.tokenizer)
        command = [
            args.lm_eval, "--model", "hf", "--model_args",
            f"pretrained={checkpoint.path},dtype={args.dtype}", "--include_path", str(yaml.parent),
            "--tasks", yaml.stem, "--device", "cpu", "--batch_size", str(args.batch_size),
            "--log_samples", "--output_path", str(Path(tmp) / "out"),
        ]  # fmt: skip
        env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
        # Its start-up and model load, measured on one item and subtracted below.
        started = time.perf_counter()
        subprocess.run([*command[:-2], "--output_path", str(Path(tmp) / "one"), "--limit", "1"],
                       check=True, env=env, capture_output=True)  # fmt: skip
        lm_startup = time.perf_counter() - started
        if args.limit:
            command += ["--limit", str(args.limit)]
        started = time.perf_counter()
        subprocess.run(command, check=True, env=env, capture_output=True)
        lm_seconds = time.perf_counter() - started
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
        "keel_items_per_second": round(n / keel_seconds, 3),
        "lm_eval_seconds_incl_startup": round(lm_seconds, 1),
        "lm_eval_startup_and_one_item_seconds": round(lm_startup, 1),
        "lm_eval_items_per_second": round((n - 1) / (lm_seconds - lm_startup), 3),
        "speedup": round((n / keel_seconds) / ((n - 1) / (lm_seconds - lm_startup)), 2),
        "keel_same_work_seconds": round(same_work_seconds, 1),
        "speedup_same_work": round(
            (n / same_work_seconds) / ((n - 1) / (lm_seconds - lm_startup)), 2
        ),
        "keel_work": counted,
        "keel_model_gflop_per_second": round(flops / keel_seconds / 1e9, 1),
        "matmul_peak_gflop_per_second": round(peak / 1e9, 1),
        "share_of_peak": round(flops / keel_seconds / peak, 3),
        "dtype": str(loaded.dtype),
    }, indent=2))  # fmt: skip
    return 0


def time_conditional_only(loaded, items) -> float:
    """Keel's engine doing only what lm-eval does: both replies after the conversation,
    without the empty-turn calibration."""
    from gpu_tasks.engine.scoring import continuation_logprobs, render_prompt

    tok = loaded.tokenizer
    children = {
        tuple(render_prompt(tok, i.messages, None)): {
            tuple(tok(r, add_special_tokens=False)["input_ids"]): None
            for r in (i.chosen, i.rejected)
        }
        for i in items
    }
    started = time.perf_counter()
    continuation_logprobs(loaded, children)
    return time.perf_counter() - started


def matmul_peak(dtype, size: int = 2048, repeats: int = 10) -> float:
    """The machine's matrix-multiply rate in FLOP/s, torch.matmul, same dtype."""
    import torch

    a = torch.randn(size, size).to(dtype)
    a @ a
    started = time.perf_counter()
    for _ in range(repeats):
        a @ a
    return 2 * size**3 * repeats / (time.perf_counter() - started)


def count_work(loaded, items) -> dict:
    """Tokens through the transformer body and positions through the vocabulary projection."""
    from gpu_tasks.engine.scoring import EMPTY_TURN, ROW_TOKENS, _pack, render_prompt

    tok = loaded.tokenizer
    empty = tuple(render_prompt(tok, EMPTY_TURN, None))
    children: dict = {}
    for item in items:
        prompt = tuple(render_prompt(tok, item.messages, None))
        for reply in (item.chosen, item.rejected):
            ids = tuple(tok(reply, add_special_tokens=False)["input_ids"])
            children.setdefault(prompt, {})[ids] = None
            children.setdefault(empty, {})[ids] = None
    trees = _pack(children, ROW_TOKENS)
    return {
        "body_tokens": sum(t.width for t in trees),
        "head_positions": sum(len(r) for t in trees for r in t.replies),
        "attention_pairs": sum(t.width**2 for t in trees),
        "lm_eval_body_tokens": sum(
            2 * len(render_prompt(tok, i.messages, None)) + len(tok(i.chosen)["input_ids"])
            + len(tok(i.rejected)["input_ids"]) for i in items
        ),
    }  # fmt: skip


def model_flops(loaded, counted: dict) -> float:
    """2 FLOPs per weight per token, the vocabulary projection only where it ran, plus
    attention scores and their weighted sum (4 x hidden per query-key pair)."""
    model = loaded.model
    head = model.get_output_embeddings().weight.numel()
    body = sum(p.numel() for p in model.base_model.parameters()) - head  # tied embeddings
    layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    return (2 * body * counted["body_tokens"] + 2 * head * counted["head_positions"]
            + 4 * hidden * layers * counted["attention_pairs"] / 2)  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
