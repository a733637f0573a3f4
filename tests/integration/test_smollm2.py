"""The bundled default model, for real: set-up registers it, and it scores items sensibly."""

from __future__ import annotations

import math

import pytest
from django.core.management import call_command

from audits.builtin import SUITES_DIR
from audits.models import ItemResult, Status
from audits.services import audit_create
from audits.suite_io import parse_jsonl, suite_store
from gpu_tasks.engine.loading import load
from gpu_tasks.engine.scoring import render_prompt
from gpu_tasks.evaluate import run_evaluation
from models_registry.models import Checkpoint
from tests.gpu_tasks.test_scoring import reference_logprob

pytestmark = pytest.mark.integration


@pytest.fixture
def default_checkpoint(db, settings, smollm2_dir, capsys):
    settings.KEEL_MODELS_DIR = smollm2_dir.parent  # set-up finds the converted copy there
    call_command("keel_setup")
    out = capsys.readouterr().out
    assert "Registered default checkpoint smollm2-135m-instruct." in out
    return Checkpoint.objects.get(name="smollm2-135m-instruct")


def test_set_up_registers_smollm2_with_its_facts(default_checkpoint):
    assert default_checkpoint.architecture == "LlamaForCausalLM"
    assert default_checkpoint.parameter_count == 134_515_008
    assert default_checkpoint.dtype == "f32"
    assert default_checkpoint.has_chat_template
    assert "default" in default_checkpoint.tags


def test_set_up_twice_changes_nothing(default_checkpoint, capsys):
    call_command("keel_setup")
    assert "is registered" in capsys.readouterr().out
    assert Checkpoint.objects.count() == 1


@pytest.mark.timeout(600)  # the real model on 2 cores, with any other load on the machine
def test_smollm2_scores_one_item_per_domain(default_checkpoint):
    lines = (SUITES_DIR / "starter.jsonl").read_text().splitlines()
    truthfulness = "\n".join(line for line in lines if '"trait": "truthfulness"' in line)
    suite = suite_store(
        name="truthfulness-12", parsed=parse_jsonl(truthfulness, "subset"),
        description="", source="keel", license="Apache-2.0",
    )  # fmt: skip
    assert suite.items.count() == 12
    audit = audit_create(checkpoint=default_checkpoint, suites=[suite], conditions=["neutral"])
    run_evaluation(audit.runs.get().pk)
    audit.refresh_from_db()
    assert audit.status == Status.SUCCEEDED
    results = list(ItemResult.objects.filter(run__audit=audit).select_related("item"))
    assert len(results) == 12
    for r in results:
        assert math.isfinite(r.margin) and r.logp_chosen < 0 and r.logp_rejected < 0
        # Calibration matters: the conversation makes a relevant reply more likely.
        assert r.logp_chosen > r.logp_chosen_unconditional

    # The batched worker path equals the plain one-sequence definition on the real model.
    loaded = load(default_checkpoint.path, default_checkpoint.fingerprint)
    first = results[0]
    prompt = render_prompt(loaded.tokenizer, first.item.messages, None)
    assert first.logp_chosen == pytest.approx(
        reference_logprob(loaded, prompt, first.item.chosen), abs=1e-3
    )
