"""Workflows that span several models."""

from __future__ import annotations

import hashlib
import json

from django.conf import settings
from django.db import transaction

from audits.conditions import CONDITIONS
from audits.models import Audit, Plan, Profile, Run, RunKind, Suite
from audits.profiles import default_conditions
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
) -> Audit:
    """Create an audit and its runs, and queue them once the transaction commits."""
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
    audit = Audit.objects.create(
        checkpoint=checkpoint,
        plan=Plan.EVALUATE,
        conditions=conditions,
        profile=profile,
        seed=seed,
        config=config,
        config_hash=config_hash(config),
        created_by=user if user is not None and user.is_authenticated else None,
    )
    audit.suites.set(suites)
    run = Run.objects.create(audit=audit, kind=RunKind.EVALUATE, checkpoint=checkpoint)
    transaction.on_commit(lambda: _enqueue(run.pk))
    return audit


def _enqueue(run_id: int) -> None:
    from gpu_tasks.tasks import evaluate_run

    evaluate_run.delay(run_id)
