"""Drain a deep queue with real workers: none lost, none run twice, even if one is killed.

    .venv/bin/python bench/drain.py --runs 1000 --workers 2 --kill-one

Creates the PostgreSQL database `keel_drain` afresh (data dir /tmp/keel-drain, Redis db 9),
registers a tiny random Llama, and a 2-item suite. It first times `--baseline` of those
evaluations run one after another in this process (no queue), then queues `--runs` audits
of one evaluation each and starts `--workers` worker nodes (`manage.py worker`, one job
process each). With `--kill-one`, the first node is killed (SIGKILL, its whole process
group) when a third of the runs have finished and started again 5 s later. At the end it
checks every run: succeeded, exactly the expected item results and scores, and how many
attempts it took, and reports runs/s and the seconds per run as a multiple of the baseline
(1/workers would be perfect scaling).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATABASE = "keel_drain"
ENV = {
    "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": "redis://127.0.0.1:6379/9",
    "KEEL_DATA_DIR": "/tmp/keel-drain",  # noqa: S108  (a bench's scratch folder)
    "KEEL_CHECKPOINT_ROOTS": "/tmp/keel-drain/models",  # noqa: S108
    "KEEL_DTYPE": "float32",
    # Recovery in seconds rather than minutes, as in the fault tests.
    "KEEL_HEARTBEAT_SECONDS": "2",
    "KEEL_STALE_AFTER": "10",
    "KEEL_REAP_EVERY": "2",
    "KEEL_LOG_LEVEL": "WARNING",
}


def fresh_database() -> None:
    import psycopg

    with psycopg.connect("postgres://postgres@127.0.0.1:5432/postgres", autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        c.execute(f"CREATE DATABASE {DATABASE}")


def start_node(name: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "worker", "--name", name, "--loglevel", "WARNING"],
        cwd=ROOT, env=os.environ | ENV, stdout=log.open("ab"), stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: a kill takes the job process too
    )  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--baseline", type=int, default=20, help="runs timed in-process")
    parser.add_argument("--kill-one", action="store_true", help="SIGKILL a node a third in")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    if args.runs < 1 or args.workers < 1:
        parser.error("--runs and --workers must be at least 1")

    os.environ.update(ENV)
    os.environ["DJANGO_SETTINGS_MODULE"] = "config.settings"
    fresh_database()
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    from audits.builtin import SUITES_DIR
    from audits.models import Audit, ItemResult, Run, Score, Status
    from audits.services import audit_create
    from audits.suite_io import parse_jsonl, suite_store
    from config.celery import app as celery_app
    from gpu_tasks.evaluate import run_evaluation
    from models_registry.services import checkpoint_register
    from tests.conftest import build_tiny_llama

    models = Path(ENV["KEEL_CHECKPOINT_ROOTS"])
    models.mkdir(parents=True, exist_ok=True)
    tokenizer = models / "smollm2-tokenizer"
    if not (tokenizer / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        from gpu_tasks.engine.convert import bundled_smollm2_gguf

        gguf = bundled_smollm2_gguf()
        AutoTokenizer.from_pretrained(
            gguf.parent, gguf_file=gguf.name, local_files_only=True
        ).save_pretrained(tokenizer)
    checkpoint = checkpoint_register(
        path=build_tiny_llama(models / "tiny-llama", tokenizer), name="tiny-llama"
    )
    lines = (SUITES_DIR / "starter.jsonl").read_text().splitlines()[:2]
    suite = suite_store(name="drain-2", parsed=parse_jsonl("\n".join(lines), "drain"),
                        description="", source="keel", license="Apache-2.0")  # fmt: skip

    def queue() -> Audit:
        return audit_create(checkpoint=checkpoint, suites=[suite], conditions=["neutral"],
                            samples=0)  # fmt: skip

    # Baseline: the same evaluation, in this process, one after another (model loaded once).
    celery_app.control.purge()
    baseline_runs = [queue().runs.get() for _ in range(args.baseline)]
    celery_app.control.purge()
    run_evaluation(baseline_runs[0].pk)  # loads the model; not timed
    started = time.perf_counter()
    for run in baseline_runs[1:]:
        run_evaluation(run.pk)
    per_run_inline = (time.perf_counter() - started) / (len(baseline_runs) - 1)
    per_run_results = ItemResult.objects.filter(run=baseline_runs[0]).count()
    per_run_scores = Score.objects.filter(run=baseline_runs[0]).count()
    baseline_ids = [r.pk for r in baseline_runs]

    # Queue them all, then start the workers.
    started = time.perf_counter()
    audits = [queue() for _ in range(args.runs)]
    queue_seconds = time.perf_counter() - started
    run_ids = list(Run.objects.filter(audit__in=audits).values_list("pk", flat=True))
    logs = Path(ENV["KEEL_DATA_DIR"]) / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    nodes = {f"drain{i + 1}": None for i in range(args.workers)}
    for name in nodes:
        nodes[name] = start_node(name, logs / f"{name}.log")
    started = time.perf_counter()
    killed_at = None
    deadline = time.monotonic() + args.timeout
    runs = Run.objects.filter(pk__in=run_ids)
    while time.monotonic() < deadline:
        done = runs.filter(status__in=[Status.SUCCEEDED, Status.FAILED, Status.CANCELLED]).count()
        first = next(iter(nodes))
        if (
            args.kill_one
            and killed_at is None
            and done >= args.runs // 3
            and runs.filter(status=Status.RUNNING, worker__startswith=f"{first}@").exists()
        ):
            # mid-run: the node holds a run that a worker must then take over
            os.killpg(nodes[first].pid, signal.SIGKILL)
            nodes[first].wait()
            killed_at = done
            time.sleep(5)
            nodes[first] = start_node(first, logs / f"{first}.log")
        if done == args.runs:
            break
        time.sleep(0.5)
    drain_seconds = time.perf_counter() - started
    for node in nodes.values():
        node.terminate()
    for node in nodes.values():
        node.wait(timeout=60)

    statuses = collections.Counter(runs.values_list("status", flat=True))
    results = collections.Counter(
        ItemResult.objects.filter(run_id__in=run_ids).values_list("run_id", flat=True)
    )
    scores = collections.Counter(
        Score.objects.filter(run_id__in=run_ids).values_list("run_id", flat=True)
    )
    wrong = [pk for pk in run_ids
             if results[pk] != per_run_results or scores[pk] != per_run_scores]  # fmt: skip
    attempts = collections.Counter(runs.values_list("attempts", flat=True))
    by_node = collections.Counter(
        w.rpartition(":")[0] for w in runs.values_list("worker", flat=True)
    )
    report = {
        "runs": args.runs,
        "workers": args.workers,
        "statuses": dict(statuses),
        "runs_with_wrong_row_counts": len(wrong),
        "item_results_per_run": per_run_results,
        "scores_per_run": per_run_scores,
        "attempts": {str(k): v for k, v in sorted(attempts.items())},
        "runs_per_node": dict(by_node),
        "killed_a_node_after": killed_at,
        "queue_seconds": round(queue_seconds, 1),
        "drain_seconds": round(drain_seconds, 1),
        "runs_per_second": round(args.runs / drain_seconds, 2),
        "baseline_seconds_per_run_in_process": round(per_run_inline, 3),
        "drain_seconds_per_run_over_baseline": round(drain_seconds / args.runs / per_run_inline, 2),
        "baseline_runs": len(baseline_ids),
        "load_average": os.getloadavg(),
    }
    print(json.dumps(report, indent=2) if args.json else "\n".join(
        f"{k}: {v}" for k, v in report.items()))  # fmt: skip
    ok = statuses == {Status.SUCCEEDED: args.runs} and not wrong
    if not ok:
        print("FAILED: runs lost, failed or with wrong rows; see the logs in", logs)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
