"""Suites out of Keel: JSONL, TRL's preference format, an lm-evaluation-harness task."""

from __future__ import annotations

import json
from pathlib import Path

from audits.models import Suite
from audits.suite_io import item_to_dict

FORMATS = ("jsonl", "trl", "lm-eval")


def export_jsonl(suite: Suite, out: Path, split: str | None = None) -> int:
    items = _items(suite, split)
    with out.open("w", encoding="utf-8") as f:
        for item in items:
            f.write(json.dumps(item_to_dict(item), ensure_ascii=False) + "\n")
    return len(items)


def export_trl(suite: Suite, out: Path, split: str | None = None) -> int:
    """Conversational preference rows: prompt (messages), chosen and rejected (one turn each)."""
    items = [i for i in _items(suite, split) if i.chosen and i.rejected]
    with out.open("w", encoding="utf-8") as f:
        for item in items:
            row = {
                "prompt": item.messages,
                "chosen": [{"role": "assistant", "content": item.chosen}],
                "rejected": [{"role": "assistant", "content": item.rejected}],
            }
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(items)


def export_lm_eval(suite: Suite, out_dir: Path, tokenizer=None, split: str = "eval") -> Path:
    """A local lm-evaluation-harness task: YAML plus a JSONL of documents.

    Each document's context is the conversation rendered as Keel scores it (the
    tokenizer's chat template when one is given), and the two replies are the
    choices, the beneficial one first; so `acc` is Keel's uncalibrated accuracy.
    """
    from gpu_tasks.engine.scoring import render_prompt_text

    out_dir.mkdir(parents=True, exist_ok=True)
    task = f"keel_{suite.name.replace('-', '_')}_v{suite.version}"
    data = out_dir / f"{task}.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for item in _items(suite, split):
            doc = {
                "id": item.item_id, "domain": item.domain, "trait": item.trait,
                "family": item.family, "context": render_prompt_text(tokenizer, item.messages),
                "chosen": item.chosen, "rejected": item.rejected,
            }  # fmt: skip
            f.write(json.dumps(doc, ensure_ascii=False) + "\n")
    yaml = out_dir / f"{task}.yaml"
    yaml.write_text(
        f"# Exported by Keel from suite {suite.name} v{suite.version} "
        f"(sha256 {suite.content_hash}).\n"
        f"task: {task}\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {json.dumps(str(data.resolve()))}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        'doc_to_text: "{{context}}"\n'
        'doc_to_choice: "{{[chosen, rejected]}}"\n'
        "doc_to_target: 0\n"
        'target_delimiter: ""\n'
        "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "metadata:\n  version: 1.0\n",
        encoding="utf-8",
    )
    return yaml


def _items(suite: Suite, split: str | None) -> list:
    items = suite.items.order_by("item_id")
    return list(items.filter(split=split) if split else items)
