"""Paired differences between two checkpoints on the same items."""

from __future__ import annotations

import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audits.comparison import compare_runs
from audits.models import ItemResult
from audits.services import audit_create
from gpu_tasks.evaluate import run_evaluation
from models_registry.services import checkpoint_register
from tests.conftest import build_tiny_llama


@pytest.fixture
def two_audits(tiny_checkpoint, starter_suite, models_root, smollm2_tokenizer_dir):
    other_dir = models_root / "tiny-llama-seed-1"
    if not other_dir.exists():
        build_tiny_llama(other_dir, smollm2_tokenizer_dir, seed=1)
    other = checkpoint_register(path=other_dir, name="tiny-llama-other")
    audits = []
    for checkpoint in (other, tiny_checkpoint):
        audit = audit_create(checkpoint=checkpoint, suites=[starter_suite],
                             conditions=["neutral"], samples=0)  # fmt: skip
        run_evaluation(audit.runs.get().pk)
        audits.append(audit)
    return audits


def test_the_overall_difference_is_the_paired_mean_with_its_interval(two_audits):
    first, second = (a.runs.get() for a in two_audits)
    rows = compare_runs(first, second)
    [margin] = [r for r in rows if r["metric"] == "margin" and not r["domain"]
                and not r["trait"]]  # fmt: skip
    a = dict(ItemResult.objects.filter(run=first).values_list("item_id", "margin"))
    b = dict(ItemResult.objects.filter(run=second).values_list("item_id", "margin"))
    assert margin["n"] == 60
    assert margin["difference"] == pytest.approx(sum(a[i] - b[i] for i in a) / 60)
    assert margin["ci_low"] < margin["difference"] < margin["ci_high"]
    assert margin["better"] == sum(a[i] > b[i] for i in a)
    assert margin["significant"] == (margin["ci_low"] > 0 or margin["ci_high"] < 0)
    cell = [r for r in rows if r["domain"] == "health" and r["trait"] == "humility"]
    assert {r["n"] for r in cell} == {1}


def test_the_compare_command_prints_json_and_refuses_unknown_audits(two_audits, capsys):
    call_command("audit", "compare", str(two_audits[0].pk), str(two_audits[1].pk), "--json")
    rows = json.loads(capsys.readouterr().out)
    assert {r["metric"] for r in rows} == {"margin", "margin_mean_token", "accuracy"}
    assert all(r["domain"] == "" for r in rows)
    with pytest.raises(CommandError, match="No audit 999"):
        call_command("audit", "compare", "999", str(two_audits[1].pk))
