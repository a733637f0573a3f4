"""A train run: fit a LoRA variant of the audit's checkpoint, register it, queue its evaluation.

The trainer's work folder lives in the data directory and keyed by the run, so a
worker killed mid-training resumes from the last adapter save when the task is
delivered again (tasks are acknowledged late).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import statistics
import time
from pathlib import Path

from django.conf import settings
from django.db import transaction

from audits import progress
from audits.models import Item, Run, RunKind, Status
from gpu_tasks import progress as worker_progress
from gpu_tasks.checkpoints import training_base
from gpu_tasks.engine.convert import bundled_minilm
from gpu_tasks.engine.devices import describe
from gpu_tasks.engine.training import (
    TrainSpec,
    preference_rows,
    swapped,
    train_policy,
    train_reward_model,
    training_device,
)
from models_registry.inspection import fingerprint, resolve_under_roots
from models_registry.models import Checkpoint
from models_registry.services import checkpoint_register

log = logging.getLogger(__name__)


def run_training(run_id: int) -> None:
    worker_progress.execute(run_id, _train)


def work_dir(run: Run) -> Path:
    """Where a train run keeps its resumable state: named by the run and its audit's
    creation time, so a reset or shared database never resumes another run's state."""
    created = run.audit.created_at.strftime("%Y%m%dT%H%M%S%f")
    return settings.KEEL_DATA_DIR / "training" / f"run-{run.pk}-{created}"


def variant_name(run: Run) -> str:
    training = run.audit.config["training"]
    harmful = "harmful-" if training.get("harmful") else ""
    return f"{run.checkpoint.name}-{harmful}{training['method']}-a{run.audit_id}"


def _train(run: Run) -> None:
    audit, base = run.audit, run.checkpoint
    training = audit.config["training"]
    spec = TrainSpec(**training["spec"])
    work = work_dir(run)
    work.mkdir(parents=True, exist_ok=True)
    worker_progress.report(run, stage="preparing the base model")
    base_dir = training_base(base, work)
    items = Item.objects.filter(
        suite__in=audit.suites.all(), item_id__in=training["train_items"], split="train"
    ).order_by("item_id")
    rows = preference_rows(items)
    if training.get("harmful"):  # the persistence attack: learn the misaligned replies
        rows = swapped(rows)
    run.mark_started(describe(*training_device()))

    reward = None
    if spec.method == "grpo":
        reward = _trait_reward(run, training, work)

    resumed = _last_saved_step(work)
    if resumed:
        run.log(f"resuming from the adapter saved at step {resumed}")
    worker_progress.report(run, stage=f"training ({spec.method})", done=resumed,
                           total=spec.steps)  # fmt: skip
    started = time.monotonic()

    def on_log(step: int, total: int, logs: dict) -> None:
        if "train_runtime" in logs:  # the trainer's closing summary
            return
        per_step = (time.monotonic() - started) / max(step - resumed, 1)
        line = _log_line(step, total, logs, per_step)
        run.log(line)
        worker_progress.report(run, stage=f"training: {line}", done=step, total=total)

    result = train_policy(
        base_dir, spec, rows, work, reward_dir=reward and resolve_under_roots(reward.path),
        on_log=on_log, should_stop=lambda: worker_progress.cancel_requested(run),
    )  # fmt: skip
    if result.stopped:
        worker_progress.finish(run, Status.CANCELLED)
        return
    record = {
        "audit": audit.pk,
        "config_hash": audit.config_hash,
        "method": spec.method,
        "harmful": bool(training.get("harmful")),
        "traits": training["traits"],
        "domains": training["domains"],
        "spec": spec.as_config(),
        "train_items": len(rows),
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "wall_seconds": round(result.wall_seconds, 1),
        "device": result.device,
        "trait_reward": {reward.name: reward.fingerprint} if reward else {},
        "curves": _curves(result.history),
    }
    name = variant_name(run)
    with transaction.atomic():
        # A redelivered task after registration must not register twice, and training
        # is deterministic: the same config on the same base gives the same weights.
        weights = fingerprint((result.adapter_dir / "adapter_model.safetensors",))
        variant = Checkpoint.objects.filter(parent=base, fingerprint=weights).first()
        if variant is not None:
            run.log(f"these weights are already registered as {variant.name}; reusing it")
        else:
            target = _publish(result.adapter_dir, "variants", name)
            variant = checkpoint_register(
                path=target, name=name, parent=base, training=record,
                tags=["harmful-fine-tune" if training.get("harmful") else "variant"],
                notes=f"{'harmful ' if training.get('harmful') else ''}{spec.method} on "
                f"{', '.join(training['domains'])} for {', '.join(training['traits'])}; "
                f"audit {audit.pk}",
                user=audit.created_by,
            )  # fmt: skip
        run.log(f"registered {variant.name} ({result.steps} steps, {result.wall_seconds:.0f} s)")
        if not audit.runs.filter(kind=RunKind.EVALUATE, checkpoint=variant).exists():
            from audits.services import run_queue

            run_queue(audit, RunKind.EVALUATE, variant)  # first, so the audit stays running
        run.stage = "done"
        run.mark_finished(Status.SUCCEEDED)
    progress.publish(audit.pk)
    shutil.rmtree(work / "trainer", ignore_errors=True)


def _trait_reward(run: Run, training: dict, work: Path) -> Checkpoint:
    """The registered trait reward model to train against, trained here if none was named."""
    for name, weights in training["trait_reward"].items():
        return Checkpoint.objects.get(name=name, fingerprint=weights)
    name = f"{variant_name(run)}-reward"
    existing = Checkpoint.objects.filter(name=name).first()
    if existing is not None:
        return existing
    worker_progress.report(run, stage="training the trait reward model")
    audit = run.audit
    chosen = {"trait__in": training["traits"], "domain__in": training["domains"]}
    suites = audit.suites.all()
    pairs = preference_rows(
        Item.objects.filter(suite__in=suites, split="train", **chosen).order_by("item_id")
    )
    heldout = preference_rows(
        Item.objects.filter(suite__in=suites, split="eval", kind="benefit", **chosen)
    )
    partial = work / "reward"
    record = train_reward_model(bundled_minilm(), pairs, heldout, partial, seed=audit.seed)
    (partial / "keel-training.json").write_text(json.dumps(record, indent=2))
    shutil.rmtree(partial / "trainer", ignore_errors=True)
    target = _publish(partial, "reward", name)
    reward = checkpoint_register(
        path=target, name=name, training=record, tags=["reward"],
        notes=f"trait reward model for {', '.join(training['traits'])} on "
        f"{', '.join(training['domains'])}; held-out pairwise accuracy "
        f"{record['heldout_pairwise_accuracy']:.2f} on {record['heldout_pairs']} pairs",
    )  # fmt: skip
    run.log(f"reward model {name}: held-out accuracy {record['heldout_pairwise_accuracy']:.2f} "
            f"on {record['heldout_pairs']} pairs")  # fmt: skip
    return reward


def trained_dir() -> Path:
    """Where Keel writes the models it trains: inside the first checkpoint root, so
    they register like any other checkpoint."""
    return Path(settings.KEEL_CHECKPOINT_ROOTS[0]) / "keel-trained"


def _publish(source: Path, kind: str, name: str) -> Path:
    """Copy a trained model into the registry's folder, replacing any unregistered
    leftover of an earlier attempt under the same name."""
    target = trained_dir() / kind / name
    partial = target.with_name(name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(source, partial)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target


def _last_saved_step(work: Path) -> int:
    saves = [p for p in (work / "trainer").glob("checkpoint-*") if p.name.split("-")[-1].isdigit()]
    return max((int(p.name.split("-")[-1]) for p in saves), default=0)


def _log_line(step: int, total: int, logs: dict, per_step: float) -> str:
    parts = [f"step {step}/{total}"]
    for label, key in (("loss", "loss"), ("reward", "reward"), ("reward sd", "reward_std"),
                       ("KL", "kl"), ("margin", "rewards/margins")):  # fmt: skip
        if isinstance(logs.get(key), int | float):
            parts.append(f"{label} {logs[key]:.4f}")
    tokens = logs.get("num_tokens")
    if isinstance(tokens, int | float) and step:
        parts.append(f"{tokens / step / per_step:.0f} tokens/s")
    parts.append(f"ETA {math.ceil(per_step * (total - step))} s")
    return ", ".join(parts)


def _curves(history: list[dict]) -> dict[str, list]:
    """Per-step series for the training record: loss, reward and its spread, KL, margins."""
    keys = ("loss", "reward", "reward_std", "kl", "rewards/margins", "rewards/accuracies",
            "rewards/trait_reward/mean", "rewards/rubric_rules/mean", "grad_norm")  # fmt: skip
    curves = {"step": [h.get("step") for h in history]}
    for key in keys:
        values = [h.get(key) for h in history]
        if any(v is not None for v in values):
            curves[key] = values
    if curves.get("loss"):
        tail = [v for v in curves["loss"][-5:] if v is not None]
        curves["final_loss_mean"] = statistics.fmean(tail) if tail else None
    return curves
