"""An evaluate run: score every item under every condition, write results in batches."""

from __future__ import annotations

import logging

import torch
from django.conf import settings

from audits import progress
from audits.conditions import conditions_for, system_prompt
from audits.models import FINISHED, Item, ItemResult, Run, Status
from audits.profiles import select_items
from audits.scoring import scores_compute
from gpu_tasks import progress as worker_progress
from gpu_tasks.engine.devices import describe
from gpu_tasks.engine.loading import load
from gpu_tasks.engine.scoring import PairRequest, score_pairs
from models_registry.inspection import resolve_under_roots

log = logging.getLogger(__name__)
ITEMS_PER_WRITE = 8  # items per batch of writes, each with all its conditions
RESULT_FIELDS = [
    "checkpoint", "logp_chosen", "logp_rejected", "logp_chosen_unconditional",
    "logp_rejected_unconditional", "tokens_chosen", "tokens_rejected", "margin",
    "margin_mean_token", "won",
]  # fmt: skip


def run_evaluation(run_id: int) -> None:
    run = Run.objects.select_related("audit", "checkpoint").get(pk=run_id)
    if run.status in FINISHED:
        log.info("run %s already %s; nothing to do", run.pk, run.status)
        return
    if run.cancel_requested:
        run.mark_finished(Status.CANCELLED)
        progress.publish(run.audit_id)
        return
    try:
        _evaluate(run)
    except Exception as exc:
        log.exception("run %s failed", run.pk)
        run.refresh_from_db()
        run.mark_finished(Status.FAILED, error=f"{type(exc).__name__}: {exc}")
        progress.publish(run.audit_id)
        raise


def _score_and_store(run: Run, loaded, chunk: list[tuple[Item, str]]) -> None:
    requests = [
        PairRequest(item.messages, item.chosen, item.rejected, system_prompt(cond))
        for item, cond in chunk
    ]
    scores = score_pairs(loaded, requests, batch_tokens=settings.KEEL_BATCH_TOKENS)
    ItemResult.objects.bulk_create(
        [
            ItemResult(
                run=run,
                item=item,
                condition=cond,
                checkpoint=run.checkpoint,
                logp_chosen=s.logp_chosen,
                logp_rejected=s.logp_rejected,
                logp_chosen_unconditional=s.logp_chosen_unconditional,
                logp_rejected_unconditional=s.logp_rejected_unconditional,
                tokens_chosen=s.tokens_chosen,
                tokens_rejected=s.tokens_rejected,
                margin=s.margin,
                margin_mean_token=s.margin_mean_token,
                won=s.margin > 0,
            )  # fmt: skip
            for (item, cond), s in zip(chunk, scores, strict=True)
        ],
        update_conflicts=True,
        unique_fields=["run", "item", "condition"],
        update_fields=RESULT_FIELDS,
    )


def _evaluate(run: Run) -> None:
    checkpoint = run.checkpoint
    worker_progress.report(run, stage="loading model")
    loaded = load(resolve_under_roots(checkpoint.path), checkpoint.fingerprint)
    run.mark_started(describe(loaded.device, loaded.dtype))
    torch.manual_seed(run.audit.seed)

    audit = run.audit
    eval_items = Item.objects.filter(suite__in=audit.suites.all(), split="eval")
    items = select_items(list(eval_items.order_by("suite_id", "item_id")), audit.profile)
    work = [
        [(item, condition) for condition in conditions_for(item.kind, item.tags, audit.conditions)]
        for item in items
    ]
    total = sum(len(w) for w in work)
    stored = set(run.item_results.values_list("item_id", "condition"))
    if stored:
        run.log(f"resuming: {len(stored)} of {total} already scored")
    worker_progress.report(run, stage="scoring", done=len(stored), total=total)

    # Chunks are cut from the full work list, never from what remains, so a
    # resumed run scores the same batches and ends with identical numbers. An
    # item's conditions share a chunk: its empty-turn calibration is scored once.
    for start in range(0, len(work), ITEMS_PER_WRITE):
        chunk = [pair for pairs in work[start : start + ITEMS_PER_WRITE] for pair in pairs]
        fresh = sum((item.pk, cond) not in stored for item, cond in chunk)
        if not fresh:
            continue
        if worker_progress.cancel_requested(run):
            run.mark_finished(Status.CANCELLED)
            progress.publish(run.audit_id)
            return
        _score_and_store(run, loaded, chunk)
        worker_progress.report(run, done=run.progress_done + fresh)

    worker_progress.report(run, stage="aggregating")
    count = scores_compute(run)
    run.log(f"{total} item results, {count} scores")
    run.stage = "done"
    run.mark_finished(Status.SUCCEEDED)
    progress.publish(run.audit_id)
