"""An evaluate run: score every item under every condition, write results in batches."""

from __future__ import annotations

import hashlib
import logging

import torch
from django.conf import settings
from django.db import transaction

from audits.conditions import NEUTRAL, condition_of, conditions_for, system_prompt
from audits.models import (
    Calibration,
    Generation,
    Grade,
    Item,
    ItemResult,
    Run,
    RunKind,
    Status,
)
from audits.profiles import generation_items, select_items
from audits.scoring import scores_compute
from gpu_tasks import progress as worker_progress
from gpu_tasks.checkpoints import load_policy
from gpu_tasks.engine.devices import describe
from gpu_tasks.engine.generation import sample_replies
from gpu_tasks.engine.graders import Case, judge_grades, reward_grades, rule_grades
from gpu_tasks.engine.loading import load_classifier
from gpu_tasks.engine.scoring import PairRequest, score_pairs
from models_registry.inspection import resolve_under_roots
from models_registry.models import Checkpoint

log = logging.getLogger(__name__)
SAMPLES_PER_WRITE = 16
ITEMS_PER_WRITE = 8  # items per batch of writes, each with all its conditions
RESULT_FIELDS = [
    "checkpoint", "logp_chosen", "logp_rejected", "logp_chosen_unconditional",
    "logp_rejected_unconditional", "tokens_chosen", "tokens_rejected", "margin",
    "margin_mean_token", "won",
]  # fmt: skip


def run_evaluation(run_id: int) -> None:
    worker_progress.execute(run_id, _evaluate)


def pair_request(item: Item, condition: str) -> PairRequest:
    """What the scorer needs to compare an item's two replies under a condition."""
    return PairRequest(item.messages, item.chosen, item.rejected, system_prompt(condition))


def _score_and_store(run: Run, loaded, chunk: list[tuple[Item, str]]) -> None:
    requests = [pair_request(item, cond) for item, cond in chunk]
    precision = describe(loaded.device, loaded.dtype, with_name=False)
    replies = {_digest(t): t for item, _ in chunk for t in (item.chosen, item.rejected)}
    known = Calibration.objects.filter(
        checkpoint=run.checkpoint, precision=precision, reply_hash__in=list(replies)
    ).values_list("reply_hash", "logp")
    calibration = {replies[digest]: logp for digest, logp in known}
    already = set(calibration)
    scores = score_pairs(
        loaded, requests, batch_tokens=batch_tokens(loaded.device), calibration=calibration
    )
    with transaction.atomic():
        Calibration.objects.bulk_create(
            [Calibration(checkpoint=run.checkpoint, precision=precision,
                         reply_hash=_digest(text), logp=logp)
             for text, logp in calibration.items() if text not in already],
            ignore_conflicts=True,
        )  # fmt: skip
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


def batch_tokens(device) -> int:
    """Tokens per forward batch: KEEL_BATCH_TOKENS, else 16384 on a GPU, where a 135M model
    at 4096 leaves it waiting on kernel launches, and 4096 on a CPU, where larger is slower."""
    return settings.KEEL_BATCH_TOKENS or (16384 if device.type == "cuda" else 4096)


REUSE_SOURCES = 10  # the newest earlier runs read for results to copy


def _reuse_results(run: Run, pairs: list[tuple[Item, str]]) -> int:
    """Copy results this checkpoint already has for these items and conditions from
    succeeded runs scored the same way (scorer settings, device and dtype), so a base
    model evaluated again beside each of its variants is not scored again. Returns how
    many were copied; what no earlier run has is scored as usual.

    The newest such run usually holds everything, so runs are read newest first, one query
    each, until nothing is missing, and at most REUSE_SOURCES of them: the cost stays the
    size of this run, not of the checkpoint's history."""
    scorer = run.audit.config.get("scorer")
    earlier_runs = (
        Run.objects.filter(checkpoint=run.checkpoint, kind=RunKind.EVALUATE,
                           status=Status.SUCCEEDED, device=run.device)
        .exclude(pk=run.pk).order_by("-pk").values_list("pk", "audit__config")
    )  # fmt: skip
    have = set(run.item_results.values_list("item_id", "condition"))
    wanted = {(item.pk, cond) for item, cond in pairs} - have
    found: dict[tuple[int, str], ItemResult] = {}
    read = 0
    for source, config in earlier_runs.iterator(chunk_size=100):
        if not wanted or read == REUSE_SOURCES:
            break
        if (config or {}).get("scorer") != scorer:
            continue
        read += 1
        items = {item for item, _ in wanted}
        for result in ItemResult.objects.filter(run_id=source, item_id__in=items):
            key = (result.item_id, result.condition)
            if key in wanted:
                found[key] = result
                wanted.discard(key)
    ItemResult.objects.bulk_create(
        [ItemResult(run=run, item_id=item, condition=cond,
                    **{f: getattr(r, f) for f in RESULT_FIELDS if f != "checkpoint"},
                    checkpoint=run.checkpoint)
         for (item, cond), r in found.items()],
        ignore_conflicts=True,
    )  # fmt: skip
    return len(found)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _evaluate(run: Run) -> None:
    checkpoint = run.checkpoint
    worker_progress.report(run, stage="loading model")
    loaded = load_policy(checkpoint)
    run.mark_started(describe(loaded.device, loaded.dtype))
    torch.manual_seed(run.audit.seed)

    audit = run.audit
    eval_items = Item.objects.filter(suite__in=audit.suites.all(), split="eval")
    items = select_items(list(eval_items.order_by("suite_id", "item_id")), audit.profile)
    work = [
        [(item, condition) for condition in conditions_for(item.kind, item.tags, audit.conditions)]
        for item in items
    ]
    sampling = _sampling_work(run, items)
    sampled = set(run.generations.values_list("item_id", "condition", "sample"))
    scoring = sum(len(w) for w in work)
    total = scoring + len(sampling)
    reused = _reuse_results(run, [pair for pairs in work for pair in pairs])
    if reused:
        run.log(f"reused {reused} results of earlier identical scoring of this checkpoint")
    stored = set(run.item_results.values_list("item_id", "condition"))
    if stored or sampled:
        run.log(f"resuming: {len(stored)} of {scoring} already scored, "
                f"{len(sampled)} of {len(sampling)} replies sampled")  # fmt: skip
    worker_progress.report(run, stage="scoring", done=len(stored) + len(sampled), total=total)

    # Chunks are cut from the full work list, never from what remains, so a
    # resumed run scores the same batches and ends with identical numbers. An
    # item's conditions share a chunk: its empty-turn calibration is scored once.
    for start in range(0, len(work), ITEMS_PER_WRITE):
        chunk = [pair for pairs in work[start : start + ITEMS_PER_WRITE] for pair in pairs]
        # A chunk is written in one transaction, so after a crash it is stored whole or
        # not at all; only results copied from an earlier run leave part of one stored.
        fresh = [(item, cond) for item, cond in chunk if (item.pk, cond) not in stored]
        if not fresh:
            continue
        if worker_progress.cancel_requested(run):
            worker_progress.finish(run, Status.CANCELLED)
            return
        _score_and_store(run, loaded, fresh)
        worker_progress.report(run, done=run.progress_done + len(fresh))

    if sampling:
        _generate_and_grade(run, loaded, sampling, sampled)
        if run.status == Status.CANCELLED:
            return
    worker_progress.report(run, stage="aggregating")
    count = scores_compute(run)
    run.log(f"{scoring} item results, {count} scores")
    run.stage = "done"
    worker_progress.finish(run, Status.SUCCEEDED)


def _sampling_work(run: Run, items: list[Item]) -> list[tuple[Item, str, int]]:
    """Replies to sample: neutral, or an instruction item's own instruction."""
    samples = (run.audit.config.get("generation") or {}).get("samples", 0)
    return [
        (item, condition_of(item.tags) if item.kind == "instruction" else NEUTRAL, sample)
        for item in generation_items(items, run.audit.profile)
        for sample in range(samples)
    ]


def _generate_and_grade(run: Run, loaded, work: list, stored: set) -> None:
    spec = run.audit.config["generation"]
    worker_progress.report(run, stage="sampling replies")
    for start in range(0, len(work), SAMPLES_PER_WRITE):  # fixed chunks: resumable, reproducible
        chunk = work[start : start + SAMPLES_PER_WRITE]
        fresh = sum((item.pk, cond, s) not in stored for item, cond, s in chunk)
        if not fresh:
            continue
        if worker_progress.cancel_requested(run):
            worker_progress.finish(run, Status.CANCELLED)
            return
        seed = run.audit.seed + start
        replies = sample_replies(
            loaded, [(item.messages, system_prompt(cond)) for item, cond, _ in chunk],
            seed=seed, max_new_tokens=spec["max_new_tokens"], temperature=spec["temperature"],
            top_p=spec["top_p"], batch_size=SAMPLES_PER_WRITE,
        )  # fmt: skip
        Generation.objects.bulk_create(
            [Generation(run=run, item=item, condition=cond, sample=s, seed=seed, text=r.text,
                        tokens=r.tokens, finished=r.finished)
             for (item, cond, s), r in zip(chunk, replies, strict=True)],
            update_conflicts=True, unique_fields=["run", "item", "condition", "sample"],
            update_fields=["seed", "text", "tokens", "finished"],
        )  # fmt: skip
        worker_progress.report(run, done=run.progress_done + fresh)

    worker_progress.report(run, stage="grading replies")
    generations = list(run.generations.select_related("item").order_by("pk"))
    cases = [
        Case(
            g.item.messages, g.text, g.item.rubric, g.condition if g.condition != NEUTRAL else None
        )
        for g in generations
    ]
    grades = [[*rule_grades(case)] for case in cases]
    for name, fingerprint in (spec.get("reward") or {}).items():
        model = Checkpoint.objects.get(name=name, fingerprint=fingerprint)
        reward = load_classifier(resolve_under_roots(model.path), fingerprint)
        for per_case, grade in zip(grades, reward_grades(reward, name, cases), strict=True):
            per_case.append(grade)
    for name, fingerprint in (spec.get("judge") or {}).items():
        model = Checkpoint.objects.get(name=name, fingerprint=fingerprint)
        judge = load_policy(model)
        for per_case, judged in zip(grades, judge_grades(judge, name, cases), strict=True):
            per_case += judged
    with transaction.atomic():  # regrading replaces, never duplicates
        Grade.objects.filter(generation__run=run).delete()
        Grade.objects.bulk_create(
            Grade(generation=g, grader=r.grader, version=r.version, criterion=r.criterion,
                  weight=r.weight, score=r.score, rationale=r.rationale, prompt=r.prompt)
            for g, per_case in zip(generations, grades, strict=True) for r in per_case
        )  # fmt: skip
    run.log(f"{len(generations)} sampled replies, {sum(map(len, grades))} grades")
