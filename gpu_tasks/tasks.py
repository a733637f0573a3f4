"""Celery tasks: thin adapters that take an id and call the engine."""

from __future__ import annotations

from celery import shared_task


@shared_task(acks_late=True)
def train_run(run_id: int) -> None:
    from gpu_tasks.train import run_training

    run_training(run_id)


@shared_task(acks_late=True)
def evaluate_run(run_id: int) -> None:
    from gpu_tasks.evaluate import run_evaluation

    run_evaluation(run_id)


@shared_task(ignore_result=True)
def reap() -> None:
    """Queue again what died with its worker or was lost by the broker (beat, each minute)."""
    from gpu_tasks import reaper

    reaper.reap()
