"""Workflows that span several models."""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audits.conditions import CONDITIONS
from audits.models import (
    DOMAINS,
    FINISHED,
    TRAITS,
    Audit,
    Item,
    Plan,
    Priority,
    Profile,
    Run,
    RunKind,
    Status,
    Suite,
)  # fmt: skip
from audits.profiles import default_conditions
from audits.trail import Action, record
from models_registry.models import Checkpoint

SCORER = {
    "method": "loglik-pairs",
    "calibration": "empty-user-turn-neutral",
    "reply_tokens": "no-eos",
}

SAMPLING = {"max_new_tokens": 96, "temperature": 0.7, "top_p": 0.9}
MAX_SAMPLES = 16


def config_hash(config: dict) -> str:
    canonical = json.dumps(config, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@transaction.atomic
def audit_create(
    *,
    checkpoint: Checkpoint,
    suites: list[Suite],
    user=None,
    conditions: list[str] | None = None,
    profile: str = Profile.QUICK,
    seed: int = 0,
    samples: int = 1,
    judge: Checkpoint | None = None,
    reward_model: Checkpoint | None = None,
    plan: str = Plan.EVALUATE,
    priority: int = Priority.NORMAL,
    method: str = "dpo",
    traits: list[str] | None = None,
    train_domains: list[str] | None = None,
    trait_reward: Checkpoint | None = None,
    steps: int | None = None,
    train_profile: str | None = None,
    learning_rate: float | None = None,
) -> Audit:
    """Create an audit and its runs, and queue them once the transaction commits.

    ``train-and-evaluate`` first trains a LoRA variant of the checkpoint (``method``
    on the train split of ``traits`` x ``train_domains``), then evaluates the base
    and the variant on the same items and conditions."""
    conditions = conditions or default_conditions(profile)
    unknown = [c for c in conditions if c not in CONDITIONS]
    if unknown:
        raise ValueError(f"unknown condition(s): {', '.join(unknown)}")
    if not suites:
        raise ValueError("choose at least one suite")
    if not 0 <= samples <= MAX_SAMPLES:
        raise ValueError(f"samples must be between 0 and {MAX_SAMPLES}, not {samples}")
    config = {
        "checkpoints": {checkpoint.name: checkpoint.fingerprint},
        "suites": {f"{s.name}@{s.version}": s.content_hash for s in suites},
        "conditions": sorted(conditions),
        "scorer": SCORER,
        "profile": profile,
        "seed": seed,
        "generation": {
            "samples": samples,
            **SAMPLING,
            "judge": {judge.name: judge.fingerprint} if judge and samples else {},
            "reward": {reward_model.name: reward_model.fingerprint}
            if reward_model and samples
            else {},
        },  # fmt: skip
        "keel": settings.KEEL_VERSION,
    }
    if priority not in Priority.values:
        raise ValueError(f"unknown priority {priority!r} (one of "
                         f"{', '.join(f'{p} ({p.label.lower()})' for p in Priority)})")  # fmt: skip
    if plan not in Plan.values:
        raise ValueError(f"unknown plan {plan!r} (one of {', '.join(Plan.values)})")
    if plan == Plan.PERSISTENCE:
        if checkpoint.parent is None or checkpoint.format != "peft":
            raise ValueError(
                f"{checkpoint.name} has no base to compare with: the persistence plan takes a "
                "variant (a LoRA adapter with a parent), and attacks it and its base alike"
            )
        learned = checkpoint.training or {}
        traits = traits or learned.get("traits")
        train_domains = train_domains or learned.get("domains")
        if method == "grpo":
            raise ValueError("the harmful fine-tune is sft (on the misaligned replies) or dpo "
                             "(with the pairs swapped)")  # fmt: skip
    if plan in (Plan.TRAIN_AND_EVALUATE, Plan.PERSISTENCE):
        config["training"] = training_config(
            checkpoint, suites, train_profile or profile, seed, method, traits, train_domains,
            trait_reward, {"steps": steps, "learning_rate": learning_rate},
        )  # fmt: skip
        config["training"]["harmful"] = plan == Plan.PERSISTENCE
    audit = Audit.objects.create(
        checkpoint=checkpoint,
        plan=plan,
        conditions=conditions,
        profile=profile,
        seed=seed,
        priority=priority,
        config=config,
        config_hash=config_hash(config),
        created_by=user if user is not None and user.is_authenticated else None,
    )
    audit.suites.set(suites)
    # Each train run queues the evaluation of what it trained when it finishes.
    trained = {
        Plan.EVALUATE: [],
        Plan.TRAIN_AND_EVALUATE: [checkpoint],
        Plan.PERSISTENCE: [checkpoint.parent, checkpoint],
    }[plan]
    for model in trained:
        run_queue(audit, RunKind.TRAIN, model)
    for model in trained if plan == Plan.PERSISTENCE else [checkpoint]:
        run_queue(audit, RunKind.EVALUATE, model)
    record(Action.QUEUE, audit, actor=user, details={
        "checkpoint": checkpoint.name, "fingerprint": checkpoint.fingerprint, "plan": plan,
        "profile": profile, "config_hash": audit.config_hash,
        "suites": config["suites"], "runs": audit.runs.count(),
    })  # fmt: skip
    return audit


def training_config(checkpoint, suites, profile, seed, method, traits, domains, reward, overrides):
    """The training part of an audit's config, validated: what changes the variant."""
    from gpu_tasks.engine.training import spec_for

    if checkpoint.kind != "policy":
        raise ValueError(f"{checkpoint.name} is a reward model; train a language model")
    traits, domains = list(traits or TRAITS), list(domains or [])
    if not domains:
        raise ValueError("choose at least one training domain")
    for label, chosen, known in (("trait", traits, TRAITS), ("domain", domains, DOMAINS)):
        unknown = sorted(set(chosen) - set(known))
        if unknown:
            raise ValueError(f"unknown {label}(s) {', '.join(unknown)}; known: {', '.join(known)}")
    if reward is not None and reward.kind != "reward":
        raise ValueError(f"{reward.name} is not a reward model (a one-output classifier)")
    spec = spec_for(method, profile, seed=seed,
                    **{k: v for k, v in overrides.items() if v is not None})  # fmt: skip
    pairs = Item.objects.filter(
        suite__in=suites, split="train", trait__in=traits, domain__in=domains
    ).exclude(chosen="")
    if not pairs.exists():
        raise ValueError(
            "the chosen suites have no train items for those traits and domains; include "
            "the 'beneficial' suite, which has a train split"
        )
    return {
        "method": method,
        "profile": "quick" if profile == "quick" else "standard",
        "traits": sorted(traits),
        "domains": sorted(domains),
        "spec": spec.as_config(),
        "train_items": sorted(pairs.values_list("item_id", flat=True)),
        "trait_reward": {reward.name: reward.fingerprint} if reward else {},
    }


def run_queue(audit: Audit, kind: str, checkpoint: Checkpoint) -> Run:
    """A new run of the audit, queued on its Celery queue once the transaction commits."""
    run = Run.objects.create(audit=audit, kind=kind, checkpoint=checkpoint)
    transaction.on_commit(lambda: _enqueue(run))
    return run


def _enqueue(run: Run) -> None:
    from gpu_tasks.reaper import enqueue

    enqueue(run)


@transaction.atomic
def audit_retry(audit: Audit, user=None) -> int:
    """Queue an audit's failed and cancelled runs again; each resumes from the chunks it
    stored. Returns how many runs were queued."""
    runs = list(audit.runs.select_for_update().filter(status__in=[Status.FAILED,
                                                                  Status.CANCELLED]))  # fmt: skip
    for run in runs:
        run.status = Status.QUEUED
        run.cancel_requested = False
        run.error = ""
        run.finished_at = None
        run.worker = ""
        run.attempts = 0
        run.queued_at = timezone.now()
        run.log(f"retry requested by {user or 'command line'}")
        run.save()
        transaction.on_commit(lambda run=run: _enqueue(run))
    if runs:
        audit.refresh_status()
        record(Action.RETRY, audit, actor=user, details={"runs": [r.pk for r in runs]})
    return len(runs)


@transaction.atomic
def audit_cancel(audit: Audit, user=None) -> int:
    """Ask the workers to stop the audit's unfinished runs after their current batch.
    Returns how many runs were asked."""
    runs = list(audit.runs.select_for_update().exclude(status__in=FINISHED))
    for run in runs:
        run.cancel_requested = True
        run.save(update_fields=["cancel_requested"])
    if runs:
        record(Action.CANCEL, audit, actor=user, details={"runs": [r.pk for r in runs]})
    return len(runs)
