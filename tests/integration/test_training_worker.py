"""Train-and-evaluate through a real Celery worker on a tiny model: the variant is
trained, registered with its lineage and record, both checkpoints are evaluated on
the same items, and the deltas and transfer row come out. A worker killed mid-training
resumes from the last adapter save."""

from __future__ import annotations

import signal
import time

import pytest

from audits.builtin import load_keel_suite
from audits.comparison import persistence_deltas, training_deltas
from audits.models import DOMAINS, Audit, RunKind, Status
from audits.services import audit_create
from config.celery import app as celery_app
from models_registry.models import Checkpoint
from tests.integration.conftest import FAST, start_worker
from tests.integration.test_worker import wait_until_finished

pytestmark = pytest.mark.integration


def queue_training(checkpoint, steps: int) -> Audit:
    return audit_create(
        checkpoint=checkpoint, suites=[load_keel_suite("beneficial")], conditions=["neutral"],
        samples=0, plan="train-and-evaluate", method="dpo", train_domains=["health"],
        traits=["humility", "truthfulness"], steps=steps,
    )  # fmt: skip


def test_train_and_evaluate_registers_a_variant_and_compares_it_with_its_base(
    tiny_checkpoint, celery_worker_process
):
    audit = wait_until_finished(queue_training(tiny_checkpoint, steps=3), celery_worker_process)
    assert audit.status == Status.SUCCEEDED, list(audit.runs.values_list("error", flat=True))
    variant = Checkpoint.objects.get(parent=tiny_checkpoint)
    assert variant.format == "peft" and variant.kind == "policy"
    assert variant.name == f"tiny-llama-dpo-a{audit.pk}"
    record = variant.training
    assert record["config_hash"] == audit.config_hash and record["steps"] == 3
    assert record["train_items"] == 6  # health x (humility, truthfulness), 3 pairs each
    assert len(record["curves"]["loss"]) == 3
    runs = audit.runs.order_by("pk")
    assert [(r.kind, r.checkpoint_id) for r in runs] == [
        (RunKind.TRAIN, tiny_checkpoint.pk),
        (RunKind.EVALUATE, tiny_checkpoint.pk),
        (RunKind.EVALUATE, variant.pk),
    ]
    base_run, variant_run = runs[1], runs[2]
    assert set(base_run.item_results.values_list("item_id", "condition")) == set(
        variant_run.item_results.values_list("item_id", "condition")
    )
    deltas = training_deltas(audit)
    assert deltas["variant"] == variant.name and deltas["base"] == tiny_checkpoint.name
    transfer = deltas["transfer"]["margin"]["health"]
    assert sorted(deltas["transfer"]["margin_mean_token"]["health"]) == sorted(DOMAINS)
    assert sorted(transfer) == sorted(DOMAINS)
    assert transfer["health"]["trained_on"] and not transfer["law"]["trained_on"]
    assert all(cell["n"] == 5 for cell in transfer.values())  # quick: one item per trait
    changed = [
        a.margin != b.margin
        for a, b in zip(base_run.item_results.order_by("item_id"),
                        variant_run.item_results.order_by("item_id"), strict=True)
    ]  # fmt: skip
    assert all(changed)

    # Persistence: the variant and its base both get the same harmful fine-tune.
    attack = audit_create(
        checkpoint=variant, suites=[load_keel_suite("beneficial")], conditions=["neutral"],
        samples=0, plan="persistence", method="sft", steps=2,
    )  # fmt: skip
    assert attack.config["training"]["domains"] == ["health"]  # from the variant's record
    attack = wait_until_finished(attack, celery_worker_process)
    assert attack.status == Status.SUCCEEDED, list(attack.runs.values_list("error", flat=True))
    attacked = [c for c in Checkpoint.objects.all() if "harmful-fine-tune" in c.tags]
    assert sorted((c.parent.name, c.training["harmful"]) for c in attacked) == [
        (tiny_checkpoint.name, True), (variant.name, True)
    ]  # fmt: skip
    assert attack.runs.filter(kind=RunKind.EVALUATE).count() == 4
    report = persistence_deltas(attack)
    assert report["attacked_variant"] == f"{variant.name}-harmful-sft-a{attack.pk}"
    lead = {(r["suite"], r["condition"], r["metric"]): r for r in report["lead_kept"]}
    overall = lead[("beneficial", "neutral", "margin")]
    assert overall["kept"] == pytest.approx(overall["after"] / overall["before"])
    assert report["variant_under_attack"] and report["base_under_attack"]


def test_grpo_trains_and_registers_its_trait_reward_model_first(
    tiny_checkpoint, celery_worker_process
):
    audit = audit_create(
        checkpoint=tiny_checkpoint, suites=[load_keel_suite("beneficial")],
        conditions=["neutral"], samples=0, plan="train-and-evaluate", method="grpo",
        train_domains=["health"], traits=["humility", "truthfulness"], steps=2,
    )  # fmt: skip
    audit = wait_until_finished(audit, celery_worker_process)
    assert audit.status == Status.SUCCEEDED, list(audit.runs.values_list("error", flat=True))
    variant = Checkpoint.objects.get(parent=tiny_checkpoint)
    reward = Checkpoint.objects.get(name=f"{variant.name}-reward")
    assert reward.kind == "reward" and reward.parent is None
    assert reward.training["pairs"] == 6 and reward.training["heldout_pairs"] == 12
    assert 0.0 <= reward.training["heldout_pairwise_accuracy"] <= 1.0
    record = variant.training
    assert record["method"] == "grpo" and record["steps"] == 2
    assert record["trait_reward"] == {reward.name: reward.fingerprint}
    curves = record["curves"]
    for key in ("reward", "reward_std", "kl", "rewards/trait_reward/mean"):
        assert len(curves[key]) == 2 and all(v is not None for v in curves[key]), key
    train_log = audit.runs.get(kind=RunKind.TRAIN).log_tail
    assert f"reward model {reward.name}: held-out accuracy" in train_log
    assert "step 2/2" in train_log and "KL" in train_log


def test_a_worker_killed_mid_training_resumes_from_the_last_save(
    tiny_checkpoint, transactional_db, models_root, tmp_path
):
    celery_app.control.purge()
    log_path = tmp_path / "worker.log"
    worker = start_worker(log_path, models_root, FAST)
    try:
        audit = queue_training(tiny_checkpoint, steps=40)
        run = audit.runs.get(kind=RunKind.TRAIN)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and run.progress_done < 12:  # past the save at 10
            time.sleep(0.1)
            run.refresh_from_db()
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=30)
        run.refresh_from_db()
        assert 12 <= run.progress_done < 40, run.log_tail
        assert run.status == Status.RUNNING  # the killed worker could not finish it

        worker = start_worker(log_path, models_root, FAST)  # the reaper queues it again
        audit = wait_until_finished(audit, log_path)
    finally:
        worker.terminate()
        worker.wait(timeout=30)
    assert audit.status == Status.SUCCEEDED, list(audit.runs.values_list("error", flat=True))
    run.refresh_from_db()
    assert "resuming from the adapter saved at step 10" in run.log_tail
    assert "stopped answering" in run.log_tail and run.attempts == 2
    variant = Checkpoint.objects.get(parent=tiny_checkpoint)
    assert variant.training["resumed_from"] == 10 and variant.training["steps"] == 40


def test_cancelling_a_training_run_stops_it_within_one_step(
    tiny_checkpoint, celery_worker_process, client, operator
):
    audit = queue_training(tiny_checkpoint, steps=200)
    run = audit.runs.get(kind=RunKind.TRAIN)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and run.progress_done < 2:
        time.sleep(0.1)
        run.refresh_from_db()
    client.force_login(operator)
    client.post(f"/audits/{audit.pk}/cancel/")
    at_cancel = run.progress_done
    audit = wait_until_finished(audit, celery_worker_process)
    run.refresh_from_db()
    assert audit.status == Status.CANCELLED and run.status == Status.CANCELLED
    assert at_cancel <= run.progress_done <= at_cancel + 2  # the step under way, at most
    assert not Checkpoint.objects.filter(parent=tiny_checkpoint).exists()
