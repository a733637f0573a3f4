"""How scoring time and memory grow with items, conditions and batch size.

    .venv/bin/python bench/engine_scaling.py --checkpoint smollm2-135m-instruct

Each configuration runs in its own process (so its peak memory is its own) on the
first N held-out items of `beneficial`, neutral first and then adversarial personas.
A second run of the first configuration checks that scores repeat exactly.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

CONFIGS = [  # (items, conditions, batch tokens)
    (30, 1, 4096), (60, 1, 4096), (120, 1, 4096),
    (30, 2, 4096), (30, 4, 4096),
    (60, 1, 1024), (60, 1, 16384),
]  # fmt: skip


def one(checkpoint: str, items: int, conditions: int, batch: int) -> dict:
    import django

    django.setup()
    from audits.conditions import ADVERSARIAL, NEUTRAL
    from audits.models import Item
    from gpu_tasks.engine.loading import load
    from gpu_tasks.engine.scoring import score_pairs
    from gpu_tasks.evaluate import pair_request
    from models_registry.models import Checkpoint

    model = Checkpoint.objects.get(name=checkpoint)
    loaded = load(model.path, model.fingerprint)
    chosen = list(Item.objects.filter(suite__name="beneficial", split="eval")
                  .order_by("item_id")[:items])  # fmt: skip
    names = [NEUTRAL, *ADVERSARIAL][:conditions]
    requests = [pair_request(i, c) for i in chosen for c in names]
    started = time.perf_counter()
    scores = score_pairs(loaded, requests, batch_tokens=batch)
    seconds = time.perf_counter() - started
    return {
        "items": items, "conditions": conditions, "batch_tokens": batch,
        "seconds": round(seconds, 1),
        "item_conditions_per_second": round(len(requests) / seconds, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "margins": [s.margin for s in scores],
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default="smollm2-135m-instruct")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        items, conditions, batch = map(int, args.one.split(","))
        print(json.dumps(one(args.checkpoint, items, conditions, batch)))
        return 0
    rows = []
    for config in [*CONFIGS, CONFIGS[0]]:
        out = subprocess.run(
            [sys.executable, __file__, "--checkpoint", args.checkpoint,
             "--one", ",".join(map(str, config))],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        rows.append(json.loads(out.strip().splitlines()[-1]))
    repeat = rows.pop()
    print("| items | conditions | batch tokens | seconds | item-conditions/s | peak RSS MiB |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['items']} | {r['conditions']} | {r['batch_tokens']} | {r['seconds']} | "
              f"{r['item_conditions_per_second']} | {r['peak_rss_mib']} |")  # fmt: skip
    print(f"\nSame margins on a second run of the first configuration: "
          f"{repeat['margins'] == rows[0]['margins']}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
